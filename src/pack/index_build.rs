//! Derives the serving tables of a pack from its segments: the user-major
//! index (per user ordinal, the user's segments and last-seen times) and the
//! radix directory over the user dictionary.
//!
//! The format-v2 writer stores what this builds, so a server maps it instead
//! of building it; a v1 pack has it built at load. Pure computation: no I/O.

use super::Pack;
use super::mapped::IndexEntry;

/// Memberships gathered per block of users: their entries (4 bytes each) and
/// the gathered list (8 bytes each) stay within a core's L2 cache.
const BLOCK_MEMBERSHIPS: u64 = 32 * 1024;
/// Below this many memberships one thread builds the index: spawning costs
/// more than it saves.
const PARALLEL_MIN_MEMBERSHIPS: u64 = 2_000_000;
/// At most this many threads build one index.
const MAX_BUILD_THREADS: usize = 4;

const EMPTY_ENTRY: IndexEntry = IndexEntry {
    slot: 0,
    hours_ago: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("pack has {segments} segments, more than the {max} one pack may hold")]
    TooManySegments { segments: usize, max: usize },
    #[error("pack has {memberships} memberships, more than the {max} one pack may hold")]
    TooManyMemberships { memberships: u64, max: u64 },
}

impl From<IndexError> for super::PackError {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::TooManySegments { segments, max } => super::PackError::TooLarge {
                what: "segment count",
                found: segments as u64,
                limit: max as u64,
            },
            IndexError::TooManyMemberships { memberships, max } => super::PackError::TooLarge {
                what: "membership count",
                found: memberships,
                limit: max,
            },
        }
    }
}

/// How many threads an index build may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildThreads {
    /// Start-up: nothing is served yet, so finish as fast as possible.
    AllCores,
    /// A swap under load: leave the other cores to the requests being served.
    One,
}

/// The user-major index as built: `entries[starts[u]..starts[u + 1]]` are
/// user `u`'s memberships, sorted by slot ascending; `users + 1` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltIndex {
    pub starts: Vec<u32>,
    pub entries: Vec<IndexEntry>,
}

impl BuiltIndex {
    /// Builds the index with a counting sort done in blocks of users small
    /// enough that a block's entries stay in cache: the memberships of the
    /// block are gathered segment by segment (so in slot order), counted per
    /// user, then scattered within the block. Writing each user's slice
    /// straight from 1,000 bitmap passes would miss cache once per membership.
    /// Large packs are split into ordinal ranges built on separate threads.
    pub fn build(pack: &Pack) -> Result<Self, IndexError> {
        Self::build_on(pack, BuildThreads::AllCores)
    }

    /// [`BuiltIndex::build`] on at most the given threads.
    pub fn build_on(pack: &Pack, threads: BuildThreads) -> Result<Self, IndexError> {
        let threads = match threads {
            BuildThreads::AllCores if pack.memberships() >= PARALLEL_MIN_MEMBERSHIPS => {
                std::thread::available_parallelism()
                    .map(|count| count.get())
                    .unwrap_or(1)
                    .min(MAX_BUILD_THREADS)
            }
            BuildThreads::AllCores | BuildThreads::One => 1,
        };
        Self::build_with(pack, threads)
    }

    fn build_with(pack: &Pack, threads: usize) -> Result<Self, IndexError> {
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
        let users = pack.user_fingerprints.len() as u32;
        // About BLOCK_MEMBERSHIPS memberships per block, whatever the density.
        let per_user = (memberships / u64::from(users.max(1))).max(1);
        // A power of two, so blocks never straddle a roaring container (2^16).
        let block_users = (BLOCK_MEMBERSHIPS / per_user).clamp(256, 1 << 16) as u32;
        let block_users = 1u32 << (31 - block_users.leading_zeros());

        // Ordinal ranges of about equal membership counts, one per thread,
        // cut at block boundaries.
        let mut cuts = vec![0u32];
        for part in 1..threads.max(1) as u64 {
            let wanted = memberships * part / threads as u64;
            let cut = ordinal_with_memberships_before(pack, users, wanted);
            let cut = (cut / block_users * block_users).max(*cuts.last().unwrap_or(&0));
            cuts.push(cut);
        }
        cuts.push(users);
        cuts.dedup();

        let mut starts = vec![0u32; users as usize + 1];
        let mut entries = vec![EMPTY_ENTRY; memberships as usize];
        let mut ranges = Vec::with_capacity(cuts.len() - 1);
        let mut rest_ends: &mut [u32] = &mut starts[1..];
        let mut rest_entries: &mut [IndexEntry] = &mut entries;
        for pair in cuts.windows(2) {
            let (first_user, end_user) = (pair[0], pair[1]);
            let range_memberships = memberships_in(pack, first_user, end_user) as usize;
            let (ends, more_ends) = rest_ends.split_at_mut((end_user - first_user) as usize);
            let (range_entries, more_entries) = rest_entries.split_at_mut(range_memberships);
            rest_ends = more_ends;
            rest_entries = more_entries;
            let first_entry =
                (memberships as usize - range_memberships - rest_entries.len()) as u32;
            ranges.push((first_user..end_user, first_entry, ends, range_entries));
        }
        debug_assert!(rest_entries.is_empty() && rest_ends.is_empty());
        if ranges.len() == 1 {
            for (users, first_entry, ends, entries) in ranges {
                build_range(pack, users, block_users, first_entry, ends, entries);
            }
        } else {
            std::thread::scope(|scope| {
                for (users, first_entry, ends, entries) in ranges {
                    scope.spawn(move || {
                        build_range(pack, users, block_users, first_entry, ends, entries)
                    });
                }
            });
        }
        Ok(Self { starts, entries })
    }

