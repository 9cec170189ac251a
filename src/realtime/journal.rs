//! The real-time journal: the append-only file that makes `UpdateMembers` and
//! `ForgetUsers` durable, replayed into the overlay at start-up.
//!
//! # Format (version 1, little-endian)
//!
//! `DATA_DIR/realtime/journal.log` opens with a 16-byte header: magic
//! `SEGDRTJL`, `u32` version, `u32` reserved (0). Records follow, framed like
//! the frequency log's (`crate::freq::log`):
//!
//! ```text
//! u32 payload_len | u64 xxh3_64_with_seed(payload, seed = payload_len) | payload
//! payload = u8 kind | u32 count | count items
//!   kind 1 (updates), item: u64 user_fingerprint | u32 segment_id | u8 op (0 add, 1 remove)
//!                           | i64 last_seen | i64 expires_at | i64 stamped_at_millis
//!   kind 2 (forgets), item: u64 user_fingerprint | i64 forgotten_at | u64 freq_boundary_seq
//!   kind 3 (fold horizons), item: u8 name_len | name (UTF-8) | i64 horizon
//!   kind 4 (fleet position), count 1, item: u64 stream_seq
//! ```
//!
//! Kind 4 exists in fleet mode only: the last fleet stream sequence whose
//! record is in this file, written right after that record (so a replica
//! resumes the stream after it; a record whose position was torn off is
//! delivered again, and applying the same record twice in a row is a no-op).
//!
//! One record per request, so a request is all or nothing: a torn last record
//! (a crash mid-write) fails its checksum and is cut off at start-up; a bad
//! record followed by a good one is corruption and refuses start-up with the
//! file and offset named. Compaction rewrites the file (temp, fsync, rename,
//! fsync dir) with only what the overlay still holds.
//!
//! This module owns bytes and the file; it knows nothing of requests.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::freq::FsyncPolicy;
use crate::le::LeReader;
use crate::store::{Forget, MemberOp, OverlayEntry};

pub const JOURNAL_MAGIC: &[u8; 8] = b"SEGDRTJL";
pub const JOURNAL_VERSION: u32 = 1;
pub const JOURNAL_HEADER_BYTES: usize = 16;
/// Longest payload a record may have; a longer length is damage.
const MAX_PAYLOAD_BYTES: usize = 256 << 20;
const UPDATE_ITEM_BYTES: usize = 37;
const FORGET_ITEM_BYTES: usize = 24;
const KIND_UPDATES: u8 = 1;
const KIND_FORGETS: u8 = 2;
const KIND_HORIZONS: u8 = 3;
const KIND_POSITION: u8 = 4;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRecord {
    /// (user fingerprint, entry), in request order.
    Updates(Vec<(u64, OverlayEntry)>),
    /// (user fingerprint, forget).
    Forgets(Vec<(u64, Forget)>),
    /// (pack name, fold horizon): updates of its segments stamped at or
    /// before the horizon are folded for good.
    Horizons(Vec<(String, i64)>),
    /// Fleet mode: the last stream sequence applied (records before it in
    /// this file came from the stream up to it).
    Position(u64),
}

