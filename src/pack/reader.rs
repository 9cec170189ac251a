//! The checked reader of pack bytes: format v1 (see `format`) here, format
//! v2 (see `format_v2`) through `view`, dispatched on the version.
//!
//! It trusts nothing in the file: every length is checked against the bytes
//! that remain before it is used, every allocation is sized by bytes already
//! known to be present, and every byte is covered by a verified checksum
//! before anything decoded from it is returned. A truncated, bit-flipped or hostile file is an error,
//! never a panic, an over-allocation or a partly read pack.

use std::path::Path;

use roaring::RoaringBitmap;

use super::error::{PackError, PackSection};
use super::format::{
    CHECKSUM_BYTES, END_MAGIC, FORMAT_VERSION, FORMAT_VERSION_V1, HEADER_FIXED_BYTES, MAGIC,
    PREAMBLE_BYTES, PackHeader, SEGMENT_ENTRY_FIXED_BYTES, SEGMENT_FLAG_RECENCY,
    check_segment_entry, checksum,
};
use super::names::{read_identity, read_label};
use super::{Pack, Segment};
use crate::le::{LeReader, Truncated};

/// The most bytes the preamble and header can take, in either format:
/// `read_header` never looks further.
pub const MAX_HEADER_BYTES: usize = super::format_v2::MAX_HEADER_BYTES + CHECKSUM_BYTES;
const _: () =
    assert!(PREAMBLE_BYTES + HEADER_FIXED_BYTES + 2 * 256 + CHECKSUM_BYTES <= MAX_HEADER_BYTES);

