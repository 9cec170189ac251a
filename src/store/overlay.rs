//! The real-time overlay in memory: per user fingerprint, the latest
//! `UpdateMembers` entry of each (user, segment) and whether the user is
//! forgotten. Lookups consult it after the pack index answered.
//!
//! Why a sharded map and not a swapped immutable value: updates arrive at
//! 100k/s while the overlay holds a million entries; rebuilding an immutable
//! value per batch would copy the million. Each shard is a `parking_lot`
//! RwLock; a lookup reads the user's record under the read lock for the
//! length of one request (cloning the `Arc` instead cost two more atomic
//! read-modify-writes per lookup, measurable at p99), and a writer replaces
//! a record copy-on-write under the write lock, one lock per shard per batch.
//! A global count of users lets the lookup skip the probe entirely while the
//! overlay is empty.
//!
//! This module owns memory only: it never touches disk (`crate::realtime`
//! logs every change before applying it here) and never judges requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};

/// Shards of the map; a power of two (the top bits of the fingerprint pick one).
const SHARD_BITS: u32 = 6;

/// What an update does to a (user, segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOp {
    Add,
    Remove,
}

/// The latest update of one (user, segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayEntry {
    pub segment_id: u32,
    pub op: MemberOp,
    /// `Add`: the member's last-seen time (replacing the pack's).
    pub last_seen_unix_seconds: i64,
    /// `Add`: no member at times `>=` this; 0 = the segment's TTL only.
    pub expires_at_unix_seconds: i64,
    /// Server time the update was applied, in milliseconds (a pack's build
    /// time is whole seconds: an update later in the same second as the
    /// build is on top of it). A pack built at or after this carries it, so
    /// the entry stops counting against that pack.
    pub stamped_at_unix_millis: i64,
}

impl OverlayEntry {
    /// Whether the entry still overrides a pack built at `pack_built_at`.
    #[inline]
    pub fn is_on_top_of(&self, pack_built_at_unix_seconds: i64) -> bool {
        self.stamped_at_unix_millis > pack_built_at_unix_seconds.saturating_mul(1000)
    }

    /// Whether an `Add` counts at `at`, with the same age rules as a pack
    /// member: within `max_age_seconds` (0 = any) and the segment's TTL (0 =
    /// none), a future last-seen being age 0, and before the expiry.
    #[inline]
    pub fn counts(&self, ttl_seconds: u32, max_age_seconds: u32, at_unix_seconds: i64) -> bool {
        if self.op == MemberOp::Remove {
            return false;
        }
        if self.expires_at_unix_seconds != 0 && at_unix_seconds >= self.expires_at_unix_seconds {
            return false;
        }
        let age_seconds = at_unix_seconds
            .saturating_sub(self.last_seen_unix_seconds)
            .max(0);
        (max_age_seconds == 0 || age_seconds <= i64::from(max_age_seconds))
            && (ttl_seconds == 0 || age_seconds <= i64::from(ttl_seconds))
    }
}

/// A retained forget of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    /// Server time of the forget; it is retained for `--forget-retention-days`.
    pub at_unix_seconds: i64,
    /// The frequency log's next sequence number when the user's counters
    /// were dropped (see `crate::freq::ForgottenUsers`).
    pub freq_boundary_seq: u64,
}

/// One user's overlay record. Immutable once shared; writers replace it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserOverlay {
    /// Set while a forget of this user is retained: they are in no segment.
    pub forgotten: Option<Forget>,
    /// Sorted by segment id, unique.
    pub entries: Vec<OverlayEntry>,
}

impl UserOverlay {
    /// The entry of `segment_id`, if any.
    #[inline]
    pub fn entry(&self, segment_id: u32) -> Option<&OverlayEntry> {
        self.entries
            .binary_search_by_key(&segment_id, |entry| entry.segment_id)
            .ok()
            .map(|index| &self.entries[index])
    }

    fn is_empty(&self) -> bool {
        self.forgotten.is_none() && self.entries.is_empty()
    }
}

type Shard = RwLock<AHashMap<u64, Arc<UserOverlay>>>;

/// A user's record, read under its shard's read lock.
pub type UserOverlayRef<'overlay> = MappedRwLockReadGuard<'overlay, Arc<UserOverlay>>;

