//! Pack file format v1: a committed fixture pins the bytes, and every kind of
//! damage is refused with the error that names it. v1 is no longer written by
//! default but must keep reading (packs on disk from before v2); v2 has its
//! own file, `pack_format_v2.rs`.
//!
//! The layout walker below is a second, independent reading of the layout
//! table in `segd::pack::format`, so the documentation is checked too.

use std::path::PathBuf;

use roaring::RoaringBitmap;
use segd::pack::{FORMAT_VERSION_V1 as FORMAT_VERSION, Pack};
use segd::pack::{
    PackError, PackSection, Segment, read_header, read_pack, read_pack_file,
    write_pack_file_atomic, write_pack_v1 as write_pack,
};
use xxhash_rust::xxh3::xxh3_64;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.segpack")
}

/// What `tests/fixtures/small.segpack` holds.
fn fixture_pack() -> Pack {
    Pack {
        name: "site-events".to_string(),
        version: "2024-06-01.1".to_string(),
        built_at_unix_seconds: 1_717_200_000,
        user_fingerprints: vec![
            0x0000_0000_0000_0011,
            0x0000_0000_0000_0022,
            0x1234_5678_9abc_def0,
            0x8000_0000_0000_0000,
            0xffff_ffff_ffff_fffe,
        ],
        segments: vec![
            Segment {
                id: 7,
                name: "cart-abandoners".to_string(),
                kind: "retargeting".to_string(),
                ttl_seconds: 30 * 86_400,
                members: [0, 2, 4].into_iter().collect(),
                last_seen_hours_ago: Some(vec![1, 0, 48]),
            },
            Segment {
                id: 42,
                name: "converters".to_string(),
                kind: "exclusion".to_string(),
                ttl_seconds: 0,
                members: [1, 3].into_iter().collect(),
                last_seen_hours_ago: None,
            },
            Segment {
                id: 100,
                name: "défini-vide".to_string(),
                kind: String::new(),
                ttl_seconds: 3600,
                members: RoaringBitmap::new(),
                last_seen_hours_ago: None,
            },
        ],
    }
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture_path()).expect("tests/fixtures/small.segpack is committed")
}

/// Regenerates the fixture. Run only on purpose, when the format version changes:
/// `cargo test --test pack_format -- --ignored regenerate_fixture`.
#[test]
#[ignore]
fn regenerate_fixture() {
    let bytes = write_pack(&fixture_pack()).expect("the fixture pack is valid");
    std::fs::write(fixture_path(), bytes).expect("fixture written");
}

#[test]
fn fixture_reads_with_exact_contents() {
    let pack = read_pack(&fixture_bytes()).expect("the fixture reads");
    assert_eq!(pack.name, "site-events");
    assert_eq!(pack.version, "2024-06-01.1");
    assert_eq!(pack.built_at_unix_seconds, 1_717_200_000);
    assert_eq!(pack.user_fingerprints.len(), 5);
    assert_eq!(pack.user_fingerprints[2], 0x1234_5678_9abc_def0);
    let ids: Vec<u32> = pack.segments.iter().map(|segment| segment.id).collect();
    assert_eq!(ids, [7, 42, 100]);
    let cart = &pack.segments[0];
    assert_eq!(cart.name, "cart-abandoners");
    assert_eq!(cart.kind, "retargeting");
    assert_eq!(cart.ttl_seconds, 2_592_000);
    assert_eq!(cart.members.iter().collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(cart.last_seen_hours_ago.as_deref(), Some(&[1, 0, 48][..]));
    let converters = &pack.segments[1];
    assert_eq!(converters.kind, "exclusion");
    assert_eq!(converters.members.iter().collect::<Vec<_>>(), [1, 3]);
    assert_eq!(converters.last_seen_hours_ago, None);
    assert_eq!(pack.segments[2].name, "défini-vide");
    assert!(pack.segments[2].members.is_empty());
    assert_eq!(pack.memberships(), 5);
    assert_eq!(pack, fixture_pack());
}

#[test]
fn writer_reproduces_the_fixture_byte_for_byte() {
    let written = write_pack(&fixture_pack()).expect("the fixture pack is valid");
    assert_eq!(
        written,
        fixture_bytes(),
        "the format changed: bump FORMAT_VERSION"
    );
}

#[test]
fn header_reads_alone() {
    let bytes = fixture_bytes();
    let header = read_header(&bytes[..200.min(bytes.len())]).expect("the header reads");
    assert_eq!(header.format_version, FORMAT_VERSION);
    assert_eq!(header.name, "site-events");
    assert_eq!(header.version, "2024-06-01.1");
    assert_eq!(header.built_at_unix_seconds, 1_717_200_000);
    assert_eq!(header.user_count, 5);
    assert_eq!(header.segment_count, 3);
    assert_eq!(header.membership_count, 5);
}

#[test]
fn file_round_trip_through_atomic_write() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("site-events.segpack");
    write_pack_file_atomic(&fixture_bytes(), &path).expect("written");
    assert_eq!(read_pack_file(&path).expect("read back"), fixture_pack());
    // Overwriting replaces the file and leaves no temporary behind.
    write_pack_file_atomic(&fixture_bytes(), &path).expect("written again");
    let names: Vec<_> = std::fs::read_dir(directory.path())
        .expect("listed")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["site-events.segpack"]);
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let error = read_pack_file("/nonexistent/crm.segpack").expect_err("no such file");
    assert!(matches!(error, PackError::Io { .. }));
    assert!(error.to_string().contains("/nonexistent/crm.segpack"));
}

