//! The frequency store: counters plus write-ahead log plus checkpoints, and the
//! background threads that keep them (log writer, interval fsync, checkpoint,
//! sweep).
//!
//! # Consistency
//!
//! - `record` is all-or-nothing per call: one log record per call. Impressions
//!   are deduplicated and logged under the log's queue lock, then applied to
//!   memory only once the record is as durable as the [`FsyncPolicy`]
//!   promises, all under a shared "apply gate". If the write or fsync fails
//!   it returns `Err`, forgets the impression ids it claimed and changes
//!   nothing in memory; the writer cuts the failed record from the log, so a
//!   restart counts the same and a retry counts once.
//! - A retry of an impression id still in flight waits for the first attempt's
//!   record to be durable and fails if that one failed, so a duplicate is only
//!   reported for an impression that was (or will be, before the reply) durable.
//! - A checkpoint takes the apply gate exclusively just long enough to ask the
//!   writer for a new segment and to flag every shard for a copy-on-write
//!   snapshot (no `record` is between logging and applying at that instant: a
//!   checkpoint waits for the in-flight writes), so
//!   it covers exactly the records before the new segment: checkpoint plus
//!   replay equals replay alone. The shards are then copied one by one, by the
//!   checkpoint or by the first writer to touch one; `count` never waits for a
//!   copy and never takes the gate.
//! - Impressions at or before `now - retention_seconds` (server clock) are
//!   accepted and reported as recorded but neither logged nor stored: a sweep
//!   would drop them anyway.
//! - With [`FreqConfig::replicated`] the log is elsewhere (a fleet's stream):
//!   `record` is refused, batches arrive through
//!   [`FreqStore::apply_replicated`] in stream order, and checkpoints carry the
//!   last applied stream sequence instead of covering local log records.
//!
//! This file owns opening, counting, forgetting, stats and shutdown;
//! `types` the settings and outcomes, `record` the local record path,
//! `maintenance` checkpoints, sweeps and their threads, `replicated` a
//! fleet's batches.

mod maintenance;
mod record;
mod replicated;
mod types;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::counters::{CountQuery, Counters, EntryKey, IdSet, cap_key_hash};
use super::error::FreqError;
use super::forget::ForgottenUsers;
use super::log::{LogWriter, list_segments};
use super::recovery::{Replay, load_newest_checkpoint, replay_segments};
use super::window::CapWindow;
use crate::periodic::Periodic;
pub use types::{FreqConfig, FreqStats, NewImpression, RecordOutcome, RecoveryReport};

/// Frequency counters with a write-ahead log and checkpoints.
pub struct FreqStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<Periodic>>,
    /// True once `shutdown` (or a simulated crash) ran.
    stopped: Mutex<bool>,
}

struct Inner {
    config: FreqConfig,
    counters: Counters,
    ids: IdSet,
    /// Shared by `record` while it logs and applies; exclusive while a
    /// checkpoint asks for a new segment and flags the shards for copying.
    apply_gate: RwLock<()>,
    log: LogWriter,
    /// One checkpoint at a time; remembers the sequence number it covered.
    checkpoint_lock: Mutex<u64>,
    /// The last replicated stream sequence applied (replicated mode); written
    /// under the shared apply gate, read by checkpoints under the exclusive one.
    applied_stream_seq: AtomicU64,
    /// The stream sequence the last checkpoint holds; guarded by `checkpoint_lock`.
    checkpointed_stream_seq: AtomicU64,
    last_checkpoint_unix_seconds: AtomicI64,
    last_checkpoint_pause_micros: AtomicU64,
    last_checkpoint_micros: AtomicU64,
    recorded_impressions: AtomicU64,
    duplicate_impressions: AtomicU64,
}

/// The first sequence number a log ever uses.
pub(super) const FIRST_SEQ: u64 = 1;

impl FreqStore {
    /// Loads the newest checkpoint, replays the log after it (cutting a torn
    /// tail, refusing mid-log corruption unless `recover_corrupt_log`), and
    /// starts the background threads.
    pub fn open(config: FreqConfig) -> Result<(Arc<FreqStore>, RecoveryReport), FreqError> {
        Self::open_forgetting(config, &ForgottenUsers::default())
    }

