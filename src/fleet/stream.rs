//! The fleet's JetStream stream: created when missing, checked when present.
//! A stream that cannot serve as the impression log (another subject set, a
//! retention policy that deletes consumed messages, no deduplication window)
//! refuses start-up with the difference named; one that serves but differs in
//! what segd would create (replicas, max age) is used and warned about.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use tracing::{info, warn};

use super::message::STREAM_SUBJECTS;

/// What segd asks of the stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub replicas: usize,
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

impl StreamSpec {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![STREAM_SUBJECTS.to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            description: Some("segd impressions: the fleet's frequency-cap log".to_owned()),
            ..Default::default()
        }
    }
}

/// Whether an error means "could not reach JetStream" (retry) rather than
/// "JetStream answered no" (a real refusal).
pub enum EnsureError {
    Unreachable(anyhow::Error),
    Refused(anyhow::Error),
}

/// Returns the stream, creating it when missing.
pub async fn ensure_stream(
    context: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<stream::Stream, EnsureError> {
    match context.get_stream(&spec.name).await {
        Ok(existing) => {
            check_existing(existing.cached_info(), spec).map_err(EnsureError::Refused)?;
            Ok(existing)
        }
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                create(context, spec).await
            }
            GetStreamErrorKind::Request => Err(EnsureError::Unreachable(
                anyhow::Error::new(error).context(format!("look up stream {}", spec.name)),
            )),
            _ => Err(EnsureError::Refused(
                anyhow::Error::new(error).context(format!("look up stream {}", spec.name)),
            )),
        },
    }
}

async fn create(
    context: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<stream::Stream, EnsureError> {
    match context.create_stream(spec.config()).await {
        Ok(created) => {
            info!(stream = %spec.name, replicas = spec.replicas, max_age_seconds = spec.max_age.as_secs(), "fleet stream created");
            Ok(created)
        }
        Err(error) => match error.kind() {
            // Another replica created it first: check what it made.
            CreateStreamErrorKind::JetStream(_) => {
                let existing = context
                    .get_stream(&spec.name)
                    .await
                    .with_context(|| format!("create stream {}: {error}", spec.name))
                    .map_err(EnsureError::Refused)?;
                check_existing(existing.cached_info(), spec).map_err(EnsureError::Refused)?;
                Ok(existing)
            }
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                Err(EnsureError::Unreachable(
                    anyhow::Error::new(error).context(format!("create stream {}", spec.name)),
                ))
            }
            _ => Err(EnsureError::Refused(
                anyhow::Error::new(error).context(format!("create stream {}", spec.name)),
            )),
        },
    }
}

/// Refuses a stream that cannot be the impression log; warns about
/// differences that only weaken it.
pub fn check_existing(info: &stream::Info, spec: &StreamSpec) -> anyhow::Result<()> {
    let config = &info.config;
    if config.subjects != [STREAM_SUBJECTS] {
        bail!(
            "stream {} has subjects {:?}; segd needs exactly [{STREAM_SUBJECTS:?}] (delete it or name another with --fleet-stream)",
            spec.name,
            config.subjects
        );
    }
    if config.retention != RetentionPolicy::Limits {
        bail!(
            "stream {} has retention policy {:?}; segd needs limits (a replica replays messages others consumed)",
            spec.name,
            config.retention
        );
    }
    if config.duplicate_window.is_zero() {
        bail!(
            "stream {} has no duplicate window; segd needs one so a retried publish is stored once",
            spec.name
        );
    }
    if config.num_replicas != spec.replicas {
        warn!(stream = %spec.name, stream_replicas = config.num_replicas, fleet_replicas = spec.replicas, "fleet stream has another replication factor than --fleet-replicas; using it as it is");
    }
    if !config.max_age.is_zero() && config.max_age < spec.max_age {
        warn!(stream = %spec.name, stream_max_age_seconds = config.max_age.as_secs(), retention_seconds = spec.max_age.as_secs(), "fleet stream keeps messages for less than --freq-retention-days: a new replica cannot rebuild the oldest counts");
    }
    Ok(())
}
