//! One counter: the impression times of one (user, cap key), exact up to
//! [`EXACT_LIMIT`] and folded into hour buckets beyond, so memory stays
//! bounded. Owns the counting rule; must never count short of the truth
//! (a folded bucket counts whenever its hour may overlap the range asked).

use super::{BUCKET_SECONDS, EXACT_LIMIT};

/// Impressions of one hour folded into one count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// First second of the hour (a multiple of [`BUCKET_SECONDS`]).
    pub start: i64,
    /// Impressions in `[start, start + BUCKET_SECONDS)`.
    pub count: u32,
}

impl Bucket {
    fn last_second(&self) -> i64 {
        self.start.saturating_add(BUCKET_SECONDS - 1)
    }

    fn may_overlap(&self, after_exclusive: i64, until_inclusive: i64) -> bool {
        self.last_second() > after_exclusive && self.start <= until_inclusive
    }
}

/// The impressions of one (user, cap key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Exact impression times, sorted ascending, at most [`EXACT_LIMIT`].
    times: Vec<i64>,
    /// Older impressions folded per hour, sorted by `start`, unique starts.
    /// Boxed and optional: almost no entry has any, and this keeps `Entry` at
    /// 32 bytes (a bare `Vec` would add 16).
    #[allow(clippy::box_collection)]
    coarse: Option<Box<Vec<Bucket>>>,
}

impl Entry {
    /// True when some impressions are folded into hour buckets.
    pub(super) fn is_coarse(&self) -> bool {
        self.coarse.is_some()
    }

    /// Adds one impression at `at_unix_seconds`.
    pub fn insert(&mut self, at_unix_seconds: i64) {
        let position = self.times.partition_point(|&time| time <= at_unix_seconds);
        if self.times.len() < 8 {
            // Small entries are the common case: grow one slot at a time.
            self.times.reserve_exact(1);
        }
        self.times.insert(position, at_unix_seconds);
        if self.times.len() > EXACT_LIMIT {
            let oldest = self.times.remove(0);
            self.add_to_bucket(oldest.div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS, 1);
        }
    }

    fn add_to_bucket(&mut self, start: i64, count: u32) {
        let buckets = self.coarse.get_or_insert_with(Default::default);
        match buckets.binary_search_by_key(&start, |bucket| bucket.start) {
            Ok(index) => buckets[index].count = buckets[index].count.saturating_add(count),
            Err(index) => buckets.insert(index, Bucket { start, count }),
        }
    }

    /// Impressions at `t` with `after_exclusive < t <= until_inclusive`: exact
    /// from the times, plus every bucket that may overlap the range.
    pub fn count(&self, after_exclusive: i64, until_inclusive: i64) -> u32 {
        if until_inclusive <= after_exclusive {
            return 0;
        }
        let first = self.times.partition_point(|&time| time <= after_exclusive);
        let end = self.times.partition_point(|&time| time <= until_inclusive);
        let mut total = (end - first) as u32;
        if let Some(buckets) = &self.coarse {
            for bucket in buckets.iter() {
                if bucket.may_overlap(after_exclusive, until_inclusive) {
                    total = total.saturating_add(bucket.count);
                }
            }
        }
        total
    }

    /// Drops impressions at or before `cutoff_inclusive`; buckets only once
    /// their whole hour is. Returns how many events were dropped.
    pub fn sweep(&mut self, cutoff_inclusive: i64) -> u64 {
        let expired = self.times.partition_point(|&time| time <= cutoff_inclusive);
        self.times.drain(..expired);
        let mut dropped = expired as u64;
        if let Some(buckets) = &mut self.coarse {
            buckets.retain(|bucket| {
                let keep = bucket.last_second() > cutoff_inclusive;
                if !keep {
                    dropped += u64::from(bucket.count);
                }
                keep
            });
            if buckets.is_empty() {
                self.coarse = None;
            }
        }
        if self.times.capacity() > 16 && self.times.capacity() > 2 * self.times.len() {
            self.times.shrink_to(self.times.len() * 3 / 2);
        }
        dropped
    }

    /// True when the entry holds nothing.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty() && self.coarse.is_none()
    }

    /// Impressions held, exact and folded.
    pub fn events(&self) -> u64 {
        let folded: u64 = self
            .coarse
            .as_deref()
            .map(|buckets| buckets.iter().map(|bucket| u64::from(bucket.count)).sum())
            .unwrap_or(0);
        self.times.len() as u64 + folded
    }

    /// Heap bytes owned (allocation sizes, without allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        let times = self.times.capacity() * size_of::<i64>();
        let coarse = self
            .coarse
            .as_deref()
            .map(|buckets| size_of::<Vec<Bucket>>() + buckets.capacity() * size_of::<Bucket>())
            .unwrap_or(0);
        times + coarse
    }

    /// The exact times, sorted ascending.
    pub fn times(&self) -> &[i64] {
        &self.times
    }

    /// The coarse buckets, sorted by start.
    pub fn buckets(&self) -> &[Bucket] {
        self.coarse.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Rebuilds an entry from checkpointed parts, checking its invariants.
    pub fn from_parts(times: Vec<i64>, buckets: Vec<Bucket>) -> Result<Entry, String> {
        if times.len() > EXACT_LIMIT {
            return Err(format!(
                "entry holds {} exact times, more than {EXACT_LIMIT}",
                times.len()
            ));
        }
        if !times.is_sorted() {
            return Err("entry times are not sorted".to_owned());
        }
        if !buckets.windows(2).all(|pair| pair[0].start < pair[1].start)
            || buckets
                .iter()
                .any(|bucket| bucket.start.rem_euclid(BUCKET_SECONDS) != 0)
        {
            return Err("entry buckets are not sorted, unique, hour-aligned".to_owned());
        }
        let coarse = if buckets.is_empty() {
            None
        } else {
            Some(Box::new(buckets))
        };
        Ok(Entry { times, coarse })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_exact_up_to_the_limit_and_never_under_counts_beyond() {
        let mut entry = Entry::default();
        let mut reference = Vec::new();
        for index in 0..2_500i64 {
            let time = 1_700_000_000 + index * 97 - (index % 7) * 500;
            entry.insert(time);
            reference.push(time);
            let count_in = |after: i64, until: i64| {
                reference
                    .iter()
                    .filter(|&&t| after < t && t <= until)
                    .count() as u32
            };
            for (after, until) in [
                (i64::MIN, i64::MAX),
                (time - 3_600, time),
                (time - 86_400, time - 100),
            ] {
                let counted = entry.count(after, until);
                let truth = count_in(after, until);
                if reference.len() <= EXACT_LIMIT {
                    assert_eq!(counted, truth);
                } else {
                    assert!(counted >= truth, "{counted} < {truth}");
                }
            }
        }
        assert_eq!(entry.times().len(), EXACT_LIMIT);
        assert_eq!(entry.events(), 2_500);
    }
}
