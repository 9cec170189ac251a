//! The one periodic background thread: runs a job every interval until
//! stopped. Used by the frequency store (checkpoints, sweeps) and its log
//! (interval fsyncs), which run on std threads, not the async runtime.
//!
//! Stopping wakes the thread at once (no waiting out the interval) and joins
//! it; a job already running finishes first.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

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
}
