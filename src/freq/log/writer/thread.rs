//! The writer thread's side of the log: drain the queue, write each batch
//! with one `write`, fsync per policy, cut the records of a failed batch
//! from the segment, rotate segments, publish progress to waiting callers,
//! and (interval policy) the periodic fsync. Owns the segment files; must
//! never report a record durable before its bytes are as durable as the
//! policy asks, and never leave a failed record's bytes in a segment.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

#[cfg(any(test, feature = "test-hooks"))]
use super::InjectedFault;
use super::{FAILED_RANGES_KEPT, QueueItem, Shared};
use crate::freq::error::FreqError;
use crate::freq::log::format::*;

pub(super) struct OpenSegment {
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

    pub(super) fn open_segment(&self, first_seq: u64) -> Result<OpenSegment, FreqError> {
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

    pub(super) fn run_writer(&self, mut segment: Option<OpenSegment>) {
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
    pub(super) fn interval_fsync(&self) {
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
