//! The frequency log on disk: the segment format, its encoder and checked
//! decoder, segment file names. Pure bytes and file names: no threads.
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

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::freq::error::FreqError;
use crate::le::LeReader;

/// Magic bytes opening every log segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SEGDFLOG";
/// Current segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes before each record's payload (length and checksum).
pub const RECORD_HEADER_BYTES: usize = crate::frame::FRAME_HEADER_BYTES;
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

pub(super) fn frame_payload(payload: &[u8], out: &mut Vec<u8>) {
    crate::frame::write_frame(payload, out);
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
    let (payload, frame_len) = crate::frame::read_frame(bytes, MAX_RECORD_PAYLOAD_BYTES)?;
    Ok((decode_payload(payload)?, frame_len))
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
