//! The index starts against the entries' descents (see `entry_scan`): the
//! starts' order, and the order of the entries within each user, in one
//! pass over the starts after the entries were scanned.
//!
//! An entry of a user other than its first must have a slot above the one
//! before it, so every descent must be a user's first entry. With starts
//! monotone, starting at 0 and ending at the entry count (refused beside
//! otherwise, before this verdict is read), entry `i` is a user's first iff
//! `starts[u] == i < starts[u + 1]` for some `u`, and for each such `i`
//! exactly one `u` does it (the last user starting there; empty users start
//! where the next one does). So the pairs `(starts[u], starts[u + 1])` with
//! `starts[u] < starts[u + 1]` name each first entry once, and
//!
//! > entries are ascending within every user iff the descents at first
//! > entries are as many as all the descents,
//!
//! exactly (a count, not a test). The count costs a bit test per user, not
//! the store per user that marking the first entries took, and the bit test
//! is 8 users a step (one `vpgatherdd` of the descent bytes) where the CPU
//! has AVX2.

/// What the starts say: whether some start is above the next one, and how
/// many first entries of users are descents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::pack) struct AtStarts {
    pub decrease: bool,
    pub descents_at_firsts: u64,
}

/// Bytes `descents` needs past the entries' bits: the bit test reads 4
/// bytes at the byte of the bit, for a start up to the entry count.
pub(in crate::pack) const DESCENT_SLACK: usize = 4;

/// The descent bits of `entry_count` entries (`entry_scan::scan_block`),
/// zero past them, in `entry_count / 8 + DESCENT_SLACK` bytes or more,
/// against `starts`; starts past the entries are read as the entry count
/// (whose bit is zero).
pub(in crate::pack) fn at_starts(starts: &[u32], descents: &[u8], entry_count: usize) -> AtStarts {
    #[cfg(target_arch = "x86_64")]
    let (done, vector) = avx2::at_starts(starts, descents, entry_count);
    #[cfg(not(target_arch = "x86_64"))]
    let (done, vector) = (0, AtStarts::NONE);
    let rest = scalar_from(starts, descents, entry_count, done);
    AtStarts {
        decrease: vector.decrease | rest.decrease,
        descents_at_firsts: vector.descents_at_firsts + rest.descents_at_firsts,
    }
}

/// How many bits of `descents` are set.
pub(in crate::pack) fn count_descents(descents: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(count) = avx2::count_ones(descents) {
        return count;
    }
    descents
        .iter()
        .map(|&byte| u64::from(byte.count_ones()))
        .sum()
}

impl AtStarts {
    const NONE: AtStarts = AtStarts {
        decrease: false,
        descents_at_firsts: 0,
    };
}

/// The portable pass (tests call it to compare it with the vector one).
#[cfg(test)]
pub(in crate::pack) fn at_starts_scalar(
    starts: &[u32],
    descents: &[u8],
    entry_count: usize,
) -> AtStarts {
    scalar_from(starts, descents, entry_count, 0)
}

