//! Applying batches of a replicated impression log (a fleet's stream) to the
//! counters. Every replica applies the same batches in the same stream order,
//! so impression-id deduplication and the retention cut give every replica
//! the same counts; the store only remembers how far it got
//! ([`FreqStore::applied_stream_seq`]), which checkpoints carry.

use std::sync::atomic::Ordering;

use super::{FreqError, FreqStore, RecordOutcome};
use crate::freq::counters::IdState;
use crate::freq::log::LogImpression;

impl FreqStore {
    /// Applies the batch at `stream_seq` of the replicated log. Batches must
    /// come in increasing sequence order; one at or below
    /// [`FreqStore::applied_stream_seq`] is already in the counters and
    /// returns `None` (a redelivery). Impressions at or before
    /// `origin_unix_seconds - retention` (the recording replica's clock, so
    /// every replica cuts alike) are reported recorded but not stored. An
    /// empty batch only advances the sequence (a message that is skipped).
    pub fn apply_replicated(
        &self,
        stream_seq: u64,
        origin_unix_seconds: i64,
        impressions: &[LogImpression],
    ) -> Result<Option<RecordOutcome>, FreqError> {
        self.apply_at("apply_replicated", stream_seq, |inner| {
            apply_batch(inner, origin_unix_seconds, impressions)
        })
    }

    /// Applies a forget at `stream_seq` of the replicated log: drops every
    /// counter of `user_fingerprints`. Ordered among the impression batches
    /// by the stream, so impressions before it are gone and later ones count
    /// on every replica alike, also after a restart (a checkpoint taken after
    /// it no longer holds them; a replay from before it drops them again when
    /// it reaches it). `false` when already applied (a redelivery).
    /// Impression ids stay: a retried impression is still a duplicate.
    pub fn forget_replicated(
        &self,
        stream_seq: u64,
        user_fingerprints: &[u64],
    ) -> Result<bool, FreqError> {
        let applied = self.apply_at("forget_replicated", stream_seq, |inner| {
            for &user_fingerprint in user_fingerprints {
                inner.counters.remove_user(user_fingerprint);
            }
        })?;
        Ok(applied.is_some())
    }

    /// Runs `apply` for the message at `stream_seq` unless the counters hold
    /// it already (`None`: a redelivery), then records the sequence. Under the
    /// shared apply gate: a checkpoint sees the counters and the sequence
    /// together.
    fn apply_at<T>(
        &self,
        what: &str,
        stream_seq: u64,
        apply: impl FnOnce(&super::Inner) -> T,
    ) -> Result<Option<T>, FreqError> {
        let inner = &self.inner;
        if !inner.config.replicated {
            return Err(FreqError::InvalidConfig(format!(
                "{what} on a store with a local log"
            )));
        }
        if *self.stopped.lock() {
            return Err(FreqError::ShutDown);
        }
        let _gate = inner.apply_gate.read();
        if stream_seq <= inner.applied_stream_seq.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let applied = apply(inner);
        inner
            .applied_stream_seq
            .store(stream_seq, Ordering::Relaxed);
        Ok(Some(applied))
    }

    /// Moves the applied sequence back to `stream_seq` when it is beyond it:
    /// the stream lost its tail (a crash of its only server) or was recreated,
    /// and reuses sequence numbers. The counters keep what they hold (an
    /// over-count, never an under-count); later batches apply again.
    pub fn rewind_applied_stream_seq(&self, stream_seq: u64) {
        let _gate = self.inner.apply_gate.read();
        self.inner
            .applied_stream_seq
            .fetch_min(stream_seq, Ordering::Relaxed);
    }

    /// The last replicated stream sequence in the counters (0 = none): where a
    /// stream consumer resumes.
    pub fn applied_stream_seq(&self) -> u64 {
        self.inner.applied_stream_seq.load(Ordering::Relaxed)
    }
}

