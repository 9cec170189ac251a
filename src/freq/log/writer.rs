//! The group-commit writer of the frequency log.
//!
//! Callers append encoded records to a shared queue under one mutex (which also
//! orders sequence numbers); a dedicated thread drains everything queued, writes
//! it with one `write`, fsyncs per [`FsyncPolicy`], then wakes the callers it
//! covered: group commit. A failed write or fsync fails every record of that
//! batch not yet settled in a closed segment; the writer cuts those records
//! from the segment (deleting a segment left with no record) and continues in
//! a fresh segment, so the log holds exactly the records that succeeded.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::freq::error::FreqError;
use crate::periodic::Periodic;

use super::format::*;

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

struct OpenSegment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes known written (header plus acknowledged batches).
    good_bytes: u64,
}

/// What one batch did so far.
#[derive(Default)]
struct BatchState {
    /// Every record and rotation of the batch is below this.
    processed_before: u64,
    records: u64,
    rotations_processed: u64,
    /// Records written to the current segment but not yet as durable as the
    /// policy asks (first sequence number, segment length before them).
    unsettled: Option<(u64, u64)>,
    failure: Option<FreqError>,
    /// With `failure`: records from here to the batch's end failed.
    failed_from: u64,
}

impl BatchState {
    /// Fails the batch from its unsettled records on (or from `seq` when
    /// none are unsettled); records settled in an earlier segment stand.
    fn fail(&mut self, seq: u64, error: FreqError) {
        self.failed_from = self.unsettled.map_or(seq, |(first, _)| first.min(seq));
        self.failure = Some(error);
    }
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
        self.shared.fault.store(fault as u8, Ordering::SeqCst);
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

impl Shared {
    /// Fails when a test injected write failures; nothing without test hooks.
    fn fault_write(&self) -> std::io::Result<()> {
        #[cfg(any(test, feature = "test-hooks"))]
        if self.fault.load(Ordering::Relaxed) == InjectedFault::FailWrites as u8 {
            return Err(std::io::Error::other("injected write failure"));
        }
        Ok(())
    }

