//! The checked load's rules of the user dictionary (see `view_check`): the
//! fingerprints strictly ascending, and the radix directory exactly the one
//! derived from them; a portable scalar loop and an AVX2 one for each
//! (runtime-picked, as in `entry_scan`), computing the same verdict.
//!
//! The directory rule as checked here, per bucket `b` (its fingerprints are
//! those from `low(b) = b << (64 - radix_bits)` up): entry `b` must be the
//! number of fingerprints below `low(b)`. With the fingerprints ascending
//! (their own rule, reported first), that number is the one `d` with `d <=
//! users`, `d == 0` or `fingerprints[d - 1] < low(b)`, and `d == users` or
//! `fingerprints[d] >= low(b)`: two reads per bucket, adjacent, whatever
//! the entry says; no walk, and no separate rule that the entries ascend
//! (they do when each is that number). The last entry (`users`) is the
//! caller's.

use std::ops::Range;

/// Whether some value of `values` is not above the one before it.
pub(in crate::pack) fn any_not_ascending(values: &[u64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    let (done, bad) = avx2::any_not_ascending(values);
    #[cfg(not(target_arch = "x86_64"))]
    let (done, bad) = (0, false);
    bad | not_ascending_scalar(&values[done.saturating_sub(1).min(values.len())..])
}

/// The portable check (tests call it to compare it with the vector one).
pub(in crate::pack) fn not_ascending_scalar(values: &[u64]) -> bool {
    values
        .windows(2)
        .fold(false, |bad, pair| bad | (pair[0] >= pair[1]))
}

/// What the directory check needs: the fingerprints, the directory and its
/// bits.
#[derive(Clone, Copy)]
pub(in crate::pack) struct Dictionary<'a> {
    pub fingerprints: &'a [u64],
    pub directory: &'a [u32],
    pub radix_bits: u32,
}

impl Dictionary<'_> {
    /// The lowest fingerprint of bucket 1 (0 for 0 bits: one bucket); bucket
    /// `b`'s lowest is `b` times it (no overflow below `2^radix_bits`).
    fn span(&self) -> u64 {
        (u64::MAX >> self.radix_bits).wrapping_add(1)
    }
}

/// Whether some directory entry among `buckets` (the last entry, the end,
/// excluded) is not the number of fingerprints below its bucket, given
/// fingerprints that ascend.
pub(in crate::pack) fn any_bucket_wrong(
    dictionary: &Dictionary<'_>,
    buckets: Range<usize>,
) -> bool {
    let end = buckets
        .end
        .min(dictionary.directory.len().saturating_sub(1));
    let buckets = buckets.start.min(end)..end;
    #[cfg(target_arch = "x86_64")]
    let (done, bad) = avx2::any_bucket_wrong(dictionary, buckets.clone());
    #[cfg(not(target_arch = "x86_64"))]
    let (done, bad) = (0, false);
    bad | bucket_wrong_scalar(dictionary, buckets.start + done..buckets.end)
}

