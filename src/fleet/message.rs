//! The bytes of one stream message: a recorded batch.
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! u8 version (1) | i64 origin_unix_nanos | i64 valid_until_unix_nanos
//! | the write-ahead log's record payload (crate::freq::log): u32 count, impressions
//! ```
//!
//! `origin_unix_nanos` is the recording replica's clock when it published:
//! the apply-lag metric measures from it, and every replica cuts retention at
//! it, so all apply alike. `valid_until_unix_nanos` is the recording request's
//! deadline: a batch the stream stored later than that (the recording replica
//! had already answered UNAVAILABLE) is skipped by every replica. Cap keys and
//! impression ids travel as their xxh3-64 hashes, the counters' identity.
//!
//! The subject is `segd.impressions.<shard>`; the JetStream message id
//! (`Nats-Msg-Id`) is `<replica>.<boot nonce>.<counter>`, unique per recording
//! call and kept across its publish retries, so JetStream stores a retried
//! publish once.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::freq::{LogImpression, NewImpression, cap_key_hash, impression_id_hash};

/// Current message format version.
pub const MESSAGE_VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8;

/// Subjects of every shard: what the stream holds.
pub const STREAM_SUBJECTS: &str = "segd.impressions.>";

/// The subject of `shard`'s impressions.
pub fn shard_subject(shard: u32) -> String {
    format!("segd.impressions.{shard}")
}

/// A decoded stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub origin_unix_nanos: i64,
    pub valid_until_unix_nanos: i64,
    pub impressions: Vec<LogImpression>,
}

/// Encodes validated impressions (times already resolved) as a message.
pub fn encode_batch(
    impressions: &[NewImpression],
    origin_unix_nanos: i64,
    valid_until_unix_nanos: i64,
) -> Vec<u8> {
    let hashed: Vec<LogImpression> = impressions
        .iter()
        .map(|impression| LogImpression {
            user_fingerprint: impression.user_fingerprint,
            at_unix_seconds: impression.at_unix_seconds,
            impression_id_hash: (!impression.impression_id.is_empty())
                .then(|| impression_id_hash(&impression.impression_id)),
            cap_key_hashes: impression
                .cap_keys
                .iter()
                .map(|key| cap_key_hash(key))
                .collect(),
        })
        .collect();
    let mut out = Vec::with_capacity(HEADER_BYTES + 4 + impressions.len() * 40);
    out.push(MESSAGE_VERSION);
    out.extend_from_slice(&origin_unix_nanos.to_le_bytes());
    out.extend_from_slice(&valid_until_unix_nanos.to_le_bytes());
    crate::freq::encode_record_payload(&hashed, &mut out);
    out
}

/// Decodes a message, trusting no count further than the bytes present.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("message of {} bytes has no header", bytes.len()));
    }
    if bytes[0] != MESSAGE_VERSION {
        return Err(format!("unsupported message version {}", bytes[0]));
    }
    let origin_unix_nanos = i64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let valid_until_unix_nanos = i64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes"));
    let record = crate::freq::decode_record_payload(&bytes[HEADER_BYTES..])?;
    Ok(Batch {
        origin_unix_nanos,
        valid_until_unix_nanos,
        impressions: record.impressions,
    })
}

/// Message ids unique to this process: replica, a random boot nonce (a
/// restarted replica must not reuse its predecessor's ids within the
/// duplicate window), and a counter.
pub struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    pub fn new(replica_id: &str) -> Self {
        Self {
            prefix: format!("{replica_id}.{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(1),
        }
    }

    pub fn next_id(&self) -> String {
        format!(
            "{}.{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Nanoseconds since the Unix epoch on this replica's clock.
pub fn unix_now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_damage_is_an_error() {
        let impressions = vec![
            NewImpression {
                user_fingerprint: 42,
                cap_keys: vec!["li:1".to_owned(), "camp:9".to_owned()],
                at_unix_seconds: 1_700_000_000,
                impression_id: "imp-1".to_owned(),
            },
            NewImpression {
                user_fingerprint: 43,
                cap_keys: vec![],
                at_unix_seconds: 1_700_000_001,
                impression_id: String::new(),
            },
        ];
        let bytes = encode_batch(&impressions, 5, 9);
        let batch = decode_batch(&bytes).expect("decode");
        assert_eq!(
            (batch.origin_unix_nanos, batch.valid_until_unix_nanos),
            (5, 9)
        );
        assert_eq!(batch.impressions.len(), 2);
        assert_eq!(
            batch.impressions[0].impression_id_hash,
            Some(impression_id_hash("imp-1"))
        );
        assert_eq!(
            batch.impressions[0].cap_key_hashes[1],
            cap_key_hash("camp:9")
        );
        assert_eq!(batch.impressions[1].impression_id_hash, None);
        for length in 0..bytes.len() {
            assert!(decode_batch(&bytes[..length]).is_err(), "length {length}");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(decode_batch(&wrong_version).is_err());
    }

    #[test]
    fn message_ids_differ_across_processes_and_calls() {
        let first = MessageIds::new("a");
        let second = MessageIds::new("a");
        let id = first.next_id();
        assert_ne!(id, first.next_id());
        assert_ne!(id, second.next_id());
        assert!(id.starts_with("a."));
    }
}
