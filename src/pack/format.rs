//! Pack file format, version 1: the byte layout, its limits, and the
//! invariants both the writer and the reader enforce.
//!
//! This module only describes and checks; `writer` produces the bytes and
//! `reader` consumes them. It never does I/O.
//!
//! # Layout
//!
//! All integers are little-endian. Strings are UTF-8 prefixed by a `u8` byte
//! length (so at most 255 bytes). Every checksum is xxh3-64 with seed 0. The file
//! is a sequence of sections, each followed by the checksum of its bytes, so
//! every byte is covered by a section checksum and, again, by the footer's
//! whole-file checksum.
//!
//! | offset / size | field | notes |
//! | --- | --- | --- |
//! | **preamble** | | |
//! | 0, 8 | magic | `SEGDPACK` |
//! | 8, 4 | format version `u32` | 1 (2 is `format_v2`); a reader refuses any other before reading on |
//! | **header** | | |
//! | 12, 8 | `built_at_unix_seconds` `i64` | |
//! | 20, 4 | `user_count` `u32` | users in the dictionary |
//! | 24, 4 | `segment_count` `u32` | at most 65,535 |
//! | 28, 8 | `membership_count` `u64` | sum of the segments' member counts |
//! | 36, 1 + n | pack name | 1..=255 bytes of `[A-Za-z0-9._-]`, not starting with `.` |
//! | .., 1 + n | pack version | 1..=255 bytes UTF-8, no control characters |
//! | .., 8 | header checksum | over bytes 0 up to here (preamble and header) |
//! | **user dictionary** | | |
//! | .., 8 × `user_count` | fingerprints `u64` | strictly ascending; ordinal = index |
//! | .., 8 | dictionary checksum | over the fingerprints |
//! | **segment table** | | `segment_count` entries, ids strictly ascending |
//! | +0, 4 | `segment_id` `u32` | |
//! | +4, 4 | `ttl_seconds` `u32` | 0 = no TTL |
//! | +8, 4 | `member_count` `u32` | the bitmap's cardinality |
//! | +12, 4 | `bitmap_bytes` `u32` | byte length of the serialized bitmap |
//! | +16, 1 | flags `u8` | bit 0: recency column present; other bits 0 |
//! | +17, 1 + n | segment name | 0..=255 bytes UTF-8, no control characters |
//! | .., 1 + n | segment kind | 0..=255 bytes UTF-8, no control characters; empty = none |
//! | .., 8 | segment table checksum | over all entries |
//! | **segment data** | | per segment, in table order |
//! | .., `bitmap_bytes` | members | roaring *portable* serialization of user ordinals, each `< user_count` |
//! | .., 8 | bitmap checksum | over the bitmap bytes |
//! | .., 2 × `member_count` | recency `u16` | only if flag bit 0: hours before `built_at` each member was last seen, in ascending ordinal order |
//! | .., 8 | recency checksum | only if flag bit 0; over the recency column |
//! | **footer** | | 24 bytes, the last in the file |
//! | .., 8 | total length `u64` | of the whole file, footer included |
//! | .., 8 | end magic | `KCAPDGES` |
//! | .., 8 | file checksum | over every byte before it |
//!
//! Nothing may follow the footer. A reader checks each length against the bytes
//! that remain before trusting it. It checks the whole-file checksum first, in
//! one pass; only when that fails does it check section by section, to name
//! the damaged section. `read_header` checks just the header checksum.

use xxhash_rust::xxh3::xxh3_64;

use super::error::PackError;
use super::{Pack, Segment};

/// First bytes of every pack file.
pub const MAGIC: [u8; 8] = *b"SEGDPACK";
/// Magic bytes inside the footer, just before the file checksum.
pub const END_MAGIC: [u8; 8] = *b"KCAPDGES";
/// The format version `write_pack` writes (see `format_v2`); the reader
/// reads it and [`FORMAT_VERSION_V1`].
pub const FORMAT_VERSION: u32 = super::format_v2::FORMAT_VERSION_V2;
/// The format version of this layout, still read (packs on disk from before
/// v2) and written by `write_pack_v1`.
pub const FORMAT_VERSION_V1: u32 = 1;
/// File name extension of pack files.
pub const FILE_EXTENSION: &str = "segpack";
/// How every pack file name ends; the catalog, the watcher and the demo all
/// use this one constant.
pub const FILE_SUFFIX: &str = ".segpack";

/// At most this many segments per pack: the serving index stores a `u16` local
/// segment index.
pub const MAX_SEGMENTS: usize = u16::MAX as usize;
/// Users are numbered by `u32` ordinals.
pub const MAX_USERS: u64 = u32::MAX as u64;
/// Names, kinds and versions carry a `u8` length.
pub const MAX_STRING_BYTES: usize = u8::MAX as usize;

/// Flag bit in a segment table entry: a recency column follows the bitmap.
pub const SEGMENT_FLAG_RECENCY: u8 = 0b1;

