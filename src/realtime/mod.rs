//! Real-time audiences and forgetting: `UpdateMembers` and `ForgetUsers` as
//! domain operations, made durable in the [`journal`] and applied to the
//! overlay the serving state consults (`crate::store::overlay`).
//!
//! Every change runs under one writer mutex: validate against the served
//! state, append one journal record (durable per the fsync policy), then
//! apply it to memory. So a request is all or nothing, memory order is
//! journal order, and a replay rebuilds exactly what was acknowledged.
//!
//! Folding: an entry stops counting against a pack built at or after its
//! stamp, and for good once it is at or before the pack's fold horizon (both
//! the served version and the one it replaced, which `Rollback` restores,
//! carry it; decided at each swap by `Store::install_at`). Lookups check both,
//! so pushes and rollbacks are right at once. Maintenance then, off the
//! request path, journals changed horizons, drops the folded entries from
//! memory, expires forgets past their retention, counts forgotten users still
//! in packs, and compacts the journal.
//!
//! In a fleet ([`replicated`]) the stream is the log: the receiving replica
//! validates and stamps a change ([`Realtime::prepare_updates`],
//! [`Realtime::prepare_forgets`]) and publishes it; every replica of the
//! shard applies it in stream order with [`Realtime::apply_replicated`], which
//! journals it locally with its stream sequence so a restart resumes the
//! stream after it. The admin handler goes through the [`RealtimeWrites`]
//! trait either way. Knows nothing of gRPC or tokio.

pub mod config;
pub mod journal;
mod maintenance;
pub mod metrics;
mod replicated;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ahash::AHashSet;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::freq::{ForgottenUsers, FreqStore, FsyncPolicy};
use crate::periodic::Periodic;
use crate::store::{Forget, MemberOp, OverlayEntry, ServingState, Store};
pub use config::RealtimeArgs;
use journal::{Journal, JournalError, JournalRecord};
use maintenance::{
    MaintenanceState, count_in_served_packs, fold, forgotten_in_packs, recount_packs,
    snapshot_records,
};

/// The journal is rewritten once it holds this many more items than twice
/// what the overlay keeps.
const COMPACT_SLACK_ITEMS: u64 = 100_000;
/// Items per record in a rewritten journal.
const ITEMS_PER_SNAPSHOT_RECORD: usize = 500_000;
/// How often maintenance looks at the served state.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);

/// How the real-time store keeps its data.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Directory of the journal (created if missing).
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Longest time between fsyncs under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Most (user, segment) entries the overlay holds.
    pub max_overlay_entries: u64,
    /// How long a forget is kept.
    pub forget_retention_seconds: i64,
}

/// One update as the domain takes it (the user id already fingerprinted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewUpdate {
    pub user_fingerprint: u64,
    pub segment_id: u32,
    pub op: MemberOp,
    /// 0 = the server clock.
    pub last_seen_unix_seconds: i64,
    /// 0 = the segment's TTL only.
    pub expires_at_unix_seconds: i64,
}

/// What `update_members` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub applied: u32,
    /// The serving generation the updates were checked against.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("updates[{index}].segment_id: segment {segment_id} is owned by no served pack")]
    UnknownSegment { index: usize, segment_id: u32 },
    #[error(
        "overlay full: it holds {entries} entries and this request adds {adding}, more than --max-overlay-entries {max}; push packs that fold the updates or raise the limit"
    )]
    OverlayFull { entries: u64, adding: u64, max: u64 },
    #[error("loading the data directory, not serving yet")]
    NotLoaded,
    #[error("real-time journal: {0}")]
    Storage(#[from] JournalError),
    /// The fleet's stream did not take or apply the change (fleet mode).
    #[error("{0}")]
    Unavailable(String),
    /// The change cannot travel as one fleet message (fleet mode).
    #[error("{0}")]
    TooLarge(String),
}

/// Forgotten users the served version of a pack still contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgottenInPack {
    pub pack: String,
    pub version: String,
    pub users: u64,
}