    /// [`FreqStore::open`], dropping the impressions of `forgotten` users
    /// logged before their forget (see [`FreqStore::forget_users`]).
    pub fn open_forgetting(
        config: FreqConfig,
        forgotten: &ForgottenUsers,
    ) -> Result<(Arc<FreqStore>, RecoveryReport), FreqError> {
        config.validate()?;
        let dir = config.dir.clone();
        fs::create_dir_all(&dir)
            .map_err(|error| FreqError::storage(format!("create {}", dir.display()), error))?;
        let counters = Counters::new();
        let ids = IdSet::new();
        let mut report = RecoveryReport::default();
        let now = crate::unix_now_seconds();
        let cutoff = now.saturating_sub(config.retention_seconds);

        let covers_before =
            load_newest_checkpoint(&config, &counters, &ids, forgotten, &mut report)?;
        let replay = Replay {
            cutoff,
            counters: &counters,
            ids: &ids,
            forgotten,
        };
        let next_seq = replay_segments(&config, covers_before, &replay, &mut report)?;
        let swept = counters.sweep(cutoff);
        ids.sweep(cutoff);
        report.expired_events = swept.events_dropped;

        let log = LogWriter::start(&dir, config.fsync, config.fsync_interval, next_seq)?;
        let inner = Arc::new(Inner {
            counters,
            ids,
            apply_gate: RwLock::new(()),
            log,
            checkpoint_lock: Mutex::new(covers_before),
            applied_stream_seq: AtomicU64::new(report.applied_stream_seq),
            checkpointed_stream_seq: AtomicU64::new(report.applied_stream_seq),
            last_checkpoint_unix_seconds: AtomicI64::new(0),
            last_checkpoint_pause_micros: AtomicU64::new(0),
            last_checkpoint_micros: AtomicU64::new(0),
            recorded_impressions: AtomicU64::new(0),
            duplicate_impressions: AtomicU64::new(0),
            config,
        });
        let threads = maintenance::spawn_upkeep(&inner)?;
        tracing::info!(
            dir = %dir.display(),
            checkpoint_events = report.checkpoint_events,
            replayed_records = report.replayed_records,
            torn_tail_bytes = report.torn_tail_bytes,
            "frequency store opened"
        );
        let store = FreqStore {
            inner,
            threads: Mutex::new(threads),
            stopped: Mutex::new(false),
        };
        Ok((Arc::new(store), report))
    }

    /// Records a batch of impressions, all or nothing, and returns once the
    /// batch is as durable as the fsync policy promises. Blocks: call it from
    /// a blocking thread.
    pub fn record(&self, impressions: &[NewImpression]) -> Result<RecordOutcome, FreqError> {
        self.inner.record(impressions)
    }

    /// Impressions of (`user_fingerprint`, `cap_key`) at times `t` with
    /// `after_exclusive < t <= until_inclusive`. Exact while the counter holds
    /// at most 1,000 impressions; beyond, never below the truth.
    pub fn count(
        &self,
        user_fingerprint: u64,
        cap_key: &str,
        after_exclusive: i64,
        until_inclusive: i64,
    ) -> u32 {
        self.count_hashed(
            user_fingerprint,
            cap_key_hash(cap_key),
            after_exclusive,
            until_inclusive,
        )
    }

    /// [`FreqStore::count`] with the cap key already hashed by
    /// [`cap_key_hash`].
    pub fn count_hashed(
        &self,
        user_fingerprint: u64,
        cap_key_hash: u64,
        after_exclusive: i64,
        until_inclusive: i64,
    ) -> u32 {
        self.inner.counters.count(
            EntryKey {
                user_fingerprint,
                cap_key_hash,
            },
            after_exclusive,
            until_inclusive,
        )
    }

    /// The counts of several caps of one user, appended to `counts` in query
    /// order: one shard lock and one map probe for all of them. What `Decide`
    /// should call with every cap of every candidate.
    pub fn count_many(&self, user_fingerprint: u64, queries: &[CountQuery], counts: &mut Vec<u32>) {
        self.inner
            .counters
            .count_many(user_fingerprint, queries, counts);
    }

    /// Impressions a cap with `window` counts at `at_unix_seconds`.
    pub fn count_in_window(
        &self,
        user_fingerprint: u64,
        cap_key: &str,
        window: &CapWindow,
        at_unix_seconds: i64,
    ) -> u32 {
        let (after, until) =
            window.count_range(at_unix_seconds, self.inner.config.retention_seconds);
        self.count(user_fingerprint, cap_key, after, until)
    }