/// The pairs `(starts[u], starts[u + 1])` from `u = from`, one at a time.
fn scalar_from(starts: &[u32], descents: &[u8], entry_count: usize, from: usize) -> AtStarts {
    let mut found = AtStarts::NONE;
    let bit_of = |position: usize| {
        let position = position.min(entry_count);
        descents
            .get(position / 8)
            .map_or(0, |&byte| (byte >> (position % 8)) & 1)
    };
    for pair in starts.get(from..).unwrap_or(&[]).windows(2) {
        let (start, next) = (pair[0], pair[1]);
        found.decrease |= start > next;
        let first = u8::from(start < next) & bit_of(start as usize);
        found.descents_at_firsts += u64::from(first);
    }
    found
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{AtStarts, DESCENT_SLACK};

    /// Where the CPU has AVX2, the pairs of 8 starts a step for as long as
    /// the step's 9 starts are in `starts`; how many pairs it took (a
    /// multiple of 8, 0 without AVX2 or where `descents` is too short for
    /// the clamped bit test) and what it found.
    pub(super) fn at_starts(
        starts: &[u32],
        descents: &[u8],
        entry_count: usize,
    ) -> (usize, AtStarts) {
        let short = descents.len() < entry_count / 8 + DESCENT_SLACK;
        if short || entry_count > u32::MAX as usize || !is_x86_feature_detected!("avx2") {
            return (0, AtStarts::NONE);
        }
        // SAFETY: the CPU has AVX2, just checked, and `descents` holds the
        // 4 bytes at the byte of every clamped start.
        unsafe { at_starts_avx2(starts, descents, entry_count as u32) }
    }

    /// The set bits of `descents`, 8 bytes at a time, where the CPU has
    /// `popcnt` (else `None`).
    pub(super) fn count_ones(descents: &[u8]) -> Option<u64> {
        if !is_x86_feature_detected!("popcnt") {
            return None;
        }
        // SAFETY: the CPU has `popcnt`, just checked.
        Some(unsafe { count_ones_popcnt(descents) })
    }

    #[target_feature(enable = "popcnt")]
    fn count_ones_popcnt(descents: &[u8]) -> u64 {
        let words = descents.chunks_exact(8);
        let rest: u64 = words
            .remainder()
            .iter()
            .map(|&b| u64::from(b.count_ones()))
            .sum();
        words.fold(rest, |sum, word| {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            sum + u64::from(word.count_ones())
        })
    }

    /// # Safety
    ///
    /// The CPU must have AVX2, and `descents` at least `entry_count / 8 +
    /// DESCENT_SLACK` bytes. The loads stay inside `starts` (9 a step); the
    /// gather reads 4 bytes at byte `min(start, entry_count) / 8` of
    /// `descents`, inside it whatever the starts are.
    #[target_feature(enable = "avx2")]
    unsafe fn at_starts_avx2(
        starts: &[u32],
        descents: &[u8],
        entry_count: u32,
    ) -> (usize, AtStarts) {
        let steps = starts.len().saturating_sub(1) / 8;
        let count = _mm256_set1_epi32(entry_count as i32);
        let seven = _mm256_set1_epi32(7);
        let one = _mm256_set1_epi32(1);
        // All ones while every start is at or below the next.
        let mut rising = _mm256_set1_epi32(-1);
        let mut firsts = _mm256_setzero_si256();
        let bytes = descents.as_ptr().cast::<i32>();
        for step in 0..steps {
            // SAFETY: `steps` keeps `8 * step + 9 <= starts.len()`.
            let (start, next) = unsafe {
                let at = starts.as_ptr().add(8 * step);
                (
                    _mm256_loadu_si256(at.cast()),
                    _mm256_loadu_si256(at.add(1).cast()),
                )
            };
            let high = _mm256_max_epu32(start, next);
            rising = _mm256_and_si256(rising, _mm256_cmpeq_epi32(high, next));
            // All ones where `start >= next`: not a user's first entry.
            let not_first = _mm256_cmpeq_epi32(high, start);
            let position = _mm256_min_epu32(start, count);
            // SAFETY: `position / 8 + 4 <= entry_count / 8 + DESCENT_SLACK
            // <= descents.len()`, checked by the caller.
            let word =
                unsafe { _mm256_i32gather_epi32::<1>(bytes, _mm256_srli_epi32::<3>(position)) };
            let bit = _mm256_and_si256(
                _mm256_srlv_epi32(word, _mm256_and_si256(position, seven)),
                one,
            );
            firsts = _mm256_add_epi32(firsts, _mm256_andnot_si256(not_first, bit));
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), firsts) };
        // Each lane adds at most 1 a step, fewer than 2^32 steps.
        let descents_at_firsts = lanes.into_iter().map(u64::from).sum();
        let decrease = _mm256_movemask_epi8(rising) != -1;
        (
            8 * steps,
            AtStarts {
                decrease,
                descents_at_firsts,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The rule read plainly: whether the starts decrease somewhere, and
    /// the number of distinct first entries of users, among `0..count`,
    /// that are descents.
    fn model(starts: &[u32], descents: &[u8], count: usize) -> AtStarts {
        let bit = |p: usize| p < count && descents[p / 8] >> (p % 8) & 1 == 1;
        let firsts: std::collections::BTreeSet<usize> = starts
            .windows(2)
            .filter(|pair| pair[0] < pair[1])
            .map(|pair| pair[0] as usize)
            .collect();
        AtStarts {
            decrease: starts.windows(2).any(|pair| pair[0] > pair[1]),
            descents_at_firsts: firsts.iter().filter(|&&p| bit(p)).count() as u64,
        }
    }

    /// Monotone starts (with empty users, also at both ends) are counted as
    /// the model counts them, by both implementations, for user counts that
    /// are and are not multiples of the step; hostile starts (decreasing,
    /// past the entries) are found decreasing, read in bounds, and agree.
    #[test]
    fn the_vector_pass_is_the_scalar_pass_and_the_rule() {
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..600 {
            let count = rng.random_range(0..200usize);
            let users = rng.random_range(0..60usize);
            let mut starts: Vec<u32> = (0..users.saturating_sub(1))
                .map(|_| rng.random_range(0..=count as u32))
                .collect();
            starts.sort_unstable();
            starts.insert(0, 0);
            starts.push(count as u32);
            if round % 3 == 0 {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..starts.len());
                    starts[at] = if rng.random() {
                        rng.random()
                    } else {
                        rng.random_range(0..=count as u32)
                    };
                }
            }
            let mut descents = vec![0u8; count / 8 + DESCENT_SLACK];
            for position in 1..count {
                if rng.random_range(0..3) == 0 {
                    descents[position / 8] |= 1 << (position % 8);
                }
            }
            let expected = model(&starts, &descents, count);
            let scalar = at_starts_scalar(&starts, &descents, count);
            let dispatched = at_starts(&starts, &descents, count);
            if !expected.decrease {
                assert_eq!(scalar, expected, "{starts:?}");
            }
            assert_eq!(scalar.decrease, expected.decrease, "{starts:?}");
            assert_eq!(dispatched, scalar, "{starts:?}");
            let ones = descents
                .iter()
                .map(|b| u64::from(b.count_ones()))
                .sum::<u64>();
            assert_eq!(count_descents(&descents), ones);
        }
    }
}
