//! The write-ahead log: segment format, decoder, and the group-commit writer.
//!
//! # Format (version 1, little-endian)
//!
//! A segment file `log-{first_seq:020}.seg` opens with a 32-byte header:
//! magic `SEGDFLOG`, `u32` version, `u32` reserved (0), `u64` first sequence
//! number, `u64` xxh3-64 of the previous 24 bytes. Records follow, one per
//! `record` call, each self-delimiting:
//!
//! ```text
//! u32 payload_len | u64 xxh3_64_with_seed(payload, seed = payload_len) | payload
//! payload = u32 impression_count, then per impression:
//!   u64 user_fingerprint | i64 at_unix_seconds | u8 flags (bit 0: has id)
//!   | [u64 impression_id_hash] | u32 key_count | key_count x u64 cap_key_hash
//! ```
//!
//! Records are numbered consecutively from the segment's first sequence number.
//! Seeding the checksum with the length makes a damaged length field fail the
//! checksum too. Cap keys and impression ids are stored as their xxh3-64 hashes,
//! the identity the counters use.
//!
//! # Writer
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
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::error::FreqError;
use crate::le::LeReader;
use crate::periodic::Periodic;

/// Magic bytes opening every log segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SEGDFLOG";
/// Current segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes before each record's payload (length and checksum).
pub const RECORD_HEADER_BYTES: usize = 12;
/// Largest payload a record may have; longer lengths are damage.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 256 << 20;

/// When the log is fsynced relative to acknowledging a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsyncPolicy {
    /// fsync before acknowledging: survives power loss.
    Always,
    /// Acknowledge once `write` reached the OS (survives process death); fsync
    /// at least every `fsync_interval`.
    Interval,
    /// Acknowledge after `write`; the OS flushes when it likes.
    Never,
}

/// One impression as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogImpression {
    /// xxh3-64 of the user id.
    pub user_fingerprint: u64,
    /// When the impression was served.
    pub at_unix_seconds: i64,
    /// xxh3-64 of the impression id, when it had one.
    pub impression_id_hash: Option<u64>,
    /// xxh3-64 of each cap key it counts toward.
    pub cap_key_hashes: Vec<u64>,
}

/// One logged `record` call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRecord {
    /// The impressions stored by the call, in request order.
    pub impressions: Vec<LogImpression>,
}

/// Appends the payload encoding of one impression to `out`.
pub fn encode_impression(impression: &LogImpression, out: &mut Vec<u8>) {
    out.extend_from_slice(&impression.user_fingerprint.to_le_bytes());
    out.extend_from_slice(&impression.at_unix_seconds.to_le_bytes());
    match impression.impression_id_hash {
        Some(id_hash) => {
            out.push(1);
            out.extend_from_slice(&id_hash.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(impression.cap_key_hashes.len() as u32).to_le_bytes());
    for key_hash in &impression.cap_key_hashes {
        out.extend_from_slice(&key_hash.to_le_bytes());
    }
}

/// Appends the payload of a record holding `impressions` to `out`.
pub fn encode_record_payload(impressions: &[LogImpression], out: &mut Vec<u8>) {
    out.extend_from_slice(&(impressions.len() as u32).to_le_bytes());
    for impression in impressions {
        encode_impression(impression, out);
    }
}

/// The full frame (length, checksum, payload) of a record.
pub fn encode_record(record: &LogRecord) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(record.impressions.len() as u32).to_le_bytes());
    for impression in &record.impressions {
        encode_impression(impression, &mut payload);
    }
    let mut frame = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    frame_payload(&payload, &mut frame);
    frame
}

fn frame_payload(payload: &[u8], out: &mut Vec<u8>) {
    let payload_len = payload.len() as u32;
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&xxh3_64_with_seed(payload, u64::from(payload_len)).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The 32-byte header of a segment whose first record has `first_seq`.
pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let checksum = xxh3_64(&header[..24]);
    header[24..].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// A segment as far as it decodes cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// The complete, checksummed records, in order.
    pub records: Vec<LogRecord>,
    /// Bytes from the start of the file through the last good record.
    pub valid_bytes: u64,
    /// Bytes after it that form no valid record (a torn tail), to cut off.
    pub torn_tail_bytes: u64,
}

