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

use std::collections::HashMap;

use parking_lot::{Mutex, MutexGuard};

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

/// Impressions of one hour folded into one count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// First second of the hour (a multiple of [`BUCKET_SECONDS`]).
    pub start: i64,
    /// Impressions in `[start, start + BUCKET_SECONDS)`.
    pub count: u32,
}

impl Bucket {
    fn last_second(&self) -> i64 {
        self.start.saturating_add(BUCKET_SECONDS - 1)
    }

    fn may_overlap(&self, after_exclusive: i64, until_inclusive: i64) -> bool {
        self.last_second() > after_exclusive && self.start <= until_inclusive
    }
}

/// The impressions of one (user, cap key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Exact impression times, sorted ascending, at most [`EXACT_LIMIT`].
    times: Vec<i64>,
    /// Older impressions folded per hour, sorted by `start`, unique starts.
    /// Boxed and optional: almost no entry has any, and this keeps `Entry` at
    /// 32 bytes (a bare `Vec` would add 16).
    #[allow(clippy::box_collection)]
    coarse: Option<Box<Vec<Bucket>>>,
}

impl Entry {
    /// Adds one impression at `at_unix_seconds`.
    pub fn insert(&mut self, at_unix_seconds: i64) {
        let position = self.times.partition_point(|&time| time <= at_unix_seconds);
        if self.times.len() < 8 {
            // Small entries are the common case: grow one slot at a time.
            self.times.reserve_exact(1);
        }
        self.times.insert(position, at_unix_seconds);
        if self.times.len() > EXACT_LIMIT {
            let oldest = self.times.remove(0);
            self.add_to_bucket(oldest.div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS, 1);
        }
    }

    fn add_to_bucket(&mut self, start: i64, count: u32) {
        let buckets = self.coarse.get_or_insert_with(Default::default);
        match buckets.binary_search_by_key(&start, |bucket| bucket.start) {
            Ok(index) => buckets[index].count = buckets[index].count.saturating_add(count),
            Err(index) => buckets.insert(index, Bucket { start, count }),
        }
    }

    /// Impressions at `t` with `after_exclusive < t <= until_inclusive`: exact
    /// from the times, plus every bucket that may overlap the range.
    pub fn count(&self, after_exclusive: i64, until_inclusive: i64) -> u32 {
        if until_inclusive <= after_exclusive {
            return 0;
        }
        let first = self.times.partition_point(|&time| time <= after_exclusive);
        let end = self.times.partition_point(|&time| time <= until_inclusive);
        let mut total = (end - first) as u32;
        if let Some(buckets) = &self.coarse {
            for bucket in buckets.iter() {
                if bucket.may_overlap(after_exclusive, until_inclusive) {
                    total = total.saturating_add(bucket.count);
                }
            }
        }
        total
    }

    /// Drops impressions at or before `cutoff_inclusive`; buckets only once
    /// their whole hour is. Returns how many events were dropped.
    pub fn sweep(&mut self, cutoff_inclusive: i64) -> u64 {
        let expired = self.times.partition_point(|&time| time <= cutoff_inclusive);
        self.times.drain(..expired);
        let mut dropped = expired as u64;
        if let Some(buckets) = &mut self.coarse {
            buckets.retain(|bucket| {
                let keep = bucket.last_second() > cutoff_inclusive;
                if !keep {
                    dropped += u64::from(bucket.count);
                }
                keep
            });
            if buckets.is_empty() {
                self.coarse = None;
            }
        }
        if self.times.capacity() > 16 && self.times.capacity() > 2 * self.times.len() {
            self.times.shrink_to(self.times.len() * 3 / 2);
        }
        dropped
    }

