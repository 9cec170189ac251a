//! Mutex-protected map shards that can be snapshotted copy-on-write, the
//! storage under [`Counters`](super::Counters) and [`IdSet`](super::IdSet).
//! Owns the shard locks and the snapshot protocol; must never hold a lock
//! across I/O or know what the maps hold.

use parking_lot::{Mutex, MutexGuard};

use super::{FastMap, SHARD_COUNT};

/// One shard of a [`SnapshotShards`].
pub(super) struct SnapshotShard<K, V> {
    pub(super) map: FastMap<K, V>,
    /// A snapshot is being taken and this shard's content is not copied yet:
    /// copy it before the next change.
    copy_pending: bool,
}

/// Mutex-protected shards that can be snapshotted copy-on-write: starting a
/// snapshot only flags every shard (O(shards)); each shard is then copied by
/// the snapshot taker, or by the first writer to touch it, whichever comes
/// first. So a checkpoint holds writers back for flagging only, and a writer
/// waits for at most one shard copy.
pub(super) struct SnapshotShards<K, V, Item> {
    shards: Box<[Mutex<SnapshotShard<K, V>>]>,
    /// The copied items of the snapshot in progress.
    copies: Mutex<Vec<Item>>,
    /// Appends the items of one shard to the snapshot.
    flatten: fn(&FastMap<K, V>, &mut Vec<Item>),
}

impl<K, V, Item> SnapshotShards<K, V, Item> {
    pub(super) fn new(flatten: fn(&FastMap<K, V>, &mut Vec<Item>)) -> Self {
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
    pub(super) fn read(&self, index: usize) -> MutexGuard<'_, SnapshotShard<K, V>> {
        self.shards[index].lock()
    }

    /// The shard for changing: copied first if a snapshot still needs it.
    /// Lock order: shard, then `copies`.
    pub(super) fn write(&self, index: usize) -> MutexGuard<'_, SnapshotShard<K, V>> {
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
    pub(super) fn begin_snapshot(&self) {
        self.copies.lock().clear();
        for shard in self.shards.iter() {
            shard.lock().copy_pending = true;
        }
    }

    /// Copies the shards no writer copied yet and returns the snapshot.
    pub(super) fn finish_snapshot(&self) -> Vec<Item> {
        for index in 0..self.shards.len() {
            drop(self.write(index));
        }
        std::mem::take(&mut *self.copies.lock())
    }
}
