//! The sharded set of impression-id hashes seen within retention: how a
//! retried impression is recognised as a duplicate. Owns only the ids and
//! their times; must never hold a counter.

use super::snapshot::SnapshotShards;
use super::{FastMap, SHARD_COUNT};

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

fn flatten_ids(map: &FastMap<u64, IdState>, out: &mut Vec<(u64, i64)>) {
    out.extend(
        map.iter()
            .map(|(id_hash, state)| (*id_hash, state.at_unix_seconds)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