/// Figures for `Status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealtimeFigures {
    pub overlay_entries: u64,
    pub max_overlay_entries: u64,
    pub forgotten_users: u64,
    pub forgotten_users_in_packs: u64,
    pub journal_bytes: u64,
    pub folded_entries_total: u64,
    pub expired_forgets_total: u64,
    pub updates_applied_total: u64,
    pub update_requests_refused_total: u64,
    pub users_forgotten_total: u64,
}

/// How the admin service changes real-time data; the fleet plugs in here.
pub trait RealtimeWrites: Send + Sync + 'static {
    /// Applies the batch all or nothing, durable before `Ok`.
    fn update_members(&self, updates: &[NewUpdate]) -> Result<UpdateOutcome, RealtimeError>;
    /// Forgets the users (distinct count returned), durable before `Ok`.
    fn forget_users(&self, user_fingerprints: &[u64]) -> Result<u32, RealtimeError>;
}

struct Writer {
    journal: Journal,
    maintenance: MaintenanceState,
    /// Fleet mode: the last stream sequence in the journal and memory (0 = none).
    stream_position: u64,
}

pub struct Realtime {
    store: Arc<Store>,
    config: RealtimeConfig,
    /// Serialises every change; held on blocking threads only.
    writer: Mutex<Writer>,
    /// The frequency store, once open: a forget drops the user's counters.
    counters: std::sync::OnceLock<Arc<FreqStore>>,
    /// Interval fsyncs and maintenance.
    background: Mutex<Vec<Periodic>>,
    updates_applied: AtomicU64,
    update_requests_refused: AtomicU64,
    users_forgotten: AtomicU64,
    /// Fleet mode: every stream message through this sequence is handled
    /// (impressions need no journal); maintenance journals it as the position.
    stream_seen: AtomicU64,
}

impl Realtime {
    /// Opens the journal and replays it into the store's overlay and fold
    /// horizons (call it before the packs are loaded); returns the forgotten
    /// users the frequency store must leave out of its replay.
    pub fn open(
        config: RealtimeConfig,
        store: Arc<Store>,
        now_unix_seconds: i64,
    ) -> Result<(Arc<Realtime>, ForgottenUsers), JournalError> {
        let (journal, records) = Journal::open(&config.dir, config.fsync)?;
        let overlay = store.overlay().clone();
        let mut stream_position = 0;
        for record in &records {
            if let JournalRecord::Position(stream_seq) = record {
                stream_position = *stream_seq;
            }
            apply_record(&store, record);
        }
        let expired = overlay.expire_forgets(now_unix_seconds - config.forget_retention_seconds);
        let mut forgotten = ForgottenUsers::default();
        for (user_fingerprint, record) in overlay.snapshot() {
            if let Some(forget) = record.forgotten {
                forgotten.insert(user_fingerprint, forget.freq_boundary_seq);
            }
        }
        let figures = overlay.figures();
        info!(
            records = records.len(),
            overlay_entries = figures.entries,
            forgotten_users = figures.forgotten_users,
            expired_forgets = expired,
            stream_position,
            "real-time journal replayed"
        );
        let realtime = Arc::new(Realtime {
            store,
            config,
            writer: Mutex::new(Writer {
                journal,
                maintenance: MaintenanceState::default(),
                stream_position,
            }),
            counters: std::sync::OnceLock::new(),
            background: Mutex::new(Vec::new()),
            updates_applied: AtomicU64::new(0),
            update_requests_refused: AtomicU64::new(0),
            users_forgotten: AtomicU64::new(0),
            stream_seen: AtomicU64::new(stream_position),
        });
        Ok((realtime, forgotten))
    }

    /// Hands over the frequency store (opened after this, with the forgotten users).
    pub fn set_counters(&self, counters: Arc<FreqStore>) {
        let _ = self.counters.set(counters);
    }

