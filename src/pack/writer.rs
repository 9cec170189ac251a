//! Writes a `Pack` as format-v1 bytes (see `format`), and puts pack bytes on
//! disk atomically.
//!
//! The writer validates the pack first: it never produces a file the reader
//! would refuse.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::PackError;
use super::format::{
    CHECKSUM_BYTES, END_MAGIC, FOOTER_BYTES, FORMAT_VERSION_V1, MAGIC, SEGMENT_FLAG_RECENCY,
    checksum, validate_pack,
};
use super::{Pack, Segment};

/// Encodes a pack in format v1 (`write_pack` writes v2). Fails only when the pack breaks an invariant or limit of the
/// format.
pub fn write_pack_v1(pack: &Pack) -> Result<Vec<u8>, PackError> {
    validate_pack(pack)?;
    let bitmap_sizes: Vec<usize> = pack
        .segments
        .iter()
        .map(|segment| segment.members.serialized_size())
        .collect();
    for (segment, &size_bytes) in pack.segments.iter().zip(&bitmap_sizes) {
        if size_bytes > u32::MAX as usize {
            return Err(PackError::TooLarge {
                what: "segment bitmap bytes",
                found: size_bytes as u64,
                limit: u64::from(u32::MAX),
            });
        }
        debug_assert!(segment.members.len() <= u64::from(u32::MAX));
    }
    let data_bytes: usize = pack
        .segments
        .iter()
        .zip(&bitmap_sizes)
        .map(|(segment, &bitmap_bytes)| {
            let recency_bytes = segment
                .last_seen_hours_ago
                .as_ref()
                .map_or(0, |hours| hours.len() * 2 + CHECKSUM_BYTES);
            bitmap_bytes + CHECKSUM_BYTES + recency_bytes
        })
        .sum();
    let capacity = 256
        + pack.user_fingerprints.len() * 8
        + pack.segments.len() * 540
        + data_bytes
        + FOOTER_BYTES;
    let mut out = Vec::with_capacity(capacity);

    // Preamble and header; the header checksum covers both.
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
    out.extend_from_slice(&pack.built_at_unix_seconds.to_le_bytes());
    out.extend_from_slice(&(pack.user_fingerprints.len() as u32).to_le_bytes());
    out.extend_from_slice(&(pack.segments.len() as u32).to_le_bytes());
    out.extend_from_slice(&pack.memberships().to_le_bytes());
    push_string(&mut out, &pack.name);
    push_string(&mut out, &pack.version);
    push_checksum(&mut out, 0);

    let dictionary_start = out.len();
    for fingerprint in &pack.user_fingerprints {
        out.extend_from_slice(&fingerprint.to_le_bytes());
    }
    push_checksum(&mut out, dictionary_start);

    let table_start = out.len();
    for (segment, &bitmap_bytes) in pack.segments.iter().zip(&bitmap_sizes) {
        push_table_entry(&mut out, segment, bitmap_bytes as u32);
    }
    push_checksum(&mut out, table_start);

    for (segment, &bitmap_bytes) in pack.segments.iter().zip(&bitmap_sizes) {
        let bitmap_start = out.len();
        segment
            .members
            .serialize_into(&mut out)
            .expect("writing to a Vec cannot fail");
        debug_assert_eq!(out.len() - bitmap_start, bitmap_bytes);
        push_checksum(&mut out, bitmap_start);
        if let Some(hours) = &segment.last_seen_hours_ago {
            let recency_start = out.len();
            for hours_ago in hours {
                out.extend_from_slice(&hours_ago.to_le_bytes());
            }
            push_checksum(&mut out, recency_start);
        }
    }

    let total_bytes = (out.len() + FOOTER_BYTES) as u64;
    out.extend_from_slice(&total_bytes.to_le_bytes());
    out.extend_from_slice(&END_MAGIC);
    push_checksum(&mut out, 0);
    debug_assert_eq!(out.len() as u64, total_bytes);
    Ok(out)
}

fn push_table_entry(out: &mut Vec<u8>, segment: &Segment, bitmap_bytes: u32) {
    out.extend_from_slice(&segment.id.to_le_bytes());
    out.extend_from_slice(&segment.ttl_seconds.to_le_bytes());
    out.extend_from_slice(&(segment.members.len() as u32).to_le_bytes());
    out.extend_from_slice(&bitmap_bytes.to_le_bytes());
    let flags = if segment.last_seen_hours_ago.is_some() {
        SEGMENT_FLAG_RECENCY
    } else {
        0
    };
    out.push(flags);
    push_string(out, &segment.name);
    push_string(out, &segment.kind);
}

/// Lengths were validated by `validate_pack`.
fn push_string(out: &mut Vec<u8>, value: &str) {
    debug_assert!(value.len() <= u8::MAX as usize);
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// Appends the checksum of `out[section_start..]`.
fn push_checksum(out: &mut Vec<u8>, section_start: usize) {
    let section_checksum = checksum(&out[section_start..]);
    out.extend_from_slice(&section_checksum.to_le_bytes());
}

static TEMPORARY_FILE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Puts `pack_bytes` at `path` so that a crash leaves either the old file or the
/// new one, never a mix: write a temporary file in the same directory, fsync it,
/// rename it over `path`, fsync the directory so the rename itself is durable.
pub fn write_pack_file_atomic(pack_bytes: &[u8], path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    // Unique per process and call, so concurrent writers never share a file.
    let sequence = TEMPORARY_FILE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    temporary_name.push(format!(".tmp-{}-{sequence}", std::process::id()));
    let temporary_path = directory.join(temporary_name);

    let result = write_and_rename(pack_bytes, &temporary_path, path, directory);
    if result.is_err() {
        // Best effort: the error being returned matters more than the cleanup.
        let _ = fs::remove_file(&temporary_path);
    }
    result
}

fn write_and_rename(
    pack_bytes: &[u8],
    temporary_path: &Path,
    path: &Path,
    directory: &Path,
) -> io::Result<()> {
    let mut file = File::create(temporary_path)?;
    file.write_all(pack_bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temporary_path, path)?;
    sync_directory(directory)
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync here; the rename is still atomic.
    Ok(())
}
