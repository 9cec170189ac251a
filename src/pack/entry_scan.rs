//! The checked load's per-entry work over one block of index entries (see
//! `view_check`), branch-free: for each entry, its slot and whether it has
//! an `hours_ago`; whether its slot is not above the one before it where no
//! user starts (disorder within a user); the largest slot; and the sum of
//! one weight per entry, picked by its slot and whether it has an
//! `hours_ago` (`view_check`'s randomized check of the member counts and of
//! recency, see `SlotChecks` there).
//!
//! Two implementations compute the same [`Scan`]: a portable scalar loop and
//! an AVX2 one (8 entries a step: one shuffle decodes them whatever the
//! entry width, one `vpgatherdd` fetches their weights), picked at run time
//! (the build targets baseline x86-64). The AVX2 code is the only `unsafe`
//! of the checked load; it reads only inside the slices it is given, and
//! it must never be the only implementation: tests compare both with the
//! rules read plainly.

/// The running result of scanning entries, block after block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scan {
    /// The slot of the last entry scanned, -1 before the first (so the
    /// first entry is never a descent).
    pub previous: i32,
    /// Some entry's slot is not above the one before it and no user starts there.
    pub disorder: bool,
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
            disorder: false,
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
    /// Byte `i` is 1 iff a user starts at the block's entry `i`, else 0
    /// (bytes, not bits: marking them is a plain store per user).
    pub user_starts: &'a [u8],
    /// Two weights per slot (for entries without and with an `hours_ago`),
    /// then two for every slot past them (clamped to them).
    pub weights: &'a [u32],
}

/// Scans `block`, continuing `scan`: with AVX2 where the CPU has it.
pub(super) fn scan_block(block: &Block<'_>, scan: &mut Scan) {
    #[cfg(target_arch = "x86_64")]
    let done = avx2::scan(block, scan);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    scalar_from(block, done, scan)
}

/// The portable scan (tests call it to compare it with the vector one).
#[cfg(test)]
pub(super) fn scan_block_scalar(block: &Block<'_>, scan: &mut Scan) {
    scalar_from(block, 0, scan)
}

