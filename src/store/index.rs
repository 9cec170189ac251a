//! The user-major index of one loaded pack: per user ordinal, the user's
//! segments (as slots into the pack's segment table) with their last-seen times.
//!
//! "All segments of this user" and short listed lookups become one scan of a
//! short slice instead of a probe per bitmap. The times live here too, so
//! recency needs no second copy. The index is either served in place from a
//! format-v2 pack file or built at load from a v1 pack's bitmaps
//! (`pack::index_build`); lookups cannot tell which.

use crate::pack::Pack;
pub use crate::pack::entries::EntrySlice;
use crate::pack::entries::{Entries, EntryLayout};
use crate::pack::index_build::BuiltIndex;
pub use crate::pack::index_build::{BuildThreads, IndexError};
use crate::pack::mapped::Column;
pub use crate::pack::mapped::IndexEntry;
use crate::pack::writer_v2::entry_layout_for;

#[derive(Debug)]
pub struct UserMajorIndex {
    /// `entries[starts[ordinal]..starts[ordinal + 1]]` are the user's
    /// memberships, sorted by slot ascending; `users + 1` values, the first
    /// 0, non-decreasing, the last `entries.len()` (checked by the pack
    /// reader for mapped packs, true by construction for built ones).
    starts: Column<u32>,
    /// In the pack file's layout (mapped), or the narrowest one for the
    /// pack (built): lookups decode either the same way.
    entries: Entries,
}

impl UserMajorIndex {
    /// Builds the index of a v1 pack on all cores (see `BuiltIndex::build`).
    pub fn build(pack: &Pack) -> Result<Self, IndexError> {
        Self::build_on(pack, BuildThreads::AllCores)
    }

    /// [`UserMajorIndex::build`] on at most the given threads, the entries
    /// encoded as a v2 writer would (so a v1 pack takes the same memory).
    pub fn build_on(pack: &Pack, threads: BuildThreads) -> Result<Self, IndexError> {
        let built = BuiltIndex::build_on(pack, threads)?;
        let layout: EntryLayout = entry_layout_for(pack);
        let entries = Entries::encode(&built.entries, layout);
        drop(built.entries);
        Ok(Self::from_columns(Column::from_vec(built.starts), entries))
    }

    /// An index over columns the pack reader checked (see the invariants on
    /// the fields).
    pub(crate) fn from_columns(starts: Column<u32>, entries: Entries) -> Self {
        debug_assert_eq!(starts.first().copied().unwrap_or(0), 0);
        debug_assert_eq!(
            starts.last().map_or(0, |&last| last as usize),
            entries.len()
        );
        Self { starts, entries }
    }

    /// The user's memberships, sorted by slot.
    #[inline]
    pub fn entries_of(&self, ordinal: u32) -> EntrySlice<'_> {
        let ordinal = ordinal as usize;
        let start = self.starts[ordinal] as usize;
        let end = self.starts[ordinal + 1] as usize;
        self.entries.slice(start..end)
    }

    /// Reads the index start of `ordinal` and drops it, to bring its cache
    /// line in while the caller does independent work (see
    /// `LoadedPack::user_entries`). Past the end it reads nothing.
    #[inline]
    pub fn touch_start(&self, ordinal: usize) {
        if let Some(&start) = self.starts.get(ordinal) {
            std::hint::black_box(start);
        }
    }

    /// The membership of one user in one segment slot, if any.
    #[inline]
    pub fn entry(&self, ordinal: u32, slot: u16) -> Option<IndexEntry> {
        // A binary search with no data-dependent branch (it selects, with a
        // fixed number of steps for a length), as std's: it beat the linear
        // count of smaller slots this used for short lists, 34 vs 59 ns a
        // probe over 5-40 entries in a side-by-side micro-benchmark, and a
        // `Decide` makes ~150 probes (callgrind: `membership` was ~40 % of
        // `decide`).
        self.entries_of(ordinal).find(slot)
    }

    pub fn memberships(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Heap bytes held, for status and memory accounting (0 when served from
    /// a mapped pack file).
    pub fn heap_bytes(&self) -> usize {
        self.starts.heap_bytes() + self.entries.heap_bytes()
    }
}
