//! The checked load's per-entry work over one block of index entries (see
//! `view_check`), branch-free: for each entry, its slot and whether it has
//! an `hours_ago`; whether its slot is not above the one before it (a
//! *descent*, recorded as one bit per entry: `view_check` then counts the
//! descents that are not at a user's first entry, see [`users`]); the
//! largest slot; and the sum of one weight per entry, picked by its slot
//! and whether it has an `hours_ago` (`view_check`'s randomized check of
//! the member counts and of recency, see `SlotChecks` there).
//!
//! Two implementations compute the same [`Scan`] and the same descent bits:
//! a portable scalar loop and an AVX2 one (8 entries a step: one shuffle
//! decodes them whatever the entry width, one `vpgatherdd` fetches their
//! weights, one byte store records their descents, one prefetch asks for the
//! next block's bytes), picked at run time (the build targets baseline
//! x86-64). This module and its two below ([`users`], [`dictionary`]) hold
//! the only `unsafe` of the checked load; the vector loops read and write
//! only inside the slices they are given, and they must never be the only
//! implementation: tests compare both with the rules read plainly.

pub(super) mod dictionary;
pub(super) mod users;

/// The running result of scanning entries, block after block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scan {
    /// The slot of the last entry scanned, -1 before the first (so the
    /// first entry is never a descent).
    pub previous: i32,
    /// The largest slot seen.
    pub max_slot: u32,
    /// Sum over entries of `weights[2 * slot + has_hours]` (exact: fewer
    /// than 2^32 entries of 32-bit weights).
    pub weight_sum: u64,
}

impl Scan {
    pub fn new() -> Scan {
        Scan {
            previous: -1,
            max_slot: 0,
            weight_sum: 0,
        }
    }
}

/// One block of entries and what the scan needs beside them.
pub(super) struct Block<'a> {
    /// The block's entries from its first, and at least 4 readable bytes
    /// past its last (more are read by the vector loop where present).
    pub bytes: &'a [u8],
    pub count: usize,
    pub width: usize,
    /// The low `8 * width` bits of a loaded word.
    pub word_mask: u32,
    pub slot_mask: u32,
    pub hours_mask: u32,
    /// Two weights per slot (for entries without and with an `hours_ago`),
    /// then two for every slot past them (clamped to them).
    pub weights: &'a [u32],
}

/// Scans `block`, continuing `scan`: with AVX2 where the CPU has it. Sets
/// bit `i % 8` of `descents[i / 8]` for each entry `i` of the block whose
/// slot is not above the one before it, and no other bit: `descents` starts
/// zero, with at least `block.count.div_ceil(8)` bytes (so a block must
/// start at an entry that is a multiple of 8 for the bits of consecutive
/// blocks to line up).
pub(super) fn scan_block(block: &Block<'_>, descents: &mut [u8], scan: &mut Scan) {
    #[cfg(target_arch = "x86_64")]
    let done = avx2::scan(block, descents, scan);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    scalar_from(block, done, descents, scan)
}

/// The portable scan (tests call it to compare it with the vector one).
#[cfg(test)]
pub(super) fn scan_block_scalar(block: &Block<'_>, descents: &mut [u8], scan: &mut Scan) {
    scalar_from(block, 0, descents, scan)
}

