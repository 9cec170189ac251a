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
//!
//! Per block of entries the work is `entry_scan`'s (vectorized where the CPU
//! has AVX2): each entry costs a decode, a compare with the one before (a
//! descent sets the entry's bit), a max and one gathered weight of
//! [`SlotChecks`]'s randomized count and recency test. The index starts are
//! checked after the entries, against their descent bits
//! (`entry_scan::users`: a bit test per user, 8 users a step). The exact
//! per-slot histogram the weights replace (a load, an add and a store per
//! entry, ~13 instructions with the decode) and the byte per entry marked
//! at each user's start that the bit test replaces bounded earlier passes.

use std::hash::Hasher as _;
use std::ops::Range;

use twox_hash::XxHash3_64;

use rand::Rng;

use super::entries::EntryLayout;
use super::entry_scan::dictionary::{Dictionary, any_bucket_wrong, any_not_ascending};
use super::entry_scan::users::{DESCENT_SLACK, at_starts, count_descents};
use super::entry_scan::{Block, Scan, scan_block};

/// Bytes hashed, then checked, at a time: inside a core's L1 data cache
/// (48 KiB here), so the checks read what the hash just brought in without
/// going to L2 (64 KiB blocks loaded 1M memberships ~2 % slower, 8 KiB ones
/// slower again).
pub(super) const BLOCK_BYTES: usize = 16 * 1024;

/// The served sections, typed, over bytes whose ranges were checked against
/// the section table (in bounds, aligned, as long as the header's counts say).
pub(super) struct Served<'a> {
    pub fingerprints: &'a [u64],
    pub directory: &'a [u32],
    pub radix_bits: u32,
    pub starts: &'a [u32],
    /// `entry_count` entries, then [`ENTRY_SLACK`](super::entries::ENTRY_SLACK) readable bytes.
    pub entry_bytes: &'a [u8],
    pub entry_count: usize,
    pub layout: EntryLayout,
}

/// What the checks need of the segment table; `None` when it did not parse
/// (the slot rules are then not checked: the table's error comes first).
pub(super) struct SlotRules<'a> {
    pub has_recency: &'a [bool],
    pub member_counts: &'a [u32],
}

/// What the pass found. Each flag is `true` when its rule is broken.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Findings {
    pub checksum_matches: bool,
    pub fingerprints_disordered: bool,
    pub directory_wrong: bool,
    pub starts_decrease: bool,
    /// Some entry's slot is not above the one before it within a user
    /// (read with the starts as they are: meaningful once they passed).
    pub disorder_within_a_user: bool,
    /// Some entry's slot is at or past the segment count.
    pub slot_out_of_range: bool,
    /// Some entry has an `hours_ago` in a segment without recency, or the
    /// entries per slot are not the segment table's member counts: the
    /// randomized check of [`SlotChecks`] (a wrong "agree" has probability
    /// at most 2^-32; a "disagree" is always right).
    pub slots_disagree: bool,
}

/// The file's bytes fed to one hasher in order, up to a position at a time.
struct InOrder<'a> {
    all: &'a [u8],
    /// The same xxh3-64 (seed 0) as `xxhash_rust` computes everywhere else,
    /// from a crate that uses AVX2 where the CPU has it.
    hasher: XxHash3_64,
    done: usize,
}

impl InOrder<'_> {
    fn up_to(&mut self, end: usize) {
        if end > self.done {
            self.hasher.write(&self.all[self.done..end]);
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
        hasher: XxHash3_64::new(),
        done: 0,
    };
    let [fingerprint_bytes, directory_bytes, start_bytes, entry_bytes] = sections;

    let mut fingerprints_disordered = false;
    in_blocks(&mut hashing, fingerprint_bytes, 8, block_bytes, |records| {
        // The block's values and the one before it.
        let block = &served.fingerprints[records.start.saturating_sub(1)..records.end];
        fingerprints_disordered |= any_not_ascending(block);
    });
    let dictionary = Dictionary {
        fingerprints: served.fingerprints,
        directory: served.directory,
        radix_bits: served.radix_bits,
    };
    // The last entry is the user count; the others are checked per bucket
    // (`entry_scan::dictionary`).
    let mut directory_wrong =
        served.directory.last().map(|&last| last as usize) != Some(served.fingerprints.len());
    in_blocks(&mut hashing, directory_bytes, 4, block_bytes, |records| {
        directory_wrong |= any_bucket_wrong(&dictionary, records);
    });
    // Only hashed here: the starts are checked against the entries below.
    hashing.up_to(start_bytes.end);

    let mut entries = EntryChecks::new(rules, served.entry_count);
    in_blocks(
        &mut hashing,
        entry_bytes,
        served.layout.bytes(),
        block_bytes,
        |records| entries.block(served, records),
    );
    hashing.up_to(checksum_start);

    let stored = all.get(checksum_start..).unwrap_or(&[]);
    let at_starts = at_starts(served.starts, &entries.descents, served.entry_count);
    let (disorder_within_a_user, slot_out_of_range, slots_disagree) = entries.verdict(
        rules.is_some(),
        served.entry_count > 0,
        at_starts.descents_at_firsts,
    );
    Findings {
        checksum_matches: stored.len() == 8 && stored == hashing.hasher.finish().to_le_bytes(),
        fingerprints_disordered,
        directory_wrong,
        starts_decrease: at_starts.decrease,
        disorder_within_a_user,
        slot_out_of_range,
        slots_disagree,
    }
}