/// Why a segment cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentDecodeError {
    /// Shorter than a header: a segment whose creation did not finish.
    #[error("segment header truncated at {length} bytes")]
    TruncatedHeader {
        /// Bytes present.
        length: u64,
    },
    /// A bad record followed by at least one valid record, or a bad header.
    #[error("bad record at byte offset {offset}: {reason}")]
    Corrupt {
        /// Offset of the damage in the file.
        offset: u64,
        /// What was wrong.
        reason: String,
        /// Records before the damage, usable when recovering.
        records_before: Vec<LogRecord>,
        /// First sequence number, when the header was good.
        first_seq: Option<u64>,
    },
}

/// Decodes a whole segment file. Never panics and never allocates more than
/// the input justifies: every length is checked against the bytes present.
///
/// A bad record with no valid record after it is a torn tail (reported in
/// [`DecodedSegment::torn_tail_bytes`]); a bad record followed by a valid one is
/// [`SegmentDecodeError::Corrupt`].
pub fn decode_log_segment(bytes: &[u8]) -> Result<DecodedSegment, SegmentDecodeError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(SegmentDecodeError::TruncatedHeader {
            length: bytes.len() as u64,
        });
    }
    let first_seq = decode_segment_header(&bytes[..SEGMENT_HEADER_BYTES]).map_err(|reason| {
        SegmentDecodeError::Corrupt {
            offset: 0,
            reason,
            records_before: Vec::new(),
            first_seq: None,
        }
    })?;
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        match decode_frame(&bytes[offset..]) {
            Ok((record, frame_bytes)) => {
                records.push(record);
                offset += frame_bytes;
            }
            Err(reason) => {
                let later_valid =
                    (offset + 1..bytes.len()).any(|later| decode_frame(&bytes[later..]).is_ok());
                if later_valid {
                    return Err(SegmentDecodeError::Corrupt {
                        offset: offset as u64,
                        reason,
                        records_before: records,
                        first_seq: Some(first_seq),
                    });
                }
                break;
            }
        }
    }
    Ok(DecodedSegment {
        first_seq,
        records,
        valid_bytes: offset as u64,
        torn_tail_bytes: (bytes.len() - offset) as u64,
    })
}

fn decode_segment_header(header: &[u8]) -> Result<u64, String> {
    let mut reader = LeReader::new(header);
    if reader.take(SEGMENT_MAGIC.len())? != SEGMENT_MAGIC {
        return Err("bad segment magic".to_owned());
    }
    let version = reader.u32()?;
    let _reserved = reader.u32()?;
    let first_seq = reader.u64()?;
    let stored_checksum = reader.u64()?;
    if xxh3_64(&header[..24]) != stored_checksum {
        return Err("segment header checksum mismatch".to_owned());
    }
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(first_seq)
}

/// Decodes one frame at the start of `bytes`: the record and the frame's length.
fn decode_frame(bytes: &[u8]) -> Result<(LogRecord, usize), String> {
    let mut reader = LeReader::new(bytes);
    if reader.ensure(RECORD_HEADER_BYTES).is_err() {
        return Err("incomplete record header".to_owned());
    }
    let payload_len = reader.u32()? as usize;
    let stored_checksum = reader.u64()?;
    if payload_len > MAX_RECORD_PAYLOAD_BYTES {
        return Err(format!("record length {payload_len} exceeds the maximum"));
    }
    let Ok(payload) = reader.take(payload_len) else {
        return Err("incomplete record payload".to_owned());
    };
    if xxh3_64_with_seed(payload, payload_len as u64) != stored_checksum {
        return Err("record checksum mismatch".to_owned());
    }
    let record = decode_payload(payload)?;
    Ok((record, RECORD_HEADER_BYTES + payload_len))
}

