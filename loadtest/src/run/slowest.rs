//! The slowest measured requests of a run, with when they started, so a tail
//! can be laid against what else happened then (a push's phases in the
//! server's log, a swap window). Kept per connection as a bounded min-heap:
//! a push costs one comparison for a request faster than the kept ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::report::SlowRequest;

/// How many requests a run reports (and each connection keeps).
pub(super) const SLOWEST_KEPT: usize = 100;

/// The [`SLOWEST_KEPT`] slowest requests seen, as (latency µs, start ns).
pub(super) struct Slowest {
    kept: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Slowest {
    pub(super) fn new() -> Slowest {
        Slowest {
            kept: BinaryHeap::with_capacity(SLOWEST_KEPT + 1),
        }
    }

    pub(super) fn offer(&mut self, latency_micros: u64, start_ns: u64) {
        if self.kept.len() == SLOWEST_KEPT
            && self
                .kept
                .peek()
                .is_some_and(|Reverse((fastest_kept, _))| latency_micros <= *fastest_kept)
        {
            return;
        }
        self.kept.push(Reverse((latency_micros, start_ns)));
        if self.kept.len() > SLOWEST_KEPT {
            self.kept.pop();
        }
    }

    /// The slowest of all connections' kept requests, slowest first.
    pub(super) fn merged<'a>(all: impl Iterator<Item = &'a Slowest>) -> Vec<SlowRequest> {
        let mut requests: Vec<(u64, u64)> = all
            .flat_map(|slowest| slowest.kept.iter().map(|Reverse(request)| *request))
            .collect();
        requests.sort_unstable_by(|a, b| b.cmp(a));
        requests.truncate(SLOWEST_KEPT);
        requests
            .into_iter()
            .map(|(latency_us, start_ns)| SlowRequest {
                started_at_seconds: start_ns as f64 / 1e9,
                latency_us,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_slowest_across_connections_slowest_first() {
        let mut first = Slowest::new();
        let mut second = Slowest::new();
        for i in 0..1_000u64 {
            first.offer(i, i * 10);
            second.offer(i + 500, i * 10 + 1);
        }
        let merged = Slowest::merged([&first, &second].into_iter());
        assert_eq!(merged.len(), SLOWEST_KEPT);
        assert_eq!(merged[0].latency_us, 1_499);
        assert_eq!(merged[0].started_at_seconds, 9_991e-9);
        assert!(
            merged
                .windows(2)
                .all(|w| w[0].latency_us >= w[1].latency_us)
        );
        assert_eq!(merged.last().unwrap().latency_us, 1_400);
    }
}
