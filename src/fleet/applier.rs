//! Consuming the stream into the local counters and the real-time overlay. A
//! tokio task pulls this replica's subjects (impressions and real-time
//! changes, `super::members`) in one stream order from the last applied
//! sequence through an ephemeral
//! consumer (no acks: progress is the store's applied sequence, kept in its
//! checkpoints) and hands messages to one applier thread, which applies them
//! in stream order and wakes the recording call waiting for its message id
//! (read-your-writes). A consumer error, a gap in delivery or a lost
//! connection ends the consumer; a new one resumes after the last message
//! handed over, so everything resumes by itself when NATS returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::message::{decode_batch, unix_now_nanos};
use super::metrics::FleetMetrics;
use crate::freq::{FreqError, FreqStore, RecordOutcome};
use crate::realtime::Realtime;

/// What became of a message a recording call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Recorded(RecordOutcome),
    /// Skipped by every replica; the reason.
    Skipped(&'static str),
    /// A real-time change (`crate::fleet::members`) applied.
    Changed,
}

/// Recording calls waiting for their message to be applied, by message id.
#[derive(Default)]
pub struct Waiters {
    by_message_id: Mutex<HashMap<String, oneshot::Sender<Applied>>>,
}

/// A registered wait; unregisters when dropped (a call that gave up).
pub struct Waiter<'waiters> {
    waiters: &'waiters Waiters,
    message_id: String,
    pub receiver: oneshot::Receiver<Applied>,
}

impl Waiters {
    pub fn register(&self, message_id: String) -> Waiter<'_> {
        let (sender, receiver) = oneshot::channel();
        self.by_message_id.lock().insert(message_id.clone(), sender);
        Waiter {
            waiters: self,
            message_id,
            receiver,
        }
    }

    fn fire(&self, message_id: &str, applied: Applied) {
        if let Some(sender) = self.by_message_id.lock().remove(message_id) {
            let _ = sender.send(applied);
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.by_message_id.lock().remove(&self.message_id);
    }
}

/// At most one warning per interval from a hot loop.
#[derive(Default)]
pub struct LogLimiter {
    last_unix_seconds: AtomicI64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        Self {
            last_unix_seconds: AtomicI64::new(0),
        }
    }

    pub fn allow(&self) -> bool {
        let now = crate::unix_now_seconds();
        let last = self.last_unix_seconds.load(Ordering::Relaxed);
        now >= last + 5
            && self
                .last_unix_seconds
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What the consumer hands the applier thread, in stream order.
pub enum Delivery {
    Message(Box<jetstream::Message>),
    /// The stream now ends before what was applied (it lost its tail or was
    /// recreated): sequences after this one are new messages.
    Rewind(u64),
}

/// Where the applier thread applies: the counters, and the real-time overlay
/// for messages of `members_subject`.
pub struct ApplyTargets {
    pub store: Arc<FreqStore>,
    pub realtime: Arc<Realtime>,
    pub members_subject: String,
}

/// The applier thread: applies messages in the order received, publishes
/// the applied sequence on `applied`, wakes waiters. Ends when `messages`
/// closes or the store shuts down.
pub fn run_applier(
    mut messages: mpsc::Receiver<Delivery>,
    targets: ApplyTargets,
    waiters: Arc<Waiters>,
    metrics: Arc<FleetMetrics>,
    applied: watch::Sender<u64>,
) {
    let ApplyTargets {
        store,
        realtime,
        members_subject,
    } = targets;
    while let Some(delivery) = messages.blocking_recv() {
        let message = match delivery {
            Delivery::Message(message) => message,
            Delivery::Rewind(stream_seq) => {
                store.rewind_applied_stream_seq(stream_seq);
                realtime.rewind_stream_position(stream_seq);
                metrics
                    .applied_sequence
                    .store(stream_seq, Ordering::Relaxed);
                applied.send_replace(stream_seq);
                continue;
            }
        };
        let Ok(info) = message.info() else { continue };
        let stream_seq = info.stream_sequence;
        let stored_unix_nanos = info.published.unix_timestamp_nanos() as i64;
        let pending = info.pending;
        let outcome = if message.subject.as_str() == members_subject {
            super::members::apply_message(
                &realtime,
                &store,
                stream_seq,
                stored_unix_nanos,
                &message.payload,
                || messages.is_closed(),
            )
        } else {
            apply_impressions(
                &store,
                &metrics,
                stream_seq,
                stored_unix_nanos,
                &message.payload,
            )
        };
        let applied_outcome = match outcome {
            Ok(Some(applied_outcome)) => applied_outcome,
            // Already applied (a redelivery after a restart): nothing to
            // count or wake (a waiter for it learns nothing it could trust
            // and times out), but start-up's catch-up counts it.
            Ok(None) => {
                realtime.note_stream_seq(stream_seq);
                applied.send_replace(stream_seq);
                continue;
            }
            Err(FreqError::ShutDown) => return,
            Err(error) => {
                warn!(stream_seq, error = %error, "fleet message not applied");
                continue;
            }
        };
        realtime.note_stream_seq(stream_seq);
        metrics
            .applied_sequence
            .store(stream_seq, Ordering::Relaxed);
        metrics.messages_behind.store(pending, Ordering::Relaxed);
        metrics.saw_stream_sequence(stream_seq + pending);
        applied.send_replace(stream_seq);
        let message_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID));
        if let Some(message_id) = message_id {
            waiters.fire(message_id.as_str(), applied_outcome);
        }
    }
}