impl JournalRecord {
    /// Items in the record.
    pub fn len(&self) -> usize {
        match self {
            JournalRecord::Updates(updates) => updates.len(),
            JournalRecord::Forgets(forgets) => forgets.len(),
            JournalRecord::Horizons(horizons) => horizons.len(),
            JournalRecord::Position(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(5 + self.len() * UPDATE_ITEM_BYTES);
        match self {
            JournalRecord::Updates(updates) => {
                payload.push(KIND_UPDATES);
                payload.extend_from_slice(&(updates.len() as u32).to_le_bytes());
                for (user_fingerprint, entry) in updates {
                    payload.extend_from_slice(&user_fingerprint.to_le_bytes());
                    payload.extend_from_slice(&entry.segment_id.to_le_bytes());
                    payload.push(match entry.op {
                        MemberOp::Add => 0,
                        MemberOp::Remove => 1,
                    });
                    payload.extend_from_slice(&entry.last_seen_unix_seconds.to_le_bytes());
                    payload.extend_from_slice(&entry.expires_at_unix_seconds.to_le_bytes());
                    payload.extend_from_slice(&entry.stamped_at_unix_millis.to_le_bytes());
                }
            }
            JournalRecord::Forgets(forgets) => {
                payload.push(KIND_FORGETS);
                payload.extend_from_slice(&(forgets.len() as u32).to_le_bytes());
                for (user_fingerprint, forget) in forgets {
                    payload.extend_from_slice(&user_fingerprint.to_le_bytes());
                    payload.extend_from_slice(&forget.at_unix_seconds.to_le_bytes());
                    payload.extend_from_slice(&forget.freq_boundary_seq.to_le_bytes());
                }
            }
            JournalRecord::Horizons(horizons) => {
                payload.push(KIND_HORIZONS);
                payload.extend_from_slice(&(horizons.len() as u32).to_le_bytes());
                for (pack, horizon) in horizons {
                    // Pack names are at most 64 bytes (`catalog::valid_pack_name`).
                    payload.push(pack.len() as u8);
                    payload.extend_from_slice(pack.as_bytes());
                    payload.extend_from_slice(&horizon.to_le_bytes());
                }
            }
            JournalRecord::Position(stream_seq) => {
                payload.push(KIND_POSITION);
                payload.extend_from_slice(&1u32.to_le_bytes());
                payload.extend_from_slice(&stream_seq.to_le_bytes());
            }
        }
        crate::frame::write_frame(&payload, out);
    }
}

fn header() -> [u8; JOURNAL_HEADER_BYTES] {
    let mut header = [0u8; JOURNAL_HEADER_BYTES];
    header[..8].copy_from_slice(JOURNAL_MAGIC);
    header[8..12].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    header
}

/// Why a journal cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad record at byte offset {offset}: {reason}")]
pub struct JournalCorrupt {
    pub offset: u64,
    pub reason: String,
}

/// A journal as far as it decodes cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedJournal {
    pub records: Vec<JournalRecord>,
    /// Bytes through the last good record.
    pub valid_bytes: u64,
    /// Bytes after it forming no valid record (a torn tail) to cut off.
    pub torn_tail_bytes: u64,
}

/// Decodes a whole journal file, trusting no length before checking it.
pub fn decode_journal(bytes: &[u8]) -> Result<DecodedJournal, JournalCorrupt> {
    if bytes.len() < JOURNAL_HEADER_BYTES {
        // A file whose creation did not finish holds nothing acknowledged.
        return Ok(DecodedJournal {
            torn_tail_bytes: bytes.len() as u64,
            ..DecodedJournal::default()
        });
    }
    if bytes[..JOURNAL_HEADER_BYTES] != header() {
        return Err(JournalCorrupt {
            offset: 0,
            reason: "bad journal header (magic or version)".to_owned(),
        });
    }
    let mut records = Vec::new();
    let mut offset = JOURNAL_HEADER_BYTES;
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
                    return Err(JournalCorrupt {
                        offset: offset as u64,
                        reason,
                    });
                }
                break;
            }
        }
    }
    Ok(DecodedJournal {
        records,
        valid_bytes: offset as u64,
        torn_tail_bytes: (bytes.len() - offset) as u64,
    })
}

/// Decodes one framed record that fills `bytes` exactly (a fleet message's
/// body), trusting no length before checking it.
pub fn decode_record(bytes: &[u8]) -> Result<JournalRecord, String> {
    let (record, frame_len) = decode_frame(bytes)?;
    if frame_len != bytes.len() {
        return Err(format!(
            "{} bytes after the record",
            bytes.len() - frame_len
        ));
    }
    Ok(record)
}

fn decode_frame(bytes: &[u8]) -> Result<(JournalRecord, usize), String> {
    let (payload, frame_len) = crate::frame::read_frame(bytes, MAX_PAYLOAD_BYTES)?;
    Ok((decode_payload(payload)?, frame_len))
}

