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

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::checkpoint::{CheckpointData, write_checkpoint};
use super::counters::{
    CountQuery, Counters, EntryKey, IdSet, IdState, cap_key_hash, impression_id_hash,
};
use super::error::FreqError;
use super::forget::ForgottenUsers;
use super::log::{FsyncPolicy, LogImpression, LogWriter, encode_impression, list_segments};
use super::recovery::{Replay, delete_covered_files, load_newest_checkpoint, replay_segments};
use super::window::CapWindow;
use crate::periodic::Periodic;

mod replicated;

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
    /// is refused and [`FreqStore::apply_replicated`] applies batches.
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
        if config.fsync_interval.is_zero()
            || config.checkpoint_interval.is_zero()
            || config.sweep_interval.is_zero()
        {
            return Err(FreqError::InvalidConfig(
                "fsync, checkpoint and sweep intervals must be positive".to_owned(),
            ));
        }
        if config.retention_seconds <= 0 {
            return Err(FreqError::InvalidConfig(
                "retention_seconds must be positive".to_owned(),
            ));
        }
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
        let threads = vec![
            spawn_periodic(
                &inner,
                "freq-checkpoint",
                inner.config.checkpoint_interval,
                |inner| {
                    if let Err(error) = inner.checkpoint() {
                        tracing::warn!(error = %error, "periodic frequency checkpoint failed");
                    }
                },
            )?,
            spawn_periodic(&inner, "freq-sweep", inner.config.sweep_interval, |inner| {
                inner.sweep(crate::unix_now_seconds())
            })?,
        ];
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

fn spawn_periodic(
    inner: &Arc<Inner>,
    name: &str,
    interval: Duration,
    job: fn(&Inner),
) -> Result<Periodic, FreqError> {
    let inner = Arc::clone(inner);
    Periodic::spawn(name, interval, move || job(&inner))
        .map_err(|error| FreqError::storage(format!("spawn {name}"), error))
}

/// What one `record` call decided under the log's queue lock.
#[derive(Default)]
struct RecordPlan {
    outcome: RecordOutcome,
    /// (counter, time) pairs to apply to memory.
    to_apply: Vec<LogImpression>,
    /// Id hashes this call claimed (to forget if its write fails).
    claimed_ids: Vec<u64>,
    /// Records of earlier calls holding ids this call found duplicate.
    depends_on: Vec<u64>,
}

impl Inner {
    fn record(&self, impressions: &[NewImpression]) -> Result<RecordOutcome, FreqError> {
        if self.config.replicated {
            return Err(FreqError::InvalidConfig(
                "replicated store: impressions are recorded through the stream".to_owned(),
            ));
        }
        let cutoff = crate::unix_now_seconds().saturating_sub(self.config.retention_seconds);
        let gate = self.apply_gate.read();
        let (seq, plan) = self.log.append(|seq, payload| {
            let mut plan = RecordPlan::default();
            payload.extend_from_slice(&0u32.to_le_bytes());
            let mut stored = 0u32;
            for impression in impressions {
                plan.outcome.recorded += 1;
                if impression.at_unix_seconds <= cutoff {
                    continue;
                }
                let id_hash = (!impression.impression_id.is_empty())
                    .then(|| impression_id_hash(&impression.impression_id));
                if let Some(id_hash) = id_hash {
                    let claim = IdState {
                        at_unix_seconds: impression.at_unix_seconds,
                        log_seq: seq,
                    };
                    if let Some(existing) = self.ids.check_and_insert(id_hash, claim) {
                        plan.outcome.recorded -= 1;
                        plan.outcome.duplicates += 1;
                        if existing.log_seq != 0 && existing.log_seq != seq {
                            plan.depends_on.push(existing.log_seq);
                        }
                        continue;
                    }
                    plan.claimed_ids.push(id_hash);
                }
                let cap_key_hashes: Vec<u64> = impression
                    .cap_keys
                    .iter()
                    .map(|key| cap_key_hash(key))
                    .collect();
                let impression = LogImpression {
                    user_fingerprint: impression.user_fingerprint,
                    at_unix_seconds: impression.at_unix_seconds,
                    impression_id_hash: id_hash,
                    cap_key_hashes,
                };
                encode_impression(&impression, payload);
                plan.to_apply.push(impression);
                stored += 1;
            }
            if stored == 0 {
                payload.clear();
            } else {
                payload[..4].copy_from_slice(&stored.to_le_bytes());
            }
            plan
        })?;
        // Memory changes only once the record is in the log: a refused
        // request changes nothing, so counts before and after a restart agree
        // and a retry counts once. The gate stays held until then, so a
        // checkpoint never sees a record logged but not yet applied.
        if let Some(seq) = seq
            && let Err(error) = self.log.wait_durable(seq)
        {
            for &id_hash in &plan.claimed_ids {
                self.ids.remove_if_from(id_hash, seq);
            }
            return Err(error);
        }
        for impression in &plan.to_apply {
            self.counters.add_impression(
                impression.user_fingerprint,
                &impression.cap_key_hashes,
                impression.at_unix_seconds,
            );
        }
        drop(gate);
        let mut depends_on = plan.depends_on;
        depends_on.sort_unstable();
        depends_on.dedup();
        for earlier in depends_on {
            self.log.wait_durable(earlier)?;
        }
        self.recorded_impressions
            .fetch_add(u64::from(plan.outcome.recorded), Ordering::Relaxed);
        self.duplicate_impressions
            .fetch_add(u64::from(plan.outcome.duplicates), Ordering::Relaxed);
        Ok(plan.outcome)
    }

