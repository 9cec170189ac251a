//! The group-commit writer of the frequency log.
//!
//! Callers append encoded records to a shared queue under one mutex (which also
//! orders sequence numbers); a dedicated thread drains everything queued, writes
//! it with one `write`, fsyncs per [`FsyncPolicy`], then wakes the callers it
//! covered: group commit. A failed write or fsync fails every record of that
//! batch not yet settled in a closed segment; the writer cuts those records
//! from the segment (deleting a segment left with no record) and continues in
//! a fresh segment, so the log holds exactly the records that succeeded.
//!
//! This file owns the queue and the callers' side (append, wait, rotation
//! requests, stop); `thread` the writer thread and the segment files.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::freq::error::FreqError;
use crate::periodic::Periodic;

use super::format::*;

mod thread;

/// A test hook (feature `test-hooks`) making the writer's I/O fail; see
/// `FreqStore::inject_fault`.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InjectedFault {
    /// Normal operation.
    None = 0,
    /// Every log `write` fails until cleared.
    FailWrites = 1,
    /// Every log fsync fails until cleared.
    FailFsyncs = 2,
}

/// Writer figures.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    pub fsync_count: AtomicU64,
    pub fsync_total_micros: AtomicU64,
    pub fsync_failures: AtomicU64,
    pub records_written: AtomicU64,
    pub write_failures: AtomicU64,
    pub batches_written: AtomicU64,
}

enum QueueItem {
    Records {
        first_seq: u64,
        last_seq: u64,
        bytes: Vec<u8>,
    },
    Rotate {
        at_seq: u64,
        ticket: u64,
    },
}

struct Queue {
    items: Vec<QueueItem>,
    /// Sequence number the next record gets.
    next_seq: u64,
    shutdown: bool,
    /// Rotations requested so far (the ticket of the latest).
    rotations_requested: u64,
    /// An emptied buffer kept for reuse.
    spare: Vec<u8>,
}

struct Progress {
    /// Every record with a smaller sequence number has been processed.
    completed_before: u64,
    /// Recent failed sequence ranges (inclusive), newest last.
    failed_ranges: VecDeque<(u64, u64)>,
    /// Failures so far (write, fsync, rotation).
    failure_count: u64,
    /// Tickets of rotations processed; rotations are processed in order.
    rotations_processed: u64,
    writer_exited: bool,
}

const FAILED_RANGES_KEPT: usize = 1_024;

struct Shared {
    dir: PathBuf,
    policy: FsyncPolicy,
    queue: Mutex<Queue>,
    queue_ready: Condvar,
    progress: Mutex<Progress>,
    progress_made: Condvar,
    /// The segment being written, shared with the interval fsync thread.
    current_file: Mutex<Option<Arc<File>>>,
    /// Bytes written since the last fsync (interval policy).
    dirty: AtomicBool,
    /// Set by the fsync thread after a failed fsync: the writer starts anew.
    roll_segment: AtomicBool,
    /// An [`InjectedFault`] as `u8` (test hook).
    #[cfg(any(test, feature = "test-hooks"))]
    fault: std::sync::atomic::AtomicU8,
    counters: LogCounters,
}

/// The log writer: queue, writer thread and (interval policy) fsync thread.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Interval policy only.
    fsync: Mutex<Option<Periodic>>,
}

