//! One pack as the server holds it: metadata, the user dictionary and the
//! user-major index. The bitmaps are not used: the index answers every query.
//! A format-v2 pack is served in place from its (mapped) file; a v1 pack has
//! its tables built at load and its bitmaps freed.

use super::dictionary::UserDictionary;
use super::index::{BuildThreads, EntrySlice, IndexEntry, IndexError, UserMajorIndex};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pack::{self, Pack, PackBytes, PackError, PackView};

/// What the server keeps of a segment besides its memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub id: u32,
    pub name: String,
    pub kind: String,
    /// 0 = no TTL.
    pub ttl_seconds: u32,
    pub members: u64,
}

#[derive(Debug)]
pub struct LoadedPack {
    pub name: String,
    pub version: String,
    pub built_at_unix_seconds: i64,
    pub loaded_at_unix_seconds: i64,
    /// Size of the pack file this was read from.
    pub file_bytes: u64,
    /// Sorted by id ascending; a segment's slot is its index here.
    pub segments: Vec<SegmentMeta>,
    dictionary: UserDictionary,
    index: UserMajorIndex,
    /// Per segment slot: membership checks answered yes, for metrics. Relaxed
    /// atomics: no lock and no allocation on the hot path.
    match_counts: Box<[AtomicU64]>,
}

impl LoadedPack {
    /// Derives the lookup tables on all cores; consumes the pack so its
    /// bitmaps are freed.
    pub fn from_pack(
        pack: Pack,
        file_bytes: u64,
        loaded_at_unix_seconds: i64,
    ) -> Result<Self, IndexError> {
        Self::from_pack_on(
            pack,
            file_bytes,
            loaded_at_unix_seconds,
            BuildThreads::AllCores,
        )
    }

