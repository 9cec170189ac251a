//! Real-time changes through the fleet's stream: `UpdateMembers` and
//! `ForgetUsers` on any replica reach every replica of the user's shard.
//!
//! # Subject and message
//!
//! Subject `segd.impressions.<shard>.members`, in the same stream as the
//! impressions, whose `segd.impressions.>` already holds it: an existing
//! stream keeps its configuration and passes `stream::check_existing`
//! unchanged, replicas of older builds (whose consumers filter
//! `segd.impressions.<shard>` exactly) never see these messages, and one
//! consumer over both subjects orders every forget among the impressions, so
//! all replicas drop exactly the impressions before it, also when replaying.
//! The stream's max age (`--freq-retention-days`) bounds how far back a
//! replica started later learns changes; packs carry older updates.
//!
//! ```text
//! u8 version (1) | i64 valid_until_unix_nanos | one real-time journal record, framed
//! ```
//!
//! The record is `crate::realtime::journal`'s (kind 1, updates, stamped by the
//! receiving replica; or kind 2, forgets). `valid_until_unix_nanos` is the
//! request's deadline: a message the stream stored later (the caller was
//! already answered UNAVAILABLE) is skipped by every replica. The message id
//! (`Nats-Msg-Id`) is `<replica>.members.<boot nonce>.<counter>`, kept across
//! publish retries so JetStream stores a retried publish once.
//!
//! # Writes and applies
//!
//! [`FleetRealtime`] validates on the receiving replica exactly as a single
//! node does (a refused request publishes nothing), publishes, and answers
//! once JetStream acknowledged the message *and* this replica applied it
//! (read-your-writes). [`apply_message`] is the applier thread's half: the
//! counters' part of a forget ([`FreqStore::forget_replicated`]) and the
//! overlay's part ([`Realtime::apply_replicated`]), each skipping what it
//! already holds by stream sequence. This module must never apply a change a
//! caller was told failed, nor skip one because the local journal failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tracing::warn;

use super::applier::{Applied, LogLimiter, Waiters};
use super::message::MessageIds;
use super::publisher::publish_until;
use crate::freq::{FreqError, FreqStore};
use crate::realtime::journal::{JournalRecord, decode_record};
use crate::realtime::{NewUpdate, Realtime, RealtimeError, RealtimeWrites, UpdateOutcome};

/// Current message format version.
pub const MEMBERS_MESSAGE_VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 8;
/// Pause before retrying a local journal write that failed.
const JOURNAL_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The subject of `shard`'s real-time changes.
pub fn members_subject(shard: u32) -> String {
    format!("segd.impressions.{shard}.members")
}

/// A real-time change as a stream message.
pub fn encode_change(record: &JournalRecord, valid_until_unix_nanos: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 16 + record.len() * 37);
    out.push(MEMBERS_MESSAGE_VERSION);
    out.extend_from_slice(&valid_until_unix_nanos.to_le_bytes());
    record.encode(&mut out);
    out
}

/// Decodes a message: (valid until, record); only updates and forgets travel.
pub fn decode_change(bytes: &[u8]) -> Result<(i64, JournalRecord), String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("message of {} bytes has no header", bytes.len()));
    }
    if bytes[0] != MEMBERS_MESSAGE_VERSION {
        return Err(format!("unsupported members message version {}", bytes[0]));
    }
    let valid_until = i64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    match decode_record(&bytes[HEADER_BYTES..])? {
        record @ (JournalRecord::Updates(_) | JournalRecord::Forgets(_)) => {
            Ok((valid_until, record))
        }
        _ => Err("a members message holds updates or forgets only".to_owned()),
    }
}

/// The fleet's [`RealtimeWrites`]: publish, then wait for this replica's apply.
pub struct FleetRealtime {
    pub(super) realtime: Arc<Realtime>,
    pub(super) client: async_nats::Client,
    pub(super) context: jetstream::Context,
    pub(super) subject: String,
    pub(super) message_ids: MessageIds,
    pub(super) waiters: Arc<Waiters>,
    /// The runtime the NATS connection lives on; writes come on blocking threads.
    pub(super) runtime: tokio::runtime::Handle,
    /// How long a change may take to be acknowledged and applied here.
    pub(super) timeout: Duration,
}

impl RealtimeWrites for FleetRealtime {
    fn update_members(&self, updates: &[NewUpdate]) -> Result<UpdateOutcome, RealtimeError> {
        let (record, outcome) = self
            .realtime
            .prepare_updates(updates, crate::realtime::unix_now_millis())?;
        self.publish_and_wait(&record)?;
        Ok(outcome)
    }

    fn forget_users(&self, user_fingerprints: &[u64]) -> Result<u32, RealtimeError> {
        let record = self
            .realtime
            .prepare_forgets(user_fingerprints, crate::unix_now_seconds());
        self.publish_and_wait(&record)?;
        Ok(record.len() as u32)
    }
}

