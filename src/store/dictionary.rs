//! The user dictionary of one loaded pack: fingerprint → dense ordinal.
//!
//! Fingerprints are sorted ascending and a user's ordinal is its rank. A radix
//! directory over the top bits narrows the binary search to a handful of
//! entries, so a lookup costs about two cache misses instead of ~24 (see
//! `pack::index_build` for how the directory is sized). Both arrays are
//! served in place from a format-v2 pack file, or built at load for v1.

use std::ops::Range;

use crate::pack::index_build::{bucket_of, radix_bits_for, radix_directory};
use crate::pack::mapped::Column;

#[derive(Debug)]
pub struct UserDictionary {
    /// Sorted strictly ascending; ordinal = index.
    fingerprints: Column<u64>,
    /// `bucket_starts[b]` is the first index whose fingerprint's top bits are
    /// `>= b`; it has `2^radix_bits + 1` entries, the last one = `len`.
    bucket_starts: Column<u32>,
    radix_bits: u32,
}

impl UserDictionary {
    /// Builds the directory over fingerprints already sorted strictly ascending
    /// (the pack reader checks that).
    pub fn new(fingerprints: Vec<u64>) -> Self {
        let radix_bits = radix_bits_for(fingerprints.len());
        let bucket_starts = radix_directory(&fingerprints, radix_bits);
        Self::from_columns(
            Column::from_vec(fingerprints),
            Column::from_vec(bucket_starts),
            radix_bits,
        )
    }

    /// A dictionary over columns the pack reader checked: fingerprints
    /// strictly ascending, the directory exactly `radix_directory` of them.
    pub(crate) fn from_columns(
        fingerprints: Column<u64>,
        bucket_starts: Column<u32>,
        radix_bits: u32,
    ) -> Self {
        debug_assert_eq!(bucket_starts.len(), (1usize << radix_bits) + 1);
        Self {
            fingerprints,
            bucket_starts,
            radix_bits,
        }
    }

    /// The ordinal of a user, or `None` when the pack does not know them.
    #[inline]
    pub fn ordinal(&self, fingerprint: u64) -> Option<u32> {
        self.rank_among(fingerprint, self.candidates(fingerprint))
    }

    /// The ordinals the user can have: their radix bucket (about
    /// `USERS_PER_BUCKET` of them; one directory read).
    #[inline]
    pub fn candidates(&self, fingerprint: u64) -> Range<usize> {
        let bucket = bucket_of(fingerprint, self.radix_bits);
        self.bucket_starts[bucket] as usize..self.bucket_starts[bucket + 1] as usize
    }

    /// The user's ordinal within `candidates(fingerprint)`, if any.
    #[inline]
    pub fn rank_among(&self, fingerprint: u64, candidates: Range<usize>) -> Option<u32> {
        let first = candidates.start;
        self.fingerprints[candidates]
            .binary_search(&fingerprint)
            .ok()
            .map(|offset| (first + offset) as u32)
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Heap bytes held, for status and memory accounting (0 when served from
    /// a mapped pack file).
    pub fn heap_bytes(&self) -> usize {
        self.fingerprints.heap_bytes() + self.bucket_starts.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_user_and_no_stranger() {
        let mut fingerprints: Vec<u64> = (0..5000u64)
            .map(|n| crate::user_fingerprint(&format!("u{n}")))
            .collect();
        fingerprints.push(0);
        fingerprints.push(u64::MAX);
        fingerprints.sort_unstable();
        fingerprints.dedup();
        let dictionary = UserDictionary::new(fingerprints.clone());
        for (ordinal, fingerprint) in fingerprints.iter().enumerate() {
            assert_eq!(dictionary.ordinal(*fingerprint), Some(ordinal as u32));
        }
        for n in 5000..6000u64 {
            let stranger = crate::user_fingerprint(&format!("u{n}"));
            assert_eq!(dictionary.ordinal(stranger), None);
        }
    }

    #[test]
    fn empty_dictionary_knows_nobody() {
        let dictionary = UserDictionary::new(Vec::new());
        assert_eq!(dictionary.ordinal(42), None);
        assert_eq!(dictionary.ordinal(u64::MAX), None);
    }
}
