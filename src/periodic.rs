//! The one periodic-task helper, in its two forms:
//!
//! - [`Periodic`]: a background thread running a job every interval until
//!   stopped. Used by the frequency store (checkpoints, sweeps) and its log
//!   (interval fsyncs), which run on std threads, not the async runtime.
//!   Stopping wakes the thread at once (no waiting out the interval) and
//!   joins it; a job already running finishes first.
//! - [`Ticker`]: the same cadence for a task on the async runtime (the
//!   freshness check, the `--watch-dir` poll): each tick is awaited against
//!   the shutdown token, so a task stops at the token without waiting out
//!   its interval, and a late tick delays the next instead of bursting.
//!
//! It owns only timing and stopping: never the jobs' work, and never a job's
//! blocking I/O on the runtime (the tasks move that to blocking threads).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct StopFlag {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopFlag {
    /// Waits out `interval`; true when stopped meanwhile (or before).
    fn wait(&self, interval: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.wake.wait_for(&mut stopped, interval);
        }
        *stopped
    }
}

/// A named thread running `job` every `interval`.
pub struct Periodic {
    stop: Arc<StopFlag>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts the thread; the first run is one `interval` from now.
    pub fn spawn(
        name: &str,
        interval: Duration,
        mut job: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Periodic> {
        let stop = Arc::new(StopFlag::default());
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !thread_stop.wait(interval) {
                    job();
                }
            })?;
        Ok(Periodic {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it. Idempotent.
    pub fn stop(&mut self) {
        *self.stop.stopped.lock() = true;
        self.stop.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ticks of an async periodic task: the first at once, then one every
/// `period` (a late tick delays the next), until `shutdown` is cancelled.
pub struct Ticker {
    ticks: Interval,
    shutdown: CancellationToken,
}

impl Ticker {
    /// Must be called within a tokio runtime.
    pub fn new(period: Duration, shutdown: CancellationToken) -> Ticker {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { ticks, shutdown }
    }

    /// Waits for the next tick: true when it came, false once `shutdown` is
    /// cancelled (at once, without waiting out the period).
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            _ = self.ticks.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn runs_until_stopped_and_stops_without_waiting_out_the_interval() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let mut periodic = Periodic::spawn("test-periodic", Duration::from_millis(1), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "the job never ran 3 times");
            std::thread::yield_now();
        }
        periodic.stop();
        assert!(periodic.thread.is_none(), "stop joins the thread");

        let mut slow = Periodic::spawn("test-slow", Duration::from_secs(3600), || {}).unwrap();
        let started = Instant::now();
        slow.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_ticker_ticks_at_once_and_stops_at_the_token() {
        let shutdown = CancellationToken::new();
        let mut ticker = Ticker::new(Duration::from_secs(3600), shutdown.clone());
        let started = Instant::now();
        assert!(ticker.tick().await, "the first tick comes at once");
        shutdown.cancel();
        assert!(!ticker.tick().await, "a cancelled ticker stops");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
