//! The framing of a format-v2 pack (see `format_v2`), checked: the preamble
//! and header (with the entry layout), the section table, the per-section
//! checksums that name the damage once the whole-file one (`view_check`)
//! failed, the footer and the segment table, plus the bounds-checked byte
//! readers they share. [`super::view::PackView::open`] runs the header and
//! section table before it looks at any column; they only read and compare, never allocate by a count the
//! file declares before the bytes backing it are known to exist, and report
//! every failure as a [`PackError`], never a panic.

use std::ops::Range;

use super::entries::EntryLayout;
use super::error::{PackError, PackSection};
use super::format::{
    CHECKSUM_BYTES, END_MAGIC, FOOTER_BYTES, PackHeader, SEGMENT_ENTRY_FIXED_BYTES,
    SEGMENT_FLAG_RECENCY, check_segment_entry, checksum,
};
use super::format_v2::{
    FORMAT_VERSION_V2, HEADER_FIXED_BYTES, MAX_HEADER_BYTES, SECTION_ENTRY_BYTES,
    SECTION_TABLE_BYTES, SECTIONS, Section, first_section_start, section_table_start,
};
use super::index_build::radix_bits_for;
use super::names::{read_identity, read_label};
use super::view::SegmentInfo;

/// A checked v2 header and what the reader needs of it besides `PackHeader`.
#[derive(Debug)]
pub(crate) struct HeaderV2 {
    pub header: PackHeader,
    pub header_bytes: usize,
    pub radix_bits: u32,
    pub entry_layout: EntryLayout,
}

/// Reads and checks the preamble and header. Verifies the header checksum,
/// so it serves `read_header` alone too.
pub(crate) fn read_header_v2(all: &[u8]) -> Result<HeaderV2, PackError> {
    let section = PackSection::Header;
    let fixed = take(all, 0..HEADER_FIXED_BYTES, section)?;
    let format_version = u32_at(fixed, 8);
    debug_assert_eq!(format_version, FORMAT_VERSION_V2);
    let header_bytes = u32_at(fixed, 12) as usize;
    if !header_bytes.is_multiple_of(8)
        || !(HEADER_FIXED_BYTES + 2..=MAX_HEADER_BYTES).contains(&header_bytes)
    {
        return Err(PackError::malformed(format!(
            "header length {header_bytes} is not a multiple of 8 in {}..={MAX_HEADER_BYTES}",
            HEADER_FIXED_BYTES + 2
        )));
    }
    let header = take(all, 0..header_bytes, section)?;
    let stored = take(all, header_bytes..header_bytes + CHECKSUM_BYTES, section)?;
    if checksum(header).to_le_bytes() != stored {
        return Err(PackError::ChecksumMismatch { section, offset: 0 });
    }
    let built_at_unix_seconds = u64_at(header, 16) as i64;
    let user_count = u32_at(header, 24);
    let segment_count = u32_at(header, 28);
    let membership_count = u64_at(header, 32);
    let shard_index = u32_at(header, 40);
    let shard_count = u32_at(header, 44);
    let radix_bits = u32::from(header[48]);
    let entry_layout = read_entry_layout(header[49], header[50])?;
    if header[51..HEADER_FIXED_BYTES].iter().any(|&byte| byte != 0) {
        return Err(PackError::malformed("reserved header bytes are not zero"));
    }
    let (name, rest) = split_string(&header[HEADER_FIXED_BYTES..], "pack name")?;
    let (version, padding) = split_string(rest, "pack version")?;
    if padding.len() >= 8 || padding.iter().any(|&byte| byte != 0) {
        return Err(PackError::malformed(
            "header padding is not 0..8 zero bytes",
        ));
    }
    let (name, version) = read_identity(name, version, segment_count)?;
    if membership_count > u64::from(u32::MAX) {
        return Err(PackError::TooLarge {
            what: "membership count",
            found: membership_count,
            limit: u64::from(u32::MAX),
        });
    }
    if shard_count == 0 || shard_index >= shard_count {
        return Err(PackError::malformed(format!(
            "shard {shard_index} of {shard_count} is not a shard"
        )));
    }
    if radix_bits != radix_bits_for(user_count as usize) {
        return Err(PackError::malformed(format!(
            "radix directory of {radix_bits} bits for {user_count} users, expected {}",
            radix_bits_for(user_count as usize)
        )));
    }
    let header = PackHeader {
        format_version,
        name,
        version,
        built_at_unix_seconds,
        user_count,
        segment_count,
        membership_count,
        shard_index,
        shard_count,
    };
    Ok(HeaderV2 {
        header,
        header_bytes,
        radix_bits,
        entry_layout,
    })
}

