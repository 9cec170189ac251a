//! Writes a `Pack` as format-v2 bytes (see `format_v2`): derives the radix
//! directory and the user-major index and lays them out for serving in place.
//!
//! The writer validates the pack first: it never produces a file the reader
//! would refuse. Deterministic: the same pack always gives the same bytes.

use super::entries::EntryLayout;
use super::error::PackError;
use super::format::{END_MAGIC, MAGIC, SEGMENT_FLAG_RECENCY, checksum, validate_pack};
use super::format_v2::{
    FORMAT_VERSION_V2, HEADER_FIXED_BYTES, SECTION_TABLE_BYTES, SECTIONS, Section,
    first_section_start,
};
use super::index_build::{BuildThreads, BuiltIndex, radix_bits_for, radix_directory};
use super::{Pack, Segment};

/// Where a v2 pack says it belongs among shards; 0 of 1 = unsharded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

impl ShardSpec {
    pub const UNSHARDED: ShardSpec = ShardSpec { index: 0, count: 1 };
}

/// Encodes a pack in format v2, unsharded.
pub fn write_pack_v2(pack: &Pack) -> Result<Vec<u8>, PackError> {
    write_pack_v2_shard(pack, ShardSpec::UNSHARDED)
}

/// Encodes a pack in format v2 with the given shard in its header, its index
/// entries in the narrowest layout that holds them ([`entry_layout_for`]).
pub fn write_pack_v2_shard(pack: &Pack, shard: ShardSpec) -> Result<Vec<u8>, PackError> {
    write_pack_v2_layout(pack, shard, entry_layout_for(pack))
}

/// The narrowest index entry layout for a pack: its segment count and the
/// largest `hours_ago` of a segment with recency.
pub fn entry_layout_for(pack: &Pack) -> EntryLayout {
    EntryLayout::narrowest(pack.segments.len(), max_hours_ago(pack))
}

fn max_hours_ago(pack: &Pack) -> u16 {
    pack.segments
        .iter()
        .filter_map(|segment| segment.last_seen_hours_ago.as_deref())
        .flat_map(|hours| hours.iter().copied().max())
        .max()
        .unwrap_or(0)
}

/// [`write_pack_v2_shard`] with the entries in `layout`, which must hold
/// every slot and time of the pack ([`EntryLayout::WIDE`] always does):
/// for tests and tools that need a given layout.
pub fn write_pack_v2_layout(
    pack: &Pack,
    shard: ShardSpec,
    layout: EntryLayout,
) -> Result<Vec<u8>, PackError> {
    validate_pack(pack)?;
    if shard.count == 0 || shard.index >= shard.count {
        return Err(PackError::malformed(format!(
            "shard {} of {} is not a shard",
            shard.index, shard.count
        )));
    }
    let index = BuiltIndex::build_on(pack, BuildThreads::AllCores)?;
    let last_slot = pack.segments.len().saturating_sub(1) as u64;
    if last_slot > u64::from(layout.max_slot())
        || u32::from(max_hours_ago(pack)) > layout.max_hours_ago()
    {
        return Err(PackError::malformed(format!(
            "index entries of {} bytes with {} slot bits cannot hold this pack's slots and times",
            layout.bytes(),
            layout.slot_bits()
        )));
    }
    let radix_bits = radix_bits_for(pack.user_fingerprints.len());
    let directory = radix_directory(&pack.user_fingerprints, radix_bits);

    let mut out = Vec::with_capacity(estimated_bytes(pack, directory.len()));
    let header_bytes = push_header(&mut out, pack, shard, radix_bits as u8, layout);
    push_checksum(&mut out, 0);
    let table_start = out.len();
    out.resize(first_section_start(header_bytes), 0);

    let mut placed = [(0usize, 0usize); SECTIONS.len()];
    for section in SECTIONS {
        pad_to_8(&mut out);
        let start = out.len();
        match section {
            Section::Fingerprints => push_all(&mut out, &pack.user_fingerprints, u64::to_le_bytes),
            Section::RadixDirectory => push_all(&mut out, &directory, u32::to_le_bytes),
            Section::IndexStarts => push_all(&mut out, &index.starts, u32::to_le_bytes),
            Section::IndexEntries => layout.encode_all(&index.entries, &mut out),
            Section::SegmentTable => push_segment_table(&mut out, pack)?,
            Section::Bitmaps => {
                for segment in &pack.segments {
                    segment
                        .members
                        .serialize_into(&mut out)
                        .expect("writing to a Vec cannot fail");
                }
            }
        }
        placed[section as usize] = (start, out.len());
    }
    let mut table = Vec::with_capacity(SECTION_TABLE_BYTES);
    for (start, end) in placed {
        table.extend_from_slice(&(start as u64).to_le_bytes());
        table.extend_from_slice(&((end - start) as u64).to_le_bytes());
        table.extend_from_slice(&checksum(&out[start..end]).to_le_bytes());
    }
    let table_checksum = checksum(&table);
    out[table_start..table_start + SECTION_TABLE_BYTES].copy_from_slice(&table);
    out[table_start + SECTION_TABLE_BYTES..table_start + SECTION_TABLE_BYTES + 8]
        .copy_from_slice(&table_checksum.to_le_bytes());

    pad_to_8(&mut out);
    let total_bytes = (out.len() + super::format::FOOTER_BYTES) as u64;
    out.extend_from_slice(&total_bytes.to_le_bytes());
    out.extend_from_slice(&END_MAGIC);
    push_checksum(&mut out, 0);
    debug_assert_eq!(out.len() as u64, total_bytes);
    Ok(out)
}

