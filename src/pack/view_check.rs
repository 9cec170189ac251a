//! The checked load's one pass over a format-v2 pack: the whole-file xxh3
//! and the structural checks of the served sections (see `format_v2`, "What
//! a checked load verifies"), block by block, each block checked right after
//! it is hashed, while it is still in cache. Before, the checksum and each
//! check read the sections again (five passes over the index entries and
//! starts); at 200M memberships that is gigabytes of memory traffic.
//!
//! The checks run over bytes not yet known to match the checksum, so they
//! only read in bounds (every index is clamped or checked) and only record
//! what they find, without branching on it; [`Findings`] says what failed
//! once the pass is done, and the caller reports a checksum failure before
//! any structural one. Naming the first bad value (for the error message) is
//! left to slow code that runs only when a check failed.

use std::ops::Range;

use xxhash_rust::xxh3::Xxh3;

use super::entries::{ENTRY_SLACK, EntryLayout};

/// Bytes hashed, then checked, at a time: well inside a core's L2 (2 MiB
/// here), so the checks read what the hash just brought in.
pub(super) const BLOCK_BYTES: usize = 64 * 1024;

/// The served sections, typed, over bytes whose ranges were checked against
/// the section table (in bounds, aligned, as long as the header's counts say).
pub(super) struct Served<'a> {
    pub fingerprints: &'a [u64],
    pub directory: &'a [u32],
    pub radix_bits: u32,
    pub starts: &'a [u32],
    /// `entry_count` entries, then [`ENTRY_SLACK`] readable bytes.
    pub entry_bytes: &'a [u8],
    pub entry_count: usize,
    pub layout: EntryLayout,
}

/// What the checks need of the segment table; `None` when it did not parse
/// (every slot then lands in the one tally past the end, unused).
pub(super) struct SlotRules<'a> {
    pub has_recency: &'a [bool],
}

/// What the pass found. Each flag is `true` when its rule is broken.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Findings {
    pub checksum_matches: bool,
    pub fingerprints_disordered: bool,
    pub directory_wrong: bool,
    pub starts_decrease: bool,
    /// Places where an entry's slot is not above the one before it...
    pub descents: usize,
    /// ...and how many of them are user boundaries.
    pub descents_at_boundaries: usize,
    /// Per slot (then one more for every slot at or past the segment
    /// count): entries in the low 32 bits, entries with a nonzero
    /// `hours_ago` in the high 32. Empty when the slots were not tallied.
    pub tally: Vec<u64>,
}

impl Findings {
    pub fn disorder_within_a_user(&self) -> bool {
        self.descents != self.descents_at_boundaries
    }
}

/// The file's bytes fed to one hasher in order, up to a position at a time.
struct InOrder<'a> {
    all: &'a [u8],
    hasher: Xxh3,
    done: usize,
}

impl InOrder<'_> {
    fn up_to(&mut self, end: usize) {
        if end > self.done {
            self.hasher.update(&self.all[self.done..end]);
            self.done = end;
        }
    }
}

/// Hashes every byte before the file checksum and checks the served
/// sections on the way, `block_bytes` at a time (what is found does not
/// depend on it). `sections[i]` are the byte ranges of `served`'s
/// fingerprints, directory, starts and entries, in file order.
pub(super) fn hash_and_check(
    all: &[u8],
    sections: [Range<usize>; 4],
    served: &Served<'_>,
    rules: Option<&SlotRules<'_>>,
    block_bytes: usize,
) -> Findings {
    let checksum_start = all.len().saturating_sub(8);
    let mut hashing = InOrder {
        all: &all[..checksum_start],
        hasher: Xxh3::new(),
        done: 0,
    };
    let [fingerprint_bytes, directory_bytes, start_bytes, entry_bytes] = sections;

    let mut fingerprints_disordered = false;
    in_blocks(&mut hashing, fingerprint_bytes, 8, block_bytes, |records| {
        fingerprints_disordered |= any_not_ascending(served.fingerprints, records);
    });
    let mut directory_wrong = !directory_spans_users(served);
    in_blocks(&mut hashing, directory_bytes, 4, block_bytes, |records| {
        directory_wrong |= any_decreasing(served.directory, records.clone());
        directory_wrong |= any_bucket_misplaced(served, records);
    });
    let mut starts_decrease = false;
    in_blocks(&mut hashing, start_bytes, 4, block_bytes, |records| {
        starts_decrease |= any_decreasing(served.starts, records);
    });

    let slot_count = rules.map_or(0, |rules| rules.has_recency.len());
    let mut tally = EntryTally::new(slot_count);
    in_blocks(
        &mut hashing,
        entry_bytes,
        served.layout.bytes(),
        block_bytes,
        |records| {
            tally.entries(served, records.clone());
            tally.boundaries_before(served, records.end);
        },
    );
    tally.boundaries_before(served, usize::MAX);
    hashing.up_to(checksum_start);

    let stored = all.get(checksum_start..).unwrap_or(&[]);
    Findings {
        checksum_matches: stored.len() == 8 && stored == hashing.hasher.digest().to_le_bytes(),
        fingerprints_disordered,
        directory_wrong,
        starts_decrease,
        descents: tally.descents(served),
        descents_at_boundaries: tally.descents_at_boundaries,
        tally: if rules.is_some() {
            tally.per_slot()
        } else {
            Vec::new()
        },
    }
}