fn decode_payload(payload: &[u8]) -> Result<JournalRecord, String> {
    let mut reader = LeReader::new(payload);
    let kind = reader.u8().map_err(|_| "empty record payload")?;
    let count = reader.u32().map_err(|_| "record payload truncated")? as usize;
    if kind == KIND_HORIZONS {
        return decode_horizons(count, reader);
    }
    if kind == KIND_POSITION {
        return match (count, reader.u64(), reader.remaining()) {
            (1, Ok(stream_seq), 0) => Ok(JournalRecord::Position(stream_seq)),
            _ => Err("a position record holds one u64".to_owned()),
        };
    }
    let item_bytes = match kind {
        KIND_UPDATES => UPDATE_ITEM_BYTES,
        KIND_FORGETS => FORGET_ITEM_BYTES,
        other => return Err(format!("unknown record kind {other}")),
    };
    if reader.remaining() != count.saturating_mul(item_bytes) {
        return Err(format!(
            "{count} items do not fill {} payload bytes",
            reader.remaining()
        ));
    }
    if kind == KIND_FORGETS {
        let mut forgets = Vec::with_capacity(count);
        for _ in 0..count {
            let user_fingerprint = reader.u64()?;
            let forget = Forget {
                at_unix_seconds: reader.i64()?,
                freq_boundary_seq: reader.u64()?,
            };
            forgets.push((user_fingerprint, forget));
        }
        return Ok(JournalRecord::Forgets(forgets));
    }
    let mut updates = Vec::with_capacity(count);
    for _ in 0..count {
        let user_fingerprint = reader.u64()?;
        let segment_id = reader.u32()?;
        let op = match reader.u8()? {
            0 => MemberOp::Add,
            1 => MemberOp::Remove,
            other => return Err(format!("unknown update op {other}")),
        };
        // Fields read in layout order: last seen, expiry, stamp.
        let entry = OverlayEntry {
            segment_id,
            op,
            last_seen_unix_seconds: reader.i64()?,
            expires_at_unix_seconds: reader.i64()?,
            stamped_at_unix_millis: reader.i64()?,
        };
        updates.push((user_fingerprint, entry));
    }
    Ok(JournalRecord::Updates(updates))
}

fn decode_horizons(count: usize, mut reader: LeReader<'_>) -> Result<JournalRecord, String> {
    // Each item takes at least 9 bytes: never trust the count further.
    if count > reader.remaining() / 9 {
        return Err(format!("horizon count {count} exceeds the payload"));
    }
    let mut horizons = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = reader.u8()?;
        let name = reader.take(usize::from(name_len))?;
        let horizon = reader.i64()?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "pack name is not UTF-8")?;
        horizons.push((name, horizon));
    }
    if reader.remaining() != 0 {
        return Err(format!(
            "{} unexpected bytes after the horizons",
            reader.remaining()
        ));
    }
    Ok(JournalRecord::Horizons(horizons))
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("real-time journal {path} is corrupt: {corrupt}")]
    Corrupt {
        path: PathBuf,
        #[source]
        corrupt: JournalCorrupt,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JournalError {
    let context = context.into();
    move |source| JournalError::Io { context, source }
}

/// The open journal, appended to by one writer at a time (its owner's mutex).
pub struct Journal {
    path: PathBuf,
    file: File,
    fsync: FsyncPolicy,
    bytes: u64,
    /// Items appended since the file was last rewritten.
    items: u64,
    /// Written since the last fsync (for `FsyncPolicy::Interval`).
    dirty: bool,
}

impl Journal {
    /// Opens `dir/journal.log` (creating it), returns it with its records.
    /// A torn tail is cut off and logged.
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
    ) -> Result<(Journal, Vec<JournalRecord>), JournalError> {
        fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
        let path = dir.join("journal.log");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io_error(format!("read {}", path.display()))(error)),
        };
        let decoded = decode_journal(&bytes).map_err(|corrupt| JournalError::Corrupt {
            path: path.clone(),
            corrupt,
        })?;
        if decoded.valid_bytes < JOURNAL_HEADER_BYTES as u64 {
            write_file_atomic(&path, &header())?;
        } else if decoded.torn_tail_bytes > 0 {
            tracing::warn!(
                journal = %path.display(),
                offset = decoded.valid_bytes,
                bytes_dropped = decoded.torn_tail_bytes,
                "real-time journal has a torn tail; truncating"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error(format!("open {}", path.display())))?;
            file.set_len(decoded.valid_bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_error(format!("truncate {}", path.display())))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(format!("open {}", path.display())))?;
        let bytes = file
            .metadata()
            .map_err(io_error(format!("stat {}", path.display())))?
            .len();
        let items = decoded
            .records
            .iter()
            .map(|record| record.len() as u64)
            .sum();
        let journal = Journal {
            path,
            file,
            fsync,
            bytes,
            items,
            dirty: false,
        };
        Ok((journal, decoded.records))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Items appended since the file was last rewritten.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Appends one record, durable per the fsync policy when this returns
    /// `Ok`. On failure the file is cut back to its length before (best
    /// effort; a leftover fails its checksum and is cut at the next open).
    pub fn append(&mut self, record: &JournalRecord) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends records with one write (and one fsync under `always`).
    pub fn append_all(&mut self, records: &[JournalRecord]) -> Result<(), JournalError> {
        let mut frame = Vec::new();
        for record in records {
            record.encode(&mut frame);
        }
        let written = self.file.write_all(&frame).and_then(|()| {
            if self.fsync == FsyncPolicy::Always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(error) = written {
            let _ = self.file.set_len(self.bytes);
            return Err(io_error(format!("append to {}", self.path.display()))(
                error,
            ));
        }
        self.bytes += frame.len() as u64;
        self.items += records
            .iter()
            .map(|record| record.len() as u64)
            .sum::<u64>();
        self.dirty = self.fsync == FsyncPolicy::Interval;
        Ok(())
    }

    /// A handle to fsync outside the writer's lock, when anything was
    /// written since the last one (`FsyncPolicy::Interval`).
    pub fn take_dirty_handle(&mut self) -> Option<File> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.file.try_clone().ok()
    }

    /// Replaces the file with `records` (temp, fsync, rename, fsync dir).
    pub fn rewrite(&mut self, records: &[JournalRecord]) -> Result<(), JournalError> {
        let mut bytes = header().to_vec();
        for record in records {
            record.encode(&mut bytes);
        }
        write_file_atomic(&self.path, &bytes)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_error(format!("open {}", self.path.display())))?;
        self.bytes = bytes.len() as u64;
        self.items = records.iter().map(|record| record.len() as u64).sum();
        self.dirty = false;
        Ok(())
    }

    /// fsyncs what was written (at shutdown).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.dirty = false;
        self.file
            .sync_data()
            .map_err(io_error(format!("fsync {}", self.path.display())))
    }
}

fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let temp = path.with_extension("log.tmp");
    let context = || format!("write {}", temp.display());
    let mut file = File::create(&temp).map_err(io_error(context()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(context()))?;
    fs::rename(&temp, path).map_err(io_error(format!("rename to {}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(format!("fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<JournalRecord> {
        vec![
            JournalRecord::Updates(vec![(
                7,
                OverlayEntry {
                    segment_id: 3,
                    op: MemberOp::Remove,
                    last_seen_unix_seconds: -5,
                    expires_at_unix_seconds: 9,
                    stamped_at_unix_millis: 11,
                },
            )]),
            JournalRecord::Forgets(vec![(
                8,
                Forget {
                    at_unix_seconds: 12,
                    freq_boundary_seq: 40,
                },
            )]),
            JournalRecord::Horizons(vec![("crm".into(), 77), ("site-events".into(), -3)]),
            JournalRecord::Position(u64::MAX - 1),
        ]
    }

    fn encoded(records: &[JournalRecord]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        for record in records {
            record.encode(&mut bytes);
        }
        bytes
    }

    #[test]
    fn records_round_trip() {
        let bytes = encoded(&sample());
        let decoded = decode_journal(&bytes).expect("decodes");
        assert_eq!(decoded.records, sample());
        assert_eq!(decoded.torn_tail_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_and_mid_file_damage_refused() {
        let bytes = encoded(&sample());
        for cut in JOURNAL_HEADER_BYTES + 1..bytes.len() {
            let decoded = decode_journal(&bytes[..cut]).expect("a torn tail is no corruption");
            assert!(decoded.records.len() < 4);
            assert_eq!(decoded.valid_bytes + decoded.torn_tail_bytes, cut as u64);
        }
        let mut damaged = bytes.clone();
        damaged[JOURNAL_HEADER_BYTES + 14] ^= 0x40;
        let error = decode_journal(&damaged).expect_err("damage before a good record");
        assert_eq!(error.offset, JOURNAL_HEADER_BYTES as u64);
    }
}