/// Applies one impression batch to the counters.
fn apply_impressions(
    store: &FreqStore,
    metrics: &FleetMetrics,
    stream_seq: u64,
    stored_unix_nanos: i64,
    payload: &[u8],
) -> Result<Option<Applied>, FreqError> {
    static UNDECODABLE: LogLimiter = LogLimiter::new();
    match decode_batch(payload) {
        // The recording call had already answered UNAVAILABLE: skip it
        // everywhere so that answer stays true.
        Ok(batch) if stored_unix_nanos > batch.valid_until_unix_nanos => {
            metrics.late_batches_skipped.fetch_add(1, Ordering::Relaxed);
            store.apply_replicated(stream_seq, 0, &[]).map(|applied| {
                applied.map(|_| Applied::Skipped("stored after its request's deadline"))
            })
        }
        Ok(batch) => {
            let origin_unix_seconds = batch.origin_unix_nanos.div_euclid(1_000_000_000);
            let result =
                store.apply_replicated(stream_seq, origin_unix_seconds, &batch.impressions);
            if let Ok(Some(_)) = result {
                metrics.observe_lag_nanos(unix_now_nanos() - batch.origin_unix_nanos);
            }
            result.map(|outcome| outcome.map(Applied::Recorded))
        }
        Err(reason) => {
            metrics.undecodable_messages.fetch_add(1, Ordering::Relaxed);
            if UNDECODABLE.allow() {
                warn!(stream_seq, reason = %reason, "undecodable fleet stream message skipped");
            }
            store
                .apply_replicated(stream_seq, 0, &[])
                .map(|applied| applied.map(|_| Applied::Skipped("undecodable")))
        }
    }
}

/// Pause before recreating a consumer that failed.
const CONSUMER_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The consumer task: feeds `sender` with every message of `subjects` after
/// `after_seq`, in stream order, until `stop` is cancelled.
pub async fn run_consumer(
    stream: stream::Stream,
    subjects: Vec<String>,
    after_seq: u64,
    sender: mpsc::Sender<Delivery>,
    metrics: Arc<FleetMetrics>,
    stop: CancellationToken,
) {
    static FAILURES: LogLimiter = LogLimiter::new();
    let mut last_handed_over = after_seq;
    while !stop.is_cancelled() {
        let run = consume_once(&stream, &subjects, &mut last_handed_over, &sender, &metrics);
        let result = tokio::select! {
            result = run => result,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(()) => return, // the applier is gone
            Err(error) => {
                if FAILURES.allow() {
                    warn!(error = %error, after_seq = last_handed_over, "fleet stream consumer restarting");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CONSUMER_RETRY_PAUSE) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One consumer's life: `Ok` when the applier hung up, `Err` when the
/// consumer must be recreated.
async fn consume_once(
    stream: &stream::Stream,
    subjects: &[String],
    last_handed_over: &mut u64,
    sender: &mpsc::Sender<Delivery>,
    metrics: &FleetMetrics,
) -> anyhow::Result<()> {
    let stream_last = stream.clone().info().await?.state.last_sequence;
    if stream_last < *last_handed_over {
        tracing::error!(
            stream_last,
            applied = *last_handed_over,
            "the fleet stream ends before what this replica applied: it lost its tail (a NATS crash) or was recreated; counting on from its end"
        );
        metrics.stream_rewinds.fetch_add(1, Ordering::Relaxed);
        *last_handed_over = stream_last;
        if sender.send(Delivery::Rewind(stream_last)).await.is_err() {
            return Ok(());
        }
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *last_handed_over + 1,
            },
            ack_policy: AckPolicy::None,
            filter_subjects: subjects.to_vec(),
            // A replica killed without goodbye leaves its consumer behind this long.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    metrics.consumer_starts.fetch_add(1, Ordering::Relaxed);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1_000)
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(10))
        .messages()
        .await?;
    let mut expected_consumer_seq = 1;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info().map_err(|error| anyhow::anyhow!("{error}"))?;
        if info.consumer_sequence != expected_consumer_seq {
            anyhow::bail!(
                "delivery gap: consumer sequence {} after {}",
                info.consumer_sequence,
                expected_consumer_seq - 1
            );
        }
        expected_consumer_seq += 1;
        let stream_seq = info.stream_sequence;
        if stream_seq <= *last_handed_over {
            continue;
        }
        if sender
            .send(Delivery::Message(Box::new(message)))
            .await
            .is_err()
        {
            return Ok(());
        }
        *last_handed_over = stream_seq;
    }
    anyhow::bail!("consumer message stream ended")
}
