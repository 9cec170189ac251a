//! The fleet: frequency caps shared by every replica through a NATS
//! JetStream stream, the fleet's impression log. The only module that knows
//! NATS: it adapts JetStream to the domain's traits, so the frequency store
//! stays plain counters.
//!
//! - Recording ([`publisher::FleetSink`], an [`crate::freq::ImpressionSink`]):
//!   publish the batch, answer once JetStream acknowledged it and this replica
//!   applied it (read-your-writes on the recording replica).
//! - Applying ([`applier`]): every replica consumes its shard's subject from
//!   its last applied sequence and applies each batch to its local counters
//!   ([`crate::freq::FreqStore::apply_replicated`]), so `Decide` stays
//!   in-process. Same stream order everywhere, so impression ids dedupe alike
//!   on every replica.
//! - Real-time changes ([`members`]): `UpdateMembers` and `ForgetUsers`
//!   publish to the shard's `segd.impressions.<shard>.members` in the same
//!   stream; the same consumer and applier apply them in stream order.
//! - [`stream`]: the stream, created when missing, refused when it cannot serve.
//! - [`message`]: the bytes of a message, subjects and message ids.
//! - [`metrics`]: lag, sequences, failures, connection state.
//! - [`pack_sync`]: one push that reaches every replica: packs in an
//!   object store, intended versions and line items in a key-value bucket.
//! - [`settings`]: the `--fleet-*` flags.
//!
//! It must never apply a batch outside stream order, nor answer a recording
//! call before both the acknowledgement and the local apply.

pub mod applier;
pub mod members;
pub mod message;
pub mod metrics;
pub mod pack_sync;
pub mod publisher;
pub mod settings;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::freq::FreqStore;
use crate::realtime::Realtime;
pub use members::FleetRealtime;
pub use metrics::FleetMetrics;
pub use publisher::FleetSink;
pub use settings::FleetSettings;

/// A running fleet membership: the sink to record through and the tasks to stop.
pub struct Fleet {
    pub sink: Arc<FleetSink>,
    /// Where `UpdateMembers` and `ForgetUsers` go in fleet mode.
    pub realtime: Arc<FleetRealtime>,
    pub metrics: Arc<FleetMetrics>,
    consumer: tokio::task::JoinHandle<()>,
    applier: Option<JoinHandle<()>>,
}

/// How a fleet member starts.
pub struct FleetStart<'a> {
    pub settings: &'a FleetSettings,
    /// The audience shard (`--shard I/N`'s I): the replica records to and
    /// consumes `segd.impressions.<shard>` only.
    pub shard: u32,
    pub retention: Duration,
    pub store: Arc<FreqStore>,
    /// The real-time overlay and journal, fed from the same stream.
    pub realtime: Arc<Realtime>,
    /// How long a real-time change may take to be acknowledged and applied.
    pub request_timeout: Duration,
    pub metrics: Arc<FleetMetrics>,
}

