//! Pack file format v2: a committed fixture pins the bytes; every kind of
//! damage, and every hostile structure behind valid checksums, is refused
//! by the checked load (`PackView::open`, what the server runs) with the
//! error that names it.
//!
//! The layout walker below is a second, independent reading of the layout
//! table in `segd::pack::format_v2`, so the documentation is checked too.

use std::path::PathBuf;
use std::sync::Arc;

use roaring::RoaringBitmap;
use segd::pack::{
    FORMAT_VERSION_V2, Pack, PackBytes, PackError, PackSection, PackView, Segment, ShardSpec,
    read_header, read_pack, write_pack, write_pack_v1, write_pack_v2_shard,
};
use segd::store::LoadedPack;
use xxhash_rust::xxh3::xxh3_64;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.v2.segpack")
}

fn v1_fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.segpack")
}

/// What both fixtures hold (the same pack as `pack_format.rs`' v1 fixture).
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
    std::fs::read(fixture_path()).expect("tests/fixtures/small.v2.segpack is committed")
}

/// Regenerates the fixture. Run only on purpose, when the format version changes:
/// `cargo test --test pack_format_v2 -- --ignored regenerate_fixture`.
#[test]
#[ignore]
fn regenerate_fixture() {
    let bytes = write_pack(&fixture_pack()).expect("the fixture pack is valid");
    std::fs::write(fixture_path(), bytes).expect("fixture written");
}