    /// [`LoadedPack::from_pack`] with the index built on at most `threads`.
    pub fn from_pack_on(
        pack: Pack,
        file_bytes: u64,
        loaded_at_unix_seconds: i64,
        threads: BuildThreads,
    ) -> Result<Self, IndexError> {
        let index = UserMajorIndex::build_on(&pack, threads)?;
        let segments = pack
            .segments
            .iter()
            .map(|segment| SegmentMeta {
                id: segment.id,
                name: segment.name.clone(),
                kind: segment.kind.clone(),
                ttl_seconds: segment.ttl_seconds,
                members: segment.members.len(),
            })
            .collect::<Vec<SegmentMeta>>();
        let match_counts = segments.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            name: pack.name,
            version: pack.version,
            built_at_unix_seconds: pack.built_at_unix_seconds,
            loaded_at_unix_seconds,
            file_bytes,
            segments,
            dictionary: UserDictionary::new(pack.user_fingerprints),
            index,
            match_counts,
        })
    }

    /// Loads pack bytes of either format with a checked load: v2 is served
    /// in place from `bytes` (see [`LoadedPack::from_view`]); v1 is read
    /// whole and indexed on `threads`, after which `bytes` may be dropped.
    pub fn from_bytes(
        bytes: Arc<PackBytes>,
        loaded_at_unix_seconds: i64,
        threads: BuildThreads,
    ) -> Result<Self, PackError> {
        if pack::format_version_of(bytes.as_bytes())? == pack::FORMAT_VERSION_V1 {
            let pack = pack::read_pack(bytes.as_bytes())?;
            let file_bytes = bytes.len() as u64;
            drop(bytes);
            return Ok(Self::from_pack_on(
                pack,
                file_bytes,
                loaded_at_unix_seconds,
                threads,
            )?);
        }
        let view = PackView::open(bytes)?;
        Ok(Self::from_view(view, loaded_at_unix_seconds))
    }

    /// Serves a checked v2 pack in place: the dictionary and index are
    /// columns of its bytes, nothing is decoded or copied but the segment
    /// table. The pages lookups never read (bitmaps) are released.
    pub fn from_view(view: PackView, loaded_at_unix_seconds: i64) -> Self {
        let segments: Vec<SegmentMeta> = view
            .segments()
            .iter()
            .map(|segment| SegmentMeta {
                id: segment.id,
                name: segment.name.clone(),
                kind: segment.kind.clone(),
                ttl_seconds: segment.ttl_seconds,
                members: u64::from(segment.member_count),
            })
            .collect();
        let match_counts = segments.iter().map(|_| AtomicU64::new(0)).collect();
        let dictionary = UserDictionary::from_columns(
            view.fingerprints(),
            view.radix_directory(),
            view.radix_bits(),
        );
        let index = UserMajorIndex::from_columns(view.index_starts(), view.index_entries());
        view.release_unserved();
        Self {
            name: view.header.name.clone(),
            version: view.header.version.clone(),
            built_at_unix_seconds: view.header.built_at_unix_seconds,
            loaded_at_unix_seconds,
            file_bytes: view.file_bytes() as u64,
            segments,
            dictionary,
            index,
            match_counts,
        }
    }

    /// Counts one positive membership answer for the segment in `slot`.
    #[inline]
    pub fn count_match(&self, slot: u16) {
        if let Some(counter) = self.match_counts.get(slot as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Positive membership answers for the segment in `slot` so far,
    /// including those carried over from earlier versions of the pack.
    pub fn match_count(&self, slot: usize) -> u64 {
        self.match_counts
            .get(slot)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Starts this version's match counters where `previous` (an earlier
    /// version of the same pack) stands, segment by segment, so the exported
    /// counters do not reset on every push. Matches that `previous` counts
    /// after this call (in-flight requests until the swap) are not carried.
    pub fn carry_match_counts_from(&self, previous: &LoadedPack) {
        for (slot, segment) in self.segments.iter().enumerate() {
            if let Ok(previous_slot) = previous
                .segments
                .binary_search_by_key(&segment.id, |meta| meta.id)
            {
                self.match_counts[slot]
                    .store(previous.match_count(previous_slot), Ordering::Relaxed);
            }
        }
    }

    pub fn users(&self) -> u64 {
        self.dictionary.len() as u64
    }

    pub fn memberships(&self) -> u64 {
        self.index.memberships()
    }

    /// Heap bytes of the lookup tables.
    pub fn heap_bytes(&self) -> usize {
        self.dictionary.heap_bytes() + self.index.heap_bytes()
    }

    #[inline]
    pub fn ordinal(&self, fingerprint: u64) -> Option<u32> {
        self.dictionary.ordinal(fingerprint)
    }

    /// A user's entries, or `None` when the pack does not know them.
    ///
    /// Once the radix bucket is read, the fingerprint search and the index
    /// starts of the bucket's users are independent reads, each a cache miss
    /// on a pack bigger than the caches. Touching the bucket's first start
    /// before the search lets memory serve both at once (the user's own start
    /// is almost always on the same line: a bucket holds ~4 users), so a user
    /// costs three misses in a row instead of four.
    #[inline]
    pub fn user_entries(&self, fingerprint: u64) -> Option<EntrySlice<'_>> {
        let candidates = self.dictionary.candidates(fingerprint);
        self.index.touch_start(candidates.start);
        let ordinal = self.dictionary.rank_among(fingerprint, candidates)?;
        Some(self.index.entries_of(ordinal))
    }

    #[inline]
    pub fn entries_of(&self, ordinal: u32) -> EntrySlice<'_> {
        self.index.entries_of(ordinal)
    }

    #[inline]
    pub fn entry(&self, ordinal: u32, slot: u16) -> Option<IndexEntry> {
        self.index.entry(ordinal, slot)
    }

    /// Whether a membership counts at `at`: within the asked maximum age
    /// (0 = any) and within the segment's TTL (0 = none). A last-seen time in
    /// the future is age 0.
    #[inline]
    pub fn counts(
        &self,
        slot: u16,
        entry: IndexEntry,
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> bool {
        let last_seen = pack::last_seen_from_hours_ago(self.built_at_unix_seconds, entry.hours_ago);
        let age_seconds = at_unix_seconds.saturating_sub(last_seen).max(0);
        let ttl_seconds = self.segments[slot as usize].ttl_seconds;
        (max_age_seconds == 0 || age_seconds <= max_age_seconds as i64)
            && (ttl_seconds == 0 || age_seconds <= ttl_seconds as i64)
    }
}