/// Hashes `range` (a section of `record_bytes`-byte records) block by block
/// and hands each block's record indices to `check`, after hashing it.
fn in_blocks(
    hashing: &mut InOrder<'_>,
    range: Range<usize>,
    record_bytes: usize,
    block_bytes: usize,
    mut check: impl FnMut(Range<usize>),
) {
    hashing.up_to(range.start);
    let records = (range.end - range.start) / record_bytes;
    let per_block = (block_bytes / record_bytes).max(1);
    let mut first = 0;
    while first < records {
        let end = records.min(first + per_block);
        hashing.up_to(range.start + end * record_bytes);
        check(first..end);
        first = end;
    }
    hashing.up_to(range.end);
}

/// Whether some value in `records` is not above the one before it (the
/// one before the block included).
fn any_not_ascending(values: &[u64], records: Range<usize>) -> bool {
    let from = records.start.saturating_sub(1);
    let block = &values[from..records.end];
    block
        .iter()
        .zip(&block[1.min(block.len())..])
        .fold(false, |bad, (a, b)| bad | (a >= b))
}

fn any_decreasing(values: &[u32], records: Range<usize>) -> bool {
    let from = records.start.saturating_sub(1);
    let block = &values[from..records.end];
    block
        .iter()
        .zip(&block[1.min(block.len())..])
        .fold(false, |bad, (a, b)| bad | (a > b))
}

/// The directory's first entry is 0 and its last the user count.
fn directory_spans_users(served: &Served<'_>) -> bool {
    let directory = served.directory;
    directory.first() == Some(&0)
        && directory.last().map(|&last| last as usize) == Some(served.fingerprints.len())
}

/// Whether, among buckets `buckets`, some non-empty bucket's first or last
/// user is not in that bucket. With ascending fingerprints and a monotone
/// directory spanning the users (checked beside), that is exactly "some
/// user is outside its bucket's range": the directory is the one derived
/// from the fingerprints iff this is false for every bucket. Two reads per
/// bucket (~4 users) instead of a directory probe per user.
fn any_bucket_misplaced(served: &Served<'_>, buckets: Range<usize>) -> bool {
    let fingerprints = served.fingerprints;
    let directory = served.directory;
    let Some(last_user) = fingerprints.len().checked_sub(1) else {
        return false; // no users: spanning 0..0 means every entry is 0
    };
    // The last directory entry is the end, not a bucket.
    let buckets = buckets.start..buckets.end.min(directory.len() - 1);
    // `(f >> 1) >> (63 - bits)` is the top `bits` bits, 0 for 0 bits.
    let shift = 63 - served.radix_bits;
    let bucket_of = |user: usize| (fingerprints[user.min(last_user)] >> 1) >> shift;
    buckets.fold(false, |bad, bucket| {
        let (first, end) = (directory[bucket] as usize, directory[bucket + 1] as usize);
        let not_empty = first < end;
        let first_elsewhere = bucket_of(first) != bucket as u64;
        let last_elsewhere = bucket_of(end.wrapping_sub(1)) != bucket as u64;
        bad | (not_empty & (first_elsewhere | last_elsewhere))
    })
}

/// Counts over the index entries, accumulated block by block.
struct EntryTally {
    /// Per slot, four lanes of tallies (see `Findings::tally`), summed at the end.
    lanes: Vec<u64>,
    previous_slot: u32,
    descents: usize,
    descents_at_boundaries: usize,
    /// The next interior user boundary (`starts[1..users]`) to look at.
    next_boundary: usize,
    previous_boundary: usize,
}

