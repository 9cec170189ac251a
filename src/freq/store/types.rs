//! The frequency store's vocabulary: its settings, what `record` takes and
//! answers, what `open` found and the figures it reports. Plain data: must
//! never hold a lock, touch a file or know how the store keeps its state.

use std::path::PathBuf;
use std::time::Duration;

use crate::freq::error::FreqError;
use crate::freq::log::FsyncPolicy;

/// How the frequency store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqConfig {
    /// Directory of the log segments and checkpoints (created if missing).
    pub dir: PathBuf,
    /// When the log is fsynced relative to acknowledging a `record`.
    pub fsync: FsyncPolicy,
    /// Longest time between fsyncs under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Impressions older than this are dropped (and not stored on arrival).
    pub retention_seconds: i64,
    /// Time between automatic checkpoints; bounds replay time.
    pub checkpoint_interval: Duration,
    /// Time between automatic sweeps of expired impressions and ids.
    pub sweep_interval: Duration,
    /// Open despite a corrupt record mid-log: truncate there and continue.
    pub recover_corrupt_log: bool,
    /// The impression log is a replicated stream, not the local log: `record`
    /// is refused and [`FreqStore::apply_replicated`](super::FreqStore::apply_replicated) applies batches.
    pub replicated: bool,
}

impl FreqConfig {
    /// Production defaults in `dir`: interval fsync every 10 ms, 30 days of
    /// retention, a checkpoint every 5 minutes, a sweep every minute.
    pub fn new(dir: impl Into<PathBuf>) -> FreqConfig {
        FreqConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(10),
            retention_seconds: 30 * 86_400,
            checkpoint_interval: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(60),
            recover_corrupt_log: false,
            replicated: false,
        }
    }

    /// Refuses intervals of zero and a retention that is not positive.
    pub(super) fn validate(&self) -> Result<(), FreqError> {
        if self.fsync_interval.is_zero()
            || self.checkpoint_interval.is_zero()
            || self.sweep_interval.is_zero()
        {
            return Err(FreqError::InvalidConfig(
                "fsync, checkpoint and sweep intervals must be positive".to_owned(),
            ));
        }
        if self.retention_seconds <= 0 {
            return Err(FreqError::InvalidConfig(
                "retention_seconds must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// One impression to record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewImpression {
    /// xxh3-64 of the user id ([`crate::user_fingerprint`]).
    pub user_fingerprint: u64,
    /// The cap keys the impression counts toward.
    pub cap_keys: Vec<String>,
    /// When it was served.
    pub at_unix_seconds: i64,
    /// Empty = not idempotent; otherwise a retry with the same id counts once.
    pub impression_id: String,
}

/// The result of a `record` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordOutcome {
    /// Impressions accepted (including those too old to store).
    pub recorded: u32,
    /// Impressions whose id was already recorded.
    pub duplicates: u32,
}

/// What `open` found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// The checkpoint loaded, if any.
    pub checkpoint_path: Option<PathBuf>,
    /// Impressions loaded from the checkpoint.
    pub checkpoint_events: u64,
    /// Impression ids loaded from the checkpoint.
    pub checkpoint_ids: u64,
    /// Log segments replayed.
    pub replayed_segments: u64,
    /// Log records replayed.
    pub replayed_records: u64,
    /// Impressions in the replayed records.
    pub replayed_impressions: u64,
    /// Bytes cut off the end of segments as torn tails.
    pub torn_tail_bytes: u64,
    /// The first corrupt record skipped under `recover_corrupt_log`.
    pub corrupt_offset: Option<(PathBuf, u64)>,
    /// Bytes dropped after corrupt records under `recover_corrupt_log`.
    pub corrupt_bytes_dropped: u64,
    /// Impressions dropped at open because they left retention.
    pub expired_events: u64,
    /// The last replicated stream sequence the loaded checkpoint includes.
    pub applied_stream_seq: u64,
}

/// Figures for `Status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FreqStats {
    /// Users with at least one counter.
    pub users: u64,
    /// (user, cap key) counters.
    pub entries: u64,
    /// Impressions held.
    pub events: u64,
    /// Counters holding folded hour buckets (more than 1,000 impressions).
    pub coarse_entries: u64,
    /// Impression ids remembered.
    pub impression_ids: u64,
    /// Estimated memory of the counters (map slots and heap), without ids.
    pub approximate_counter_bytes: u64,
    /// Bytes of live log segments.
    pub log_bytes: u64,
    /// Live log segments.
    pub log_segments: u64,
    /// Log records written since open.
    pub records_written: u64,
    /// Failed log batches since open.
    pub write_failures: u64,
    /// When the last checkpoint was written (0 = none since open).
    pub last_checkpoint_unix_seconds: i64,
    /// How long the last checkpoint held `record` calls back (copying maps).
    pub last_checkpoint_pause_micros: u64,
    /// How long the last checkpoint took in all.
    pub last_checkpoint_micros: u64,
    /// fsyncs of log segments since open.
    pub fsync_count: u64,
    /// Total time spent in them.
    pub fsync_total_micros: u64,
    /// Of which failed.
    pub fsync_failures: u64,
    /// Impressions reported recorded since open.
    pub recorded_impressions: u64,
    /// Impressions reported duplicate since open.
    pub duplicate_impressions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freq::FreqStore;

    #[test]
    fn a_zero_interval_or_retention_is_refused_before_anything_is_created() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("freq");
        for broken in [
            FreqConfig {
                fsync_interval: Duration::ZERO,
                ..FreqConfig::new(&dir)
            },
            FreqConfig {
                checkpoint_interval: Duration::ZERO,
                ..FreqConfig::new(&dir)
            },
            FreqConfig {
                sweep_interval: Duration::ZERO,
                ..FreqConfig::new(&dir)
            },
            FreqConfig {
                retention_seconds: 0,
                ..FreqConfig::new(&dir)
            },
        ] {
            assert!(matches!(
                FreqStore::open(broken),
                Err(FreqError::InvalidConfig(_))
            ));
            assert!(!dir.exists(), "a refused config created {}", dir.display());
        }
        assert!(FreqConfig::new(&dir).validate().is_ok());
    }
}