fn estimated_bytes(pack: &Pack, directory_entries: usize) -> usize {
    let users = pack.user_fingerprints.len();
    let bitmaps: usize = pack
        .segments
        .iter()
        .map(|segment| segment.members.serialized_size())
        .sum();
    1024 + users * 12
        + directory_entries * 4
        + pack.memberships() as usize * 4 // at most 4 a membership
        + pack.segments.len() * 530
        + bitmaps
}

/// Preamble and header up to the header checksum; returns `header_bytes`.
fn push_header(
    out: &mut Vec<u8>,
    pack: &Pack,
    shard: ShardSpec,
    radix_bits: u8,
    layout: EntryLayout,
) -> usize {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION_V2.to_le_bytes());
    let header_bytes =
        (HEADER_FIXED_BYTES + 2 + pack.name.len() + pack.version.len()).next_multiple_of(8);
    out.extend_from_slice(&(header_bytes as u32).to_le_bytes());
    out.extend_from_slice(&pack.built_at_unix_seconds.to_le_bytes());
    out.extend_from_slice(&(pack.user_fingerprints.len() as u32).to_le_bytes());
    out.extend_from_slice(&(pack.segments.len() as u32).to_le_bytes());
    out.extend_from_slice(&pack.memberships().to_le_bytes());
    out.extend_from_slice(&shard.index.to_le_bytes());
    out.extend_from_slice(&shard.count.to_le_bytes());
    out.push(radix_bits);
    // 0, 0 is the 4-byte layout, as in every file written before these bytes
    // had a meaning: such packs are still written byte for byte as then.
    if layout == EntryLayout::WIDE {
        out.extend_from_slice(&[0, 0]);
    } else {
        out.extend_from_slice(&[layout.bytes() as u8, layout.slot_bits() as u8]);
    }
    out.extend_from_slice(&[0u8; 5]);
    debug_assert_eq!(out.len(), HEADER_FIXED_BYTES);
    push_string(out, &pack.name);
    push_string(out, &pack.version);
    out.resize(header_bytes, 0);
    header_bytes
}

fn push_segment_table(out: &mut Vec<u8>, pack: &Pack) -> Result<(), PackError> {
    for segment in &pack.segments {
        let bitmap_bytes = segment.members.serialized_size();
        if bitmap_bytes > u32::MAX as usize {
            return Err(PackError::TooLarge {
                what: "segment bitmap bytes",
                found: bitmap_bytes as u64,
                limit: u64::from(u32::MAX),
            });
        }
        push_table_entry(out, segment, bitmap_bytes as u32);
    }
    Ok(())
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

fn push_all<T: Copy, const N: usize>(out: &mut Vec<u8>, values: &[T], encode: fn(T) -> [u8; N]) {
    out.reserve(values.len() * N);
    for &value in values {
        out.extend_from_slice(&encode(value));
    }
}

fn pad_to_8(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Lengths were validated by `validate_pack`.
fn push_string(out: &mut Vec<u8>, value: &str) {
    debug_assert!(value.len() <= u8::MAX as usize);
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn push_checksum(out: &mut Vec<u8>, section_start: usize) {
    let section_checksum = checksum(&out[section_start..]);
    out.extend_from_slice(&section_checksum.to_le_bytes());
}
