//! Forgotten users as the frequency store sees them: for each user fingerprint,
//! the log sequence number at which their counters were dropped. Replay drops
//! the user's impressions logged before that number (and a checkpoint taken
//! before it), so a forget survives a restart while impressions recorded after
//! it still count. The list itself is kept durable by its owner
//! (`crate::realtime`), which hands it to [`super::FreqStore::open_forgetting`].

use ahash::AHashMap;

/// User fingerprint → first log sequence number recorded after the forget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForgottenUsers {
    boundaries: AHashMap<u64, u64>,
}

impl ForgottenUsers {
    /// Remembers that `user_fingerprint`'s records before `boundary_seq` are gone
    /// (the latest forget of a user wins).
    pub fn insert(&mut self, user_fingerprint: u64, boundary_seq: u64) {
        let boundary = self.boundaries.entry(user_fingerprint).or_insert(0);
        *boundary = (*boundary).max(boundary_seq);
    }

    pub fn len(&self) -> usize {
        self.boundaries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boundaries.is_empty()
    }

    /// Whether an impression of the user in the record `log_seq` was forgotten.
    #[inline]
    pub fn drops(&self, user_fingerprint: u64, log_seq: u64) -> bool {
        !self.boundaries.is_empty()
            && self
                .boundaries
                .get(&user_fingerprint)
                .is_some_and(|&boundary| log_seq < boundary)
    }

    /// Whether the user's entries in a checkpoint covering the records before
    /// `covers_before_seq` were forgotten.
    pub fn drops_checkpointed(&self, user_fingerprint: u64, covers_before_seq: u64) -> bool {
        self.drops(user_fingerprint, covers_before_seq.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_before_the_boundary_are_dropped() {
        let mut forgotten = ForgottenUsers::default();
        forgotten.insert(7, 10);
        assert!(forgotten.drops(7, 9));
        assert!(!forgotten.drops(7, 10));
        assert!(!forgotten.drops(8, 1));
        assert!(forgotten.drops_checkpointed(7, 10), "covers 1..=9");
        assert!(
            !forgotten.drops_checkpointed(7, 11),
            "taken after the forget"
        );
        forgotten.insert(7, 5);
        assert!(
            forgotten.drops(7, 9),
            "an older forget does not shrink a later one"
        );
    }
}
