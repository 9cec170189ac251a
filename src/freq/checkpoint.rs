//! Checkpoints: a snapshot of the counters and idempotency ids that covers every
//! log record before a sequence number, so older segments can be deleted.
//!
//! # Format (version 2, little-endian)
//!
//! File `checkpoint-{covers_before_seq:020}.ckpt`, written to a `.tmp` name,
//! fsynced, renamed into place, then the directory fsynced:
//!
//! ```text
//! magic "SEGDFCKP" | u32 version | u32 reserved (0)
//! u64 covers_before_seq | i64 created_unix_seconds
//! u64 applied_stream_seq (version 2 only; version 1 files read as 0)
//! u64 entry_count, per entry:
//!   u64 user_fingerprint | u64 cap_key_hash
//!   | u32 time_count | time_count x i64 | u32 bucket_count | bucket_count x (i64 start, u32 count)
//! u64 id_count, per id: u64 impression_id_hash | i64 at_unix_seconds
//! u64 xxh3-64 of every byte before it
//! ```
//!
//! `applied_stream_seq` is the last fleet stream sequence applied to the
//! counters (0 on a single node): a replica restarts its stream consumer after
//! it. Version 1 files (written before fleets existed) still load.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::counters::{Bucket, Entry, EntryKey};
use super::error::FreqError;
use super::log::fsync_dir;
use crate::le::LeReader;

/// Magic bytes opening every checkpoint.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"SEGDFCKP";
/// Current checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 2;

/// What a checkpoint holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckpointData {
    /// Every log record with a smaller sequence number is included.
    pub covers_before_seq: u64,
    /// When it was taken.
    pub created_unix_seconds: i64,
    /// The last replicated stream sequence the counters include (0 = none).
    pub applied_stream_seq: u64,
    /// Every non-empty counter.
    pub entries: Vec<(EntryKey, Entry)>,
    /// Every remembered impression id with its impression time.
    pub ids: Vec<(u64, i64)>,
}

/// File name of the checkpoint covering records before `covers_before_seq`.
pub fn checkpoint_file_name(covers_before_seq: u64) -> String {
    format!("checkpoint-{covers_before_seq:020}.ckpt")
}

/// The sequence number in a checkpoint file name.
pub fn parse_checkpoint_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?
        .strip_suffix(".ckpt")?
        .parse()
        .ok()
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Xxh3,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_body<W: Write>(data: &CheckpointData, out: &mut W) -> std::io::Result<()> {
    out.write_all(CHECKPOINT_MAGIC)?;
    out.write_all(&CHECKPOINT_VERSION.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&data.covers_before_seq.to_le_bytes())?;
    out.write_all(&data.created_unix_seconds.to_le_bytes())?;
    out.write_all(&data.applied_stream_seq.to_le_bytes())?;
    out.write_all(&(data.entries.len() as u64).to_le_bytes())?;
    for (key, entry) in &data.entries {
        out.write_all(&key.user_fingerprint.to_le_bytes())?;
        out.write_all(&key.cap_key_hash.to_le_bytes())?;
        out.write_all(&(entry.times().len() as u32).to_le_bytes())?;
        for time in entry.times() {
            out.write_all(&time.to_le_bytes())?;
        }
        out.write_all(&(entry.buckets().len() as u32).to_le_bytes())?;
        for bucket in entry.buckets() {
            out.write_all(&bucket.start.to_le_bytes())?;
            out.write_all(&bucket.count.to_le_bytes())?;
        }
    }
    out.write_all(&(data.ids.len() as u64).to_le_bytes())?;
    for (id_hash, at) in &data.ids {
        out.write_all(&id_hash.to_le_bytes())?;
        out.write_all(&at.to_le_bytes())?;
    }
    Ok(())
}

/// Writes `data` atomically into `dir`: temp file, fsync, rename, fsync dir.
/// Returns the final path.
pub fn write_checkpoint(dir: &Path, data: &CheckpointData) -> Result<PathBuf, FreqError> {
    let final_path = dir.join(checkpoint_file_name(data.covers_before_seq));
    let temp_path = final_path.with_extension("ckpt.tmp");
    let context = || format!("write checkpoint {}", temp_path.display());
    let file = File::create(&temp_path).map_err(|error| FreqError::storage(context(), error))?;
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Xxh3::new(),
    };
    write_body(data, &mut writer).map_err(|error| FreqError::storage(context(), error))?;
    let checksum = writer.hasher.digest();
    let mut buffered = writer.inner;
    buffered
        .write_all(&checksum.to_le_bytes())
        .map_err(|error| FreqError::storage(context(), error))?;
    let file = buffered
        .into_inner()
        .map_err(|error| FreqError::storage(context(), error.into_error()))?;
    file.sync_all()
        .map_err(|error| FreqError::storage(context(), error))?;
    drop(file);
    fs::rename(&temp_path, &final_path).map_err(|error| {
        FreqError::storage(
            format!("rename checkpoint to {}", final_path.display()),
            error,
        )
    })?;
    fsync_dir(dir)
        .map_err(|error| FreqError::storage(format!("fsync {}", dir.display()), error))?;
    Ok(final_path)
}