impl Fleet {
    /// Connects (retrying until NATS answers or `stop`), makes sure the stream
    /// can serve, starts consuming after what this replica holds, and
    /// returns once caught up to the stream's last message of this shard at
    /// start-up (impressions and real-time changes). Errors: a stream that cannot serve, a checkpoint from another
    /// stream, `stop` before caught up.
    pub async fn start(start: FleetStart<'_>, stop: CancellationToken) -> anyhow::Result<Fleet> {
        let FleetStart {
            settings,
            shard,
            retention,
            store,
            realtime,
            request_timeout,
            metrics,
        } = start;
        let client = connect(settings, &metrics).await?;
        let mut context = async_nats::jetstream::new(client.clone());
        // Our own deadline governs each publish; this only bounds API calls.
        context.set_timeout(Duration::from_secs(5));
        let spec = stream::StreamSpec {
            name: settings.fleet_stream.clone(),
            replicas: usize::from(settings.fleet_replicas),
            max_age: retention,
            duplicate_window: settings.duplicate_window(),
        };
        let stream = ensure_stream_retrying(&context, &spec, stop.clone()).await?;
        let subject = message::shard_subject(shard);
        let members_subject = members::members_subject(shard);
        let (applied, target) = resume_point(
            &stream,
            [&subject, &members_subject],
            &spec.name,
            &store,
            &realtime,
            &metrics,
        )
        .await?;

        let waiters = Arc::new(applier::Waiters::default());
        let (applied_sender, mut applied_receiver) = watch::channel(applied);
        let (message_sender, message_receiver) = mpsc::channel(1_024);
        let targets = applier::ApplyTargets {
            store: store.clone(),
            realtime: realtime.clone(),
            members_subject: members_subject.clone(),
        };
        let applier = spawn_applier(
            message_receiver,
            targets,
            waiters.clone(),
            metrics.clone(),
            applied_sender,
        )?;
        let consumer = tokio::spawn(applier::run_consumer(
            stream,
            vec![subject.clone(), members_subject.clone()],
            applied,
            message_sender,
            metrics.clone(),
            stop.clone(),
        ));
        let realtime_writes = Arc::new(FleetRealtime {
            realtime,
            client: client.clone(),
            context: context.clone(),
            subject: members_subject,
            message_ids: message::MessageIds::new(&format!("{}.members", metrics.replica_id)),
            waiters: waiters.clone(),
            runtime: tokio::runtime::Handle::current(),
            timeout: request_timeout,
        });
        let mut fleet = Fleet {
            realtime: realtime_writes,
            sink: Arc::new(FleetSink {
                client,
                context,
                subject,
                message_ids: message::MessageIds::new(&metrics.replica_id),
                waiters,
                metrics: metrics.clone(),
            }),
            metrics: metrics.clone(),
            consumer,
            applier: Some(applier),
        };
        info!(stream = %spec.name, applied, target, "catching up with the fleet stream");
        // Plain results out of the select: a watch guard must not live across `.await`.
        let failure = tokio::select! {
            caught_up = applied_receiver.wait_for(|&applied| applied >= target) => {
                caught_up.is_err().then_some("the fleet applier stopped")
            }
            () = stop.cancelled() => Some("stopped"),
        };
        if let Some(failure) = failure {
            fleet.stop().await;
            bail!("{failure} before catching up with stream {}", spec.name);
        }
        metrics.caught_up.store(true, Ordering::Relaxed);
        info!(stream = %spec.name, applied = store.applied_stream_seq(), "caught up with the fleet stream");
        Ok(fleet)
    }

    /// Waits for the consumer (stopped by the server's stop signal) and the
    /// applier thread; call before the frequency store's final checkpoint.
    pub async fn stop(&mut self) {
        self.consumer.abort();
        let _ = (&mut self.consumer).await;
        if let Some(applier) = self.applier.take() {
            let _ = tokio::task::spawn_blocking(move || applier.join()).await;
        }
    }

    /// The JetStream context of this replica's connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        self.sink.context.clone()
    }
}

/// The `Status` block from the fleet's figures.
pub fn status_of(metrics: &FleetMetrics) -> crate::proto::FleetStatus {
    crate::proto::FleetStatus {
        mode: "fleet".to_owned(),
        replica_id: metrics.replica_id.clone(),
        stream: metrics.stream.clone(),
        applied_sequence: metrics.applied_sequence.load(Ordering::Relaxed),
        stream_sequence: metrics.stream_sequence.load(Ordering::Relaxed),
        messages_behind: metrics.messages_behind.load(Ordering::Relaxed),
        last_apply_lag_seconds: metrics.last_lag_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        connected: metrics.connected.load(Ordering::Relaxed),
        caught_up: metrics.caught_up.load(Ordering::Relaxed),
    }
}