pub(crate) const PREAMBLE_BYTES: usize = 12;
/// Header bytes before the two strings.
pub(crate) const HEADER_FIXED_BYTES: usize = 8 + 4 + 4 + 8;
/// Segment table entry bytes before the two strings.
pub(crate) const SEGMENT_ENTRY_FIXED_BYTES: usize = 4 + 4 + 4 + 4 + 1;
pub(crate) const CHECKSUM_BYTES: usize = 8;
pub(crate) const FOOTER_BYTES: usize = 8 + 8 + 8;

/// The checksum used everywhere in the format.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// What `read_header` returns: the preamble and header, without the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackHeader {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub built_at_unix_seconds: i64,
    pub user_count: u32,
    pub segment_count: u32,
    pub membership_count: u64,
    /// This pack's shard among `shard_count` (format v2; v1 packs are 0 of 1).
    pub shard_index: u32,
    /// 1 = unsharded.
    pub shard_count: u32,
}

/// The rules of one segment-table entry that both formats' readers check
/// as they read it: ids strictly ascending (`previous_id` is the entry
/// before, if any), no unknown flags, and no more members than users.
pub(crate) fn check_segment_entry(
    previous_id: Option<u32>,
    id: u32,
    flags: u8,
    member_count: u32,
    user_count: u32,
) -> Result<(), PackError> {
    if let Some(previous_id) = previous_id
        && id <= previous_id
    {
        return Err(PackError::malformed(format!(
            "segment ids not strictly ascending: {id} after {previous_id}"
        )));
    }
    if flags & !SEGMENT_FLAG_RECENCY != 0 {
        return Err(PackError::malformed(format!(
            "segment {id} has unknown flags {flags:#04x}"
        )));
    }
    if member_count > user_count {
        return Err(PackError::malformed(format!(
            "segment {id} has {member_count} members, the pack has {user_count} users"
        )));
    }
    Ok(())
}

/// A pack name names a file in the data directory, so it is restricted to
/// characters that are safe there: the one rule of [`super::names`].
pub fn check_pack_name(name: &str) -> Result<(), PackError> {
    super::names::check_pack_name(name)
}

/// Strings carry a `u8` byte length.
pub fn check_string_length(what: &'static str, value: &str) -> Result<(), PackError> {
    if value.len() > MAX_STRING_BYTES {
        return Err(PackError::TooLarge {
            what,
            found: value.len() as u64,
            limit: MAX_STRING_BYTES as u64,
        });
    }
    Ok(())
}

/// Checks every invariant the file format guarantees, so that whatever passes
/// can be written and read back unchanged.
pub fn validate_pack(pack: &Pack) -> Result<(), PackError> {
    check_pack_name(&pack.name)?;
    if pack.version.is_empty() {
        return Err(PackError::malformed("pack version is empty"));
    }
    check_string_length("pack version", &pack.version)?;
    super::names::check_label("pack version", &pack.version)?;
    let user_count = pack.user_fingerprints.len() as u64;
    if user_count > MAX_USERS {
        return Err(PackError::TooLarge {
            what: "user count",
            found: user_count,
            limit: MAX_USERS,
        });
    }
    if let Some(position) = pack
        .user_fingerprints
        .windows(2)
        .position(|pair| pair[0] >= pair[1])
    {
        return Err(PackError::malformed(format!(
            "user fingerprints not strictly ascending at ordinal {}",
            position + 1
        )));
    }
    if pack.segments.len() > MAX_SEGMENTS {
        return Err(PackError::TooLarge {
            what: "segment count",
            found: pack.segments.len() as u64,
            limit: MAX_SEGMENTS as u64,
        });
    }
    let mut previous_id: Option<u32> = None;
    for segment in &pack.segments {
        if previous_id.is_some_and(|previous_id| segment.id <= previous_id) {
            return Err(PackError::malformed(format!(
                "segment ids not strictly ascending: {} after {}",
                segment.id,
                previous_id.unwrap_or_default()
            )));
        }
        previous_id = Some(segment.id);
        validate_segment(segment, user_count)?;
    }
    Ok(())
}

fn validate_segment(segment: &Segment, user_count: u64) -> Result<(), PackError> {
    check_string_length("segment name", &segment.name)?;
    check_string_length("segment kind", &segment.kind)?;
    super::names::check_label(&format!("segment {} name", segment.id), &segment.name)?;
    super::names::check_label(&format!("segment {} kind", segment.id), &segment.kind)?;
    let max_ordinal = segment.members.max();
    if max_ordinal.is_some_and(|max_ordinal| u64::from(max_ordinal) >= user_count) {
        return Err(PackError::malformed(format!(
            "segment {} has member ordinal {}, the pack has {user_count} users",
            segment.id,
            max_ordinal.unwrap_or_default()
        )));
    }
    let recency_count = segment.last_seen_hours_ago.as_ref().map(Vec::len);
    if recency_count.is_some_and(|count| count as u64 != segment.members.len()) {
        return Err(PackError::malformed(format!(
            "segment {} has {} recency entries for {} members",
            segment.id,
            recency_count.unwrap_or_default(),
            segment.members.len()
        )));
    }
    Ok(())
}