#[inline]
fn shard_index(user_fingerprint: u64) -> usize {
    (user_fingerprint >> (64 - SHARD_BITS)) as usize
}

/// Inserts or replaces by segment id, keeping `entries` sorted.
fn insert_entry(entries: &mut Vec<OverlayEntry>, entry: OverlayEntry) {
    match entries.binary_search_by_key(&entry.segment_id, |existing| existing.segment_id) {
        Ok(index) => entries[index] = entry,
        Err(index) => entries.insert(index, entry),
    }
}

/// Indices of `items` grouped by shard, each group sorted by user, stably
/// (items of one user keep their order).
fn shard_runs<T>(items: &[T], user_of: impl Fn(&T) -> u64) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&index| {
        let user_fingerprint = user_of(&items[index]);
        (shard_index(user_fingerprint), user_fingerprint)
    });
    order
        .chunk_by(|&left, &right| {
            shard_index(user_of(&items[left])) == shard_index(user_of(&items[right]))
        })
        .map(|run| (shard_index(user_of(&items[run[0]])), run.to_vec()))
        .collect()
}

/// Figures for `Status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayFigures {
    pub entries: u64,
    pub forgotten_users: u64,
}

/// The overlay of every user. Shared by every generation of the serving state.
pub struct Overlay {
    shards: Box<[Shard]>,
    /// Users with a record; 0 lets lookups skip the probe.
    users: AtomicU64,
    entries: AtomicU64,
    forgotten_users: AtomicU64,
}

impl Default for Overlay {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Overlay")
            .field("figures", &self.figures())
            .finish()
    }
}

impl Overlay {
    pub fn new() -> Self {
        Self {
            shards: (0..1usize << SHARD_BITS)
                .map(|_| RwLock::new(AHashMap::new()))
                .collect(),
            users: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            forgotten_users: AtomicU64::new(0),
        }
    }

    #[inline]
    fn shard(&self, user_fingerprint: u64) -> &Shard {
        &self.shards[shard_index(user_fingerprint)]
    }