fn open(bytes: &[u8]) -> Result<PackView, PackError> {
    PackView::open(Arc::new(PackBytes::copy_from(bytes)))
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
fn fixture_reads_with_exact_contents() {
    let bytes = fixture_bytes();
    assert_eq!(read_pack(&bytes).expect("reads"), fixture_pack());
    let header = read_header(&bytes[..200]).expect("the header reads alone");
    assert_eq!(header.format_version, FORMAT_VERSION_V2);
    assert_eq!(header.name, "site-events");
    assert_eq!(header.version, "2024-06-01.1");
    assert_eq!(header.built_at_unix_seconds, 1_717_200_000);
    assert_eq!(
        (
            header.user_count,
            header.segment_count,
            header.membership_count
        ),
        (5, 3, 5)
    );
    assert_eq!((header.shard_index, header.shard_count), (0, 1));
}

#[test]
fn the_shard_field_round_trips() {
    let shard = ShardSpec { index: 2, count: 4 };
    let bytes = write_pack_v2_shard(&fixture_pack(), shard).expect("writes");
    let header = read_header(&bytes).expect("reads");
    assert_eq!((header.shard_index, header.shard_count), (2, 4));
    assert!(write_pack_v2_shard(&fixture_pack(), ShardSpec { index: 4, count: 4 }).is_err());
}

/// The v1 and v2 fixtures are the same pack: a server answers alike from
/// either, the v2 one served in place from a mapped file.
#[test]
fn v1_and_v2_fixtures_serve_the_same_answers() {
    let v1 = Arc::new(PackBytes::map_file(&v1_fixture_path()).expect("maps"));
    let v2 = Arc::new(PackBytes::map_file(&fixture_path()).expect("maps"));
    assert!(v2.is_mapped());
    let threads = segd::store::BuildThreads::One;
    let from_v1 = LoadedPack::from_bytes(v1, 0, threads).expect("v1 loads");
    let from_v2 = LoadedPack::from_bytes(v2, 0, threads).expect("v2 loads");
    assert_eq!(from_v1.segments, from_v2.segments);
    assert_eq!(from_v1.users(), from_v2.users());
    assert_eq!(from_v1.memberships(), from_v2.memberships());
    for fingerprint in fixture_pack()
        .user_fingerprints
        .iter()
        .chain(&[0, 5, u64::MAX])
    {
        let ordinal = from_v1.ordinal(*fingerprint);
        assert_eq!(ordinal, from_v2.ordinal(*fingerprint));
        if let Some(ordinal) = ordinal {
            assert_eq!(from_v1.entries_of(ordinal), from_v2.entries_of(ordinal));
        }
    }
    assert_eq!(from_v2.heap_bytes(), 0, "nothing copied to the heap");
    let v1_pack = read_pack(&write_pack_v1(&fixture_pack()).expect("writes")).expect("reads");
    assert_eq!(v1_pack, fixture_pack());
}

// ---------------------------------------------------------------------------
// An independent reading of the layout.

struct Layout {
    header_bytes: usize,
    table_start: usize,
    /// (offset, bytes) of the six sections in file order.
    sections: Vec<(usize, usize)>,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn layout(bytes: &[u8]) -> Layout {
    assert_eq!(&bytes[..8], b"SEGDPACK");
    assert_eq!(u32_at(bytes, 8), 2);
    let header_bytes = u32_at(bytes, 12) as usize;
    assert_eq!(header_bytes % 8, 0);
    let table_start = header_bytes + 8;
    let sections = (0..6)
        .map(|index| {
            let entry = table_start + index * 24;
            (
                u64_at(bytes, entry) as usize,
                u64_at(bytes, entry + 8) as usize,
            )
        })
        .collect::<Vec<_>>();
    let mut expected_offset = table_start + 6 * 24 + 8;
    for &(offset, length) in &sections {
        assert_eq!(offset, expected_offset.next_multiple_of(8));
        expected_offset = offset + length;
    }
    assert_eq!(expected_offset.next_multiple_of(8) + 24, bytes.len());
    Layout {
        header_bytes,
        table_start,
        sections,
    }
}

const FINGERPRINTS: usize = 0;
const DIRECTORY: usize = 1;
const STARTS: usize = 2;
const ENTRIES: usize = 3;
const TABLE: usize = 4;

/// Recomputes every checksum after an edit, so only the edit itself is wrong.
fn reseal(bytes: &mut [u8]) {
    let layout = layout(bytes);
    let header_checksum = xxh3_64(&bytes[..layout.header_bytes]);
    bytes[layout.header_bytes..layout.table_start].copy_from_slice(&header_checksum.to_le_bytes());
    for (index, &(offset, length)) in layout.sections.iter().enumerate() {
        let value = xxh3_64(&bytes[offset..offset + length]);
        let at = layout.table_start + index * 24 + 16;
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    let table_end = layout.table_start + 6 * 24;
    let table_checksum = xxh3_64(&bytes[layout.table_start..table_end]);
    bytes[table_end..table_end + 8].copy_from_slice(&table_checksum.to_le_bytes());
    let file_end = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..file_end]);
    bytes[file_end..].copy_from_slice(&file_checksum.to_le_bytes());
}

fn malformed(bytes: &[u8]) -> String {
    match open(bytes) {
        Err(PackError::Malformed { what }) => what,
        other => panic!("expected a malformed pack, got {other:?}"),
    }
}

/// The fixture with one edit, resealed.
fn edited(edit: impl FnOnce(&mut Vec<u8>, &Layout)) -> Vec<u8> {
    let mut bytes = fixture_bytes();
    let layout = layout(&bytes);
    edit(&mut bytes, &layout);
    reseal(&mut bytes);
    bytes
}

#[test]
fn the_layout_walker_agrees_with_the_writer() {
    let bytes = fixture_bytes();
    let layout = layout(&bytes);
    assert_eq!(layout.sections[FINGERPRINTS].1, 5 * 8);
    assert_eq!(layout.sections[DIRECTORY].1, 4 * ((1 << 1) + 1));
    assert_eq!(layout.sections[STARTS].1, 4 * 6);
    assert_eq!(layout.sections[ENTRIES].1, 4 * 5);
    // Resealing an unedited file changes nothing.
    let mut resealed = bytes.clone();
    reseal(&mut resealed);
    assert_eq!(resealed, bytes);
}

// ---------------------------------------------------------------------------
// Damage.

#[test]
fn every_truncation_is_refused() {
    let bytes = fixture_bytes();
    for cut in 0..bytes.len() {
        assert!(open(&bytes[..cut]).is_err(), "cut at {cut}");
        assert!(read_pack(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut extended = bytes.clone();
    extended.extend_from_slice(&[0; 8]);
    assert!(open(&extended).is_err());
}

#[test]
fn every_flipped_byte_is_refused_and_sections_are_named() {
    let bytes = fixture_bytes();
    for offset in 12..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x40;
        assert!(open(&damaged).is_err(), "flip at {offset}");
    }
    let layout = layout(&bytes);
    let names = [
        (
            layout.sections[FINGERPRINTS].0 + 3,
            PackSection::UserDictionary,
        ),
        (layout.sections[DIRECTORY].0, PackSection::RadixDirectory),
        (layout.sections[STARTS].0 + 4, PackSection::IndexStarts),
        (layout.sections[ENTRIES].0 + 2, PackSection::IndexEntries),
        (layout.sections[TABLE].0, PackSection::SegmentTable),
        (layout.sections[5].0, PackSection::Bitmaps),
        (20, PackSection::Header),
        (layout.table_start + 1, PackSection::SectionTable),
        (bytes.len() - 12, PackSection::Footer),
    ];
    for (offset, expected) in names {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x01;
        match open(&damaged) {
            Err(PackError::ChecksumMismatch { section, .. }) => {
                assert_eq!(section, expected, "flip at {offset}")
            }
            other => panic!("flip at {offset}: expected a mismatch in {expected}, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Hostile structure behind valid checksums.

#[test]
fn an_out_of_range_slot_is_refused() {
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[ENTRIES].0, 3));
    assert!(malformed(&bytes).contains("slot"), "{}", malformed(&bytes));
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[ENTRIES].0, 0xffff));
    assert!(open(&bytes).is_err());
}

#[test]
fn index_starts_must_be_monotone_and_end_at_the_memberships() {
    // User 0 holds entry 0; claim it holds 4, and user 1 none.
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[STARTS].0 + 4, 4));
    assert!(
        malformed(&bytes).contains("decrease"),
        "{}",
        malformed(&bytes)
    );
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[STARTS].0 + 20, 4));
    assert!(malformed(&bytes).contains("end"), "{}", malformed(&bytes));
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[STARTS].0, 1));
    assert!(malformed(&bytes).contains("begin"), "{}", malformed(&bytes));
}