/// The format version in the preamble, after checking the magic.
pub fn format_version_of(bytes: &[u8]) -> Result<u32, PackError> {
    let available = bytes.len().min(MAGIC.len());
    if bytes[..available] != MAGIC[..available] {
        return Err(PackError::BadMagic);
    }
    let Some(version) = bytes.get(MAGIC.len()..PREAMBLE_BYTES) else {
        return Err(PackError::Truncated {
            what: PackSection::Preamble,
            offset: 0,
            needed_bytes: PREAMBLE_BYTES as u64,
            available_bytes: bytes.len() as u64,
        });
    };
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if version != FORMAT_VERSION_V1 && version != FORMAT_VERSION {
        return Err(PackError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(version)
}

/// Reads and fully verifies a pack of either format: checksums, structure
/// and every invariant of `Pack` (for v2, also that bitmaps and index agree).
pub fn read_pack(bytes: &[u8]) -> Result<Pack, PackError> {
    if format_version_of(bytes)? == FORMAT_VERSION_V1 {
        return read_pack_v1(bytes);
    }
    let view = super::view::PackView::open(std::sync::Arc::new(
        super::mapped::PackBytes::copy_from(bytes),
    ))?;
    view.to_pack()
}

/// Reads and fully verifies a format-v1 pack.
///
/// The whole-file checksum is checked first, in one pass. When it matches,
/// every section checksum is covered by it and not hashed again; when it does
/// not, the sections are checked one by one so the error names the damaged
/// section (or the truncation point).
fn read_pack_v1(bytes: &[u8]) -> Result<Pack, PackError> {
    let mut cursor = Cursor::new(bytes);
    let header = read_header_from(&mut cursor)?;
    let file_checksum_matches = whole_file_checksum_matches(bytes);
    cursor.verify_section_checksums = !file_checksum_matches;
    let user_fingerprints = read_user_dictionary(&mut cursor, header.user_count)?;
    let entries = read_segment_table(&mut cursor, &header)?;
    let mut segments = Vec::with_capacity(entries.len());
    for entry in entries {
        segments.push(read_segment_data(&mut cursor, entry, header.user_count)?);
    }
    read_footer(&mut cursor, file_checksum_matches)?;
    Ok(Pack {
        name: header.name,
        version: header.version,
        built_at_unix_seconds: header.built_at_unix_seconds,
        user_fingerprints,
        segments,
    })
}

/// Reads a pack file from disk and verifies it like `read_pack`.
pub fn read_pack_file(path: impl AsRef<Path>) -> Result<Pack, PackError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| PackError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_pack(&bytes)
}

/// Reads only the header of a pack file on disk: at most `MAX_HEADER_BYTES`,
/// however large the file (status pages ask this of every kept version).
pub fn read_header_file(path: impl AsRef<Path>) -> Result<PackHeader, PackError> {
    use std::io::Read;
    let path = path.as_ref();
    let io = |source: std::io::Error| PackError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(MAX_HEADER_BYTES);
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    read_header(&head)
}

/// Reads only the preamble and header (at most `MAX_HEADER_BYTES` from the
/// start), verifying the header checksum but nothing after it: cheap enough
/// for `inspect` and status pages, not a substitute for `read_pack`.
pub fn read_header(bytes: &[u8]) -> Result<PackHeader, PackError> {
    if format_version_of(bytes)? == FORMAT_VERSION_V1 {
        return read_header_from(&mut Cursor::new(bytes));
    }
    super::view_header::read_header_v2(bytes).map(|read| read.header)
}

/// How a pack's index entries are encoded: `None` for format 1 (which
/// stores no index). Reads only the header, as [`read_header`].
pub fn entry_layout_of(bytes: &[u8]) -> Result<Option<super::EntryLayout>, PackError> {
    if format_version_of(bytes)? == FORMAT_VERSION_V1 {
        return Ok(None);
    }
    super::view_header::read_header_v2(bytes).map(|read| Some(read.entry_layout))
}

fn read_header_from(cursor: &mut Cursor<'_>) -> Result<PackHeader, PackError> {
    let available = cursor.remaining().len().min(MAGIC.len());
    if cursor.remaining()[..available] != MAGIC[..available] {
        return Err(PackError::BadMagic);
    }
    cursor.take(MAGIC.len(), PackSection::Preamble)?;
    let format_version = cursor.take_u32(PackSection::Preamble)?;
    debug_assert_eq!(format_version, FORMAT_VERSION_V1);
    let section = PackSection::Header;
    let built_at_unix_seconds = cursor.take_u64(section)? as i64;
    let user_count = cursor.take_u32(section)?;
    let segment_count = cursor.take_u32(section)?;
    let membership_count = cursor.take_u64(section)?;
    let name = cursor.take_string_bytes(section)?;
    let version = cursor.take_string_bytes(section)?;
    cursor.verify_checksum(section, 0)?;

    let (name, version) = read_identity(name, version, segment_count)?;
    Ok(PackHeader {
        format_version,
        name,
        version,
        built_at_unix_seconds,
        user_count,
        segment_count,
        membership_count,
        shard_index: 0,
        shard_count: 1,
    })
}

fn read_user_dictionary(cursor: &mut Cursor<'_>, user_count: u32) -> Result<Vec<u64>, PackError> {
    let section = PackSection::UserDictionary;
    let start = cursor.position();
    let bytes = cursor.take(user_count as usize * 8, section)?;
    cursor.verify_checksum(section, start)?;
    let user_fingerprints: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes")))
        .collect();
    if let Some(position) = user_fingerprints
        .windows(2)
        .position(|pair| pair[0] >= pair[1])
    {
        return Err(PackError::malformed(format!(
            "user fingerprints not strictly ascending at ordinal {}",
            position + 1
        )));
    }
    Ok(user_fingerprints)
}

/// A segment table entry, decoded after the table checksum matched.
struct SegmentEntry {
    id: u32,
    ttl_seconds: u32,
    member_count: u32,
    bitmap_bytes: u32,
    has_recency: bool,
    name: String,
    kind: String,
}

fn read_segment_table(
    cursor: &mut Cursor<'_>,
    header: &PackHeader,
) -> Result<Vec<SegmentEntry>, PackError> {
    let section = PackSection::SegmentTable;
    let start = cursor.position();
    let segment_count = header.segment_count as usize;
    // The smallest entry has two empty strings; refuse a count the remaining
    // bytes cannot hold before sizing anything by it.
    let minimum_entry_bytes = SEGMENT_ENTRY_FIXED_BYTES + 2;
    cursor.ensure(segment_count * minimum_entry_bytes, section)?;

    let mut raw_entries = Vec::with_capacity(segment_count);
    for _ in 0..segment_count {
        let id = cursor.take_u32(section)?;
        let ttl_seconds = cursor.take_u32(section)?;
        let member_count = cursor.take_u32(section)?;
        let bitmap_bytes = cursor.take_u32(section)?;
        let flags = cursor.take(1, section)?[0];
        let name = cursor.take_string_bytes(section)?;
        let kind = cursor.take_string_bytes(section)?;
        raw_entries.push((
            id,
            ttl_seconds,
            member_count,
            bitmap_bytes,
            flags,
            name,
            kind,
        ));
    }
    cursor.verify_checksum(section, start)?;

    let mut entries = Vec::with_capacity(segment_count);
    let mut membership_count: u64 = 0;
    let mut previous_id: Option<u32> = None;
    for (id, ttl_seconds, member_count, bitmap_bytes, flags, name, kind) in raw_entries {
        check_segment_entry(previous_id, id, flags, member_count, header.user_count)?;
        previous_id = Some(id);
        membership_count += u64::from(member_count);
        entries.push(SegmentEntry {
            id,
            ttl_seconds,
            member_count,
            bitmap_bytes,
            has_recency: flags & SEGMENT_FLAG_RECENCY != 0,
            name: read_label("segment name", name)?,
            kind: read_label("segment kind", kind)?,
        });
    }
    if membership_count != header.membership_count {
        return Err(PackError::malformed(format!(
            "header says {} memberships, the segment table {membership_count}",
            header.membership_count
        )));
    }
    Ok(entries)
}

fn read_segment_data(
    cursor: &mut Cursor<'_>,
    entry: SegmentEntry,
    user_count: u32,
) -> Result<Segment, PackError> {
    let section = PackSection::Bitmap {
        segment_id: entry.id,
    };
    let start = cursor.position();
    let mut bitmap_bytes = cursor.take(entry.bitmap_bytes as usize, section)?;
    cursor.verify_checksum(section, start)?;
    // `deserialize_from` validates container structure; its allocations are
    // bounded by roaring's own limits and the slice it reads from.
    let members = RoaringBitmap::deserialize_from(&mut bitmap_bytes)
        .map_err(|error| PackError::malformed(format!("segment {} bitmap: {error}", entry.id)))?;
    if !bitmap_bytes.is_empty() {
        return Err(PackError::malformed(format!(
            "segment {} bitmap has {} unused bytes",
            entry.id,
            bitmap_bytes.len()
        )));
    }
    if members.len() != u64::from(entry.member_count) {
        return Err(PackError::malformed(format!(
            "segment {} bitmap has {} members, the segment table says {}",
            entry.id,
            members.len(),
            entry.member_count
        )));
    }
    if let Some(max_ordinal) = members.max()
        && max_ordinal >= user_count
    {
        return Err(PackError::malformed(format!(
            "segment {} has member ordinal {max_ordinal}, the pack has {user_count} users",
            entry.id
        )));
    }

    let last_seen_hours_ago = if entry.has_recency {
        let section = PackSection::Recency {
            segment_id: entry.id,
        };
        let start = cursor.position();
        let bytes = cursor.take(entry.member_count as usize * 2, section)?;
        cursor.verify_checksum(section, start)?;
        let hours: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|chunk| u16::from_le_bytes([chunk[0], chunk[1]]))
            .collect();
        Some(hours)
    } else {
        None
    };

    Ok(Segment {
        id: entry.id,
        name: entry.name,
        kind: entry.kind,
        ttl_seconds: entry.ttl_seconds,
        members,
        last_seen_hours_ago,
    })
}