    /// The user's record, `None` when the overlay holds nothing for them.
    /// One atomic load when the overlay is empty, else one read-locked probe.
    /// The record is read under the shard's read lock, held by the returned
    /// guard (no reference count touched): keep it for one request only,
    /// never across an `.await`, and never take a second one meanwhile (a
    /// waiting writer would block it).
    #[inline]
    pub fn user(&self, user_fingerprint: u64) -> Option<UserOverlayRef<'_>> {
        if self.users.load(Ordering::Acquire) == 0 {
            return None;
        }
        RwLockReadGuard::try_map(self.shard(user_fingerprint).read(), |map| {
            map.get(&user_fingerprint)
        })
        .ok()
    }

    /// Sets the (user, segment) entry, replacing any.
    pub fn upsert(&self, user_fingerprint: u64, entry: OverlayEntry) {
        self.upsert_many(&[(user_fingerprint, entry)]);
    }

    /// [`Overlay::upsert`] of each update in order (a later one for the same
    /// (user, segment) wins), taking each shard's lock once and replacing
    /// each user's record once: a batch of 10,000 is 64 locks, not 10,000.
    pub fn upsert_many(&self, updates: &[(u64, OverlayEntry)]) {
        for (shard, run) in shard_runs(updates, |(user_fingerprint, _)| *user_fingerprint) {
            let mut map = self.shards[shard].write();
            // Runs are sorted by user (stably): one record change per user.
            for user_run in run.chunk_by(|left, right| updates[*left].0 == updates[*right].0) {
                let user_fingerprint = updates[user_run[0]].0;
                self.change_user_locked(&mut map, user_fingerprint, |user| {
                    for &index in user_run {
                        insert_entry(&mut user.entries, updates[index].1);
                    }
                });
            }
        }
    }

    /// How many of `keys` (user, segment) have no entry yet, duplicates
    /// counted once: what a batch would add against the bound.
    pub fn count_new(&self, keys: &[(u64, u32)]) -> u64 {
        let mut new = 0;
        for (shard, run) in shard_runs(keys, |(user_fingerprint, _)| *user_fingerprint) {
            let map = self.shards[shard].read();
            let mut distinct: Vec<(u64, u32)> = run.iter().map(|&index| keys[index]).collect();
            distinct.sort_unstable();
            distinct.dedup();
            new += distinct
                .iter()
                .filter(|(user_fingerprint, segment_id)| {
                    map.get(user_fingerprint)
                        .is_none_or(|user| user.entry(*segment_id).is_none())
                })
                .count() as u64;
        }
        new
    }

    /// Marks the user forgotten and drops their entries.
    pub fn forget(&self, user_fingerprint: u64, forget: Forget) {
        self.change_user(user_fingerprint, |user| {
            user.entries.clear();
            user.forgotten = Some(forget);
        });
    }

    /// Ends the forgets made at or before `cutoff` (their retention is over).
    pub fn expire_forgets(&self, cutoff_unix_seconds: i64) -> u64 {
        self.retain(|_, user| {
            if user
                .forgotten
                .is_some_and(|forget| forget.at_unix_seconds <= cutoff_unix_seconds)
            {
                user.forgotten = None;
            }
        })
        .1
    }

    /// Keeps the entries `keep` says yes to; returns how many were dropped.
    pub fn retain_entries(&self, mut keep: impl FnMut(u64, &OverlayEntry) -> bool) -> u64 {
        self.retain(|user_fingerprint, user| {
            user.entries.retain(|entry| keep(user_fingerprint, entry));
        })
        .0
    }

    /// Applies `change` to every record; returns (entries, forgets) dropped.
    fn retain(&self, mut change: impl FnMut(u64, &mut UserOverlay)) -> (u64, u64) {
        let (mut entries_dropped, mut forgets_dropped) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let mut map = shard.write();
            map.retain(|&user_fingerprint, record| {
                let mut changed = UserOverlay::clone(record);
                change(user_fingerprint, &mut changed);
                let entries_before = record.entries.len();
                let was_forgotten = record.forgotten.is_some();
                if changed == **record {
                    return true;
                }
                entries_dropped += (entries_before - changed.entries.len()) as u64;
                forgets_dropped += u64::from(was_forgotten && changed.forgotten.is_none());
                let keep = !changed.is_empty();
                *record = Arc::new(changed);
                keep
            });
        }
        self.recount();
        (entries_dropped, forgets_dropped)
    }

    /// Every record, for a journal snapshot.
    pub fn snapshot(&self) -> Vec<(u64, Arc<UserOverlay>)> {
        let mut records = Vec::new();
        for shard in self.shards.iter() {
            records.extend(
                shard
                    .read()
                    .iter()
                    .map(|(&user_fingerprint, record)| (user_fingerprint, record.clone())),
            );
        }
        records
    }

    pub fn figures(&self) -> OverlayFigures {
        OverlayFigures {
            entries: self.entries.load(Ordering::Relaxed),
            forgotten_users: self.forgotten_users.load(Ordering::Relaxed),
        }
    }

    /// Replaces one user's record with `change` applied to a copy, keeping the
    /// figures right.
    fn change_user(&self, user_fingerprint: u64, change: impl FnOnce(&mut UserOverlay)) {
        let mut map = self.shard(user_fingerprint).write();
        self.change_user_locked(&mut map, user_fingerprint, change);
    }

    fn change_user_locked(
        &self,
        map: &mut AHashMap<u64, Arc<UserOverlay>>,
        user_fingerprint: u64,
        change: impl FnOnce(&mut UserOverlay),
    ) {
        let (before, mut changed) = match map.get(&user_fingerprint) {
            Some(record) => (Some(record.clone()), UserOverlay::clone(record)),
            None => (None, UserOverlay::default()),
        };
        change(&mut changed);
        let (entries_before, forgotten_before) = before.as_ref().map_or((0, false), |record| {
            (record.entries.len(), record.forgotten.is_some())
        });
        self.adjust(
            &self.entries,
            entries_before as u64,
            changed.entries.len() as u64,
        );
        self.adjust(
            &self.forgotten_users,
            u64::from(forgotten_before),
            u64::from(changed.forgotten.is_some()),
        );
        match (before.is_some(), changed.is_empty()) {
            (true, true) => {
                map.remove(&user_fingerprint);
                self.users.fetch_sub(1, Ordering::Release);
            }
            (false, true) => {}
            (was_there, false) => {
                if !was_there {
                    self.users.fetch_add(1, Ordering::Release);
                }
                map.insert(user_fingerprint, Arc::new(changed));
            }
        }
    }

    fn adjust(&self, figure: &AtomicU64, before: u64, after: u64) {
        if after >= before {
            figure.fetch_add(after - before, Ordering::Relaxed);
        } else {
            figure.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Recomputes the figures after a bulk change (all shards were written).
    fn recount(&self) {
        let (mut users, mut entries, mut forgotten_users) = (0u64, 0u64, 0u64);
        for shard in self.shards.iter() {
            let map = shard.read();
            users += map.len() as u64;
            for record in map.values() {
                entries += record.entries.len() as u64;
                forgotten_users += u64::from(record.forgotten.is_some());
            }
        }
        self.users.store(users, Ordering::Release);
        self.entries.store(entries, Ordering::Relaxed);
        self.forgotten_users
            .store(forgotten_users, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(segment_id: u32, stamped_at: i64) -> OverlayEntry {
        OverlayEntry {
            segment_id,
            op: MemberOp::Add,
            last_seen_unix_seconds: stamped_at,
            expires_at_unix_seconds: 0,
            stamped_at_unix_millis: stamped_at * 1000,
        }
    }

    #[test]
    fn latest_entry_wins_and_figures_follow() {
        let overlay = Overlay::new();
        assert!(overlay.user(7).is_none());
        overlay.upsert(7, add(3, 100));
        overlay.upsert(7, add(1, 100));
        overlay.upsert(
            7,
            OverlayEntry {
                op: MemberOp::Remove,
                ..add(3, 200)
            },
        );
        {
            let user = overlay.user(7).expect("record");
            assert_eq!(user.entries.len(), 2);
            assert_eq!(user.entry(3).map(|entry| entry.op), Some(MemberOp::Remove));
        }
        assert_eq!(overlay.figures().entries, 2);
        overlay.forget(
            7,
            Forget {
                at_unix_seconds: 300,
                freq_boundary_seq: 1,
            },
        );
        assert_eq!(
            overlay.figures(),
            OverlayFigures {
                entries: 0,
                forgotten_users: 1
            }
        );
        assert_eq!(overlay.expire_forgets(300), 1);
        assert!(overlay.user(7).is_none());
        assert_eq!(overlay.figures(), OverlayFigures::default());
    }

    #[test]
    fn batches_apply_in_order_and_count_new_keys_once() {
        let overlay = Overlay::new();
        overlay.upsert(u64::MAX, add(1, 100));
        let remove_later = OverlayEntry {
            op: MemberOp::Remove,
            ..add(2, 300)
        };
        let batch = [
            (5, add(2, 200)),
            (u64::MAX, add(9, 200)),
            (5, remove_later),
            (6, add(1, 200)),
        ];
        assert_eq!(
            overlay.count_new(&[(5, 2), (u64::MAX, 9), (5, 2), (6, 1), (u64::MAX, 1)]),
            3
        );
        overlay.upsert_many(&batch);
        assert_eq!(
            overlay.user(5).expect("record").entries,
            vec![remove_later],
            "the later update of (5, 2) wins"
        );
        assert_eq!(overlay.user(u64::MAX).expect("record").entries.len(), 2);
        assert_eq!(overlay.figures().entries, 4);
        assert_eq!(overlay.count_new(&[(5, 2), (6, 1)]), 0);
    }

    #[test]
    fn retain_drops_folded_entries_only() {
        let overlay = Overlay::new();
        overlay.upsert(1, add(1, 100));
        overlay.upsert(1, add(2, 300));
        overlay.upsert(2, add(1, 100));
        let dropped = overlay.retain_entries(|_, entry| entry.is_on_top_of(200));
        assert_eq!(dropped, 2);
        assert!(overlay.user(2).is_none());
        assert_eq!(overlay.user(1).expect("kept").entries, vec![add(2, 300)]);
        assert_eq!(overlay.figures().entries, 1);
    }

    #[test]
    fn adds_age_like_pack_members() {
        let entry = OverlayEntry {
            expires_at_unix_seconds: 1_000,
            ..add(1, 500)
        };
        assert!(entry.counts(0, 0, 999));
        assert!(!entry.counts(0, 0, 1_000), "expired at expires_at");
        assert!(entry.counts(100, 100, 600));
        assert!(!entry.counts(100, 0, 601), "past the TTL");
        assert!(!entry.counts(0, 50, 551), "past max age");
        assert!(entry.counts(1, 1, 10), "a future last-seen is age 0");
    }
}