/// Header bytes 49 (`entry_bytes`) and 50 (`slot_bits`); both 0 is the
/// 4-byte layout of the files written before they existed.
fn read_entry_layout(entry_bytes: u8, slot_bits: u8) -> Result<EntryLayout, PackError> {
    let layout = match (entry_bytes, slot_bits) {
        (0, 0) => Some(EntryLayout::WIDE),
        (0, _) => None,
        (bytes, bits) => EntryLayout::new(bytes, bits),
    };
    layout.ok_or_else(|| {
        PackError::malformed(format!(
            "index entry layout of {entry_bytes} bytes with {slot_bits} slot bits is not one \
             (1-4 bytes, slot and hours at most 16 bits each)"
        ))
    })
}

/// Reads the section table and checks that every section is where the
/// layout puts it, as long as the counts say, and inside the file.
pub(super) fn read_section_table(
    all: &[u8],
    read: &HeaderV2,
) -> Result<[Range<usize>; SECTIONS.len()], PackError> {
    let (header, header_bytes, radix_bits) = (&read.header, read.header_bytes, read.radix_bits);
    let section = PackSection::SectionTable;
    let table_start = section_table_start(header_bytes);
    let table = take(all, table_start..table_start + SECTION_TABLE_BYTES, section)?;
    let stored = take(
        all,
        table_start + SECTION_TABLE_BYTES..first_section_start(header_bytes),
        section,
    )?;
    if checksum(table).to_le_bytes() != stored {
        return Err(PackError::ChecksumMismatch {
            section,
            offset: table_start as u64,
        });
    }
    let users = u64::from(header.user_count);
    let expected_bytes = |section: Section| -> Option<u64> {
        match section {
            Section::Fingerprints => Some(8 * users),
            Section::RadixDirectory => Some(4 * ((1u64 << radix_bits) + 1)),
            Section::IndexStarts => Some(4 * (users + 1)),
            Section::IndexEntries => {
                Some(read.entry_layout.bytes() as u64 * header.membership_count)
            }
            Section::SegmentTable | Section::Bitmaps => None,
        }
    };
    let mut ranges: [Range<usize>; SECTIONS.len()] = Default::default();
    let mut position = first_section_start(header_bytes) as u64;
    for section in SECTIONS {
        let entry = &table[section as usize * SECTION_ENTRY_BYTES..][..SECTION_ENTRY_BYTES];
        let offset = u64_at(entry, 0);
        let bytes = u64_at(entry, 8);
        let what = section.pack_section();
        if offset != position.next_multiple_of(8) {
            return Err(PackError::malformed(format!(
                "{what} starts at {offset}, the layout puts it at {}",
                position.next_multiple_of(8)
            )));
        }
        if let Some(expected) = expected_bytes(section)
            && bytes != expected
        {
            return Err(PackError::malformed(format!(
                "{what} has {bytes} bytes, the header's counts make it {expected}"
            )));
        }
        let end = offset
            .checked_add(bytes)
            .filter(|&end| end <= all.len() as u64);
        let Some(end) = end else {
            return Err(PackError::Truncated {
                what,
                offset,
                needed_bytes: bytes,
                available_bytes: (all.len() as u64).saturating_sub(offset),
            });
        };
        ranges[section as usize] = offset as usize..end as usize;
        position = end;
    }
    let footer_start = position.next_multiple_of(8);
    if footer_start + FOOTER_BYTES as u64 != all.len() as u64 {
        return Err(PackError::malformed(format!(
            "the footer belongs at {footer_start}, the file has {} bytes",
            all.len()
        )));
    }
    Ok(ranges)
}

/// The error for a file whose whole-file checksum failed: the first
/// section whose own checksum fails, else the footer.
pub(super) fn locate_damage(
    all: &[u8],
    header_bytes: usize,
    sections: &[Range<usize>],
) -> PackError {
    let table_start = section_table_start(header_bytes);
    let table = &all[table_start..table_start + SECTION_TABLE_BYTES];
    for section in SECTIONS {
        let range = sections[section as usize].clone();
        let stored = u64_at(table, section as usize * SECTION_ENTRY_BYTES + 16);
        let padding_start = if section as usize == 0 {
            range.start
        } else {
            sections[section as usize - 1].end
        };
        let padding_clean = all[padding_start..range.start].iter().all(|&b| b == 0);
        if checksum(&all[range.clone()]) != stored || !padding_clean {
            return PackError::ChecksumMismatch {
                section: section.pack_section(),
                offset: range.start as u64,
            };
        }
    }
    PackError::ChecksumMismatch {
        section: PackSection::Footer,
        offset: (all.len() - FOOTER_BYTES) as u64,
    }
}

