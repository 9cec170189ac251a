//! Deferrable heavy work — writing and checksumming a push's upload as it
//! arrives, verifying, mapping and installing the pushed pack — on a thread
//! of its own at a lower CPU priority (nice +[`NICE`]).
//!
//! Why: on a busy box a push competes with the query path for the same
//! cores; a checked load of a 200M-membership pack is over a second of CPU.
//! The readers are the latency-sensitive side, so the push yields: at nice
//! +10 the Linux scheduler gives the thread about a tenth of the weight of a
//! query thread, so the push takes longer under load and the readers do not
//! wait for it. It still progresses (no `SCHED_IDLE`: a saturated box must
//! not starve a push forever; and measured with the whole push path on
//! `SCHED_IDLE`, the readers' p99.9 during 1 GB pushes was nearly twice as
//! high as at nice +10: BENCHMARKS.md, "Eleventh session").
//!
//! A fresh thread per job, never a pooled one: the lowered priority cannot be
//! raised again without privileges, so it must die with the job. Must never
//! run request-path work.

use tokio::sync::oneshot;

/// How much nicer than the query path the work runs.
pub const NICE: i32 = 10;

/// Runs `work` on a new thread named `name` at nice +[`NICE`] and returns its
/// result. Errors only when the thread cannot be started or `work` panicked.
pub async fn run_deprioritised<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    spawn_deprioritised(name, work)?.await
}

/// Starts `work` on a new thread named `name` at nice +[`NICE`] now, for a
/// caller that has more to do while it runs (the upload writer of a push,
/// fed as chunks arrive); the returned future is its result, or an error if
/// `work` panicked.
pub fn spawn_deprioritised<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<T>>> {
    let (reply, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_threads_priority(NICE);
            let _ = reply.send(work());
        })?;
    Ok(async move {
        result
            .await
            .map_err(|_| std::io::Error::other("background work panicked"))
    })
}

/// Raises the calling thread's nice value to at least `nice` (never lowers
/// it: that needs privileges). On Linux the nice value is per thread, and
/// `PRIO_PROCESS` with no id is the calling thread. A failure only costs
/// the readers some latency.
pub fn lower_this_threads_priority(nice: i32) {
    let current = rustix::process::getpriority_process(None).unwrap_or(0);
    if current >= nice {
        return;
    }
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!(%error, nice, "could not lower this thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_at_the_lower_priority_and_the_caller_keeps_its_own() {
        let caller = rustix::process::getpriority_process(None).unwrap();
        let in_work = run_deprioritised("segd-test", || {
            rustix::process::getpriority_process(None).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(in_work, caller.max(NICE));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), caller);
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error_not_a_hang() {
        let outcome = run_deprioritised("segd-test", || -> u32 { panic!("boom") }).await;
        assert!(outcome.is_err());
    }
}
