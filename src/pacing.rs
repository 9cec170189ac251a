//! Holding a long background write to a byte rate.
//!
//! Why: a push of a large pack is gigabytes of copying — the client's send,
//! the server's receive, the write into the page cache, the checksum — and
//! at full speed it takes a whole core of a small box for seconds, while the
//! query path needs its cores within microseconds. A lower priority
//! (`crate::background`) decides who runs first, not how long the readers
//! queue behind a copy already running; a rate spreads the same work over
//! more time, so the readers more often find an idle core (on the 10M set:
//! p99 during pushes 1.9–5.4 ms paced at 200 MiB/s against 4.2–7.3 ms
//! unpaced, p99.9 about the same; BENCHMARKS.md, "Eighth session").
//! Pacing the upload writer paces the whole push: its queue fills, the
//! receive waits and HTTP/2 flow control holds the client back.
//!
//! A schedule rather than a token bucket crate: one thread, one stream of
//! bytes, one sleep — `governor` and friends answer many callers at once.

use std::time::{Duration, Instant};

/// The most a pacer lets a stream run ahead after it fell behind (a slow
/// client, a stall): a burst of this long at full speed, no more.
const MAX_CREDIT: Duration = Duration::from_millis(20);

/// Sleeps the calling thread so that the bytes it reports average at most
/// `bytes_per_second`.
pub struct BytePacer {
    bytes_per_second: u64,
    /// When the bytes reported so far are due at the rate.
    due: Instant,
}

impl BytePacer {
    /// A pacer at `bytes_per_second`; `None` for 0, which means unpaced.
    pub fn new(bytes_per_second: u64) -> Option<Self> {
        (bytes_per_second > 0).then(|| Self {
            bytes_per_second,
            due: Instant::now(),
        })
    }

    /// Counts `bytes` as done and sleeps until they are due.
    pub fn pace(&mut self, bytes: usize) {
        let now = Instant::now();
        let earliest = now.checked_sub(MAX_CREDIT).unwrap_or(now);
        let spent = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        self.due = self.due.max(earliest) + spent;
        if let Some(wait) = self.due.checked_duration_since(now) {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    // Only lower bounds: a sleep never ends early, but it may end late on a
    // busy machine.
    #[test]
    fn bytes_take_at_least_their_time_at_the_rate() {
        let started = Instant::now();
        let mut pacer = BytePacer::new(100 * MIB as u64).unwrap();
        for _ in 0..20 {
            pacer.pace(MIB / 2);
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn idle_time_earns_no_more_than_a_short_burst() {
        let mut pacer = BytePacer::new(100 * MIB as u64).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        for _ in 0..10 {
            pacer.pace(MIB);
        }
        assert!(started.elapsed() >= Duration::from_millis(100) - MAX_CREDIT);
    }

    #[test]
    fn a_rate_of_zero_is_unpaced() {
        assert!(BytePacer::new(0).is_none());
    }
}