/// Decodes a record payload (the part after length and checksum), trusting
/// no count further than the bytes present. Also the body of a fleet stream
/// message, which has its own framing.
pub fn decode_record_payload(payload: &[u8]) -> Result<LogRecord, String> {
    decode_payload(payload)
}

fn decode_payload(payload: &[u8]) -> Result<LogRecord, String> {
    let mut cursor = LeReader::new(payload);
    let impression_count = cursor.u32()? as usize;
    // Each impression takes at least 21 bytes: never trust the count further.
    if impression_count > cursor.remaining() / 21 {
        return Err(format!(
            "impression count {impression_count} exceeds the payload"
        ));
    }
    let mut impressions = Vec::with_capacity(impression_count);
    for _ in 0..impression_count {
        let user_fingerprint = cursor.u64()?;
        let at_unix_seconds = cursor.i64()?;
        let impression_id_hash = match cursor.u8()? {
            0 => None,
            1 => Some(cursor.u64()?),
            flags => return Err(format!("unknown impression flags {flags:#x}")),
        };
        let key_count = cursor.u32()? as usize;
        if key_count > cursor.remaining() / 8 {
            return Err(format!("cap key count {key_count} exceeds the payload"));
        }
        let cap_key_hashes = (0..key_count)
            .map(|_| cursor.u64())
            .collect::<Result<Vec<_>, _>>()?;
        impressions.push(LogImpression {
            user_fingerprint,
            at_unix_seconds,
            impression_id_hash,
            cap_key_hashes,
        });
    }
    if cursor.remaining() != 0 {
        return Err(format!(
            "{} unexpected bytes after the impressions",
            cursor.remaining()
        ));
    }
    Ok(LogRecord { impressions })
}

/// File name of the segment starting at `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.seg")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("log-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

/// Segment files in `dir`, sorted by first sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, FreqError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir)
        .map_err(|error| FreqError::storage(format!("list {}", dir.display()), error))?;
    for entry in entries {
        let entry =
            entry.map_err(|error| FreqError::storage(format!("list {}", dir.display()), error))?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// fsyncs a directory so a create, rename or delete in it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(seed: u64) -> LogRecord {
        LogRecord {
            impressions: vec![
                LogImpression {
                    user_fingerprint: seed,
                    at_unix_seconds: 1_700_000_000 + seed as i64,
                    impression_id_hash: Some(seed * 31),
                    cap_key_hashes: vec![1, 2, 3],
                },
                LogImpression {
                    user_fingerprint: seed + 1,
                    at_unix_seconds: -5,
                    impression_id_hash: None,
                    cap_key_hashes: vec![],
                },
            ],
        }
    }

    #[test]
    fn segment_round_trips() {
        let mut bytes = encode_segment_header(42).to_vec();
        for seed in 0..5 {
            bytes.extend(encode_record(&sample_record(seed)));
        }
        let decoded = decode_log_segment(&bytes).expect("decodes");
        assert_eq!(decoded.first_seq, 42);
        assert_eq!(
            decoded.records,
            (0..5).map(sample_record).collect::<Vec<_>>()
        );
        assert_eq!(decoded.valid_bytes, bytes.len() as u64);
        assert_eq!(decoded.torn_tail_bytes, 0);
    }

    #[test]
    fn flipped_length_in_the_middle_is_corruption() {
        let mut bytes = encode_segment_header(1).to_vec();
        bytes.extend(encode_record(&sample_record(1)));
        let second = bytes.len();
        bytes.extend(encode_record(&sample_record(2)));
        bytes.extend(encode_record(&sample_record(3)));
        bytes[second] ^= 0x01;
        match decode_log_segment(&bytes) {
            Err(SegmentDecodeError::Corrupt {
                offset,
                records_before,
                ..
            }) => {
                assert_eq!(offset, second as u64);
                assert_eq!(records_before.len(), 1);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
