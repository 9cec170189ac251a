//! The in-memory counters: per (user fingerprint, cap key) the recent impression
//! times, and the set of impression ids seen within retention.
//!
//! Entries are keyed by `(user fingerprint, xxh3-64 of the cap key)`, never by the
//! key string: 16 bytes a key instead of a heap string. Two cap keys of one user
//! colliding at 64 bits would share a counter (an over-count, never an
//! under-count); with a few thousand keys per user the odds are about 2^-40.
//!
//! Entries are grouped per user (a map from user fingerprint to a small vector
//! sorted by cap key hash), so all the caps of one user cost one shard lock and
//! one map probe.
//!
//! An entry keeps up to [`EXACT_LIMIT`] impression times exactly. Beyond that the
//! oldest are folded into hour buckets, so memory stays bounded; a bucket is
//! counted whenever any part of its hour may lie in the range asked, so counts
//! never fall short of the truth.
//!
//! This file owns the per-user grouping ([`Counters`]); [`entry`] one
//! counter, [`ids`] the impression-id set, [`snapshot`] the copy-on-write
//! shards both are stored in.

mod entry;
mod ids;
mod snapshot;

use std::collections::HashMap;

pub use entry::{Bucket, Entry};
pub use ids::{IdSet, IdState};
use snapshot::SnapshotShards;

/// Number of mutex-protected shards of each map. A power of two.
pub const SHARD_COUNT: usize = 64;
/// An entry counts exactly while it holds at most this many impression times.
pub const EXACT_LIMIT: usize = 1_000;
/// Width of the coarse buckets the oldest times are folded into.
pub const BUCKET_SECONDS: i64 = 3_600;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// The xxh3-64 (seed 0) of a cap key: its identity in memory, log and checkpoint.
pub fn cap_key_hash(cap_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cap_key.as_bytes())
}

/// The xxh3-64 (seed 0) of an impression id.
pub fn impression_id_hash(impression_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(impression_id.as_bytes())
}

/// Identity of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryKey {
    /// xxh3-64 of the user id.
    pub user_fingerprint: u64,
    /// xxh3-64 of the cap key.
    pub cap_key_hash: u64,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Impressions dropped.
    pub events_dropped: u64,
    /// Entries that became empty and were removed.
    pub entries_removed: u64,
    /// Impression ids forgotten.
    pub ids_removed: u64,
}

/// Figures of the counters, gathered shard by shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterFigures {
    /// Users with at least one counter.
    pub users: u64,
    /// (user, cap key) entries.
    pub entries: u64,
    /// Impressions held, exact and folded.
    pub events: u64,
    /// Entries with folded buckets.
    pub coarse_entries: u64,
    /// Estimated bytes: map slots plus heap allocations.
    pub approximate_bytes: u64,
}

/// One cap of a [`Counters::count_many`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountQuery {
    /// xxh3-64 of the cap key ([`cap_key_hash`]).
    pub cap_key_hash: u64,
    /// Count times strictly after this.
    pub after_exclusive: i64,
    /// Count times up to and including this.
    pub until_inclusive: i64,
}

/// The counters of one user, one per cap key.
#[derive(Debug, Clone, Default)]
struct UserCounters {
    /// Sorted by cap key hash, unique; no entry is empty.
    keys: Vec<(u64, Entry)>,
}

impl UserCounters {
    fn get(&self, cap_key_hash: u64) -> Option<&Entry> {
        self.keys
            .binary_search_by_key(&cap_key_hash, |(key_hash, _)| *key_hash)
            .ok()
            .map(|index| &self.keys[index].1)
    }

    fn get_or_insert(&mut self, cap_key_hash: u64) -> &mut Entry {
        let index = match self
            .keys
            .binary_search_by_key(&cap_key_hash, |(key_hash, _)| *key_hash)
        {
            Ok(index) => index,
            Err(index) => {
                if self.keys.len() < 4 {
                    // Most users have a handful of keys: grow one slot at a time.
                    self.keys.reserve_exact(1);
                }
                self.keys.insert(index, (cap_key_hash, Entry::default()));
                index
            }
        };
        &mut self.keys[index].1
    }
}

/// The sharded map of counters, grouped by user so that every cap of one
/// `Decide` candidate list is one shard lock and one map probe.
pub struct Counters {
    /// `shards[user_shard(user)]` holds the user. parking_lot mutexes, held
    /// for a map operation only, never across I/O.
    shards: SnapshotShards<u64, UserCounters, (EntryKey, Entry)>,
}

fn flatten_users(map: &FastMap<u64, UserCounters>, out: &mut Vec<(EntryKey, Entry)>) {
    for (&user_fingerprint, user) in map {
        out.extend(user.keys.iter().map(|(cap_key_hash, entry)| {
            let key = EntryKey {
                user_fingerprint,
                cap_key_hash: *cap_key_hash,
            };
            (key, entry.clone())
        }));
    }
}

fn user_shard(user_fingerprint: u64) -> usize {
    (user_fingerprint.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_COUNT.trailing_zeros()))
        as usize
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

impl Counters {
    /// Empty counters.
    pub fn new() -> Counters {
        Counters {
            shards: SnapshotShards::new(flatten_users),
        }
    }

    /// Adds one impression to one counter.
    pub fn add(&self, key: EntryKey, at_unix_seconds: i64) {
        self.add_impression(key.user_fingerprint, &[key.cap_key_hash], at_unix_seconds);
    }