/// One batch into the counters and the id set; the caller holds the gate.
fn apply_batch(
    inner: &super::Inner,
    origin_unix_seconds: i64,
    impressions: &[LogImpression],
) -> RecordOutcome {
    let cutoff = origin_unix_seconds.saturating_sub(inner.config.retention_seconds);
    let mut outcome = RecordOutcome::default();
    for impression in impressions {
        outcome.recorded += 1;
        if impression.at_unix_seconds <= cutoff {
            continue;
        }
        if let Some(id_hash) = impression.impression_id_hash {
            let state = IdState {
                at_unix_seconds: impression.at_unix_seconds,
                log_seq: 0,
            };
            if inner.ids.check_and_insert(id_hash, state).is_some() {
                outcome.recorded -= 1;
                outcome.duplicates += 1;
                continue;
            }
        }
        inner.counters.add_impression(
            impression.user_fingerprint,
            &impression.cap_key_hashes,
            impression.at_unix_seconds,
        );
    }
    inner
        .recorded_impressions
        .fetch_add(u64::from(outcome.recorded), Ordering::Relaxed);
    inner
        .duplicate_impressions
        .fetch_add(u64::from(outcome.duplicates), Ordering::Relaxed);
    outcome
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::freq::FreqConfig;

    fn impression(user: u64, id: Option<u64>, at: i64) -> LogImpression {
        LogImpression {
            user_fingerprint: user,
            at_unix_seconds: at,
            impression_id_hash: id,
            cap_key_hashes: vec![crate::freq::cap_key_hash("li:1")],
        }
    }

    fn open(dir: &std::path::Path) -> std::sync::Arc<FreqStore> {
        let config = FreqConfig {
            replicated: true,
            checkpoint_interval: Duration::from_secs(3_600),
            sweep_interval: Duration::from_secs(3_600),
            ..FreqConfig::new(dir)
        };
        FreqStore::open(config).expect("open").0
    }

    #[test]
    fn batches_apply_once_in_order_and_the_checkpoint_keeps_the_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::unix_now_seconds();
        let store = open(dir.path());
        let batch = [impression(7, Some(1), now), impression(7, None, now)];
        let outcome = store.apply_replicated(3, now, &batch).expect("apply");
        assert_eq!(outcome.map(|o| (o.recorded, o.duplicates)), Some((2, 0)));
        // A redelivery changes nothing; the same id at a later sequence is a duplicate.
        assert_eq!(store.apply_replicated(3, now, &batch).expect("apply"), None);
        let retry = [impression(7, Some(1), now)];
        let outcome = store.apply_replicated(4, now, &retry).expect("apply");
        assert_eq!(outcome.map(|o| (o.recorded, o.duplicates)), Some((0, 1)));
        assert_eq!(store.count(7, "li:1", now - 10, now), 2);
        assert!(matches!(
            store.record(&[]),
            Err(FreqError::InvalidConfig(_))
        ));
        store.shutdown().expect("shutdown");
        drop(store);

        let (reopened, report) = FreqStore::open(FreqConfig {
            replicated: true,
            ..FreqConfig::new(dir.path())
        })
        .expect("reopen");
        assert_eq!(report.applied_stream_seq, 4);
        assert_eq!(reopened.applied_stream_seq(), 4);
        assert_eq!(reopened.count(7, "li:1", now - 10, now), 2);
        let outcome = reopened.apply_replicated(5, now, &retry).expect("apply");
        assert_eq!(outcome.map(|o| o.duplicates), Some(1));
    }

    #[test]
    fn a_replicated_forget_drops_earlier_impressions_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::unix_now_seconds();
        let store = open(dir.path());
        store
            .apply_replicated(
                1,
                now,
                &[impression(7, None, now), impression(8, None, now)],
            )
            .expect("apply");
        assert!(store.forget_replicated(2, &[7]).expect("forget"));
        assert!(!store.forget_replicated(2, &[8]).expect("a redelivery"));
        store
            .apply_replicated(3, now, &[impression(7, None, now)])
            .expect("apply");
        assert_eq!(
            store.count(7, "li:1", now - 10, now),
            1,
            "only the later one"
        );
        assert_eq!(store.count(8, "li:1", now - 10, now), 1);
        store.shutdown().expect("shutdown");
        drop(store);
        let (reopened, report) = FreqStore::open(FreqConfig {
            replicated: true,
            ..FreqConfig::new(dir.path())
        })
        .expect("reopen");
        assert_eq!(report.applied_stream_seq, 3);
        assert_eq!(reopened.count(7, "li:1", now - 10, now), 1);
    }

    #[test]
    fn a_local_log_store_refuses_replicated_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FreqStore::open(FreqConfig::new(dir.path())).expect("open");
        assert!(matches!(
            store.apply_replicated(1, 0, &[]),
            Err(FreqError::InvalidConfig(_))
        ));
    }
}