/// Scans entries `from..block.count` one at a time.
fn scalar_from(block: &Block<'_>, from: usize, descents: &mut [u8], scan: &mut Scan) {
    let limit = block.weights.len() / 2 - 1;
    let Scan {
        mut previous,
        mut max_slot,
        mut weight_sum,
    } = *scan;
    for index in from..block.count {
        let at = index * block.width;
        let bytes = &block.bytes[at..at + 4];
        let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & block.word_mask;
        let slot = word & block.slot_mask;
        descents[index / 8] |= u8::from(slot as i32 <= previous) << (index % 8);
        previous = slot as i32;
        max_slot = max_slot.max(slot);
        let has_hours = usize::from(word & block.hours_mask != 0);
        let weight = block.weights[2 * (slot as usize).min(limit) + has_hours];
        weight_sum = weight_sum.wrapping_add(u64::from(weight));
    }
    *scan = Scan {
        previous,
        max_slot,
        weight_sum,
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Block, Scan};

    /// Where the CPU has AVX2, scans the block's entries 8 at a time for as
    /// long as a 32-byte load at the next 8 stays inside `block.bytes`;
    /// returns how many it scanned (a multiple of 8, 0 without AVX2), the
    /// rest is left to the scalar loop.
    pub(super) fn scan(block: &Block<'_>, descents: &mut [u8], scan: &mut Scan) -> usize {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return 0;
        }
        // SAFETY: the CPU has AVX2, just checked.
        unsafe { scan_avx2(block, descents, scan) }
    }

    /// `pshufb` indices that spread 4 entries of `width` bytes, starting at
    /// byte 0 of a 128-bit lane, into the lane's 4 dwords (bytes past the
    /// entry are zeroed: index 0x80).
    fn spread(width: usize) -> [i8; 16] {
        let mut indices = [-128i8; 16];
        for entry in 0..4 {
            for byte in 0..width {
                indices[4 * entry + byte] = (entry * width + byte) as i8;
            }
        }
        indices
    }

    /// How many 8-entry steps stay inside `block.bytes` (a 32-byte load at
    /// each) and `descents` (a byte each).
    fn steps(block: &Block<'_>, descents: &[u8]) -> usize {
        if block.bytes.len() < 32 {
            return 0;
        }
        let inside = (block.bytes.len() - 32) / (8 * block.width) + 1;
        (block.count / 8).min(inside).min(descents.len())
    }

    /// # Safety
    ///
    /// The CPU must have AVX2. Every memory access is inside `block`'s
    /// slices and `descents` (checked or clamped below), whatever their
    /// contents.
    #[target_feature(enable = "avx2")]
    unsafe fn scan_avx2(block: &Block<'_>, descents: &mut [u8], scan: &mut Scan) -> usize {
        let width = block.width;
        let steps = steps(block, descents);
        if steps == 0 {
            return 0;
        }
        let descents = &mut descents[..steps];
        let w = width as i32;
        // Entries 4..8 start at byte 4 * width: the upper lane gets the
        // dwords from there (width <= 4, so 4 + 3 dwords cover them).
        let to_lanes = _mm256_setr_epi32(0, 1, 2, 3, w, w + 1, w + 2, w + 3);
        let spread = spread(width);
        // SAFETY: `spread` is 16 bytes; loadu has no alignment requirement.
        let spread = unsafe { _mm_loadu_si128(spread.as_ptr().cast()) };
        let spread = _mm256_broadcastsi128_si256(spread);
        let slot_mask = _mm256_set1_epi32(block.slot_mask as i32);
        let hours_mask = _mm256_set1_epi32(block.hours_mask as i32);
        let limit = _mm256_set1_epi32((block.weights.len() / 2 - 1) as i32);
        let rotate = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
        let one = _mm256_set1_epi32(1);
        // The slots rotated one lane up: lane 0 holds the step's last slot,
        // which is the next step's lane 0 "before".
        let mut rotated_before = _mm256_set1_epi32(scan.previous);
        let mut max = _mm256_set1_epi32(scan.max_slot as i32);
        // The weights as 4 `u64` lanes (odd weight << 32 | even weight),
        // wrapping, and the odd weights alone: see `weight_sum`.
        let mut pairs = _mm256_setzero_si256();
        let mut odds = _mm256_setzero_si256();
        let weights = block.weights.as_ptr().cast::<i32>();
        let mut at = block.bytes.as_ptr();
        // Bytes to the same entry of the next block (`view_check` cuts the
        // entries into blocks of equal count).
        let ahead = block.count * width;
        for descent in descents.iter_mut() {
            // SAFETY: `steps` keeps each 32-byte load inside `block.bytes`.
            let raw = unsafe { _mm256_loadu_si256(at.cast()) };
            // The same place one block on, which the hash reads next (the
            // fused pass hashes a block, then checks it): fetched while
            // this block is checked, where the memory would otherwise idle.
            // A prefetch reads nothing and cannot fault, wherever it points.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(ahead).cast());
            // SAFETY: stays inside (or one step past) `block.bytes`, and is
            // only read while inside.
            at = unsafe { at.add(8 * width) };
            let words = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(raw, to_lanes), spread);
            let slots = _mm256_and_si256(words, slot_mask);
            // Each lane's previous slot: the lane before, lane 0 the last
            // slot of the step before.
            let rotated = _mm256_permutevar8x32_epi32(slots, rotate);
            let before = _mm256_blend_epi32::<1>(rotated, rotated_before);
            rotated_before = rotated;
            let ascending =
                _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(slots, before)));
            *descent = !(ascending as u8);
            max = _mm256_max_epu32(max, slots);
            // 2 * min(slot, limit) + has_hours.
            let has_hours = _mm256_min_epu32(_mm256_and_si256(words, hours_mask), one);
            let doubled = _mm256_slli_epi32::<1>(_mm256_min_epu32(slots, limit));
            let pick = _mm256_add_epi32(doubled, has_hours);
            // SAFETY: `pick <= 2 * limit + 1 = weights.len() - 1`.
            let picked = unsafe { _mm256_i32gather_epi32::<4>(weights, pick) };
            pairs = _mm256_add_epi64(pairs, picked);
            odds = _mm256_add_epi64(odds, _mm256_srli_epi64::<32>(picked));
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), max) };
        scan.max_slot = lanes.into_iter().max().unwrap_or(0);
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), rotated_before) };
        scan.previous = lanes[0] as i32;
        scan.weight_sum = scan.weight_sum.wrapping_add(weight_sum(pairs, odds));
        steps * 8
    }

    /// The sum of the gathered weights from the two accumulators. Per lane,
    /// `pairs` is `2^32 * odd + even` modulo 2^64, where `odd` (in `odds`,
    /// exact) and `even` are the sums of the lane's odd and even weights;
    /// `even` is below 2^64 (fewer than 2^32 weights below 2^32 each), so
    /// `pairs - 2^32 * odd` modulo 2^64 is exactly `even`. One add and one
    /// shift a step, where masking the even weights took a third.
    #[target_feature(enable = "avx2")]
    fn weight_sum(pairs: __m256i, odds: __m256i) -> u64 {
        let (mut pair_lanes, mut odd_lanes) = ([0u64; 4], [0u64; 4]);
        // SAFETY: both arrays are 32 bytes.
        unsafe {
            _mm256_storeu_si256(pair_lanes.as_mut_ptr().cast(), pairs);
            _mm256_storeu_si256(odd_lanes.as_mut_ptr().cast(), odds);
        }
        pair_lanes
            .into_iter()
            .zip(odd_lanes)
            .fold(0u64, |sum, (pair, odd)| {
                let even = pair.wrapping_sub(odd << 32);
                sum.wrapping_add(even).wrapping_add(odd)
            })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::pack::entries::EntryLayout;

    /// The rules read plainly, one entry at a time: the scan and the
    /// descent bits.
    fn model(block: &Block<'_>, mut scan: Scan) -> (Scan, Vec<u8>) {
        let mut descents = vec![0u8; block.count.div_ceil(8) + 3];
        for index in 0..block.count {
            let at = index * block.width;
            let mut word = [0u8; 4];
            word[..block.width].copy_from_slice(&block.bytes[at..at + block.width]);
            let word = u32::from_le_bytes(word);
            let slot = word & block.slot_mask;
            if i64::from(slot) <= i64::from(scan.previous) {
                descents[index / 8] |= 1 << (index % 8);
            }
            scan.previous = slot as i32;
            scan.max_slot = scan.max_slot.max(slot);
            let slot_weights = 2 * (slot as usize).min(block.weights.len() / 2 - 1);
            let has_hours = word & block.hours_mask != 0;
            let weight = block.weights[slot_weights + usize::from(has_hours)];
            scan.weight_sum = scan.weight_sum.wrapping_add(u64::from(weight));
        }
        (scan, descents)
    }

    /// Random entries of `layout`: mostly ascending runs, with descents and
    /// large slots mixed in, and random bytes after them.
    fn random_entries(rng: &mut StdRng, layout: EntryLayout, count: usize) -> Vec<u8> {
        let width = layout.bytes();
        let mut data: Vec<u8> = (0..count * width + rng.random_range(4..40usize))
            .map(|_| rng.random())
            .collect();
        let mut slot = 0u32;
        for index in 0..count {
            slot = if rng.random_range(0..6) == 0 {
                rng.random()
            } else {
                slot + 1
            };
            let hours = if rng.random_range(0..3) == 0 {
                rng.random::<u32>()
            } else {
                0
            };
            let word = (slot & layout.max_slot())
                | ((hours << layout.slot_bits()) & layout.hours_mask_in_place());
            data[index * width..index * width + width]
                .copy_from_slice(&word.to_le_bytes()[..width]);
        }
        data
    }

    /// Both implementations against the model, for every entry width, for
    /// counts that are and are not multiples of the vector step, from a
    /// fresh start and from one in the middle of the entries.
    #[test]
    fn the_vector_scan_is_the_scalar_scan_and_the_rules() {
        let mut rng = StdRng::seed_from_u64(7);
        for (bytes, slot_bits) in [
            (1u8, 0u8),
            (1, 3),
            (2, 8),
            (2, 16),
            (3, 12),
            (3, 8),
            (4, 16),
        ] {
            let layout = EntryLayout::new(bytes, slot_bits).expect("valid");
            for round in 0..200 {
                let count = rng.random_range(0..120usize);
                let data = random_entries(&mut rng, layout, count);
                let slot_count = rng.random_range(1..=(layout.max_slot() as usize + 1).min(300));
                let weights: Vec<u32> = (0..2 * (slot_count + 1)).map(|_| rng.random()).collect();
                let block = Block {
                    bytes: &data,
                    count,
                    width: layout.bytes(),
                    word_mask: layout.word_mask(),
                    slot_mask: layout.max_slot(),
                    hours_mask: layout.hours_mask_in_place(),
                    weights: &weights,
                };
                let start = if round % 2 == 0 {
                    Scan::new()
                } else {
                    Scan {
                        previous: rng.random_range(-1..5),
                        max_slot: rng.random_range(0..4),
                        weight_sum: rng.random(),
                    }
                };
                let (expected, expected_descents) = model(&block, start);
                let (mut scalar, mut dispatched) = (start, start);
                let mut scalar_descents = vec![0u8; expected_descents.len()];
                let mut dispatched_descents = vec![0u8; expected_descents.len()];
                scan_block_scalar(&block, &mut scalar_descents, &mut scalar);
                scan_block(&block, &mut dispatched_descents, &mut dispatched);
                assert_eq!(scalar, expected, "{layout:?}, {count} entries");
                assert_eq!(dispatched, expected, "{layout:?}, {count} entries");
                assert_eq!(scalar_descents, expected_descents, "{layout:?}, {count}");
                assert_eq!(
                    dispatched_descents, expected_descents,
                    "{layout:?}, {count}"
                );
            }
        }
    }

    /// The vector loop's two-accumulator weight sum is exact even where the
    /// weights are the largest and the lanes wrap many times.
    #[test]
    fn the_weight_sum_is_exact_with_the_largest_weights() {
        let layout = EntryLayout::new(2, 16).expect("valid");
        let count = 8 * 1000 + 5;
        let data: Vec<u8> = (0..count)
            .flat_map(|index| ((index % 3) as u16).to_le_bytes())
            .chain([0; 8])
            .collect();
        let weights = vec![u32::MAX; 2 * 4];
        let block = Block {
            bytes: &data,
            count,
            width: 2,
            word_mask: layout.word_mask(),
            slot_mask: layout.max_slot(),
            hours_mask: layout.hours_mask_in_place(),
            weights: &weights,
        };
        let mut scan = Scan::new();
        scan_block(&block, &mut vec![0u8; count.div_ceil(8)], &mut scan);
        assert_eq!(scan.weight_sum, count as u64 * u64::from(u32::MAX));
        assert_eq!(scan.max_slot, 2);
    }
}
