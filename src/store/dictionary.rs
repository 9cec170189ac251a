//! The user dictionary of one loaded pack: fingerprint → dense ordinal.
//!
//! Fingerprints are sorted ascending and a user's ordinal is its rank. A radix
//! directory over the top bits narrows the binary search to a handful of
//! entries, so a lookup costs about two cache misses instead of ~24.

/// Most bits of the fingerprint the radix directory indexes (1 GiB of
/// directory, for a billion users).
const MAX_RADIX_BITS: u32 = 28;
/// The directory has about one bucket per this many users: 4 users are 32
/// bytes of fingerprints, so a bucket is one cache line (rarely two), and the
/// directory costs about a byte per user. With a fixed 16-bit directory a
/// 10M-user pack had ~150 users a bucket: a binary search over 1.2 KB, four
/// or five cache misses instead of two.
const USERS_PER_BUCKET: usize = 4;

#[derive(Debug)]
pub struct UserDictionary {
    /// Sorted strictly ascending; ordinal = index.
    fingerprints: Vec<u64>,
    /// `bucket_starts[b]` is the first index whose fingerprint's top bits are
    /// `>= b`; it has `2^radix_bits + 1` entries, the last one = `len`.
    bucket_starts: Vec<u32>,
    /// `64 - radix_bits`: shifting a fingerprint by this gives its bucket.
    bucket_shift: u32,
}

impl UserDictionary {
    /// Builds the directory over fingerprints already sorted strictly ascending
    /// (the pack reader checks that).
    pub fn new(fingerprints: Vec<u64>) -> Self {
        debug_assert!(fingerprints.windows(2).all(|pair| pair[0] < pair[1]));
        let radix_bits = (usize::BITS - (fingerprints.len() / USERS_PER_BUCKET).leading_zeros())
            .min(MAX_RADIX_BITS);
        let bucket_shift = 64 - radix_bits;
        let bucket_of = |fingerprint: u64| fingerprint.checked_shr(bucket_shift).unwrap_or(0);
        let bucket_count = 1usize << radix_bits;
        let mut bucket_starts = Vec::with_capacity(bucket_count + 1);
        let mut index = 0usize;
        for bucket in 0..bucket_count as u64 {
            while index < fingerprints.len() && bucket_of(fingerprints[index]) < bucket {
                index += 1;
            }
            bucket_starts.push(index as u32);
        }
        bucket_starts.push(fingerprints.len() as u32);
        Self {
            fingerprints,
            bucket_starts,
            bucket_shift,
        }
    }

    /// The ordinal of a user, or `None` when the pack does not know them.
    #[inline]
    pub fn ordinal(&self, fingerprint: u64) -> Option<u32> {
        // checked_shr: a shift of 64 (an empty dictionary) means one bucket.
        let bucket = fingerprint.checked_shr(self.bucket_shift).unwrap_or(0) as usize;
        let start = self.bucket_starts[bucket] as usize;
        let end = self.bucket_starts[bucket + 1] as usize;
        self.fingerprints[start..end]
            .binary_search(&fingerprint)
            .ok()
            .map(|offset| (start + offset) as u32)
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Heap bytes held, for status and memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.fingerprints.capacity() * 8 + self.bucket_starts.capacity() * 4
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