impl EntryTally {
    fn new(slot_count: usize) -> EntryTally {
        EntryTally {
            lanes: vec![0; 4 * (slot_count + 1)],
            // Above every slot: the first entry counts as a descent, which
            // `descents()` takes off again.
            previous_slot: u32::MAX,
            descents: 0,
            descents_at_boundaries: 0,
            next_boundary: 1,
            previous_boundary: 0,
        }
    }

    /// Places where an entry's slot is not above the one before it.
    fn descents(&self, served: &Served<'_>) -> usize {
        self.descents - usize::from(served.entry_count > 0)
    }

    /// Tallies entries `records`: descents, and per slot the entries and
    /// those with a last-seen time.
    fn entries(&mut self, served: &Served<'_>, records: Range<usize>) {
        match served.layout.bytes() {
            1 => self.entries_of_width::<1>(served, records),
            2 => self.entries_of_width::<2>(served, records),
            3 => self.entries_of_width::<3>(served, records),
            _ => self.entries_of_width::<4>(served, records),
        }
    }

    fn entries_of_width<const WIDTH: usize>(&mut self, served: &Served<'_>, records: Range<usize>) {
        let layout = served.layout;
        let bytes = &served.entry_bytes[records.start * WIDTH..records.end * WIDTH + ENTRY_SLACK];
        let hours_in_place = layout.hours_mask_in_place();
        // Per slot four lanes side by side: consecutive entries of one slot
        // (across users) do not wait on each other's increment.
        let (table, _) = self.lanes.as_chunks_mut::<4>();
        let limit = table.len() - 1;
        let mut previous = self.previous_slot;
        let mut descents = 0usize;
        let mut step = |word: u32, lane: usize| {
            let slot = layout.slot_of(word);
            descents += usize::from(slot <= previous);
            previous = slot;
            let with_time = u64::from(word & hours_in_place != 0) << 32;
            // Slots past the table land in the last tally, an error later.
            table[(slot as usize).min(limit)][lane] += 1 | with_time;
        };
        let word_at = |bytes: &[u8], at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let count = records.end - records.start;
        let mut index = 0;
        // Four entries from one 16-byte window: one bounds check a quad.
        while index + 4 <= count && index * WIDTH + 16 <= bytes.len() {
            let quad: &[u8; 16] = bytes[index * WIDTH..index * WIDTH + 16]
                .try_into()
                .expect("16 bytes");
            step(word_at(quad, 0), 0);
            step(word_at(quad, WIDTH), 1);
            step(word_at(quad, 2 * WIDTH), 2);
            step(word_at(quad, 3 * WIDTH), 3);
            index += 4;
        }
        while index < count {
            step(word_at(bytes, index * WIDTH), 0);
            index += 1;
        }
        self.previous_slot = previous;
        self.descents += descents;
    }

    /// Counts the descents at interior user boundaries before entry `end`
    /// (all that are left, for `usize::MAX`): a boundary `b` is the place
    /// between entries `b - 1` and `b`. Empty users share a boundary (each
    /// place counts once) and trailing ones sit at the end, which is no
    /// place. Reads entries at clamped indices, so starts that are not
    /// monotone (refused beside) cannot read out of bounds.
    fn boundaries_before(&mut self, served: &Served<'_>, end: usize) {
        let entry_count = served.entry_count;
        let starts = served.starts;
        let interior_end = starts.len().saturating_sub(1);
        if entry_count < 2 {
            self.next_boundary = interior_end;
            return;
        }
        let layout = served.layout;
        let width = layout.bytes();
        let bytes = served.entry_bytes;
        let mut user = self.next_boundary;
        let mut previous = self.previous_boundary;
        let mut counted = 0usize;
        while user < interior_end && (starts[user] as usize) < end {
            let boundary = starts[user] as usize;
            let place = boundary.clamp(1, entry_count - 1);
            let counts = (boundary != previous) & (boundary > 0) & (boundary < entry_count);
            // Entries `place - 1` and `place` in one 8-byte load (the slack
            // covers it, whatever the width).
            let at = (place - 1) * width;
            let two = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let before = layout.slot_of(two as u32);
            let after = layout.slot_of((two >> (8 * width)) as u32);
            counted += usize::from(counts & (after <= before));
            previous = boundary;
            user += 1;
        }
        // A start at or past `end` that is not monotone may stop the walk
        // early; `usize::MAX` finishes it.
        self.next_boundary = user;
        self.previous_boundary = previous;
        self.descents_at_boundaries += counted;
    }

    /// The four lanes summed: per slot, see `Findings::tally`.
    fn per_slot(&self) -> Vec<u64> {
        let (table, _) = self.lanes.as_chunks::<4>();
        table.iter().map(|lanes| lanes.iter().sum()).collect()
    }
}