    /// Drops every counter of `user_fingerprints`. `make_durable` is called
    /// first with the sequence number of the next log record, while no
    /// `record` is between logging and applying: its caller stores the forget
    /// with that number so that [`FreqStore::open_forgetting`] drops exactly
    /// the impressions logged before it. Counters are dropped only when it
    /// succeeds. Impression ids stay: a retried impression is still a duplicate.
    pub fn forget_users<E>(
        &self,
        user_fingerprints: &[u64],
        make_durable: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let inner = &self.inner;
        let _exclusive = inner.apply_gate.write();
        make_durable(inner.log.next_seq())?;
        for &user_fingerprint in user_fingerprints {
            inner.counters.remove_user(user_fingerprint);
        }
        Ok(())
    }

    /// Writes a checkpoint now and deletes the log segments it covers.
    pub fn checkpoint(&self) -> Result<(), FreqError> {
        self.inner.checkpoint()
    }

    /// Drops impressions and ids at or before `now_unix_seconds - retention`.
    pub fn sweep(&self, now_unix_seconds: i64) {
        self.inner.sweep(now_unix_seconds);
    }

    /// Current figures. Walks every shard: for `Status` and metrics, not the
    /// request path.
    pub fn stats(&self) -> FreqStats {
        let inner = &self.inner;
        let figures = inner.counters.figures();
        let log_counters = inner.log.counters();
        let (log_bytes, log_segments) = list_segments(&inner.config.dir)
            .map(|segments| {
                let bytes = segments
                    .iter()
                    .filter_map(|(_, path)| fs::metadata(path).ok())
                    .map(|metadata| metadata.len())
                    .sum();
                (bytes, segments.len() as u64)
            })
            .unwrap_or((0, 0));
        FreqStats {
            users: figures.users,
            entries: figures.entries,
            events: figures.events,
            coarse_entries: figures.coarse_entries,
            impression_ids: inner.ids.len(),
            approximate_counter_bytes: figures.approximate_bytes,
            log_bytes,
            log_segments,
            records_written: log_counters.records_written.load(Ordering::Relaxed),
            write_failures: log_counters.write_failures.load(Ordering::Relaxed),
            last_checkpoint_unix_seconds: inner
                .last_checkpoint_unix_seconds
                .load(Ordering::Relaxed),
            last_checkpoint_pause_micros: inner
                .last_checkpoint_pause_micros
                .load(Ordering::Relaxed),
            last_checkpoint_micros: inner.last_checkpoint_micros.load(Ordering::Relaxed),
            fsync_count: log_counters.fsync_count.load(Ordering::Relaxed),
            fsync_total_micros: log_counters.fsync_total_micros.load(Ordering::Relaxed),
            fsync_failures: log_counters.fsync_failures.load(Ordering::Relaxed),
            recorded_impressions: inner.recorded_impressions.load(Ordering::Relaxed),
            duplicate_impressions: inner.duplicate_impressions.load(Ordering::Relaxed),
        }
    }

    /// Flushes and fsyncs the log, writes a checkpoint, stops the threads.
    /// Idempotent; later `record` calls fail with [`FreqError::ShutDown`].
    pub fn shutdown(&self) -> Result<(), FreqError> {
        let mut stopped = self.stopped.lock();
        if *stopped {
            return Ok(());
        }
        self.stop_background_threads();
        let result = self.inner.checkpoint();
        self.inner.log.stop();
        *stopped = true;
        result
    }

    /// Stops like a crash would leave things: the log is flushed (everything
    /// acknowledged is already written) but no checkpoint is taken. For tests
    /// of recovery. A test hook (feature `test-hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn stop_without_checkpoint(&self) {
        let mut stopped = self.stopped.lock();
        if *stopped {
            return;
        }
        self.stop_background_threads();
        self.inner.log.stop();
        *stopped = true;
    }

    /// Makes the log writer's writes or fsyncs fail until cleared, so tests can
    /// check that storage failures surface as `Err` (making a directory
    /// read-only proves nothing when tests run as root). A test hook
    /// (feature `test-hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn inject_fault(&self, fault: super::log::InjectedFault) {
        self.inner.log.inject_fault(fault);
    }

    fn stop_background_threads(&self) {
        for mut periodic in self.threads.lock().drain(..) {
            periodic.stop();
        }
    }
}

impl Drop for FreqStore {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(error = %error, "frequency store shutdown on drop failed");
        }
    }
}