impl LogWriter {
    /// Starts a writer appending to a new segment at `next_seq`.
    pub fn start(
        dir: &Path,
        policy: FsyncPolicy,
        fsync_interval: Duration,
        next_seq: u64,
    ) -> Result<LogWriter, FreqError> {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            policy,
            queue: Mutex::new(Queue {
                items: Vec::new(),
                next_seq,
                shutdown: false,
                rotations_requested: 0,
                spare: Vec::new(),
            }),
            queue_ready: Condvar::new(),
            progress: Mutex::new(Progress {
                completed_before: next_seq,
                failed_ranges: VecDeque::new(),
                failure_count: 0,
                rotations_processed: 0,
                writer_exited: false,
            }),
            progress_made: Condvar::new(),
            current_file: Mutex::new(None),
            dirty: AtomicBool::new(false),
            roll_segment: AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            fault: std::sync::atomic::AtomicU8::new(InjectedFault::None as u8),
            counters: LogCounters::default(),
        });
        let segment = shared.open_segment(next_seq)?;
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("freq-log-writer".to_owned())
            .spawn(move || writer_shared.run_writer(Some(segment)))
            .map_err(|error| FreqError::storage("spawn log writer", error))?;
        let fsync = match policy {
            FsyncPolicy::Interval => {
                let fsync_shared = Arc::clone(&shared);
                Some(
                    Periodic::spawn("freq-log-fsync", fsync_interval, move || {
                        fsync_shared.interval_fsync()
                    })
                    .map_err(|error| FreqError::storage("spawn log fsync thread", error))?,
                )
            }
            FsyncPolicy::Always | FsyncPolicy::Never => None,
        };
        Ok(LogWriter {
            shared,
            writer: Mutex::new(Some(writer)),
            fsync: Mutex::new(fsync),
        })
    }

    /// Appends one record built by `build` under the queue lock, which orders
    /// sequence numbers: `build` gets the record's sequence number and a buffer
    /// for the payload, and returns whatever the caller needs back. An empty
    /// payload appends nothing and returns `None` for the sequence number.
    pub fn append<T>(
        &self,
        build: impl FnOnce(u64, &mut Vec<u8>) -> T,
    ) -> Result<(Option<u64>, T), FreqError> {
        let mut queue = self.shared.queue.lock();
        if queue.shutdown {
            return Err(FreqError::ShutDown);
        }
        let seq = queue.next_seq;
        let mut payload = std::mem::take(&mut queue.spare);
        payload.clear();
        let built = build(seq, &mut payload);
        if payload.is_empty() {
            queue.spare = payload;
            return Ok((None, built));
        }
        if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
            let payload_len = payload.len();
            queue.spare = payload;
            return Err(FreqError::storage(
                "append to the log",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "record of {payload_len} bytes exceeds the log's maximum of {MAX_RECORD_PAYLOAD_BYTES}"
                    ),
                ),
            ));
        }
        queue.next_seq += 1;
        match queue.items.last_mut() {
            Some(QueueItem::Records {
                last_seq, bytes, ..
            }) => {
                frame_payload(&payload, bytes);
                *last_seq = seq;
                queue.spare = payload;
            }
            _ => {
                let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
                frame_payload(&payload, &mut bytes);
                queue.items.push(QueueItem::Records {
                    first_seq: seq,
                    last_seq: seq,
                    bytes,
                });
                queue.spare = payload;
            }
        }
        drop(queue);
        self.shared.queue_ready.notify_one();
        Ok((Some(seq), built))
    }

    /// Blocks until record `seq` (and all before it) was processed; `Err` when
    /// its batch failed.
    pub fn wait_durable(&self, seq: u64) -> Result<(), FreqError> {
        let mut progress = self.shared.progress.lock();
        while progress.completed_before <= seq && !progress.writer_exited {
            self.shared.progress_made.wait(&mut progress);
        }
        if progress.completed_before <= seq {
            return Err(FreqError::ShutDown);
        }
        if progress
            .failed_ranges
            .iter()
            .any(|&(low, high)| low <= seq && seq <= high)
        {
            // The batch's own error went to the log; this caller learns the outcome.
            return Err(FreqError::storage(
                format!("log record {seq}"),
                std::io::Error::other("its batch failed to write or fsync"),
            ));
        }
        Ok(())
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.shared.queue.lock().next_seq
    }

    /// Asks the writer to fsync the current segment and start a new one at
    /// the next sequence number. Returns that number (every later record goes
    /// to the new segment) and a ticket for [`LogWriter::wait_rotation`].
    pub fn request_rotation(&self) -> Result<(u64, u64), FreqError> {
        let mut queue = self.shared.queue.lock();
        if queue.shutdown {
            return Err(FreqError::ShutDown);
        }
        let at_seq = queue.next_seq;
        queue.rotations_requested += 1;
        let ticket = queue.rotations_requested;
        queue.items.push(QueueItem::Rotate { at_seq, ticket });
        drop(queue);
        self.shared.queue_ready.notify_one();
        Ok((at_seq, ticket))
    }

    /// Blocks until rotation `ticket`, and so every record queued before it,
    /// was processed.
    pub fn wait_rotation(&self, ticket: u64) -> Result<(), FreqError> {
        let mut progress = self.shared.progress.lock();
        while progress.rotations_processed < ticket && !progress.writer_exited {
            self.shared.progress_made.wait(&mut progress);
        }
        if progress.rotations_processed < ticket {
            return Err(FreqError::ShutDown);
        }
        Ok(())
    }

    /// Failures (write, fsync, rotation) so far.
    pub fn failure_count(&self) -> u64 {
        self.shared.progress.lock().failure_count
    }

    /// The writer's figures.
    pub fn counters(&self) -> &LogCounters {
        &self.shared.counters
    }

    /// Makes the writer's I/O fail (test hook).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn inject_fault(&self, fault: InjectedFault) {
        self.shared
            .fault
            .store(fault as u8, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flushes everything queued, fsyncs the segment and stops the threads.
    /// Idempotent.
    pub fn stop(&self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.queue_ready.notify_all();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        if let Some(mut fsync) = self.fsync.lock().take() {
            fsync.stop();
        }
    }
}