/// Whether the last 8 bytes are the checksum of all bytes before them.
fn whole_file_checksum_matches(bytes: &[u8]) -> bool {
    let Some(checksum_start) = bytes.len().checked_sub(CHECKSUM_BYTES) else {
        return false;
    };
    let (covered, stored) = bytes.split_at(checksum_start);
    stored == checksum(covered).to_le_bytes()
}

fn read_footer(cursor: &mut Cursor<'_>, file_checksum_verified: bool) -> Result<(), PackError> {
    let section = PackSection::Footer;
    let footer_start = cursor.position();
    let total_bytes = cursor.take_u64(section)?;
    let end_magic = cursor.take(END_MAGIC.len(), section)?;
    // The file checksum covers the footer itself: compared here only when the
    // up-front check failed, so that an intact-sections file names the footer.
    cursor.verify_section_checksums = !file_checksum_verified;
    cursor
        .verify_checksum(section, 0)
        .map_err(|error| match error {
            PackError::ChecksumMismatch { section, .. } => PackError::ChecksumMismatch {
                section,
                offset: footer_start as u64,
            },
            other => other,
        })?;
    if end_magic != END_MAGIC {
        return Err(PackError::malformed("bad end magic in footer"));
    }
    if total_bytes != cursor.position() as u64 {
        return Err(PackError::malformed(format!(
            "footer says the file has {total_bytes} bytes, it ends at {}",
            cursor.position()
        )));
    }
    let trailing_bytes = cursor.remaining().len();
    if trailing_bytes != 0 {
        return Err(PackError::malformed(format!(
            "{trailing_bytes} trailing bytes after the footer at offset {}",
            cursor.position()
        )));
    }
    Ok(())
}