// ---------------------------------------------------------------------------
// Layout walker, for the damage tests.

struct SegmentLayout {
    id: u32,
    table_entry: usize,
    bitmap: std::ops::Range<usize>,
    recency: Option<std::ops::Range<usize>>,
}

struct Layout {
    header_end: usize,
    dictionary: std::ops::Range<usize>,
    table: std::ops::Range<usize>,
    segments: Vec<SegmentLayout>,
    footer: usize,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn layout(bytes: &[u8]) -> Layout {
    let mut position = 12 + 24;
    let user_count = u32_at(bytes, 20) as usize;
    let segment_count = u32_at(bytes, 24) as usize;
    position += 1 + bytes[position] as usize; // name
    position += 1 + bytes[position] as usize; // version
    let header_end = position;
    position += 8;
    let dictionary = position..position + user_count * 8;
    position = dictionary.end + 8;
    let table_start = position;
    let mut entries = Vec::new();
    for _ in 0..segment_count {
        let entry = position;
        position += 17;
        position += 1 + bytes[position] as usize; // name
        position += 1 + bytes[position] as usize; // kind
        entries.push(entry);
    }
    let table = table_start..position;
    position += 8;
    let mut segments = Vec::new();
    for entry in entries {
        let id = u32_at(bytes, entry);
        let member_count = u32_at(bytes, entry + 8) as usize;
        let bitmap_bytes = u32_at(bytes, entry + 12) as usize;
        let bitmap = position..position + bitmap_bytes;
        position = bitmap.end + 8;
        let recency = if bytes[entry + 16] & 1 == 1 {
            let recency = position..position + member_count * 2;
            position = recency.end + 8;
            Some(recency)
        } else {
            None
        };
        segments.push(SegmentLayout {
            id,
            table_entry: entry,
            bitmap,
            recency,
        });
    }
    assert_eq!(
        position + 24,
        bytes.len(),
        "the layout walk ends at the footer"
    );
    Layout {
        header_end,
        dictionary,
        table,
        segments,
        footer: position,
    }
}

fn put_checksum(bytes: &mut [u8], section: std::ops::Range<usize>) {
    let value = xxh3_64(&bytes[section.clone()]);
    bytes[section.end..section.end + 8].copy_from_slice(&value.to_le_bytes());
}

/// Recomputes every checksum after an edit that kept all lengths, so only
/// the edit itself is wrong.
fn recompute_checksums(bytes: &mut [u8], layout: &Layout) {
    put_checksum(bytes, 0..layout.header_end);
    put_checksum(bytes, layout.dictionary.clone());
    put_checksum(bytes, layout.table.clone());
    for segment in &layout.segments {
        put_checksum(bytes, segment.bitmap.clone());
        if let Some(recency) = &segment.recency {
            put_checksum(bytes, recency.clone());
        }
    }
    recompute_header_and_file_checksums(bytes, layout.header_end);
}

fn recompute_header_and_file_checksums(bytes: &mut [u8], header_end: usize) {
    put_checksum(bytes, 0..header_end);
    let file_end = bytes.len() - 8;
    put_checksum(bytes, 0..file_end);
}

fn flipped(bytes: &[u8], offset: usize) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    damaged[offset] ^= 0x40;
    damaged
}

fn assert_checksum_mismatch(bytes: &[u8], expected_section: PackSection) {
    match read_pack(bytes) {
        Err(PackError::ChecksumMismatch { section, .. }) => assert_eq!(section, expected_section),
        other => panic!("expected a checksum mismatch in {expected_section}, got {other:?}"),
    }
}

