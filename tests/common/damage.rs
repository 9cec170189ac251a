//! Finds the sections of a valid pack file (layouts in `segd::pack::format`
//! and `segd::pack::format_v2`) so tests can damage each one on purpose.

use xxhash_rust::xxh3::xxh3_64;

fn u32_at(bytes: &[u8], offset: usize) -> usize {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize
}

/// Offsets (section name, byte offset) inside each section of a valid pack
/// with at least one user and one non-empty segment with recency.
pub fn section_offsets(bytes: &[u8]) -> Vec<(&'static str, usize)> {
    if u32_at(bytes, 8) == 2 {
        return section_offsets_v2(bytes);
    }
    let user_count = u32_at(bytes, 20);
    let segment_count = u32_at(bytes, 24);
    let name_len = bytes[36] as usize;
    let version_len = bytes[37 + name_len] as usize;
    let header_end = 38 + name_len + version_len;
    let dictionary_start = header_end + 8;
    let table_start = dictionary_start + user_count * 8 + 8;
    let mut cursor = table_start;
    let mut first_bitmap_bytes = 0;
    let mut first_flags = 0;
    for index in 0..segment_count {
        if index == 0 {
            first_bitmap_bytes = u32_at(bytes, cursor + 12);
            first_flags = bytes[cursor + 16];
        }
        let name = bytes[cursor + 17] as usize;
        let kind = bytes[cursor + 18 + name] as usize;
        cursor += 19 + name + kind;
    }
    let bitmap_start = cursor + 8;
    let mut offsets = vec![
        ("header", 14),
        ("header name", 37),
        ("dictionary", dictionary_start + 3),
        ("segment table", table_start + 1),
        ("bitmap", bitmap_start + first_bitmap_bytes / 2),
        ("footer", bytes.len() - 20),
        ("footer checksum", bytes.len() - 3),
    ];
    if first_flags & 1 == 1 {
        offsets.push(("recency", bitmap_start + first_bitmap_bytes + 8 + 1));
    }
    offsets
}

fn section_offsets_v2(bytes: &[u8]) -> Vec<(&'static str, usize)> {
    let header_bytes = u32_at(bytes, 12);
    let table_start = header_bytes + 8;
    let names = [
        "dictionary",
        "radix directory",
        "index starts",
        "index entries",
        "segment table",
        "bitmaps",
    ];
    let mut offsets = vec![
        ("header", 20),
        ("header name", 57),
        ("section table", table_start + 3),
        ("footer", bytes.len() - 20),
        ("footer checksum", bytes.len() - 3),
    ];
    for (index, name) in names.into_iter().enumerate() {
        let offset = u32_at(bytes, table_start + index * 24);
        let length = u32_at(bytes, table_start + index * 24 + 8);
        if length > 0 {
            offsets.push((name, offset + length / 2));
        }
    }
    offsets
}

/// The same pack claiming another format version, with every checksum
/// recomputed, so only the version is wrong.
pub fn with_format_version(bytes: &[u8], format_version: u32) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let header_end = if u32_at(&bytes, 8) == 2 {
        u32_at(&bytes, 12)
    } else {
        let name_len = bytes[36] as usize;
        let version_len = bytes[37 + name_len] as usize;
        38 + name_len + version_len
    };
    bytes[8..12].copy_from_slice(&format_version.to_le_bytes());
    let header_checksum = xxh3_64(&bytes[..header_end]);
    bytes[header_end..header_end + 8].copy_from_slice(&header_checksum.to_le_bytes());
    let file_checksum_at = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..file_checksum_at]);
    bytes[file_checksum_at..].copy_from_slice(&file_checksum.to_le_bytes());
    bytes
}
