//! The real-time overlay in memory: per user fingerprint, the latest
//! `UpdateMembers` entry of each (user, segment) and whether the user is
//! forgotten. Lookups consult it after the pack index answered.
//!
//! Why a sharded map and not a swapped immutable value: updates arrive at
//! 100k/s while the overlay holds a million entries; rebuilding an immutable
//! value per batch would copy the million. Each shard is a `parking_lot`
//! RwLock held for one map operation; a user's record is an `Arc`, so a
//! reader clones a pointer under the read lock and evaluates without it, and
//! a writer replaces the record copy-on-write. A global count of users lets
//! the lookup skip the probe entirely while the overlay is empty.
//!
//! This module owns memory only: it never touches disk (`crate::realtime`
//! logs every change before applying it here) and never judges requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use parking_lot::RwLock;

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
        &self.shards[(user_fingerprint >> (64 - SHARD_BITS)) as usize]
    }

    /// The user's record, `None` when the overlay holds nothing for them.
    /// One atomic load when the overlay is empty, else one read-locked probe.
    #[inline]
    pub fn user(&self, user_fingerprint: u64) -> Option<Arc<UserOverlay>> {
        if self.users.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.shard(user_fingerprint)
            .read()
            .get(&user_fingerprint)
            .cloned()
    }

    /// Whether (user, segment) has an entry (to count new ones against the bound).
    pub fn has_entry(&self, user_fingerprint: u64, segment_id: u32) -> bool {
        self.shard(user_fingerprint)
            .read()
            .get(&user_fingerprint)
            .is_some_and(|user| user.entry(segment_id).is_some())
    }

    /// Sets the (user, segment) entry, replacing any.
    pub fn upsert(&self, user_fingerprint: u64, entry: OverlayEntry) {
        self.change_user(user_fingerprint, |user| {
            match user
                .entries
                .binary_search_by_key(&entry.segment_id, |existing| existing.segment_id)
            {
                Ok(index) => user.entries[index] = entry,
                Err(index) => user.entries.insert(index, entry),
            }
        });
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
        let user = overlay.user(7).expect("record");
        assert_eq!(user.entries.len(), 2);
        assert_eq!(user.entry(3).map(|entry| entry.op), Some(MemberOp::Remove));
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