    /// Starts the background threads: interval fsyncs (`--fsync interval`)
    /// and maintenance every second. They hold the store weakly.
    pub fn start_maintenance(self: &Arc<Self>) {
        let mut threads = self.background.lock();
        if self.config.fsync == FsyncPolicy::Interval {
            let weak = Arc::downgrade(self);
            let interval = self.config.fsync_interval.max(Duration::from_millis(1));
            threads.extend(spawn_logged("segd-realtime-fsync", interval, move || {
                if let Some(realtime) = weak.upgrade() {
                    realtime.sync_if_dirty();
                }
            }));
        }
        let weak: Weak<Realtime> = Arc::downgrade(self);
        threads.extend(spawn_logged(
            "segd-realtime",
            MAINTENANCE_PERIOD,
            move || {
                if let Some(realtime) = weak.upgrade()
                    && let Err(error) = realtime.maintain(crate::unix_now_seconds())
                {
                    warn!(error = %error, "real-time maintenance failed");
                }
            },
        ));
    }

    /// Stops the background threads and fsyncs the journal.
    pub fn shutdown(&self) -> Result<(), JournalError> {
        for mut thread in self.background.lock().drain(..) {
            thread.stop();
        }
        self.writer.lock().journal.sync()
    }

    /// Validates, logs and applies a batch, stamped `now_unix_millis`.
    pub fn update_members_at(
        &self,
        updates: &[NewUpdate],
        now_unix_millis: i64,
    ) -> Result<UpdateOutcome, RealtimeError> {
        let outcome = self.try_update_members(updates, now_unix_millis);
        match &outcome {
            Ok(applied) => self
                .updates_applied
                .fetch_add(u64::from(applied.applied), Ordering::Relaxed),
            Err(_) => self.update_requests_refused.fetch_add(1, Ordering::Relaxed),
        };
        outcome
    }

    fn try_update_members(
        &self,
        updates: &[NewUpdate],
        now_unix_millis: i64,
    ) -> Result<UpdateOutcome, RealtimeError> {
        let mut writer = self.writer.lock();
        let (record, outcome) = self.check_and_stamp(updates, now_unix_millis)?;
        writer.journal.append(&record)?;
        apply_record(&self.store, &record);
        Ok(outcome)
    }

    /// Validates a batch against the served state and the overlay bound and
    /// stamps it `now_unix_millis`: the record to apply, logging nothing.
    /// (Fleet mode publishes it; the replicas apply it from the stream.)
    pub fn prepare_updates(
        &self,
        updates: &[NewUpdate],
        now_unix_millis: i64,
    ) -> Result<(JournalRecord, UpdateOutcome), RealtimeError> {
        let prepared = self.check_and_stamp(updates, now_unix_millis);
        if prepared.is_err() {
            self.update_requests_refused.fetch_add(1, Ordering::Relaxed);
        }
        prepared
    }

    fn check_and_stamp(
        &self,
        updates: &[NewUpdate],
        now_unix_millis: i64,
    ) -> Result<(JournalRecord, UpdateOutcome), RealtimeError> {
        let state = self.store.load_full();
        if state.generation == 0 {
            return Err(RealtimeError::NotLoaded);
        }
        check_segments(&state, updates)?;
        let overlay = self.store.overlay();
        let keys: Vec<(u64, u32)> = updates
            .iter()
            .map(|update| (update.user_fingerprint, update.segment_id))
            .collect();
        let adding = overlay.count_new(&keys);
        let entries = overlay.figures().entries;
        if entries + adding > self.config.max_overlay_entries {
            return Err(RealtimeError::OverlayFull {
                entries,
                adding,
                max: self.config.max_overlay_entries,
            });
        }
        let record = JournalRecord::Updates(
            updates
                .iter()
                .map(|update| (update.user_fingerprint, stamp(update, now_unix_millis)))
                .collect(),
        );
        let outcome = UpdateOutcome {
            applied: updates.len() as u32,
            generation: state.generation,
        };
        Ok((record, outcome))
    }

