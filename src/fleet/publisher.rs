//! Recording through the stream: [`FleetSink`], the fleet's
//! [`ImpressionSink`]. A batch is published to this shard's subject with a
//! message id kept across publish retries (JetStream stores it once), and the
//! call resolves once JetStream acknowledged it *and* this replica's applier
//! applied it, with the counts of that apply. Nothing is published while the
//! connection is down (the client would buffer it and send it after we
//! answered UNAVAILABLE); a publish that still reaches the stream after the
//! deadline is skipped by every replica (see [`super::message`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishError, publish::PublishAck};

use super::applier::{Applied, Waiters};
use super::message::{MessageIds, encode_batch, unix_now_nanos};
use super::metrics::FleetMetrics;
use crate::freq::{FreqError, ImpressionSink, NewImpression, RecordFuture, RecordOutcome};

/// Pause between publish attempts (a JetStream leader election, a reconnect).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub struct FleetSink {
    pub(super) client: async_nats::Client,
    pub(super) context: jetstream::Context,
    pub(super) subject: String,
    pub(super) message_ids: MessageIds,
    pub(super) waiters: Arc<Waiters>,
    pub(super) metrics: Arc<FleetMetrics>,
}

impl ImpressionSink for FleetSink {
    fn record(&self, impressions: Vec<NewImpression>, deadline: Instant) -> RecordFuture<'_> {
        Box::pin(async move {
            let result = self.publish_and_wait(&impressions, deadline).await;
            if result.is_err() {
                self.metrics
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            result
        })
    }
}

impl FleetSink {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    async fn publish_and_wait(
        &self,
        impressions: &[NewImpression],
        deadline: Instant,
    ) -> Result<RecordOutcome, FreqError> {
        if !self.connected() {
            return Err(FreqError::Unavailable(
                "not connected to NATS; nothing recorded".to_owned(),
            ));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let origin_unix_nanos = unix_now_nanos();
        let valid_until_unix_nanos = origin_unix_nanos.saturating_add(remaining.as_nanos() as i64);
        let payload = encode_batch(impressions, origin_unix_nanos, valid_until_unix_nanos);
        let message_id = self.message_ids.next_id();
        // Registered before publishing: the applier may apply it before the ack arrives.
        let mut waiter = self.waiters.register(message_id.clone());
        let ack = publish_until(
            &self.client,
            &self.context,
            &self.subject,
            &payload,
            &message_id,
            deadline,
        )
        .await
        .map_err(|reason| FreqError::Unavailable(format!("{reason}; nothing recorded")))?;
        self.metrics
            .published_batches
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.saw_stream_sequence(ack.sequence);
        match tokio::time::timeout_at(deadline.into(), &mut waiter.receiver).await {
            Ok(Ok(Applied::Recorded(outcome))) => Ok(outcome),
            Ok(Ok(Applied::Skipped(reason))) => Err(FreqError::Unavailable(format!(
                "stream sequence {}: {reason}; no replica applied it",
                ack.sequence
            ))),
            Ok(Ok(Applied::Changed)) => Err(FreqError::Unavailable(format!(
                "stream sequence {} was applied as a real-time change, not impressions",
                ack.sequence
            ))),
            Ok(Err(_)) => Err(FreqError::ShutDown),
            Err(_) => Err(FreqError::Unavailable(format!(
                "acknowledged at stream sequence {} but not applied on this replica before the deadline; a retry with the same impression ids counts them once",
                ack.sequence
            ))),
        }
    }
}

/// Publishes `payload` to `subject` until acknowledged or the deadline, the
/// same message id on every attempt; the error says why it was not taken.
/// Nothing is sent while the connection is down (the client would buffer it
/// and send it after the caller was answered).
pub(super) async fn publish_until(
    client: &async_nats::Client,
    context: &jetstream::Context,
    subject: &str,
    payload: &[u8],
    message_id: &str,
    deadline: Instant,
) -> Result<PublishAck, String> {
    if client.connection_state() != State::Connected {
        return Err("not connected to NATS".to_owned());
    }
    loop {
        let attempt = async {
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.to_vec().into())
                .message_id(message_id);
            let ack = context.send_publish(subject.to_owned(), message).await?;
            ack.await
        };
        let error: PublishError = match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Ok(ack)) => return Ok(ack),
            Ok(Err(error)) => error,
            Err(_) => return Err("no JetStream acknowledgement before the deadline".to_owned()),
        };
        // Retry only while it can still finish and only when connected
        // (a publish while disconnected would be buffered, not refused).
        loop {
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(format!(
                    "JetStream did not take it before the deadline: {error}"
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            if client.connection_state() == State::Connected {
                break;
            }
        }
    }
}