#[test]
fn entries_out_of_slot_order_are_refused() {
    // A pack where user 0 holds two segments, then its second slot
    // rewritten to equal the first.
    let mut pack = fixture_pack();
    pack.segments[1].members.insert(0);
    let mut bytes = write_pack(&pack).expect("writes");
    let layout = layout(&bytes);
    // User 0's entries are the first two: slots 0 then 1. Make both slot 0.
    let second = layout.sections[ENTRIES].0 + 4;
    bytes[second..second + 2].copy_from_slice(&0u16.to_le_bytes());
    reseal(&mut bytes);
    assert!(
        malformed(&bytes).contains("ascending slot order"),
        "{}",
        malformed(&bytes)
    );
}

#[test]
fn member_counts_must_match_the_index() {
    // User 2's one entry (slot 0, no hours) moves to slot 1: counts become 2/3.
    let bytes = edited(|bytes, layout| {
        bytes[layout.sections[ENTRIES].0 + 8..][..2].copy_from_slice(&1u16.to_le_bytes())
    });
    assert!(
        malformed(&bytes).contains("in the index"),
        "{}",
        malformed(&bytes)
    );
}

#[test]
fn recency_only_where_the_segment_has_it() {
    // User 1's entry is slot 1 (converters, no recency); give it 5 hours.
    let bytes = edited(|bytes, layout| {
        let entry = layout.sections[ENTRIES].0 + 4;
        assert_eq!(u32_at(bytes, entry) & 0xffff, 1);
        bytes[entry + 2..entry + 4].copy_from_slice(&5u16.to_le_bytes());
    });
    assert!(
        malformed(&bytes).contains("recency"),
        "{}",
        malformed(&bytes)
    );
}

#[test]
fn fingerprints_and_directory_are_checked() {
    let bytes = edited(|bytes, layout| {
        let second = layout.sections[FINGERPRINTS].0 + 8;
        bytes[second..second + 8].copy_from_slice(&0x11u64.to_le_bytes());
    });
    assert!(
        malformed(&bytes).contains("ascending"),
        "{}",
        malformed(&bytes)
    );
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[DIRECTORY].0 + 4, 2));
    assert!(
        malformed(&bytes).contains("radix directory"),
        "{}",
        malformed(&bytes)
    );
}