/// Reads and fully checks a checkpoint file.
pub fn read_checkpoint(path: &Path) -> Result<CheckpointData, FreqError> {
    let bytes = fs::read(path)
        .map_err(|error| FreqError::storage(format!("read {}", path.display()), error))?;
    decode_checkpoint(&bytes).map_err(|reason| FreqError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason,
    })
}

/// Decodes checkpoint bytes; never panics, never trusts a count further than
/// the bytes present.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<CheckpointData, String> {
    if bytes.len() < 8 + 8 + 8 + 8 + 8 + 8 + 8 {
        return Err(format!("truncated at {} bytes", bytes.len()));
    }
    let (body, checksum_bytes) = bytes.split_at(bytes.len() - 8);
    let stored_checksum = LeReader::new(checksum_bytes).u64()?;
    if xxh3_64(body) != stored_checksum {
        return Err("checksum mismatch".to_owned());
    }
    let mut reader = LeReader::new(body);
    if reader.take(8)? != CHECKPOINT_MAGIC {
        return Err("bad magic".to_owned());
    }
    let version = reader.u32()?;
    if version != 1 && version != CHECKPOINT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let _reserved = reader.u32()?;
    let covers_before_seq = reader.u64()?;
    let created_unix_seconds = reader.i64()?;
    let applied_stream_seq = if version >= 2 { reader.u64()? } else { 0 };
    let entry_count = count(&mut reader, 16 + 4 + 4)?;
    let mut entries = Vec::with_capacity(entry_count);
    for index in 0..entry_count {
        let user_fingerprint = reader.u64()?;
        let cap_key_hash = reader.u64()?;
        let time_count = reader.u32()? as usize;
        if time_count > reader.remaining() / 8 {
            return Err(format!(
                "entry {index}: time count {time_count} exceeds the file"
            ));
        }
        let times = (0..time_count)
            .map(|_| reader.i64())
            .collect::<Result<Vec<_>, _>>()?;
        let bucket_count = reader.u32()? as usize;
        if bucket_count > reader.remaining() / 12 {
            return Err(format!(
                "entry {index}: bucket count {bucket_count} exceeds the file"
            ));
        }
        let mut buckets = Vec::with_capacity(bucket_count);
        for _ in 0..bucket_count {
            let start = reader.i64()?;
            let count = reader.u32()?;
            buckets.push(Bucket { start, count });
        }
        let entry = Entry::from_parts(times, buckets)
            .map_err(|reason| format!("entry {index}: {reason}"))?;
        entries.push((
            EntryKey {
                user_fingerprint,
                cap_key_hash,
            },
            entry,
        ));
    }
    let id_count = count(&mut reader, 16)?;
    let mut ids = Vec::with_capacity(id_count);
    for _ in 0..id_count {
        let id_hash = reader.u64()?;
        let at = reader.i64()?;
        ids.push((id_hash, at));
    }
    if reader.remaining() != 0 {
        return Err(format!("{} unexpected trailing bytes", reader.remaining()));
    }
    Ok(CheckpointData {
        covers_before_seq,
        created_unix_seconds,
        applied_stream_seq,
        entries,
        ids,
    })
}

/// A `u64` count of items of at least `min_item_bytes` each, checked
/// against the bytes left.
fn count(reader: &mut LeReader<'_>, min_item_bytes: usize) -> Result<usize, String> {
    let count = reader.u64()?;
    if count > (reader.remaining() / min_item_bytes) as u64 {
        return Err(format!("count {count} exceeds the file"));
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut entry = Entry::default();
        for time in 0..1_200 {
            entry.insert(time * 60);
        }
        let data = CheckpointData {
            covers_before_seq: 17,
            created_unix_seconds: 1_700_000_000,
            applied_stream_seq: 41,
            entries: vec![(
                EntryKey {
                    user_fingerprint: 3,
                    cap_key_hash: 4,
                },
                entry,
            )],
            ids: vec![(9, 1_700_000_000)],
        };
        let path = write_checkpoint(directory.path(), &data).expect("write");
        assert_eq!(
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(parse_checkpoint_file_name),
            Some(17)
        );
        assert_eq!(read_checkpoint(&path).expect("read"), data);
        let mut bytes = fs::read(&path).expect("read bytes");
        for index in [0, 20, bytes.len() / 2, bytes.len() - 1] {
            bytes[index] ^= 0x40;
            assert!(decode_checkpoint(&bytes).is_err());
            bytes[index] ^= 0x40;
        }
        for length in 0..bytes.len() {
            assert!(decode_checkpoint(&bytes[..length]).is_err());
        }
    }

    #[test]
    fn version_1_checkpoints_load_with_no_stream_sequence() {
        let data = CheckpointData {
            covers_before_seq: 5,
            created_unix_seconds: 1_700_000_000,
            applied_stream_seq: 0,
            entries: Vec::new(),
            ids: vec![(9, 1_700_000_000)],
        };
        let mut body = Vec::new();
        write_body(&data, &mut body).expect("encode");
        // Version 1: no applied_stream_seq after created_unix_seconds.
        body[8..12].copy_from_slice(&1u32.to_le_bytes());
        body.drain(32..40);
        let checksum = xxh3_64(&body);
        body.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(decode_checkpoint(&body).expect("version 1 decodes"), data);
    }
}