    fn fault_fsync(&self) -> std::io::Result<()> {
        #[cfg(any(test, feature = "test-hooks"))]
        if self.fault.load(Ordering::Relaxed) == InjectedFault::FailFsyncs as u8 {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        let started = Instant::now();
        let result = self.fault_fsync().and_then(|()| file.sync_data());
        self.counters.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fsync_total_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if result.is_err() {
            self.counters.fsync_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn open_segment(&self, first_seq: u64) -> Result<OpenSegment, FreqError> {
        let path = self.dir.join(segment_file_name(first_seq));
        let created = self.create_segment(&path, first_seq);
        if created.is_err() {
            // A segment whose header did not make it holds nothing: leave no
            // empty or torn file behind (best effort; start-up cleans up too).
            let _ = fs::remove_file(&path);
        }
        let file = Arc::new(created?);
        *self.current_file.lock() = Some(Arc::clone(&file));
        Ok(OpenSegment {
            file,
            path,
            good_bytes: SEGMENT_HEADER_BYTES as u64,
        })
    }

    fn create_segment(&self, path: &Path, first_seq: u64) -> Result<File, FreqError> {
        let context = || format!("create log segment {}", path.display());
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|error| FreqError::storage(context(), error))?;
        self.fault_write()
            .map_err(|error| FreqError::storage(context(), error))?;
        file.write_all(&encode_segment_header(first_seq))
            .map_err(|error| FreqError::storage(context(), error))?;
        self.sync(&file)
            .map_err(|error| FreqError::storage(context(), error))?;
        fsync_dir(&self.dir).map_err(|error| FreqError::storage(context(), error))?;
        Ok(file)
    }

    fn close_segment(&self, segment: &OpenSegment) -> Result<(), FreqError> {
        self.sync(&segment.file).map_err(|error| {
            FreqError::storage(
                format!("fsync log segment {}", segment.path.display()),
                error,
            )
        })
    }

    fn run_writer(&self, mut segment: Option<OpenSegment>) {
        loop {
            let items = {
                let mut queue = self.queue.lock();
                while queue.items.is_empty() && !queue.shutdown {
                    self.queue_ready.wait(&mut queue);
                }
                if queue.items.is_empty() {
                    break;
                }
                std::mem::take(&mut queue.items)
            };
            if self.roll_segment.swap(false, Ordering::SeqCst) {
                segment = None;
            }
            self.write_batch(items, &mut segment);
        }
        if let Some(open) = &segment
            && let Err(error) = self.close_segment(open)
        {
            tracing::error!(error = %error, "final fsync of the frequency log failed");
        }
        *self.current_file.lock() = None;
        self.progress.lock().writer_exited = true;
        self.progress_made.notify_all();
    }

    /// Writes one drained batch. A record succeeds only when its bytes are in
    /// a segment as durable as the policy asks; on the first failure every
    /// record of the batch not yet settled fails *and its bytes are cut from
    /// the segment*, so a replay after a restart counts exactly what was
    /// acknowledged (memory applies a record only after it succeeded).
    fn write_batch(&self, items: Vec<QueueItem>, segment: &mut Option<OpenSegment>) {
        let mut batch = BatchState::default();
        for item in items {
            match item {
                QueueItem::Records {
                    first_seq,
                    last_seq,
                    bytes,
                } => {
                    batch.processed_before = batch.processed_before.max(last_seq + 1);
                    batch.records += last_seq - first_seq + 1;
                    if batch.failure.is_none() {
                        self.write_records(first_seq, &bytes, segment, &mut batch);
                    }
                }
                QueueItem::Rotate { at_seq, ticket } => {
                    batch.processed_before = batch.processed_before.max(at_seq);
                    batch.rotations_processed = batch.rotations_processed.max(ticket);
                    if batch.failure.is_none() {
                        self.rotate(at_seq, segment, &mut batch);
                    }
                }
            }
        }
        if batch.failure.is_none()
            && self.policy == FsyncPolicy::Always
            && let Some((first_unsettled, _)) = batch.unsettled
            && let Some(open) = segment.as_ref()
            && let Err(error) = self.sync(&open.file)
        {
            batch.fail(
                first_unsettled,
                FreqError::storage(format!("fsync log segment {}", open.path.display()), error),
            );
        }
        if batch.failure.is_some() {
            self.discard_unsettled(segment, &batch);
        }
        self.publish_progress(batch);
    }

    /// Appends one run of records to the current segment (opening one if
    /// needed).
    fn write_records(
        &self,
        first_seq: u64,
        bytes: &[u8],
        segment: &mut Option<OpenSegment>,
        batch: &mut BatchState,
    ) {
        if segment.is_none() {
            match self.open_segment(first_seq) {
                Ok(open) => *segment = Some(open),
                Err(error) => return batch.fail(first_seq, error),
            }
        }
        let open = segment.as_mut().expect("segment opened above");
        let length_before = open.good_bytes;
        let result = self
            .fault_write()
            .and_then(|()| (&*open.file).write_all(bytes));
        match result {
            Ok(()) => {
                batch.unsettled.get_or_insert((first_seq, length_before));
                open.good_bytes += bytes.len() as u64;
                self.dirty.store(true, Ordering::Release);
            }
            Err(error) => batch.fail(
                first_seq,
                FreqError::storage(format!("write log segment {}", open.path.display()), error),
            ),
        }
    }

    /// Closes (fsyncs) the current segment, which settles the records written
    /// to it, and opens the next at `at_seq`.
    fn rotate(&self, at_seq: u64, segment: &mut Option<OpenSegment>, batch: &mut BatchState) {
        if let Some(open) = segment.as_ref() {
            if let Err(error) = self.close_segment(open) {
                return batch.fail(at_seq, error);
            }
            segment.take();
        }
        batch.unsettled = None;
        match self.open_segment(at_seq) {
            Ok(open) => *segment = Some(open),
            Err(error) => batch.fail(at_seq, error),
        }
    }

    /// After a failure: cuts the unsettled records from the segment (deleting
    /// it when no record is left, so no empty segment lingers) and drops it,
    /// so the next batch starts a fresh segment.
    fn discard_unsettled(&self, segment: &mut Option<OpenSegment>, batch: &BatchState) {
        *self.current_file.lock() = None;
        let Some(open) = segment.take() else {
            return;
        };
        let keep_bytes = batch
            .unsettled
            .map_or(open.good_bytes, |(_, length_before)| length_before);
        let result = if keep_bytes <= SEGMENT_HEADER_BYTES as u64 {
            drop(open.file);
            fs::remove_file(&open.path).and_then(|()| fsync_dir(&self.dir))
        } else {
            open.file
                .set_len(keep_bytes)
                .and_then(|()| open.file.sync_data())
        };
        if let Err(error) = result {
            // The records already failed; a replay may count them (an
            // over-count) until the segment is cut at the next start.
            tracing::error!(segment = %open.path.display(), error = %error, "cannot cut failed records from the frequency log");
        }
    }

    fn publish_progress(&self, batch: BatchState) {
        let mut progress = self.progress.lock();
        if let Some(error) = batch.failure {
            let failures = self.counters.write_failures.fetch_add(1, Ordering::Relaxed) + 1;
            // A dead disk fails every batch: log the 1st, 2nd, 4th, 8th... only.
            if failures.is_power_of_two() {
                tracing::warn!(
                    error = %error,
                    records = batch.records,
                    failures,
                    "frequency log batch failed; starting a new segment"
                );
            }
            progress.failure_count += 1;
            if batch.failed_from < batch.processed_before {
                progress
                    .failed_ranges
                    .push_back((batch.failed_from, batch.processed_before - 1));
                while progress.failed_ranges.len() > FAILED_RANGES_KEPT {
                    progress.failed_ranges.pop_front();
                }
            }
        } else {
            self.counters
                .records_written
                .fetch_add(batch.records, Ordering::Relaxed);
            self.counters
                .batches_written
                .fetch_add(1, Ordering::Relaxed);
        }
        progress.completed_before = progress.completed_before.max(batch.processed_before);
        progress.rotations_processed = progress.rotations_processed.max(batch.rotations_processed);
        drop(progress);
        self.progress_made.notify_all();
    }

    /// One tick of the interval policy: fsync what was written since the last.
    fn interval_fsync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(file) = self.current_file.lock().clone() else {
            return;
        };
        if let Err(error) = self.sync(&file) {
            tracing::error!(error = %error, "interval fsync of the frequency log failed; starting a new segment");
            self.roll_segment.store(true, Ordering::SeqCst);
            self.progress.lock().failure_count += 1;
        }
    }
}