    /// True when the entry holds nothing.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty() && self.coarse.is_none()
    }

    /// Impressions held, exact and folded.
    pub fn events(&self) -> u64 {
        let folded: u64 = self
            .coarse
            .as_deref()
            .map(|buckets| buckets.iter().map(|bucket| u64::from(bucket.count)).sum())
            .unwrap_or(0);
        self.times.len() as u64 + folded
    }

    /// Heap bytes owned (allocation sizes, without allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        let times = self.times.capacity() * size_of::<i64>();
        let coarse = self
            .coarse
            .as_deref()
            .map(|buckets| size_of::<Vec<Bucket>>() + buckets.capacity() * size_of::<Bucket>())
            .unwrap_or(0);
        times + coarse
    }

    /// The exact times, sorted ascending.
    pub fn times(&self) -> &[i64] {
        &self.times
    }

    /// The coarse buckets, sorted by start.
    pub fn buckets(&self) -> &[Bucket] {
        self.coarse.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Rebuilds an entry from checkpointed parts, checking its invariants.
    pub fn from_parts(times: Vec<i64>, buckets: Vec<Bucket>) -> Result<Entry, String> {
        if times.len() > EXACT_LIMIT {
            return Err(format!(
                "entry holds {} exact times, more than {EXACT_LIMIT}",
                times.len()
            ));
        }
        if !times.is_sorted() {
            return Err("entry times are not sorted".to_owned());
        }
        if !buckets.windows(2).all(|pair| pair[0].start < pair[1].start)
            || buckets
                .iter()
                .any(|bucket| bucket.start.rem_euclid(BUCKET_SECONDS) != 0)
        {
            return Err("entry buckets are not sorted, unique, hour-aligned".to_owned());
        }
        let coarse = if buckets.is_empty() {
            None
        } else {
            Some(Box::new(buckets))
        };
        Ok(Entry { times, coarse })
    }
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

/// One shard of a [`SnapshotShards`].
struct SnapshotShard<K, V> {
    map: FastMap<K, V>,
    /// A snapshot is being taken and this shard's content is not copied yet:
    /// copy it before the next change.
    copy_pending: bool,
}

/// Mutex-protected shards that can be snapshotted copy-on-write: starting a
/// snapshot only flags every shard (O(shards)); each shard is then copied by
/// the snapshot taker, or by the first writer to touch it, whichever comes
/// first. So a checkpoint holds writers back for flagging only, and a writer
/// waits for at most one shard copy.
struct SnapshotShards<K, V, Item> {
    shards: Box<[Mutex<SnapshotShard<K, V>>]>,
    /// The copied items of the snapshot in progress.
    copies: Mutex<Vec<Item>>,
    /// Appends the items of one shard to the snapshot.
    flatten: fn(&FastMap<K, V>, &mut Vec<Item>),
}

impl<K, V, Item> SnapshotShards<K, V, Item> {
    fn new(flatten: fn(&FastMap<K, V>, &mut Vec<Item>)) -> Self {
        SnapshotShards {
            shards: (0..SHARD_COUNT)
                .map(|_| {
                    Mutex::new(SnapshotShard {
                        map: FastMap::default(),
                        copy_pending: false,
                    })
                })
                .collect(),
            copies: Mutex::new(Vec::new()),
            flatten,
        }
    }

    /// The shard for reading.
    fn read(&self, index: usize) -> MutexGuard<'_, SnapshotShard<K, V>> {
        self.shards[index].lock()
    }

    /// The shard for changing: copied first if a snapshot still needs it.
    /// Lock order: shard, then `copies`.
    fn write(&self, index: usize) -> MutexGuard<'_, SnapshotShard<K, V>> {
        let mut shard = self.shards[index].lock();
        if shard.copy_pending {
            (self.flatten)(&shard.map, &mut self.copies.lock());
            shard.copy_pending = false;
        }
        shard
    }

    /// Starts a snapshot of the content as of now. The caller must keep
    /// writers out while this runs and call `finish_snapshot` afterwards; one
    /// snapshot at a time.
    fn begin_snapshot(&self) {
        self.copies.lock().clear();
        for shard in self.shards.iter() {
            shard.lock().copy_pending = true;
        }
    }

    /// Copies the shards no writer copied yet and returns the snapshot.
    fn finish_snapshot(&self) -> Vec<Item> {
        for index in 0..self.shards.len() {
            drop(self.write(index));
        }
        std::mem::take(&mut *self.copies.lock())
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

fn flatten_ids(map: &FastMap<u64, IdState>, out: &mut Vec<(u64, i64)>) {
    out.extend(
        map.iter()
            .map(|(id_hash, state)| (*id_hash, state.at_unix_seconds)),
    );
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
                    figures.coarse_entries += u64::from(entry.coarse.is_some());
                    figures.approximate_bytes += entry.heap_bytes() as u64;
                }
            }
        }
        figures
    }
}

/// What the id set remembers of one impression id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdState {
    /// The impression's time; forgotten once it leaves retention.
    pub at_unix_seconds: i64,
    /// Log sequence number of the record that carries it; 0 once known durable
    /// (loaded from a checkpoint or the log).
    pub log_seq: u64,
}