#[test]
fn header_fields_are_checked() {
    // Shard 1 of 1.
    let bytes = edited(|bytes, _| put_u32(bytes, 40, 1));
    assert!(malformed(&bytes).contains("shard"), "{}", malformed(&bytes));
    // Radix bits other than the user count implies.
    let bytes = edited(|bytes, _| bytes[48] = 5);
    assert!(malformed(&bytes).contains("radix"), "{}", malformed(&bytes));
    // Reserved bytes.
    let bytes = edited(|bytes, _| bytes[50] = 1);
    assert!(
        malformed(&bytes).contains("reserved"),
        "{}",
        malformed(&bytes)
    );
    // A user count the sections do not hold.
    let bytes = edited(|bytes, _| put_u32(bytes, 24, 1_000_000));
    assert!(open(&bytes).is_err());
    // More memberships than u32 index starts can address.
    let bytes = edited(|bytes, _| bytes[32..40].copy_from_slice(&(1u64 << 33).to_le_bytes()));
    assert!(matches!(open(&bytes), Err(PackError::TooLarge { .. })));
    // A header length that is not a multiple of 8 (the walker would refuse
    // it, so no reseal: the header length is checked before any checksum).
    let mut bytes = fixture_bytes();
    put_u32(&mut bytes, 12, 81);
    assert!(
        malformed(&bytes).contains("multiple of 8"),
        "{}",
        malformed(&bytes)
    );
}

#[test]
fn section_offsets_must_follow_the_layout() {
    let mut bytes = fixture_bytes();
    let layout = layout(&bytes);
    let entry = layout.table_start + TABLE * 24;
    let moved = u64_at(&bytes, entry) + 8;
    bytes[entry..entry + 8].copy_from_slice(&moved.to_le_bytes());
    // Reseal by hand: the walker would refuse the moved section.
    let table_end = layout.table_start + 6 * 24;
    let table_checksum = xxh3_64(&bytes[layout.table_start..table_end]);
    bytes[table_end..table_end + 8].copy_from_slice(&table_checksum.to_le_bytes());
    let file_end = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..file_end]);
    bytes[file_end..].copy_from_slice(&file_checksum.to_le_bytes());
    assert!(
        malformed(&bytes).contains("layout puts it"),
        "{}",
        malformed(&bytes)
    );
}

/// A checked load does not decode bitmaps; a full read refuses bitmaps that
/// disagree with the index.
#[test]
fn bitmaps_that_disagree_with_the_index_are_refused_by_a_full_read() {
    let mut pack = fixture_pack();
    let honest = write_pack(&pack).expect("writes");
    pack.segments[1].members = [1, 4].into_iter().collect();
    let liar = write_pack(&pack).expect("writes");
    let honest_layout = layout(&honest);
    let liar_layout = layout(&liar);
    // Graft the liar's bitmaps (same sizes) onto the honest index.
    let mut grafted = honest.clone();
    let (offset, length) = honest_layout.sections[5];
    assert_eq!(length, liar_layout.sections[5].1);
    grafted[offset..offset + length].copy_from_slice(&liar[liar_layout.sections[5].0..][..length]);
    reseal(&mut grafted);
    assert!(
        open(&grafted).is_ok(),
        "the checked load trusts the bitmaps"
    );
    match read_pack(&grafted) {
        Err(PackError::Malformed { what }) => assert!(what.contains("members"), "{what}"),
        other => panic!("expected a malformed pack, got {other:?}"),
    }
}

#[test]
fn control_characters_in_strings_are_refused() {
    // Strings are shown in logs and metric labels: the one rule of
    // `pack::names`, as for format 1 (a v2 segment name or kind escaped it).
    for (text, what) in [
        ("2024-06-01.1", "pack version"),
        ("cart-abandoners", "segment name"),
        ("retargeting", "segment kind"),
    ] {
        let bytes = edited(|bytes, _| {
            let at = bytes
                .windows(text.len())
                .position(|window| window == text.as_bytes())
                .expect("the string is in the fixture");
            bytes[at + 1] = 0x1b;
        });
        let error = open(&bytes).expect_err("refused").to_string();
        assert!(
            error.contains(what) && error.contains("control character"),
            "{what}: {error}"
        );
    }
}