/// The portable check (tests call it to compare it with the vector one);
/// `buckets` must exclude the last entry.
pub(in crate::pack) fn bucket_wrong_scalar(
    dictionary: &Dictionary<'_>,
    buckets: Range<usize>,
) -> bool {
    let Dictionary {
        fingerprints,
        directory,
        ..
    } = *dictionary;
    let users = fingerprints.len();
    let Some(last_user) = users.checked_sub(1) else {
        // No users: every entry is 0.
        return directory[buckets].iter().any(|&entry| entry != 0);
    };
    let span = dictionary.span();
    buckets.fold(false, |bad, bucket| {
        let entry = directory[bucket] as usize;
        let low = (bucket as u64).wrapping_mul(span);
        let before = fingerprints[entry.clamp(1, users) - 1];
        let at = fingerprints[entry.min(last_user)];
        let too_many = (entry != 0) & (before >= low);
        let too_few = (entry < users) & (at < low);
        bad | (entry > users) | too_many | too_few
    })
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::Dictionary;

    /// Where the CPU has AVX2, compares 4 pairs a step for as long as the
    /// step's 5 values are in `values`; returns how many values' pairs
    /// with the one before it checked (all before that index) and whether
    /// one was out of order.
    pub(super) fn any_not_ascending(values: &[u64]) -> (usize, bool) {
        if !is_x86_feature_detected!("avx2") {
            return (0, false);
        }
        // SAFETY: the CPU has AVX2, just checked.
        unsafe { not_ascending_avx2(values) }
    }

    /// The sign bit: unsigned order is signed order with it flipped.
    const SIGN: i64 = i64::MIN;

    /// # Safety
    ///
    /// The CPU must have AVX2. The loads stay inside `values` (5 a step).
    #[target_feature(enable = "avx2")]
    unsafe fn not_ascending_avx2(values: &[u64]) -> (usize, bool) {
        let steps = values.len().saturating_sub(1) / 4;
        let sign = _mm256_set1_epi64x(SIGN);
        let mut ascending = _mm256_set1_epi64x(-1);
        for step in 0..steps {
            // SAFETY: `steps` keeps `4 * step + 5 <= values.len()`.
            let (value, next) = unsafe {
                let at = values.as_ptr().add(4 * step);
                (
                    _mm256_loadu_si256(at.cast()),
                    _mm256_loadu_si256(at.add(1).cast()),
                )
            };
            let above =
                _mm256_cmpgt_epi64(_mm256_xor_si256(next, sign), _mm256_xor_si256(value, sign));
            ascending = _mm256_and_si256(ascending, above);
        }
        // Values `1..=4 * steps` were compared with the one before.
        let done = if steps == 0 { 0 } else { 4 * steps + 1 };
        (done, _mm256_movemask_epi8(ascending) != -1)
    }

    /// Where the CPU has AVX2, checks 8 buckets a step from `buckets.start`
    /// while 8 remain; returns how many it checked and whether one was wrong.
    pub(super) fn any_bucket_wrong(
        dictionary: &Dictionary<'_>,
        buckets: Range<usize>,
    ) -> (usize, bool) {
        let users = dictionary.fingerprints.len();
        let fits = users != 0 && users <= i32::MAX as usize;
        if !fits || !is_x86_feature_detected!("avx2") {
            return (0, false);
        }
        // SAFETY: the CPU has AVX2, just checked, and the users (at least
        // one) are indexable by `i32`.
        unsafe { bucket_wrong_avx2(dictionary, buckets) }
    }

    /// The 32-bit lane masks of `mask`'s lower (`HIGH = 0`) or upper half,
    /// widened to 64-bit lanes.
    #[target_feature(enable = "avx2")]
    fn widen<const HIGH: i32>(mask: __m256i) -> __m256i {
        _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<HIGH>(mask))
    }

    /// The fingerprints at 8 clamped ordinals, as two vectors of 4.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and every lane of `ordinals` must be an index
    /// into `fingerprints`.
    #[target_feature(enable = "avx2")]
    unsafe fn fingerprints_at(fingerprints: &[u64], ordinals: __m256i) -> (__m256i, __m256i) {
        let base = fingerprints.as_ptr().cast::<i64>();
        // SAFETY: every ordinal indexes `fingerprints` (the caller's promise).
        unsafe {
            (
                _mm256_i32gather_epi64::<8>(base, _mm256_extracti128_si256::<0>(ordinals)),
                _mm256_i32gather_epi64::<8>(base, _mm256_extracti128_si256::<1>(ordinals)),
            )
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2, `dictionary` at least one and at most
    /// `i32::MAX` users. The directory loads stay inside `buckets` (8 a
    /// step, `buckets` inside the directory); the gathers read ordinals
    /// clamped to `0..users`, whatever the directory says.
    #[target_feature(enable = "avx2")]
    unsafe fn bucket_wrong_avx2(
        dictionary: &Dictionary<'_>,
        buckets: Range<usize>,
    ) -> (usize, bool) {
        let Dictionary {
            fingerprints,
            directory,
            ..
        } = *dictionary;
        let directory = &directory[buckets.clone()];
        let steps = directory.len() / 8;
        let users = _mm256_set1_epi32(fingerprints.len() as i32);
        let last_user = _mm256_set1_epi32(fingerprints.len() as i32 - 1);
        let one = _mm256_set1_epi32(1);
        let span = dictionary.span();
        // Each bucket's lowest fingerprint, sign-flipped for signed compares
        // (adding 2^63 is flipping the sign bit), buckets 0-3 and 4-7 of the step.
        let low_of =
            |lane: u64| ((buckets.start as u64 + lane).wrapping_mul(span) ^ SIGN as u64) as i64;
        let mut low_lower = _mm256_setr_epi64x(low_of(0), low_of(1), low_of(2), low_of(3));
        let mut low_upper = _mm256_setr_epi64x(low_of(4), low_of(5), low_of(6), low_of(7));
        let advance = _mm256_set1_epi64x(span.wrapping_mul(8) as i64);
        let sign = _mm256_set1_epi64x(SIGN);
        let flip = |value: __m256i| _mm256_xor_si256(value, sign);
        // All ones while each entry is at most `users` and every fingerprint
        // before an entry is below its bucket; any lane set once an entry's
        // own fingerprint is below its bucket.
        let mut fine = _mm256_set1_epi32(-1);
        let mut below_bucket = _mm256_set1_epi64x(-1);
        let mut wrong = _mm256_setzero_si256();
        for step in 0..steps {
            // SAFETY: `8 * step + 8 <= directory.len()`.
            let entry = unsafe { _mm256_loadu_si256(directory.as_ptr().add(8 * step).cast()) };
            let clamped = _mm256_min_epu32(entry, users);
            fine = _mm256_and_si256(fine, _mm256_cmpeq_epi32(clamped, entry));
            let none_before = _mm256_cmpeq_epi32(entry, _mm256_setzero_si256());
            let all_before = _mm256_cmpeq_epi32(clamped, users);
            let before = _mm256_sub_epi32(_mm256_max_epu32(clamped, one), one);
            let at = _mm256_min_epu32(entry, last_user);
            // SAFETY: `before` and `at` are clamped to `0..users`.
            let (before_lower, before_upper) = unsafe { fingerprints_at(fingerprints, before) };
            // SAFETY: as above.
            let (at_lower, at_upper) = unsafe { fingerprints_at(fingerprints, at) };
            let halves = [
                (
                    before_lower,
                    at_lower,
                    low_lower,
                    widen::<0>(none_before),
                    widen::<0>(all_before),
                ),
                (
                    before_upper,
                    at_upper,
                    low_upper,
                    widen::<1>(none_before),
                    widen::<1>(all_before),
                ),
            ];
            for (before, at, low, none_before, all_before) in halves {
                // `before < low` where there is a fingerprint before.
                let lower = _mm256_cmpgt_epi64(low, flip(before));
                below_bucket = _mm256_and_si256(below_bucket, _mm256_or_si256(none_before, lower));
                // `at < low` where there is one at the entry: too few.
                let short = _mm256_cmpgt_epi64(low, flip(at));
                wrong = _mm256_or_si256(wrong, _mm256_andnot_si256(all_before, short));
            }
            low_lower = _mm256_add_epi64(low_lower, advance);
            low_upper = _mm256_add_epi64(low_upper, advance);
        }
        let bad = _mm256_movemask_epi8(fine) != -1
            || _mm256_movemask_epi8(below_bucket) != -1
            || _mm256_movemask_epi8(wrong) != 0;
        (8 * steps, bad)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::pack::index_build::radix_directory;

    /// Both implementations of both rules against the rules read plainly:
    /// ascending (or not) fingerprints of any count; directories derived
    /// from them, then with an entry moved by a little or anywhere, for
    /// every bucket range, so vector steps and scalar tails both see the
    /// wrong entry.
    #[test]
    fn the_vector_checks_are_the_scalar_checks_and_the_rules() {
        let mut rng = StdRng::seed_from_u64(5);
        for round in 0..400 {
            let users = rng.random_range(0..80usize);
            let mut fingerprints: Vec<u64> = (0..users).map(|_| rng.random()).collect();
            fingerprints.sort_unstable();
            fingerprints.dedup();
            if round % 4 == 1 && fingerprints.len() > 1 {
                let at = rng.random_range(1..fingerprints.len());
                fingerprints[at] =
                    fingerprints[at - 1].wrapping_sub(u64::from(rng.random::<bool>()));
            }
            let plainly = fingerprints.windows(2).any(|pair| pair[0] >= pair[1]);
            assert_eq!(not_ascending_scalar(&fingerprints), plainly);
            assert_eq!(
                any_not_ascending(&fingerprints),
                plainly,
                "{fingerprints:?}"
            );
            if plainly {
                continue;
            }
            let radix_bits = rng.random_range(0..7u32);
            let derived = radix_directory(&fingerprints, radix_bits);
            let mut directory = derived.clone();
            if round % 2 == 0 {
                let at = rng.random_range(0..directory.len() - 1);
                directory[at] = match rng.random_range(0..3) {
                    0 => directory[at].wrapping_add(1),
                    1 => directory[at].wrapping_sub(1),
                    _ => rng.random_range(0..=fingerprints.len() as u32 + 2),
                };
            }
            let dictionary = Dictionary {
                fingerprints: &fingerprints,
                directory: &directory,
                radix_bits,
            };
            let from = rng.random_range(0..directory.len());
            let to = rng.random_range(from..=directory.len());
            let plainly = (from..to.min(directory.len() - 1)).any(|b| directory[b] != derived[b]);
            let scalar = bucket_wrong_scalar(&dictionary, from..to.min(directory.len() - 1));
            assert_eq!(
                scalar, plainly,
                "{directory:?} vs {derived:?}, {from}..{to}"
            );
            assert_eq!(
                any_bucket_wrong(&dictionary, from..to),
                plainly,
                "{directory:?}"
            );
        }
    }
}