/// The sharded set of impression-id hashes seen within retention.
pub struct IdSet {
    shards: SnapshotShards<u64, IdState, (u64, i64)>,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet::new()
    }
}

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet {
            shards: SnapshotShards::new(flatten_ids),
        }
    }

    fn shard(id_hash: u64) -> usize {
        (id_hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARD_COUNT.trailing_zeros()))
            as usize
    }

    /// Inserts `id_hash` unless present. Returns the existing state when it was
    /// already there (the impression is a duplicate).
    pub fn check_and_insert(&self, id_hash: u64, state: IdState) -> Option<IdState> {
        let index = Self::shard(id_hash);
        if let Some(existing) = self.shards.read(index).map.get(&id_hash) {
            // Duplicates take no copy-on-write path.
            return Some(*existing);
        }
        let mut shard = self.shards.write(index);
        match shard.map.entry(id_hash) {
            std::collections::hash_map::Entry::Occupied(existing) => Some(*existing.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(state);
                None
            }
        }
    }

    /// True when `id_hash` is present.
    pub fn contains(&self, id_hash: u64) -> bool {
        self.shards
            .read(Self::shard(id_hash))
            .map
            .contains_key(&id_hash)
    }

    /// Forgets `id_hash` if it is still held for record `log_seq` (a failed write).
    pub fn remove_if_from(&self, id_hash: u64, log_seq: u64) {
        let mut shard = self.shards.write(Self::shard(id_hash));
        if shard
            .map
            .get(&id_hash)
            .is_some_and(|state| state.log_seq == log_seq)
        {
            shard.map.remove(&id_hash);
        }
    }

    /// Forgets ids whose impression is at or before `cutoff_inclusive`.
    pub fn sweep(&self, cutoff_inclusive: i64) -> u64 {
        let mut removed = 0;
        for index in 0..SHARD_COUNT {
            let mut shard = self.shards.write(index);
            let map = &mut shard.map;
            map.retain(|_, state| {
                let keep = state.at_unix_seconds > cutoff_inclusive;
                removed += u64::from(!keep);
                keep
            });
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                map.shrink_to_fit();
            }
        }
        removed
    }

    /// Starts a copy-on-write snapshot; see [`Counters::begin_snapshot`].
    pub fn begin_snapshot(&self) {
        self.shards.begin_snapshot();
    }

    /// Completes the snapshot: every `(id hash, impression time)`.
    pub fn finish_snapshot(&self) -> Vec<(u64, i64)> {
        self.shards.finish_snapshot()
    }

    /// A copy of every `(id hash, impression time)` (writers must be kept out
    /// for a consistent one).
    pub fn snapshot(&self) -> Vec<(u64, i64)> {
        self.shards.begin_snapshot();
        self.shards.finish_snapshot()
    }

    /// Ids held.
    pub fn len(&self) -> u64 {
        (0..SHARD_COUNT)
            .map(|index| self.shards.read(index).map.len() as u64)
            .sum()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_exact_up_to_the_limit_and_never_under_counts_beyond() {
        let mut entry = Entry::default();
        let mut reference = Vec::new();
        for index in 0..2_500i64 {
            let time = 1_700_000_000 + index * 97 - (index % 7) * 500;
            entry.insert(time);
            reference.push(time);
            let count_in = |after: i64, until: i64| {
                reference
                    .iter()
                    .filter(|&&t| after < t && t <= until)
                    .count() as u32
            };
            for (after, until) in [
                (i64::MIN, i64::MAX),
                (time - 3_600, time),
                (time - 86_400, time - 100),
            ] {
                let counted = entry.count(after, until);
                let truth = count_in(after, until);
                if reference.len() <= EXACT_LIMIT {
                    assert_eq!(counted, truth);
                } else {
                    assert!(counted >= truth, "{counted} < {truth}");
                }
            }
        }
        assert_eq!(entry.times().len(), EXACT_LIMIT);
        assert_eq!(entry.events(), 2_500);
    }

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

    #[test]
    fn id_set_inserts_once() {
        let ids = IdSet::new();
        let state = IdState {
            at_unix_seconds: 10,
            log_seq: 7,
        };
        assert_eq!(ids.check_and_insert(5, state), None);
        assert_eq!(
            ids.check_and_insert(
                5,
                IdState {
                    at_unix_seconds: 10,
                    log_seq: 8
                }
            ),
            Some(state)
        );
        ids.remove_if_from(5, 8);
        assert!(ids.contains(5));
        ids.remove_if_from(5, 7);
        assert!(!ids.contains(5));
        ids.check_and_insert(6, state);
        assert_eq!(ids.sweep(10), 1);
        assert!(ids.is_empty());
    }
}
