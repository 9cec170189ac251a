//! The admin port's own Tokio runtime, on threads below the query path's
//! priority (nice +`--admin-nice`).
//!
//! Why: receiving a `PushSnapshot` stream — socket reads, HTTP/2 framing,
//! copying frames into the decode buffer — is about a third of a push's CPU
//! (BENCHMARKS.md, "Ninth session"). On the query runtime it ran on the
//! readers' workers at their priority for the whole gigabyte, and a reader
//! queued behind it on the same worker. On a runtime of its own it is one
//! more thread for the kernel to schedule beside the readers' workers. The
//! upload writer and the checked load already run on deprioritised threads
//! (`crate::background`); this moves the rest of the push there too.
//!
//! At shutdown the runtime is dropped once the admin server has stopped,
//! without waiting: a blocking job still running there (a push's commit
//! after the grace period) is cut off like a kill, which pushes survive
//! (new file, fsync, rename).
//!
//! Every admin call runs here, not only pushes: a runtime serves whole
//! connections. The priority only matters while the cores are saturated:
//! then a nice +10 thread still gets about a tenth of a busy core, so admin
//! calls are slowed, not starved (`UpdateMembers` throughput on an idle box
//! is unchanged). `--admin-nice 0` keeps the own runtime at the readers'
//! priority; the runtime of its own is what lowered the readers' tail, its
//! priority did not measurably.

/// A runtime of one worker (plus its blocking pool) for the admin port.
/// Dropping it shuts it down without waiting for tasks still running there.
pub struct AdminRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl AdminRuntime {
    /// Starts the runtime; each of its threads lowers its own priority to
    /// `nice` (threads inherit it, so the upload and load threads a push
    /// starts from here are no less nice).
    pub fn start(nice: i32) -> std::io::Result<AdminRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("segd-admin")
            .enable_all()
            .on_thread_start(move || crate::background::lower_this_threads_priority(nice))
            .build()?;
        Ok(AdminRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("runtime until dropped")
            .handle()
    }
}

impl Drop for AdminRuntime {
    /// A plain drop blocks on the runtime's threads, which panics inside the
    /// main runtime, where the server is stopped.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_work_runs_at_the_admin_priority() {
        let caller = rustix::process::getpriority_process(None).unwrap();
        let runtime = AdminRuntime::start(7).unwrap();
        let worker = runtime
            .handle()
            .spawn(async { rustix::process::getpriority_process(None).unwrap() });
        let blocking = runtime
            .handle()
            .spawn_blocking(|| rustix::process::getpriority_process(None).unwrap());
        assert_eq!(worker.await.unwrap(), caller.max(7));
        assert_eq!(blocking.await.unwrap(), caller.max(7));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), caller);
    }
}