/// Hashes `range` (a section of `record_bytes`-byte records) block by block
/// and hands each block's record indices to `check`, after hashing it. A
/// block is a multiple of 8 records (so the entries' descent bits of
/// consecutive blocks fill whole bytes).
fn in_blocks(
    hashing: &mut InOrder<'_>,
    range: Range<usize>,
    record_bytes: usize,
    block_bytes: usize,
    mut check: impl FnMut(Range<usize>),
) {
    hashing.up_to(range.start);
    let records = (range.end - range.start) / record_bytes;
    let per_block = (block_bytes / record_bytes).max(1).next_multiple_of(8);
    let mut first = 0;
    while first < records {
        let end = records.min(first + per_block);
        hashing.up_to(range.start + end * record_bytes);
        check(first..end);
        first = end;
    }
    hashing.up_to(range.end);
}

/// The per-slot rules of the entries, over the whole pass: slots below the
/// segment count (exactly, by the largest slot), and — by one randomized
/// multiset test — recency only where flagged and the member counts of the
/// segment table.
///
/// Every load draws, from the thread's CSPRNG (`rand::rng()`, seeded by the
/// OS), uniform 32-bit weights: per slot `r[slot]` for its entries without
/// an `hours_ago`, and for those with one `r[slot]` again where the segment
/// has recency, an independent `y[slot]` where it has none. The entries'
/// weights must sum to `Σ member_count[slot] × r[slot]` (exactly: fewer
/// than 2^32 entries of 32-bit weights fit a `u64`). A file whose per-slot
/// counts or stray-recency entries differ from what the table allows makes
/// the difference of the two sums a nonzero linear form in the weights,
/// each coefficient below 2^32 in size; fixing every weight but one with a
/// nonzero coefficient leaves at most one of its 2^32 values that cancels
/// it. Such a file passes with probability at most 2^-32, drawn afresh at
/// every load, and its author cannot know the weights. A failure is named
/// by an exact count (`view::PackView::report`), with the errors of the
/// exact check. The fast test is one gathered load and one add per entry
/// and no store, where the exact per-slot tallies it replaces were a load,
/// an add and a store each.
struct SlotChecks {
    /// `weights[2 * slot + has_hours]`, then two zeros for every slot past them.
    weights: Vec<u32>,
    expected_sum: u64,
    segment_count: usize,
}

impl SlotChecks {
    fn new(rules: Option<&SlotRules<'_>>) -> SlotChecks {
        let Some(rules) = rules else {
            return SlotChecks {
                weights: vec![0, 0],
                expected_sum: 0,
                segment_count: 0,
            };
        };
        let mut rng = rand::rng();
        let mut weights = Vec::with_capacity(2 * rules.has_recency.len() + 2);
        let mut expected_sum = 0u64;
        for (&has_recency, &count) in rules.has_recency.iter().zip(rules.member_counts) {
            let (plain, stray): (u32, u32) = (rng.random(), rng.random());
            weights.push(plain);
            weights.push(if has_recency { plain } else { stray });
            expected_sum = expected_sum.wrapping_add(u64::from(plain) * u64::from(count));
        }
        weights.extend([0, 0]);
        SlotChecks {
            weights,
            expected_sum,
            segment_count: rules.has_recency.len(),
        }
    }
}

/// The entry rules over every block: the descent bits (checked against
/// the starts after the last block) and, where the segment table parsed,
/// the slot rules.
struct EntryChecks {
    slots: SlotChecks,
    /// Bit `i % 8` of byte `i / 8` is set iff entry `i` is a descent.
    descents: Vec<u8>,
    scan: Scan,
}

impl EntryChecks {
    fn new(rules: Option<&SlotRules<'_>>, entry_count: usize) -> EntryChecks {
        EntryChecks {
            slots: SlotChecks::new(rules),
            descents: vec![0; entry_count / 8 + DESCENT_SLACK],
            scan: Scan::new(),
        }
    }

    fn block(&mut self, served: &Served<'_>, records: Range<usize>) {
        let layout = served.layout;
        let width = layout.bytes();
        let block = Block {
            bytes: &served.entry_bytes[records.start * width..],
            count: records.len(),
            width,
            word_mask: layout.word_mask(),
            slot_mask: layout.max_slot(),
            hours_mask: layout.hours_mask_in_place(),
            weights: &self.slots.weights,
        };
        // Blocks start at multiples of 8 entries (`in_blocks`).
        scan_block(
            &block,
            &mut self.descents[records.start / 8..],
            &mut self.scan,
        );
    }

    /// `(disorder, slot out of range, slots disagree)`, given how many
    /// users' first entries are descents; the last two only where the
    /// segment table parsed.
    fn verdict(
        &self,
        rules_known: bool,
        any_entries: bool,
        descents_at_firsts: u64,
    ) -> (bool, bool, bool) {
        let scan = &self.scan;
        let out_of_range = any_entries & (scan.max_slot as usize >= self.slots.segment_count);
        (
            count_descents(&self.descents) != descents_at_firsts,
            rules_known & out_of_range,
            rules_known & (scan.weight_sum != self.slots.expected_sum),
        )
    }
}