async fn connect(
    settings: &FleetSettings,
    metrics: &Arc<FleetMetrics>,
) -> anyhow::Result<async_nats::Client> {
    let urls: Vec<async_nats::ServerAddr> = settings
        .fleet_nats
        .iter()
        .map(|url| {
            url.trim()
                .parse()
                .with_context(|| format!("--fleet-nats {url:?} is not a NATS URL"))
        })
        .collect::<anyhow::Result<_>>()?;
    let events = metrics.clone();
    async_nats::ConnectOptions::new()
        .name(format!("segd {}", metrics.replica_id))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        // Come back quickly after an outage: at most 1 s between attempts.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(5)).min(1_000))
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        events.connected.store(true, Ordering::Relaxed);
                        info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        events.connected.store(false, Ordering::Relaxed);
                        warn!(
                            "disconnected from NATS; recording answers UNAVAILABLE until it returns"
                        );
                    }
                    _ => {}
                }
            }
        })
        .connect(urls)
        .await
        .with_context(|| format!("connect to --fleet-nats {}", settings.fleet_nats.join(",")))
}

async fn ensure_stream_retrying(
    context: &async_nats::jetstream::Context,
    spec: &stream::StreamSpec,
    stop: CancellationToken,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    let limiter = applier::LogLimiter::new();
    loop {
        match stream::ensure_stream(context, spec).await {
            Ok(stream) => return Ok(stream),
            Err(stream::EnsureError::Refused(error)) => return Err(error),
            Err(stream::EnsureError::Unreachable(error)) => {
                if limiter.allow() {
                    warn!(error = %format!("{error:#}"), "JetStream not reachable yet; retrying");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = stop.cancelled() => bail!("stopped before JetStream answered"),
        }
    }
}

/// The applier thread (see [`applier::run_applier`]).
fn spawn_applier(
    messages: mpsc::Receiver<applier::Delivery>,
    targets: applier::ApplyTargets,
    waiters: Arc<applier::Waiters>,
    metrics: Arc<FleetMetrics>,
    applied: watch::Sender<u64>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet-applier".to_owned())
        .spawn(move || applier::run_applier(messages, targets, waiters, metrics, applied))
        .context("spawn the fleet applier thread")
}

/// Where this replica resumes the stream (the lower of the counters' and the
/// real-time journal's positions: each side skips what it already holds) and
/// the sequence to catch up to (the last message of `subjects`). A position
/// beyond the stream's end (it lost its tail or was recreated) is moved back
/// to that end.
async fn resume_point(
    stream: &async_nats::jetstream::stream::Stream,
    subjects: [&str; 2],
    name: &str,
    store: &FreqStore,
    realtime: &Realtime,
    metrics: &FleetMetrics,
) -> anyhow::Result<(u64, u64)> {
    let mut target = 0;
    for subject in subjects {
        target = target.max(last_sequence_of(stream, subject, name).await?);
    }
    let stream_last = stream.cached_info().state.last_sequence;
    if store.applied_stream_seq() > stream_last || realtime.stream_position() > stream_last {
        warn!(stream = %name, stream_last, applied = store.applied_stream_seq(), realtime_position = realtime.stream_position(), "the frequency checkpoint or the real-time journal is beyond the stream's end: it lost its tail or was recreated; counting on from its end");
        metrics.stream_rewinds.fetch_add(1, Ordering::Relaxed);
        store.rewind_applied_stream_seq(stream_last);
        realtime.rewind_stream_position(stream_last);
    }
    let applied = store.applied_stream_seq().min(realtime.stream_position());
    metrics.applied_sequence.store(applied, Ordering::Relaxed);
    metrics.saw_stream_sequence(target);
    Ok((applied, target))
}

/// The stream sequence of the last message on `subject` (0 when none).
async fn last_sequence_of(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    name: &str,
) -> anyhow::Result<u64> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(0),
        Err(error) => Err(anyhow::Error::new(error))
            .with_context(|| format!("read the last message of {subject} in stream {name}")),
    }
}
