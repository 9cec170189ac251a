//! The user-major index of one loaded pack: per user ordinal, the user's
//! segments (as slots into the pack's segment table) with their last-seen times.
//!
//! "All segments of this user" and short listed lookups become one scan of a
//! short slice instead of a probe per bitmap. The times live here too, so
//! recency needs no second copy; the bitmaps are dropped after the build.

use crate::pack::Pack;

/// One membership: which segment of the pack, and how long before the pack's
/// build time the member was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Index into the pack's segment table.
    pub slot: u16,
    /// Hours before the pack's build time (rounded toward older).
    pub hours_ago: u16,
}

#[derive(Debug)]
pub struct UserMajorIndex {
    /// `entries[starts[ordinal]..starts[ordinal + 1]]` are the user's
    /// memberships, sorted by slot ascending; `users + 1` values.
    starts: Vec<u32>,
    entries: Vec<IndexEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("pack has {segments} segments, more than the {max} one pack may hold")]
    TooManySegments { segments: usize, max: usize },
    #[error("pack has {memberships} memberships, more than the {max} one pack may hold")]
    TooManyMemberships { memberships: u64, max: u64 },
}

impl UserMajorIndex {
    /// Builds the index with a counting sort: one pass to count each user's
    /// memberships, one to place them. Segments are visited in slot order, so
    /// each user's entries come out sorted by slot without a sort.
    pub fn build(pack: &Pack) -> Result<Self, IndexError> {
        if pack.segments.len() > u16::MAX as usize + 1 {
            return Err(IndexError::TooManySegments {
                segments: pack.segments.len(),
                max: u16::MAX as usize + 1,
            });
        }
        let memberships = pack.memberships();
        if memberships > u32::MAX as u64 {
            return Err(IndexError::TooManyMemberships {
                memberships,
                max: u32::MAX as u64,
            });
        }
        let users = pack.user_fingerprints.len();
        let mut starts = vec![0u32; users + 1];
        for segment in &pack.segments {
            for ordinal in segment.members.iter() {
                starts[ordinal as usize + 1] += 1;
            }
        }
        for ordinal in 0..users {
            starts[ordinal + 1] += starts[ordinal];
        }
        let mut next_free: Vec<u32> = starts[..users].to_vec();
        let mut entries = vec![
            IndexEntry {
                slot: 0,
                hours_ago: 0
            };
            memberships as usize
        ];
        for (slot, segment) in pack.segments.iter().enumerate() {
            let slot = slot as u16;
            let hours: &[u16] = segment.last_seen_hours_ago.as_deref().unwrap_or(&[]);
            for (rank, ordinal) in segment.members.iter().enumerate() {
                let position = &mut next_free[ordinal as usize];
                entries[*position as usize] = IndexEntry {
                    slot,
                    hours_ago: hours.get(rank).copied().unwrap_or(0),
                };
                *position += 1;
            }
        }
        Ok(Self { starts, entries })
    }

    /// The user's memberships, sorted by slot.
    #[inline]
    pub fn entries_of(&self, ordinal: u32) -> &[IndexEntry] {
        let ordinal = ordinal as usize;
        let start = self.starts[ordinal] as usize;
        let end = self.starts[ordinal + 1] as usize;
        &self.entries[start..end]
    }

    /// The membership of one user in one segment slot, if any.
    #[inline]
    pub fn entry(&self, ordinal: u32, slot: u16) -> Option<IndexEntry> {
        let entries = self.entries_of(ordinal);
        // Most users hold a few dozen segments: a linear scan of a short sorted
        // slice beats a binary search's unpredictable branches.
        if entries.len() <= 32 {
            return entries
                .iter()
                .find(|entry| entry.slot >= slot)
                .filter(|entry| entry.slot == slot)
                .copied();
        }
        entries
            .binary_search_by_key(&slot, |entry| entry.slot)
            .ok()
            .map(|position| entries[position])
    }

    pub fn memberships(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Heap bytes held, for status and memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4 + self.entries.capacity() * std::mem::size_of::<IndexEntry>()
    }
}