    /// Forgets the users at `now_unix_seconds`: their overlay entries go,
    /// every segment answers no, and their frequency counters are dropped.
    pub fn forget_users_at(
        &self,
        user_fingerprints: &[u64],
        now_unix_seconds: i64,
    ) -> Result<u32, RealtimeError> {
        let state = self.store.load_full();
        let Some(counters) = self.counters.get() else {
            return Err(RealtimeError::NotLoaded);
        };
        let distinct = distinct(user_fingerprints);
        let mut writer = self.writer.lock();
        let overlay = self.store.overlay();
        let newly_forgotten: Vec<u64> = distinct
            .iter()
            .copied()
            .filter(|&fingerprint| {
                overlay
                    .user(fingerprint)
                    .is_none_or(|user| user.forgotten.is_none())
            })
            .collect();
        let mut record = None;
        counters.forget_users(&distinct, |freq_boundary_seq| {
            let forget = Forget {
                at_unix_seconds: now_unix_seconds,
                freq_boundary_seq,
            };
            let forgets = JournalRecord::Forgets(
                distinct
                    .iter()
                    .map(|&fingerprint| (fingerprint, forget))
                    .collect(),
            );
            writer.journal.append(&forgets)?;
            record = Some(forgets);
            Ok::<(), JournalError>(())
        })?;
        if let Some(record) = &record {
            apply_record(&self.store, record);
        }
        count_in_served_packs(&mut writer.maintenance, &state, &newly_forgotten);
        self.users_forgotten
            .fetch_add(distinct.len() as u64, Ordering::Relaxed);
        Ok(distinct.len() as u32)
    }

    /// Folds, expires, counts and compacts; see the module docs.
    pub fn maintain(&self, now_unix_seconds: i64) -> Result<(), JournalError> {
        let state = self.store.load_full();
        let mut writer = self.writer.lock();
        let overlay = self.store.overlay().clone();
        let Writer {
            journal,
            maintenance,
            stream_position,
        } = &mut *writer;
        // Fleet mode: the stream resumes after what was handled, not after
        // the last real-time change (impressions may follow it for long).
        let seen = self.stream_seen.load(Ordering::Relaxed);
        if seen > *stream_position {
            journal.append(&JournalRecord::Position(seen))?;
            *stream_position = seen;
        }
        if state.generation != maintenance.folded_generation {
            let horizons = self.store.fold_horizons();
            let changed: Vec<(String, i64)> = horizons
                .iter()
                .filter(|(pack, horizon)| {
                    maintenance.journaled_horizons.get(*pack) != Some(horizon)
                })
                .map(|(pack, horizon)| (pack.clone(), *horizon))
                .collect();
            if !changed.is_empty() {
                journal.append(&JournalRecord::Horizons(changed))?;
                maintenance.journaled_horizons = horizons.clone();
            }
            let folded = fold(&state, &overlay, &horizons);
            maintenance.folded_entries_total += folded;
            maintenance.folded_generation = state.generation;
            recount_packs(maintenance, &state, &overlay);
        }
        let expiry_due = maintenance
            .last_forget_expiry
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(60));
        if expiry_due {
            maintenance.last_forget_expiry = Some(Instant::now());
            let expired =
                overlay.expire_forgets(now_unix_seconds - self.config.forget_retention_seconds);
            if expired > 0 {
                maintenance.expired_forgets_total += expired;
                maintenance.forgotten_in_packs.clear();
                recount_packs(maintenance, &state, &overlay);
            }
        }
        // Folded entries and expired forgets leave the file here; until then
        // a replay brings them back and the next run drops them again.
        let figures = overlay.figures();
        let live = figures.entries + figures.forgotten_users;
        if journal.items() > 2 * live + COMPACT_SLACK_ITEMS {
            let horizons = self.store.fold_horizons();
            journal.rewrite(&snapshot_records(&overlay, &horizons, *stream_position))?;
        }
        Ok(())
    }

    /// fsyncs what was appended since the last one (interval policy).
    fn sync_if_dirty(&self) {
        let handle = self.writer.lock().journal.take_dirty_handle();
        if let Some(handle) = handle
            && let Err(error) = handle.sync_data()
        {
            warn!(error = %error, "real-time journal fsync failed");
        }
    }

    pub fn figures(&self) -> RealtimeFigures {
        let overlay = self.store.overlay().figures();
        let state = self.store.load_full();
        let writer = self.writer.lock();
        RealtimeFigures {
            overlay_entries: overlay.entries,
            max_overlay_entries: self.config.max_overlay_entries,
            forgotten_users: overlay.forgotten_users,
            forgotten_users_in_packs: forgotten_in_packs(&writer.maintenance, &state)
                .iter()
                .map(|pack| pack.users)
                .sum(),
            journal_bytes: writer.journal.bytes(),
            folded_entries_total: writer.maintenance.folded_entries_total,
            expired_forgets_total: writer.maintenance.expired_forgets_total,
            updates_applied_total: self.updates_applied.load(Ordering::Relaxed),
            update_requests_refused_total: self.update_requests_refused.load(Ordering::Relaxed),
            users_forgotten_total: self.users_forgotten.load(Ordering::Relaxed),
        }
    }

    /// Per served pack, the forgotten users it still contains (as of the
    /// last maintenance run or forget).
    pub fn forgotten_in_packs(&self) -> Vec<ForgottenInPack> {
        let state = self.store.load_full();
        forgotten_in_packs(&self.writer.lock().maintenance, &state)
    }

    pub fn forget_retention_days(&self) -> u32 {
        (self.config.forget_retention_seconds / 86_400) as u32
    }
}