/// Scans entries `from..block.count` one at a time.
fn scalar_from(block: &Block<'_>, from: usize, scan: &mut Scan) {
    let limit = block.weights.len() / 2 - 1;
    let Scan {
        mut previous,
        mut disorder,
        mut max_slot,
        mut weight_sum,
    } = *scan;
    for index in from..block.count {
        let at = index * block.width;
        let bytes = &block.bytes[at..at + 4];
        let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & block.word_mask;
        let slot = word & block.slot_mask;
        let starts_user = block.user_starts[index] != 0;
        disorder |= (slot as i32 <= previous) & !starts_user;
        previous = slot as i32;
        max_slot = max_slot.max(slot);
        let has_hours = usize::from(word & block.hours_mask != 0);
        let weight = block.weights[2 * (slot as usize).min(limit) + has_hours];
        weight_sum = weight_sum.wrapping_add(u64::from(weight));
    }
    *scan = Scan {
        previous,
        disorder,
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
    pub(super) fn scan(block: &Block<'_>, scan: &mut Scan) -> usize {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return 0;
        }
        // SAFETY: the CPU has AVX2, just checked.
        unsafe { scan_avx2(block, scan) }
    }

    /// Bit `i` = byte `i` (each 0 or 1) of 8: the multiplier puts byte
    /// `i`'s bit at bit `56 + i`, and no two partial products share a bit.
    fn gather_bits(bytes: &[u8]) -> u32 {
        let word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        (word.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
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

    /// # Safety
    ///
    /// The CPU must have AVX2. Every memory access is inside `block`'s
    /// slices (checked or clamped below), whatever their contents.
    #[target_feature(enable = "avx2")]
    unsafe fn scan_avx2(block: &Block<'_>, scan: &mut Scan) -> usize {
        let width = block.width;
        let steps = (block.count / 8).min(block.bytes.len().saturating_sub(32) / (8 * width) + 1);
        let steps = if block.bytes.len() < 32 { 0 } else { steps };
        if steps == 0 {
            return 0;
        }
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
        let zero = _mm256_setzero_si256();
        let one = _mm256_set1_epi32(1);
        let low_halves = _mm256_set1_epi64x(0xffff_ffff);
        // The slots rotated one lane up: lane 0 holds the step's last slot,
        // which is the next step's lane 0 "before".
        let mut rotated_before = _mm256_set1_epi32(scan.previous);
        let mut max = _mm256_set1_epi32(scan.max_slot as i32);
        let mut sums = zero;
        let mut disorder = 0u32;
        let weights = block.weights.as_ptr().cast::<i32>();
        for step in 0..steps {
            let at = step * 8 * width;
            // SAFETY: `steps` keeps `at + 32 <= block.bytes.len()`.
            let raw = unsafe { _mm256_loadu_si256(block.bytes.as_ptr().add(at).cast()) };
            let words = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(raw, to_lanes), spread);
            let slots = _mm256_and_si256(words, slot_mask);
            // Each lane's previous slot: the lane before, lane 0 the last
            // slot of the step before.
            let rotated = _mm256_permutevar8x32_epi32(slots, rotate);
            let before = _mm256_blend_epi32::<1>(rotated, rotated_before);
            rotated_before = rotated;
            let ascending =
                _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(slots, before)));
            let starts_users = gather_bits(&block.user_starts[8 * step..8 * step + 8]);
            disorder |= !(ascending as u32) & !starts_users & 0xff;
            max = _mm256_max_epu32(max, slots);
            // 2 * min(slot, limit) + has_hours (`timeless` is -1 where the
            // hours are zero).
            let timeless = _mm256_cmpeq_epi32(_mm256_and_si256(words, hours_mask), zero);
            let doubled = _mm256_slli_epi32::<1>(_mm256_min_epu32(slots, limit));
            let pick = _mm256_add_epi32(_mm256_add_epi32(doubled, one), timeless);
            // SAFETY: `pick <= 2 * limit + 1 = weights.len() - 1`.
            let picked = unsafe { _mm256_i32gather_epi32::<4>(weights, pick) };
            // The 8 weights as 4 + 4 `u64`s: even lanes masked, odd shifted down.
            sums = _mm256_add_epi64(sums, _mm256_and_si256(picked, low_halves));
            sums = _mm256_add_epi64(sums, _mm256_srli_epi64::<32>(picked));
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), max) };
        scan.max_slot = lanes.into_iter().max().unwrap_or(0);
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), rotated_before) };
        scan.previous = lanes[0] as i32;
        let mut quads = [0u64; 4];
        // SAFETY: `quads` is 32 bytes.
        unsafe { _mm256_storeu_si256(quads.as_mut_ptr().cast(), sums) };
        scan.weight_sum = quads
            .into_iter()
            .fold(scan.weight_sum, |sum, lane| sum.wrapping_add(lane));
        scan.disorder |= disorder != 0;
        steps * 8
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::pack::entries::EntryLayout;

    /// The rules read plainly, one entry at a time.
    fn model(block: &Block<'_>, mut scan: Scan) -> Scan {
        for index in 0..block.count {
            let at = index * block.width;
            let mut word = [0u8; 4];
            word[..block.width].copy_from_slice(&block.bytes[at..at + block.width]);
            let word = u32::from_le_bytes(word);
            let slot = word & block.slot_mask;
            let starts_user = block.user_starts[index] != 0;
            if i64::from(slot) <= i64::from(scan.previous) && !starts_user {
                scan.disorder = true;
            }
            scan.previous = slot as i32;
            scan.max_slot = scan.max_slot.max(slot);
            let slot_weights = 2 * (slot as usize).min(block.weights.len() / 2 - 1);
            let has_hours = word & block.hours_mask != 0;
            let weight = block.weights[slot_weights + usize::from(has_hours)];
            scan.weight_sum = scan.weight_sum.wrapping_add(u64::from(weight));
        }
        scan
    }

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
                let width = layout.bytes();
                // Mostly ascending runs, with descents and large slots mixed in.
                let slot_count = rng.random_range(1..=(layout.max_slot() as usize + 1).min(300));
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
                let user_starts: Vec<u8> = (0..=count)
                    .map(|_| u8::from(rng.random_range(0..4) == 0))
                    .collect();
                let weights: Vec<u32> = (0..2 * (slot_count + 1)).map(|_| rng.random()).collect();
                let block = Block {
                    bytes: &data,
                    count,
                    width,
                    word_mask: layout.word_mask(),
                    slot_mask: layout.max_slot(),
                    hours_mask: layout.hours_mask_in_place(),
                    user_starts: &user_starts,
                    weights: &weights,
                };
                let start = if round % 2 == 0 {
                    Scan::new()
                } else {
                    Scan {
                        previous: rng.random_range(-1..5),
                        ..Scan::new()
                    }
                };
                let expected = model(&block, start);
                let (mut scalar, mut dispatched) = (start, start);
                scan_block_scalar(&block, &mut scalar);
                scan_block(&block, &mut dispatched);
                assert_eq!(scalar, expected, "{layout:?}, {count} entries");
                assert_eq!(dispatched, expected, "{layout:?}, {count} entries");
            }
        }
    }
}