fn malformed_message(bytes: &[u8]) -> String {
    match read_pack(bytes) {
        Err(PackError::Malformed { what }) => what,
        other => panic!("expected a malformed pack, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Damage.

#[test]
fn the_layout_walker_agrees_with_the_reader() {
    let bytes = fixture_bytes();
    let mut copy = bytes.clone();
    recompute_checksums(&mut copy, &layout(&bytes));
    assert_eq!(copy, bytes);
}

#[test]
fn every_truncation_is_refused_as_truncated() {
    let bytes = fixture_bytes();
    for cut in 0..bytes.len() {
        match read_pack(&bytes[..cut]) {
            Err(PackError::Truncated { offset, .. }) => assert!(offset <= cut as u64),
            other => panic!("cut at {cut}: expected truncated, got {other:?}"),
        }
    }
}

#[test]
fn a_flipped_byte_names_its_section() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);
    let cart = &layout.segments[0];
    assert_eq!(cart.id, 7);

    assert_checksum_mismatch(&flipped(&bytes, 13), PackSection::Header);
    assert_checksum_mismatch(&flipped(&bytes, 40), PackSection::Header);
    assert_checksum_mismatch(
        &flipped(&bytes, layout.dictionary.start + 17),
        PackSection::UserDictionary,
    );
    // The stored checksum itself.
    assert_checksum_mismatch(
        &flipped(&bytes, layout.dictionary.end + 3),
        PackSection::UserDictionary,
    );
    assert_checksum_mismatch(
        &flipped(&bytes, cart.table_entry + 4),
        PackSection::SegmentTable,
    );
    assert_checksum_mismatch(
        &flipped(&bytes, cart.bitmap.start + 9),
        PackSection::Bitmap { segment_id: 7 },
    );
    let recency = cart.recency.clone().expect("segment 7 has recency");
    assert_checksum_mismatch(
        &flipped(&bytes, recency.start + 4),
        PackSection::Recency { segment_id: 7 },
    );
    for offset in layout.footer..bytes.len() {
        assert_checksum_mismatch(&flipped(&bytes, offset), PackSection::Footer);
    }
}

#[test]
fn wrong_magic_is_refused() {
    let bytes = fixture_bytes();
    for offset in 0..8 {
        assert!(matches!(
            read_pack(&flipped(&bytes, offset)),
            Err(PackError::BadMagic)
        ));
    }
    assert!(matches!(
        read_pack(b"PK\x03\x04 a zip file"),
        Err(PackError::BadMagic)
    ));
    assert!(matches!(read_header(b"GIF89a"), Err(PackError::BadMagic)));
}

#[test]
fn a_future_format_version_is_refused_by_the_version_check() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);
    let mut future = bytes.clone();
    future[8..12].copy_from_slice(&3u32.to_le_bytes());
    recompute_header_and_file_checksums(&mut future, layout.header_end);
    let error = read_pack(&future).expect_err("version 3 is refused");
    assert!(matches!(
        error,
        PackError::UnsupportedVersion {
            found: 3,
            supported: 2
        }
    ));
    assert_eq!(
        error.to_string(),
        "unsupported pack format version 3 (this build reads versions 1 to 2)"
    );
    assert!(matches!(
        read_header(&future),
        Err(PackError::UnsupportedVersion { found: 3, .. })
    ));
}