impl RealtimeWrites for Realtime {
    fn update_members(&self, updates: &[NewUpdate]) -> Result<UpdateOutcome, RealtimeError> {
        self.update_members_at(updates, unix_now_millis())
    }

    fn forget_users(&self, user_fingerprints: &[u64]) -> Result<u32, RealtimeError> {
        self.forget_users_at(user_fingerprints, crate::unix_now_seconds())
    }
}

fn stamp(update: &NewUpdate, now_unix_millis: i64) -> OverlayEntry {
    OverlayEntry {
        segment_id: update.segment_id,
        op: update.op,
        last_seen_unix_seconds: if update.last_seen_unix_seconds == 0 {
            now_unix_millis.div_euclid(1000)
        } else {
            update.last_seen_unix_seconds
        },
        expires_at_unix_seconds: update.expires_at_unix_seconds,
        stamped_at_unix_millis: now_unix_millis,
    }
}

/// Milliseconds since the Unix epoch on the server clock: update stamps.
pub(crate) fn unix_now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// The fingerprints without repeats, in first-seen order.
fn distinct(user_fingerprints: &[u64]) -> Vec<u64> {
    let mut seen = AHashSet::with_capacity(user_fingerprints.len());
    user_fingerprints
        .iter()
        .copied()
        .filter(|fingerprint| seen.insert(*fingerprint))
        .collect()
}

fn check_segments(state: &ServingState, updates: &[NewUpdate]) -> Result<(), RealtimeError> {
    for (index, update) in updates.iter().enumerate() {
        if state.segment(update.segment_id).is_none() {
            return Err(RealtimeError::UnknownSegment {
                index,
                segment_id: update.segment_id,
            });
        }
    }
    Ok(())
}

fn apply_record(store: &Store, record: &JournalRecord) {
    let overlay = store.overlay();
    match record {
        JournalRecord::Updates(updates) => overlay.upsert_many(updates),
        JournalRecord::Forgets(forgets) => {
            for (user_fingerprint, forget) in forgets {
                overlay.forget(*user_fingerprint, *forget);
            }
        }
        JournalRecord::Horizons(horizons) => {
            for (pack, horizon) in horizons {
                store.raise_fold_horizon(pack, *horizon);
            }
        }
        // Where the fleet stream resumes; nothing in memory to change.
        JournalRecord::Position(_) => {}
    }
}

fn spawn_logged(
    name: &str,
    interval: Duration,
    job: impl FnMut() + Send + 'static,
) -> Option<Periodic> {
    Periodic::spawn(name, interval, job)
        .inspect_err(
            |error| warn!(thread = name, error = %error, "cannot start a real-time thread"),
        )
        .ok()
}

#[cfg(test)]
mod tests;