impl FleetRealtime {
    fn publish_and_wait(&self, record: &JournalRecord) -> Result<(), RealtimeError> {
        let deadline = Instant::now() + self.timeout;
        let valid_until = super::message::unix_now_nanos()
            .saturating_add(self.timeout.as_nanos().min(i64::MAX as u128) as i64);
        let payload = encode_change(record, valid_until);
        let max_payload = self.client.server_info().max_payload;
        // 0: the server never said (not connected yet); the publish then fails alone.
        if max_payload > 0 && payload.len() > max_payload {
            let per_item = (payload.len() / record.len().max(1)).max(1);
            return Err(RealtimeError::TooLarge(format!(
                "{} items make a {}-byte fleet message, more than the NATS server's max_payload of {max_payload} bytes: send at most {} per request (segctl --batch) or raise max_payload",
                record.len(),
                payload.len(),
                max_payload / per_item
            )));
        }
        let message_id = self.message_ids.next_id();
        self.runtime.block_on(async {
            // Registered before publishing: the applier may apply it before the ack.
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
            .map_err(|reason| {
                RealtimeError::Unavailable(format!("{reason}; nothing was changed"))
            })?;
            match tokio::time::timeout_at(deadline.into(), &mut waiter.receiver).await {
                Ok(Ok(Applied::Changed)) => Ok(()),
                Ok(Ok(Applied::Skipped(reason))) => Err(RealtimeError::Unavailable(format!(
                    "stream sequence {}: {reason}; no replica applied it",
                    ack.sequence
                ))),
                Ok(Ok(Applied::Recorded(_))) => Err(RealtimeError::Unavailable(format!(
                    "stream sequence {} was applied as impressions",
                    ack.sequence
                ))),
                Ok(Err(_)) => Err(RealtimeError::Unavailable(
                    "shutting down before this replica applied the change".to_owned(),
                )),
                Err(_) => Err(RealtimeError::Unavailable(format!(
                    "acknowledged at stream sequence {} but not applied on this replica before the deadline; every replica applies it, and a retry changes nothing more",
                    ack.sequence
                ))),
            }
        })
    }
}

/// Applies the members message at `stream_seq` (stored by the stream at
/// `stored_unix_nanos`) to the counters and the overlay. `Ok(None)`: both
/// already hold it (a redelivery). A local journal failure is retried until
/// it succeeds or `stopping` says the applier is ending: skipping the change
/// would leave this replica apart from the others for good.
pub fn apply_message(
    realtime: &Realtime,
    freq: &FreqStore,
    stream_seq: u64,
    stored_unix_nanos: i64,
    payload: &[u8],
    stopping: impl Fn() -> bool,
) -> Result<Option<Applied>, FreqError> {
    static UNDECODABLE: LogLimiter = LogLimiter::new();
    static JOURNAL_FAILURES: LogLimiter = LogLimiter::new();
    let record = match decode_change(payload) {
        Ok((valid_until, _)) if stored_unix_nanos > valid_until => {
            return freq.apply_replicated(stream_seq, 0, &[]).map(|applied| {
                applied.map(|_| Applied::Skipped("stored after its request's deadline"))
            });
        }
        Ok((_, record)) => record,
        Err(reason) => {
            if UNDECODABLE.allow() {
                warn!(stream_seq, reason = %reason, "undecodable fleet members message skipped");
            }
            return freq
                .apply_replicated(stream_seq, 0, &[])
                .map(|applied| applied.map(|_| Applied::Skipped("undecodable")));
        }
    };
    let counters_new = match &record {
        JournalRecord::Forgets(forgets) => {
            let users: Vec<u64> = forgets.iter().map(|(user, _)| *user).collect();
            freq.forget_replicated(stream_seq, &users)?
        }
        _ => freq.apply_replicated(stream_seq, 0, &[])?.is_some(),
    };
    let overlay_new = loop {
        match realtime.apply_replicated(stream_seq, &record) {
            Ok(applied) => break applied,
            Err(error) => {
                if JOURNAL_FAILURES.allow() {
                    warn!(stream_seq, error = %error, "real-time change from the fleet not journaled; retrying");
                }
                if stopping() {
                    return Err(FreqError::ShutDown);
                }
                std::thread::sleep(JOURNAL_RETRY_PAUSE);
            }
        }
    };
    Ok((counters_new || overlay_new).then_some(Applied::Changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Forget, MemberOp, OverlayEntry};

    #[test]
    fn changes_round_trip_and_damage_is_an_error() {
        let record = JournalRecord::Updates(vec![(
            9,
            OverlayEntry {
                segment_id: 4,
                op: MemberOp::Add,
                last_seen_unix_seconds: 100,
                expires_at_unix_seconds: 0,
                stamped_at_unix_millis: 100_500,
            },
        )]);
        let bytes = encode_change(&record, 77);
        assert_eq!(decode_change(&bytes), Ok((77, record)));
        for length in 0..bytes.len() {
            assert!(decode_change(&bytes[..length]).is_err(), "length {length}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_change(&flipped).is_err(), "checksum");
        let forgets = JournalRecord::Forgets(vec![(
            3,
            Forget {
                at_unix_seconds: 5,
                freq_boundary_seq: 0,
            },
        )]);
        assert!(decode_change(&encode_change(&forgets, 1)).is_ok());
        let position = encode_change(&JournalRecord::Position(5), 1);
        assert!(
            decode_change(&position).is_err(),
            "only updates and forgets"
        );
        assert_eq!(members_subject(3), "segd.impressions.3.members");
    }
}