pub(super) fn check_footer(all: &[u8], sections: &[Range<usize>]) -> Result<(), PackError> {
    let footer = &all[all.len() - FOOTER_BYTES..];
    if u64_at(footer, 0) != all.len() as u64 {
        return Err(PackError::malformed(format!(
            "footer says the file has {} bytes, it has {}",
            u64_at(footer, 0),
            all.len()
        )));
    }
    if footer[8..16] != END_MAGIC {
        return Err(PackError::malformed("bad end magic in footer"));
    }
    // Padding between sections and before the footer is zero (so every
    // file of the same pack is the same bytes).
    let mut previous_end = sections[0].start;
    for range in sections.iter().chain(std::iter::once(
        &((all.len() - FOOTER_BYTES)..(all.len() - FOOTER_BYTES)),
    )) {
        if all[previous_end..range.start].iter().any(|&byte| byte != 0) {
            return Err(PackError::malformed(format!(
                "padding at {previous_end} is not zero"
            )));
        }
        previous_end = range.end;
    }
    Ok(())
}

/// Parses and checks the segment table; bitmap ranges are laid end to end
/// over `bitmaps` and must fill it exactly.
pub(super) fn read_segment_table(
    table: &[u8],
    header: &PackHeader,
    bitmaps: Range<usize>,
) -> Result<Vec<SegmentInfo>, PackError> {
    let segment_count = header.segment_count as usize;
    let minimum_entry_bytes = SEGMENT_ENTRY_FIXED_BYTES + 2;
    if segment_count * minimum_entry_bytes > table.len() {
        return Err(PackError::malformed(format!(
            "segment table of {} bytes cannot hold {segment_count} segments",
            table.len()
        )));
    }
    let mut segments = Vec::with_capacity(segment_count);
    let mut rest = table;
    let mut bitmap_position = bitmaps.start;
    let mut membership_count = 0u64;
    for _ in 0..segment_count {
        let fixed = take(
            rest,
            0..SEGMENT_ENTRY_FIXED_BYTES,
            PackSection::SegmentTable,
        )?;
        let (id, ttl_seconds) = (u32_at(fixed, 0), u32_at(fixed, 4));
        let (member_count, bitmap_bytes, flags) = (u32_at(fixed, 8), u32_at(fixed, 12), fixed[16]);
        let (name, after_name) = split_string(&rest[SEGMENT_ENTRY_FIXED_BYTES..], "segment name")?;
        let (kind, after_kind) = split_string(after_name, "segment kind")?;
        rest = after_kind;
        check_segment_entry(
            segments.last().map(|previous: &SegmentInfo| previous.id),
            id,
            flags,
            member_count,
            header.user_count,
        )?;
        let bitmap_end = bitmap_position + bitmap_bytes as usize;
        if bitmap_end > bitmaps.end {
            return Err(PackError::malformed(format!(
                "segment {id} bitmap of {bitmap_bytes} bytes overruns the bitmaps section"
            )));
        }
        membership_count += u64::from(member_count);
        segments.push(SegmentInfo {
            id,
            name: read_label("segment name", name)?,
            kind: read_label("segment kind", kind)?,
            ttl_seconds,
            member_count,
            has_recency: flags & SEGMENT_FLAG_RECENCY != 0,
            bitmap: bitmap_position..bitmap_end,
        });
        bitmap_position = bitmap_end;
    }
    if !rest.is_empty() {
        return Err(PackError::malformed(format!(
            "segment table has {} bytes after its last entry",
            rest.len()
        )));
    }
    if bitmap_position != bitmaps.end {
        return Err(PackError::malformed(format!(
            "bitmaps section has {} bytes no segment owns",
            bitmaps.end - bitmap_position
        )));
    }
    if membership_count != header.membership_count {
        return Err(PackError::malformed(format!(
            "header says {} memberships, the segment table {membership_count}",
            header.membership_count
        )));
    }
    Ok(segments)
}

/// `bytes[range]`, or a truncation error naming `what`.
pub(super) fn take(
    bytes: &[u8],
    range: Range<usize>,
    what: PackSection,
) -> Result<&[u8], PackError> {
    bytes.get(range.clone()).ok_or(PackError::Truncated {
        what,
        offset: range.start as u64,
        needed_bytes: (range.end - range.start) as u64,
        available_bytes: bytes.len().saturating_sub(range.start) as u64,
    })
}

/// A `u8` length, that many bytes, and the rest.
pub(super) fn split_string<'a>(
    bytes: &'a [u8],
    what: &str,
) -> Result<(&'a [u8], &'a [u8]), PackError> {
    let Some((&length, rest)) = bytes.split_first() else {
        return Err(PackError::malformed(format!("{what} is cut off")));
    };
    if rest.len() < length as usize {
        return Err(PackError::malformed(format!("{what} is cut off")));
    }
    Ok(rest.split_at(length as usize))
}

pub(super) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}