    /// The user's memberships, sorted by slot.
    pub fn entries_of(&self, ordinal: u32) -> &[IndexEntry] {
        let ordinal = ordinal as usize;
        &self.entries[self.starts[ordinal] as usize..self.starts[ordinal + 1] as usize]
    }
}

/// Memberships of users `first_user..end_user` over all segments.
fn memberships_in(pack: &Pack, first_user: u32, end_user: u32) -> u64 {
    if first_user >= end_user {
        return 0;
    }
    pack.segments
        .iter()
        .map(|segment| segment.members.range_cardinality(first_user..end_user))
        .sum()
}

/// The smallest ordinal with at least `wanted` memberships before it (by
/// bisection over the ordinal range; each step costs one rank per segment).
fn ordinal_with_memberships_before(pack: &Pack, users: u32, wanted: u64) -> u32 {
    let (mut low, mut high) = (0u32, users);
    while low < high {
        let middle = low + (high - low) / 2;
        if memberships_in(pack, 0, middle) < wanted {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// Members read from a bitmap per `next_many` call.
const MEMBER_BATCH: usize = 256;

/// Fills the index for users `users`: `ends[i]` = end offset (in the whole
/// index) of user `users.start + i`'s entries; `entries` are exactly the
/// entries of those users, the first at offset `first_entry`.
///
/// Members are read with `range` + `next_many`, a bulk copy out of each
/// container: per-member `Iterator::next` on a roaring bitmap cost about 45
/// instructions a member (callgrind), more than all the rest of the build.
fn build_range(
    pack: &Pack,
    users: std::ops::Range<u32>,
    block_users: u32,
    first_entry: u32,
    ends: &mut [u32],
    entries: &mut [IndexEntry],
) {
    // Per segment: members before the current block, i.e. the recency
    // column's index of the next member.
    let mut ranks: Vec<usize> = pack
        .segments
        .iter()
        .map(|segment| segment.members.range_cardinality(..users.start) as usize)
        .collect();
    // Segments with no member in the range are skipped without a lookup.
    let bounds: Vec<Option<(u32, u32)>> = pack
        .segments
        .iter()
        .map(|segment| segment.members.min().zip(segment.members.max()))
        .collect();
    // (user offset in block, entry), in slot order within each user.
    let mut gathered: Vec<(u32, IndexEntry)> = Vec::with_capacity(BLOCK_MEMBERSHIPS as usize * 2);
    let mut next_position = vec![0u32; block_users as usize];
    let mut batch = [0u32; MEMBER_BATCH];
    let mut written = 0u32;
    let mut block_start = users.start;
    while block_start < users.end {
        let block_end = users.end.min(block_start.saturating_add(block_users));
        let block_len = (block_end - block_start) as usize;
        gathered.clear();
        let counts = &mut next_position[..block_len];
        counts.fill(0);
        for (slot, segment) in pack.segments.iter().enumerate() {
            match bounds[slot] {
                Some((min, max)) if max >= block_start && min < block_end => {}
                _ => continue,
            }
            let hours = segment.last_seen_hours_ago.as_deref().unwrap_or(&[]);
            let slot_u16 = slot as u16;
            let mut rank = ranks[slot];
            let mut members = segment.members.range(block_start..block_end);
            loop {
                let ordinals = members.next_many(&mut batch);
                if ordinals.is_empty() {
                    break;
                }
                for &ordinal in ordinals.iter() {
                    let in_block = ordinal - block_start;
                    counts[in_block as usize] += 1;
                    gathered.push((
                        in_block,
                        IndexEntry {
                            slot: slot_u16,
                            hours_ago: hours.get(rank).copied().unwrap_or(0),
                        },
                    ));
                    rank += 1;
                }
            }
            ranks[slot] = rank;
        }
        // Counts become each user's first position in `entries`.
        let block_ends = &mut ends[(block_start - users.start) as usize..][..block_len];
        for (count, end) in counts.iter_mut().zip(block_ends) {
            let user_count = *count;
            *count = written;
            written += user_count;
            *end = first_entry + written;
        }
        for &(in_block, entry) in &gathered {
            let position = &mut counts[in_block as usize];
            entries[*position as usize] = entry;
            *position += 1;
        }
        block_start = block_end;
    }
    debug_assert_eq!(written as usize, entries.len());
}

/// Most bits of the fingerprint the radix directory indexes (1 GiB of
/// directory, for a billion users).
pub const MAX_RADIX_BITS: u32 = 28;
/// The directory has about one bucket per this many users: 4 users are 32
/// bytes of fingerprints, so a bucket is one cache line (rarely two), and the
/// directory costs about a byte per user. With a fixed 16-bit directory a
/// 10M-user pack had ~150 users a bucket: a binary search over 1.2 KB, four
/// or five cache misses instead of two.
const USERS_PER_BUCKET: usize = 4;

/// How many top bits of a fingerprint the directory of `user_count` users indexes.
pub fn radix_bits_for(user_count: usize) -> u32 {
    (usize::BITS - (user_count / USERS_PER_BUCKET).leading_zeros()).min(MAX_RADIX_BITS)
}

/// The bucket of a fingerprint under `radix_bits` (a shift of 64, for 0
/// bits, means the one bucket 0).
#[inline]
pub fn bucket_of(fingerprint: u64, radix_bits: u32) -> usize {
    fingerprint.checked_shr(64 - radix_bits).unwrap_or(0) as usize
}

/// The radix directory over fingerprints sorted strictly ascending:
/// `starts[b]` is the first index whose fingerprint's bucket is `>= b`; it
/// has `2^radix_bits + 1` entries, the last one = the user count.
pub fn radix_directory(fingerprints: &[u64], radix_bits: u32) -> Vec<u32> {
    debug_assert!(fingerprints.windows(2).all(|pair| pair[0] < pair[1]));
    let bucket_count = 1usize << radix_bits;
    let mut starts = Vec::with_capacity(bucket_count + 1);
    let mut index = 0usize;
    for bucket in 0..bucket_count {
        while index < fingerprints.len() && bucket_of(fingerprints[index], radix_bits) < bucket {
            index += 1;
        }
        starts.push(index as u32);
    }
    starts.push(fingerprints.len() as u32);
    starts
}

#[cfg(test)]
mod tests {
    use roaring::RoaringBitmap;

    use super::*;
    use crate::pack::Segment;

    /// A pack over `users` users with segments of very different densities,
    /// some with recency, one empty.
    fn varied_pack(users: u32) -> Pack {
        let densities = [1u32, 2, 3, 7, 50, 997, 40_000, u32::MAX];
        let segments = densities
            .iter()
            .enumerate()
            .map(|(index, &one_in)| {
                let members: RoaringBitmap = (0..users)
                    .filter(|ordinal| {
                        one_in != u32::MAX
                            && (ordinal.wrapping_mul(2_654_435_761) >> 7) % one_in == 0
                    })
                    .collect();
                let hours = (index % 2 == 0).then(|| {
                    (0..members.len())
                        .map(|rank| (rank * 7 + index as u64) as u16)
                        .collect()
                });
                Segment {
                    id: index as u32 * 10 + 1,
                    name: format!("s{index}"),
                    kind: String::new(),
                    ttl_seconds: 0,
                    members,
                    last_seen_hours_ago: hours,
                }
            })
            .collect();
        Pack {
            name: "index-test".into(),
            version: "v1".into(),
            built_at_unix_seconds: 0,
            user_fingerprints: (0..u64::from(users)).collect(),
            segments,
        }
    }

    /// The index as the definition says: per user, per slot ascending.
    fn reference(pack: &Pack) -> Vec<Vec<IndexEntry>> {
        (0..pack.user_fingerprints.len() as u32)
            .map(|ordinal| {
                pack.segments
                    .iter()
                    .enumerate()
                    .filter(|(_, segment)| segment.members.contains(ordinal))
                    .map(|(slot, segment)| {
                        let rank = segment.members.rank(ordinal) as usize - 1;
                        IndexEntry {
                            slot: slot as u16,
                            hours_ago: segment
                                .last_seen_hours_ago
                                .as_ref()
                                .map_or(0, |hours| hours[rank]),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn blocked_and_parallel_builds_match_the_definition() {
        for users in [0u32, 1, 300, 70_000] {
            let pack = varied_pack(users);
            let expected = reference(&pack);
            for threads in [1, 2, 3] {
                let index = BuiltIndex::build_with(&pack, threads).expect("builds");
                assert_eq!(index.entries.len() as u64, pack.memberships());
                for (ordinal, expected) in expected.iter().enumerate() {
                    assert_eq!(
                        index.entries_of(ordinal as u32),
                        expected.as_slice(),
                        "user {ordinal} of {users}, {threads} threads"
                    );
                }
            }
        }
    }
}