    fn sweep(&self, now_unix_seconds: i64) {
        let cutoff = now_unix_seconds.saturating_sub(self.config.retention_seconds);
        let mut outcome = self.counters.sweep(cutoff);
        outcome.ids_removed = self.ids.sweep(cutoff);
        tracing::debug!(
            events_dropped = outcome.events_dropped,
            entries_removed = outcome.entries_removed,
            ids_removed = outcome.ids_removed,
            "frequency sweep"
        );
    }

    fn checkpoint(&self) -> Result<(), FreqError> {
        let mut last_covered = self.checkpoint_lock.lock();
        let failures_before = self.log.failure_count();
        let started = Instant::now();
        let (mut data, ticket, pause) = {
            let _exclusive = self.apply_gate.write();
            let applied_stream_seq = self.applied_stream_seq.load(Ordering::Relaxed);
            if self.log.next_seq() == *last_covered
                && applied_stream_seq == self.checkpointed_stream_seq.load(Ordering::Relaxed)
            {
                // Nothing logged or applied since the last checkpoint: it still holds.
                return Ok(());
            }
            // A replicated store appends nothing to its log: no rotation, and
            // the checkpoint replaces the previous one under the same name.
            let (covers_before_seq, ticket) = if self.config.replicated {
                (self.log.next_seq(), None)
            } else {
                let (covers_before_seq, ticket) = self.log.request_rotation()?;
                (covers_before_seq, Some(ticket))
            };
            let data = CheckpointData {
                covers_before_seq,
                created_unix_seconds: crate::unix_now_seconds(),
                applied_stream_seq,
                entries: Vec::new(),
                ids: Vec::new(),
            };
            // Only flags the shards: the copies are made below, or by the
            // first writer to touch a shard, so `record` barely waits.
            self.counters.begin_snapshot();
            self.ids.begin_snapshot();
            (data, ticket, started.elapsed())
        };
        data.entries = self.counters.finish_snapshot();
        data.ids = self.ids.finish_snapshot();
        // The old segment is fsynced and closed once the rotation is processed.
        if let Some(ticket) = ticket {
            self.log.wait_rotation(ticket)?;
        }
        if self.log.failure_count() != failures_before {
            return Err(FreqError::storage(
                "checkpoint abandoned",
                std::io::Error::other("a log write failed while it was taken"),
            ));
        }
        let path = write_checkpoint(&self.config.dir, &data)?;
        *last_covered = data.covers_before_seq;
        self.checkpointed_stream_seq
            .store(data.applied_stream_seq, Ordering::Relaxed);
        self.last_checkpoint_unix_seconds
            .store(data.created_unix_seconds, Ordering::Relaxed);
        delete_covered_files(&self.config, data.covers_before_seq);
        self.last_checkpoint_pause_micros
            .store(pause.as_micros() as u64, Ordering::Relaxed);
        self.last_checkpoint_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        tracing::info!(
            checkpoint = %path.display(),
            entries = data.entries.len(),
            ids = data.ids.len(),
            pause_micros = pause.as_micros() as u64,
            "frequency checkpoint written"
        );
        Ok(())
    }
}