#[test]
fn hostile_counts_with_valid_checksums_are_clean_errors() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);

    // Four billion users: the dictionary would be 34 GB.
    let mut huge_users = bytes.clone();
    huge_users[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    recompute_header_and_file_checksums(&mut huge_users, layout.header_end);
    match read_pack(&huge_users) {
        Err(PackError::Truncated {
            what: PackSection::UserDictionary,
            needed_bytes,
            ..
        }) => assert_eq!(needed_bytes, u64::from(u32::MAX) * 8),
        other => panic!("expected a truncated dictionary, got {other:?}"),
    }

    // The most segments allowed, but no room for their table.
    let mut many_segments = bytes.clone();
    many_segments[24..28].copy_from_slice(&65_535u32.to_le_bytes());
    recompute_header_and_file_checksums(&mut many_segments, layout.header_end);
    assert!(matches!(
        read_pack(&many_segments),
        Err(PackError::Truncated {
            what: PackSection::SegmentTable,
            ..
        })
    ));

    // More segments than the format allows.
    let mut too_many_segments = bytes.clone();
    too_many_segments[24..28].copy_from_slice(&65_536u32.to_le_bytes());
    recompute_header_and_file_checksums(&mut too_many_segments, layout.header_end);
    assert!(matches!(
        read_pack(&too_many_segments),
        Err(PackError::TooLarge { limit: 65_535, .. })
    ));
    assert!(read_header(&too_many_segments).is_err());

    // A bitmap length of 4 GB.
    let entry = layout.segments[0].table_entry;
    let mut huge_bitmap = bytes.clone();
    huge_bitmap[entry + 12..entry + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    recompute_checksums(&mut huge_bitmap, &layout);
    assert!(matches!(
        read_pack(&huge_bitmap),
        Err(PackError::Truncated {
            what: PackSection::Bitmap { segment_id: 7 },
            ..
        })
    ));

    // A member count above the user count.
    let mut huge_members = bytes.clone();
    huge_members[entry + 8..entry + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    recompute_checksums(&mut huge_members, &layout);
    assert!(malformed_message(&huge_members).contains("members"));
}

#[test]
fn broken_invariants_with_valid_checksums_are_malformed() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);

    let mut unsorted = bytes.clone();
    let first = layout.dictionary.start;
    unsorted.copy_within(first..first + 8, first + 8);
    recompute_checksums(&mut unsorted, &layout);
    assert!(malformed_message(&unsorted).contains("not strictly ascending"));

    let mut duplicate_segment_ids = bytes.clone();
    let second_entry = layout.segments[1].table_entry;
    duplicate_segment_ids[second_entry..second_entry + 4].copy_from_slice(&7u32.to_le_bytes());
    recompute_checksums(&mut duplicate_segment_ids, &layout);
    assert!(malformed_message(&duplicate_segment_ids).contains("segment ids"));

    // Segment 42's array container holds ordinals [1, 3]: make 3 into 9, past
    // the 5 users.
    let mut ordinal_out_of_range = bytes.clone();
    let last_value = layout.segments[1].bitmap.end - 2;
    ordinal_out_of_range[last_value..last_value + 2].copy_from_slice(&9u16.to_le_bytes());
    recompute_checksums(&mut ordinal_out_of_range, &layout);
    assert!(malformed_message(&ordinal_out_of_range).contains("member ordinal 9"));

    // Unsorted values inside a container: roaring's validation refuses them.
    let mut unsorted_container = bytes.clone();
    unsorted_container[last_value..last_value + 2].copy_from_slice(&0u16.to_le_bytes());
    recompute_checksums(&mut unsorted_container, &layout);
    assert!(malformed_message(&unsorted_container).contains("segment 42 bitmap"));

    // Cardinality differs from the table (header total kept consistent).
    let mut wrong_cardinality = bytes.clone();
    let entry = layout.segments[1].table_entry;
    wrong_cardinality[entry + 8..entry + 12].copy_from_slice(&3u32.to_le_bytes());
    wrong_cardinality[28..36].copy_from_slice(&6u64.to_le_bytes());
    recompute_checksums(&mut wrong_cardinality, &layout);
    assert!(malformed_message(&wrong_cardinality).contains("segment 42 bitmap has 2 members"));

    // The header's membership total disagrees with the table.
    let mut wrong_total = bytes.clone();
    wrong_total[28..36].copy_from_slice(&6u64.to_le_bytes());
    recompute_checksums(&mut wrong_total, &layout);
    assert!(malformed_message(&wrong_total).contains("memberships"));

    let mut unknown_flag = bytes.clone();
    unknown_flag[layout.segments[1].table_entry + 16] = 0b10;
    recompute_checksums(&mut unknown_flag, &layout);
    assert!(malformed_message(&unknown_flag).contains("flags"));

    let mut bad_utf8 = bytes.clone();
    bad_utf8[layout.segments[0].table_entry + 18] = 0xff;
    recompute_checksums(&mut bad_utf8, &layout);
    assert!(malformed_message(&bad_utf8).contains("UTF-8"));

    let mut unsafe_name = bytes.clone();
    unsafe_name[37] = b'/';
    recompute_checksums(&mut unsafe_name, &layout);
    assert!(malformed_message(&unsafe_name).contains("pack name"));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = fixture_bytes();
    bytes.extend_from_slice(b"\0");
    assert!(malformed_message(&bytes).contains("trailing"));
}

#[test]
fn error_messages_name_section_and_offset() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);
    let error = read_pack(&flipped(&bytes, layout.segments[0].bitmap.start)).expect_err("damaged");
    assert_eq!(
        error.to_string(),
        format!(
            "checksum mismatch in segment 7 bitmap at offset {}",
            layout.segments[0].bitmap.start
        )
    );
    let error = read_pack(&bytes[..layout.dictionary.start + 3]).expect_err("cut");
    assert_eq!(
        error.to_string(),
        format!(
            "pack truncated: user dictionary at offset {} needs 40 bytes, 3 remain",
            layout.dictionary.start
        )
    );
}