    /// Adds one impression of a user to each of its cap keys, under one lock.
    pub fn add_impression(
        &self,
        user_fingerprint: u64,
        cap_key_hashes: &[u64],
        at_unix_seconds: i64,
    ) {
        if cap_key_hashes.is_empty() {
            return;
        }
        let mut shard = self.shards.write(user_shard(user_fingerprint));
        let user = shard.map.entry(user_fingerprint).or_default();
        for &cap_key_hash in cap_key_hashes {
            user.get_or_insert(cap_key_hash).insert(at_unix_seconds);
        }
    }

    /// Drops every counter of one user (a forget).
    pub fn remove_user(&self, user_fingerprint: u64) {
        self.shards
            .write(user_shard(user_fingerprint))
            .map
            .remove(&user_fingerprint);
    }

    /// Impressions of `key` with `after_exclusive < t <= until_inclusive`.
    pub fn count(&self, key: EntryKey, after_exclusive: i64, until_inclusive: i64) -> u32 {
        self.shards
            .read(user_shard(key.user_fingerprint))
            .map
            .get(&key.user_fingerprint)
            .and_then(|user| user.get(key.cap_key_hash))
            .map(|entry| entry.count(after_exclusive, until_inclusive))
            .unwrap_or(0)
    }

    /// The count of each query for one user, appended to `counts` in order,
    /// under one lock.
    pub fn count_many(&self, user_fingerprint: u64, queries: &[CountQuery], counts: &mut Vec<u32>) {
        let shard = self.shards.read(user_shard(user_fingerprint));
        let Some(user) = shard.map.get(&user_fingerprint) else {
            counts.extend(std::iter::repeat_n(0, queries.len()));
            return;
        };
        counts.extend(queries.iter().map(|query| {
            user.get(query.cap_key_hash)
                .map(|entry| entry.count(query.after_exclusive, query.until_inclusive))
                .unwrap_or(0)
        }));
    }

    /// Drops events at or before `cutoff_inclusive` and empty entries and
    /// users, one shard at a time.
    pub fn sweep(&self, cutoff_inclusive: i64) -> SweepOutcome {
        let mut outcome = SweepOutcome::default();
        for index in 0..SHARD_COUNT {
            let mut shard = self.shards.write(index);
            let map = &mut shard.map;
            map.retain(|_, user| {
                user.keys.retain_mut(|(_, entry)| {
                    outcome.events_dropped += entry.sweep(cutoff_inclusive);
                    let keep = !entry.is_empty();
                    outcome.entries_removed += u64::from(!keep);
                    keep
                });
                if user.keys.capacity() > 8 && user.keys.capacity() > 2 * user.keys.len() {
                    user.keys.shrink_to_fit();
                }
                !user.keys.is_empty()
            });
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                map.shrink_to_fit();
            }
        }
        outcome
    }

    /// Starts a copy-on-write snapshot of every entry as of now. Keep
    /// writers out while this runs (O(shards)), then call
    /// [`Counters::finish_snapshot`]. One snapshot at a time.
    pub fn begin_snapshot(&self) {
        self.shards.begin_snapshot();
    }

    /// Completes the snapshot begun by [`Counters::begin_snapshot`].
    pub fn finish_snapshot(&self) -> Vec<(EntryKey, Entry)> {
        self.shards.finish_snapshot()
    }

    /// A copy of every entry (writers must be kept out for a consistent one).
    pub fn snapshot(&self) -> Vec<(EntryKey, Entry)> {
        self.shards.begin_snapshot();
        self.shards.finish_snapshot()
    }

    /// Puts a checkpointed entry in place (replacing any).
    pub fn restore(&self, key: EntryKey, entry: Entry) {
        if entry.is_empty() {
            return;
        }
        let mut shard = self.shards.write(user_shard(key.user_fingerprint));
        *shard
            .map
            .entry(key.user_fingerprint)
            .or_default()
            .get_or_insert(key.cap_key_hash) = entry;
    }

    /// Entries, events and an estimate of the memory they take.
    pub fn figures(&self) -> CounterFigures {
        let mut figures = CounterFigures::default();
        let slot_bytes = size_of::<(u64, UserCounters)>() + 1;
        for index in 0..SHARD_COUNT {
            let shard = self.shards.read(index);
            let map = &shard.map;
            figures.approximate_bytes += (map.capacity() * slot_bytes) as u64;
            for user in map.values() {
                figures.users += 1;
                figures.entries += user.keys.len() as u64;
                figures.approximate_bytes +=
                    (user.keys.capacity() * size_of::<(u64, Entry)>()) as u64;
                for (_, entry) in &user.keys {
                    figures.events += entry.events();
                    figures.coarse_entries += u64::from(entry.is_coarse());
                    figures.approximate_bytes += entry.heap_bytes() as u64;
                }
            }
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_drops_old_events_and_empty_entries() {
        let counters = Counters::new();
        let key = EntryKey {
            user_fingerprint: 1,
            cap_key_hash: cap_key_hash("li:1"),
        };
        let other = EntryKey {
            user_fingerprint: 2,
            cap_key_hash: cap_key_hash("li:1"),
        };
        for time in [100, 200, 300] {
            counters.add(key, time);
        }
        counters.add(other, 150);
        let outcome = counters.sweep(200);
        assert_eq!(outcome.events_dropped, 3);
        assert_eq!(outcome.entries_removed, 1);
        assert_eq!(counters.count(key, i64::MIN, i64::MAX), 1);
        assert_eq!(counters.figures().entries, 1);
    }
}