/// A position in the pack bytes: the shared [`LeReader`], with each
/// shortfall reported as the section it cut short.
struct Cursor<'a> {
    reader: LeReader<'a>,
    /// False once the whole-file checksum matched: section checksums are then
    /// skipped over, being covered by it.
    verify_section_checksums: bool,
}

fn truncated(what: PackSection) -> impl FnOnce(Truncated) -> PackError {
    move |short| PackError::Truncated {
        what,
        offset: short.offset as u64,
        needed_bytes: short.needed_bytes as u64,
        available_bytes: short.available_bytes as u64,
    }
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor {
            reader: LeReader::new(bytes),
            verify_section_checksums: true,
        }
    }

    /// Bytes read so far.
    fn position(&self) -> usize {
        self.reader.position()
    }

    fn remaining(&self) -> &'a [u8] {
        self.reader.rest()
    }

    /// Errors unless `count` more bytes are present.
    fn ensure(&self, count: usize, what: PackSection) -> Result<(), PackError> {
        self.reader.ensure(count).map_err(truncated(what))
    }

    fn take(&mut self, count: usize, what: PackSection) -> Result<&'a [u8], PackError> {
        self.reader.take(count).map_err(truncated(what))
    }

    fn take_u32(&mut self, what: PackSection) -> Result<u32, PackError> {
        self.reader.u32().map_err(truncated(what))
    }

    fn take_u64(&mut self, what: PackSection) -> Result<u64, PackError> {
        self.reader.u64().map_err(truncated(what))
    }

    /// A `u8` length and that many bytes.
    fn take_string_bytes(&mut self, what: PackSection) -> Result<&'a [u8], PackError> {
        let length = self.take(1, what)?[0];
        self.take(length as usize, what)
    }

    /// Reads the stored checksum that ends a section and compares it with the
    /// checksum of `bytes[section_start..]` up to it.
    fn verify_checksum(
        &mut self,
        section: PackSection,
        section_start: usize,
    ) -> Result<(), PackError> {
        let section_end = self.position();
        let stored = self.take_u64(section)?;
        if self.verify_section_checksums
            && checksum(&self.reader.bytes()[section_start..section_end]) != stored
        {
            return Err(PackError::ChecksumMismatch {
                section,
                offset: section_start as u64,
            });
        }
        Ok(())
    }
}
