//! Pack file format v2: committed fixtures pin the bytes (one in the 4-byte
//! entry layout every early v2 file has, one in the narrow layout the writer
//! picks now); every kind of damage, and every hostile structure behind
//! valid checksums, is refused by the checked load (`PackView::open`, what
//! the server runs) with the error that names it, in every entry layout.
//!
//! The layout walker below is a second, independent reading of the layout
//! table in `segd::pack::format_v2`, so the documentation is checked too.

use std::path::PathBuf;
use std::sync::Arc;

use roaring::RoaringBitmap;
use segd::pack::{
    EntryLayout, FORMAT_VERSION_V2, Pack, PackBytes, PackError, PackSection, PackView, Segment,
    ShardSpec, read_header, read_pack, write_pack, write_pack_v1, write_pack_v2_layout,
    write_pack_v2_shard,
};
use segd::store::LoadedPack;
use xxhash_rust::xxh3::xxh3_64;

/// Written before the entry layout bytes existed (header bytes 49-50 zero:
/// 4-byte entries, `slot: u16, hours_ago: u16`); never regenerated.
fn wide_fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.v2.segpack")
}

/// What `write_pack` writes today: 1-byte entries (3 segments, 48 hours).
fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.v2-narrow.segpack")
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
    std::fs::read(fixture_path()).expect("tests/fixtures/small.v2-narrow.segpack is committed")
}

fn wide_fixture_bytes() -> Vec<u8> {
    std::fs::read(wide_fixture_path()).expect("tests/fixtures/small.v2.segpack is committed")
}

/// The fixture pack in every entry layout the tests edit: both fixtures
/// and a 3-byte layout (12 slot bits, as for 1,000 segments over 90 days).
fn every_layout() -> Vec<(&'static str, Vec<u8>)> {
    let three_bytes = EntryLayout::new(3, 12).expect("a layout");
    vec![
        ("wide fixture", wide_fixture_bytes()),
        ("narrow fixture", fixture_bytes()),
        (
            "3-byte entries",
            write_pack_v2_layout(&fixture_pack(), ShardSpec::UNSHARDED, three_bytes)
                .expect("writes"),
        ),
    ]
}

/// Regenerates the narrow fixture (the wide one is never rewritten). Run only
/// on purpose, when the format changes:
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
    assert_eq!(
        (written[49], written[50]),
        (1, 2),
        "1-byte entries, 2 slot bits"
    );
}

/// In the 4-byte layout the writer still writes exactly what the first v2
/// writer did, layout bytes 0 included.
#[test]
fn the_wide_layout_is_written_as_before() {
    let written = write_pack_v2_layout(&fixture_pack(), ShardSpec::UNSHARDED, EntryLayout::WIDE)
        .expect("writes");
    assert_eq!(written, wide_fixture_bytes());
    assert_eq!(&written[49..56], &[0; 7]);
    let too_narrow = EntryLayout::new(1, 1).expect("a layout");
    assert!(write_pack_v2_layout(&fixture_pack(), ShardSpec::UNSHARDED, too_narrow).is_err());
}

#[test]
fn fixture_reads_with_exact_contents() {
    for (what, bytes) in every_layout() {
        assert_eq!(read_pack(&bytes).expect("reads"), fixture_pack(), "{what}");
    }
    let bytes = fixture_bytes();
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
    let threads = segd::store::BuildThreads::One;
    let v1 = Arc::new(PackBytes::map_file(&v1_fixture_path()).expect("maps"));
    let from_v1 = LoadedPack::from_bytes(v1, 0, threads).expect("v1 loads");
    for path in [wide_fixture_path(), fixture_path()] {
        let v2 = Arc::new(PackBytes::map_file(&path).expect("maps"));
        assert!(v2.is_mapped());
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
                assert_eq!(
                    from_v1.entries_of(ordinal).to_vec(),
                    from_v2.entries_of(ordinal).to_vec()
                );
                for slot in 0..4 {
                    assert_eq!(
                        from_v1.entry(ordinal, slot),
                        from_v2.entry(ordinal, slot),
                        "{path:?}"
                    );
                }
            }
        }
        assert_eq!(from_v2.heap_bytes(), 0, "nothing copied to the heap");
    }
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
    /// Header bytes 49 and 50, 0 and 0 read as 4 and 16.
    entry_bytes: usize,
    slot_bits: u32,
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
    let (entry_bytes, slot_bits) = match (bytes[49], bytes[50]) {
        (0, 0) => (4, 16),
        (entry_bytes, slot_bits) => (entry_bytes as usize, u32::from(slot_bits)),
    };
    Layout {
        header_bytes,
        table_start,
        sections,
        entry_bytes,
        slot_bits,
    }
}

/// Entry `index` as (slot, hours_ago): an `entry_bytes` little-endian
/// integer, the slot in its low `slot_bits` bits.
fn entry_at(bytes: &[u8], layout: &Layout, index: usize) -> (u32, u32) {
    let at = layout.sections[ENTRIES].0 + index * layout.entry_bytes;
    let mut word = [0u8; 4];
    word[..layout.entry_bytes].copy_from_slice(&bytes[at..at + layout.entry_bytes]);
    let word = u32::from_le_bytes(word);
    let slot_mask = ((1u64 << layout.slot_bits) - 1) as u32;
    (word & slot_mask, word >> layout.slot_bits)
}

fn put_entry(bytes: &mut [u8], layout: &Layout, index: usize, slot: u32, hours_ago: u32) {
    assert!(u64::from(slot) < 1 << layout.slot_bits, "slot {slot} fits");
    let word = slot | (hours_ago << layout.slot_bits);
    let at = layout.sections[ENTRIES].0 + index * layout.entry_bytes;
    bytes[at..at + layout.entry_bytes].copy_from_slice(&word.to_le_bytes()[..layout.entry_bytes]);
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

/// The wide fixture with one edit, resealed.
fn edited(edit: impl FnOnce(&mut Vec<u8>, &Layout)) -> Vec<u8> {
    edited_from(wide_fixture_bytes(), edit)
}

/// `bytes` with one edit, resealed.
fn edited_from(mut bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>, &Layout)) -> Vec<u8> {
    let layout = layout(&bytes);
    edit(&mut bytes, &layout);
    reseal(&mut bytes);
    bytes
}

#[test]
fn the_layout_walker_agrees_with_the_writer() {
    let expected_entries = [
        ("wide fixture", 4, 16),
        ("narrow fixture", 1, 2),
        ("3-byte entries", 3, 12),
    ];
    for ((what, bytes), (named, entry_bytes, slot_bits)) in
        every_layout().into_iter().zip(expected_entries)
    {
        assert_eq!(what, named);
        let layout = layout(&bytes);
        assert_eq!(layout.sections[FINGERPRINTS].1, 5 * 8);
        assert_eq!(layout.sections[DIRECTORY].1, 4 * ((1 << 1) + 1));
        assert_eq!(layout.sections[STARTS].1, 4 * 6);
        assert_eq!(
            (layout.entry_bytes, layout.slot_bits),
            (entry_bytes, slot_bits),
            "{what}"
        );
        assert_eq!(layout.sections[ENTRIES].1, entry_bytes * 5, "{what}");
        // User by user (starts 0, 1, 2, 3, 4, 5), the pack's memberships.
        let entries: Vec<(u32, u32)> = (0..5)
            .map(|index| entry_at(&bytes, &layout, index))
            .collect();
        assert_eq!(entries, [(0, 1), (1, 0), (0, 0), (1, 0), (0, 48)], "{what}");
        // Resealing an unedited file changes nothing.
        let mut resealed = bytes.clone();
        reseal(&mut resealed);
        assert_eq!(resealed, bytes);
    }
}

// ---------------------------------------------------------------------------
// Damage.

#[test]
fn every_truncation_is_refused() {
    for (what, bytes) in every_layout() {
        for cut in 0..bytes.len() {
            assert!(open(&bytes[..cut]).is_err(), "{what}: cut at {cut}");
            assert!(read_pack(&bytes[..cut]).is_err(), "{what}: cut at {cut}");
        }
        let mut extended = bytes.clone();
        extended.extend_from_slice(&[0; 8]);
        assert!(open(&extended).is_err());
    }
}

#[test]
fn every_flipped_byte_is_refused_and_sections_are_named() {
    for (_, bytes) in every_layout() {
        flipped_bytes_are_refused_and_named(bytes);
    }
}

fn flipped_bytes_are_refused_and_named(bytes: Vec<u8>) {
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

/// Asserts the checked load refuses `bytes` with a message containing `needle`.
fn refused_with(bytes: &[u8], needle: &str, what: &str) {
    let message = malformed(bytes);
    assert!(message.contains(needle), "{what}: {message}");
}

#[test]
fn an_out_of_range_slot_is_refused() {
    for (what, bytes) in every_layout() {
        // Slot 3 of 3 segments (the narrow fixture's 2 slot bits hold it).
        let bytes = edited_from(bytes, |bytes, layout| put_entry(bytes, layout, 0, 3, 0));
        refused_with(&bytes, "slot 3", what);
    }
    let bytes = edited(|bytes, layout| put_u32(bytes, layout.sections[ENTRIES].0, 0xffff));
    assert!(open(&bytes).is_err());
    // The largest slot 3-byte entries hold, last in its user, past the table.
    let three_bytes = &every_layout()[2].1;
    let bytes = edited_from(three_bytes.clone(), |bytes, layout| {
        put_entry(bytes, layout, 4, 4095, 48)
    });
    refused_with(&bytes, "slot 4095", "3-byte entries");
}

#[test]
fn index_starts_must_be_monotone_and_end_at_the_memberships() {
    for (what, bytes) in every_layout() {
        // User 0 holds entry 0; claim it holds 4, and user 1 none.
        let edit = |at: usize, value: u32| {
            edited_from(bytes.clone(), |bytes, layout| {
                put_u32(bytes, layout.sections[STARTS].0 + at, value)
            })
        };
        refused_with(&edit(4, 4), "decrease", what);
        refused_with(&edit(20, 4), "end", what);
        refused_with(&edit(0, 1), "begin", what);
        // Past the entries: refused, never read.
        refused_with(&edit(8, u32::MAX), "decrease", what);
    }
}

#[test]
fn entries_out_of_slot_order_are_refused() {
    // A pack where user 0 holds two segments, then its second slot
    // rewritten to equal the first.
    let mut pack = fixture_pack();
    pack.segments[1].members.insert(0);
    for layout in [
        EntryLayout::WIDE,
        EntryLayout::new(3, 12).expect("a layout"),
    ] {
        let bytes = write_pack_v2_layout(&pack, ShardSpec::UNSHARDED, layout).expect("writes");
        let narrow = write_pack(&pack).expect("writes");
        for (what, bytes) in [("given layout", bytes), ("narrowest layout", narrow)] {
            // User 0's entries are the first two: slots 0 then 1. Make both
            // slot 0, then swap them (1 then 0).
            let same = edited_from(bytes.clone(), |bytes, layout| {
                assert_eq!(entry_at(bytes, layout, 1), (1, 0));
                put_entry(bytes, layout, 1, 0, 0)
            });
            refused_with(
                &same,
                "user ordinal 0 are not in ascending slot order",
                what,
            );
            let swapped = edited_from(bytes, |bytes, layout| {
                put_entry(bytes, layout, 0, 1, 0);
                put_entry(bytes, layout, 1, 0, 1);
            });
            refused_with(&swapped, "ascending slot order", what);
        }
    }
    // A descent at a user boundary is no disorder: users 1 and 2 hold slots
    // 1 then 0 in the fixture, and it loads.
    for (what, bytes) in every_layout() {
        assert!(open(&bytes).is_ok(), "{what}");
    }
}

#[test]
fn member_counts_must_match_the_index() {
    for (what, bytes) in every_layout() {
        // User 2's one entry (slot 0, no hours) moves to slot 1: counts become 2/3.
        let bytes = edited_from(bytes, |bytes, layout| {
            assert_eq!(entry_at(bytes, layout, 2), (0, 0));
            put_entry(bytes, layout, 2, 1, 0)
        });
        refused_with(&bytes, "in the index", what);
    }
}

#[test]
fn recency_only_where_the_segment_has_it() {
    for (what, bytes) in every_layout() {
        // User 1's entry is slot 1 (converters, no recency); give it 5 hours.
        let bytes = edited_from(bytes, |bytes, layout| {
            assert_eq!(entry_at(bytes, layout, 1), (1, 0));
            put_entry(bytes, layout, 1, 1, 5);
        });
        refused_with(&bytes, "recency", what);
    }
}

/// Header bytes 49-50 are the entry layout; 0, 0 is the 4-byte one.
#[test]
fn the_entry_layout_is_checked_against_the_file() {
    let wide = wide_fixture_bytes();
    let with_layout = |entry_bytes: u8, slot_bits: u8| {
        edited_from(wide.clone(), |bytes, _| {
            bytes[49] = entry_bytes;
            bytes[50] = slot_bits;
        })
    };
    // Written out, the wide layout reads as the zeros do.
    let explicit = open(&with_layout(4, 16)).expect("4 bytes, 16 slot bits");
    assert_eq!(explicit.entry_layout(), EntryLayout::WIDE);
    assert_eq!(explicit.to_pack().expect("reads"), fixture_pack());
    // Layouts that are none: a slot bit count without a width, more than 16
    // bits of hours or of slot, widths past 4.
    for (entry_bytes, slot_bits) in [(0, 16), (0, 1), (4, 15), (3, 7), (2, 17), (5, 16), (1, 9)] {
        refused_with(
            &with_layout(entry_bytes, slot_bits),
            "index entry layout",
            &format!("{entry_bytes} bytes, {slot_bits} bits"),
        );
    }
    // A valid layout the entries section was not written in.
    refused_with(
        &with_layout(3, 12),
        "the header's counts make it 15",
        "3 bytes on 4",
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
    // Reserved bytes (after the entry layout's two).
    let bytes = edited(|bytes, _| bytes[51] = 1);
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

/// A pack big enough that the checked load's vector scan runs over it (the
/// fixtures' 5 entries are all left to the scalar tail): 400 users, 24
/// segments, every third with recency.
fn sizeable_pack() -> Pack {
    let user_count = 400u32;
    let segments = (0..24u32)
        .map(|slot| {
            let members: RoaringBitmap = (0..user_count)
                .filter(|user| (user * 7 + slot * 13) % (slot % 5 + 2) == 0)
                .collect();
            let hours =
                (slot % 3 == 0).then(|| (0..members.len() as u16).map(|n| n % 50).collect());
            Segment {
                id: 10 + slot,
                name: format!("s{slot}"),
                kind: String::new(),
                ttl_seconds: 0,
                members,
                last_seen_hours_ago: hours,
            }
        })
        .collect();
    Pack {
        name: "sizeable".to_string(),
        version: "1".to_string(),
        built_at_unix_seconds: 1_717_200_000,
        user_fingerprints: (1..=u64::from(user_count))
            .map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .collect(),
        segments,
    }
}

/// Where each segment's member count lies in the segment table.
fn member_count_offsets(bytes: &[u8], layout: &Layout) -> Vec<usize> {
    let (mut at, length) = layout.sections[TABLE];
    let end = at + length;
    let mut offsets = Vec::new();
    while at < end {
        offsets.push(at + 8);
        at += 17;
        at += 1 + bytes[at] as usize; // name
        at += 1 + bytes[at] as usize; // kind
    }
    offsets
}

/// The segment table's member counts, rewritten by `change` (which keeps
/// their sum, so the header's membership count still agrees: only the
/// per-slot check can see it), for the sizeable pack in two layouts.
fn with_counts(change: impl Fn(&mut [u32])) -> Vec<(&'static str, Vec<u8>)> {
    let pack = sizeable_pack();
    let layouts = [
        ("narrowest layout", write_pack(&pack).expect("writes")),
        (
            "wide layout",
            write_pack_v2_layout(&pack, ShardSpec::UNSHARDED, EntryLayout::WIDE).expect("writes"),
        ),
    ];
    layouts
        .into_iter()
        .map(|(what, bytes)| {
            assert!(open(&bytes).is_ok(), "{what}: the unedited pack loads");
            let bytes = edited_from(bytes, |bytes, layout| {
                let offsets = member_count_offsets(bytes, layout);
                let mut counts: Vec<u32> = offsets.iter().map(|&at| u32_at(bytes, at)).collect();
                let sum: u64 = counts.iter().map(|&count| u64::from(count)).sum();
                change(&mut counts);
                assert_eq!(
                    counts.iter().map(|&count| u64::from(count)).sum::<u64>(),
                    sum
                );
                for (&at, &count) in offsets.iter().zip(&counts) {
                    put_u32(bytes, at, count);
                }
            });
            (what, bytes)
        })
        .collect()
}

/// The per-slot member counts are checked by a randomized sum at load
/// (`view_check::SlotChecks`); a file that disagrees is refused with the
/// exact count's error, whatever the difference.
#[test]
fn member_counts_off_by_any_amount_or_swapped_are_refused() {
    let pack = sizeable_pack();
    let count = |slot: usize| pack.segments[slot].members.len();
    for shift in [0u32, 1, 3, 5] {
        // Slot 4 gains 2^shift members, slot 9 loses them: the sum holds.
        assert!(count(9) >= 1 << shift && count(4) + (1 << shift) <= 400);
        for (what, bytes) in with_counts(|counts| {
            counts[4] += 1 << shift;
            counts[9] -= 1 << shift;
        }) {
            let expected = format!(
                "segment 14 has {} members in the table and {} in the index",
                count(4) + (1 << shift),
                count(4)
            );
            refused_with(&bytes, &expected, what);
        }
    }
    assert_ne!(count(2), count(3));
    for (what, bytes) in with_counts(|counts| counts.swap(2, 3)) {
        let expected = format!(
            "segment 12 has {} members in the table and {} in the index",
            count(3),
            count(2)
        );
        refused_with(&bytes, &expected, what);
    }
}

#[test]
fn stray_recency_is_refused_in_a_sizeable_pack() {
    let pack = sizeable_pack();
    // Slot 1 has no recency; give its last entry an hours_ago.
    let bytes = write_pack(&pack).expect("writes");
    let bytes = edited_from(bytes, |bytes, layout| {
        let count = u64_at(bytes, 32) as usize;
        let index = (0..count)
            .rev()
            .find(|&index| entry_at(bytes, layout, index).0 == 1)
            .expect("slot 1 has members");
        put_entry(bytes, layout, index, 1, 7);
    });
    refused_with(
        &bytes,
        "last-seen time for a segment without recency",
        "narrowest",
    );
}

/// Each served rule broken in the sizeable pack, where the checked load's
/// vector loops (not only their scalar tails) see the break: refused with
/// the error that names it, in the narrowest and the 4-byte layout.
#[test]
fn every_served_rule_is_refused_in_a_sizeable_pack() {
    let pack = sizeable_pack();
    let layouts = [
        ("narrowest layout", write_pack(&pack).expect("writes")),
        (
            "wide layout",
            write_pack_v2_layout(&pack, ShardSpec::UNSHARDED, EntryLayout::WIDE).expect("writes"),
        ),
    ];
    for (what, bytes) in layouts {
        let layout = layout(&bytes);
        let start_at = |user: usize| u32_at(&bytes, layout.sections[STARTS].0 + 4 * user) as usize;
        let slot_at = |index: usize| entry_at(&bytes, &layout, index).0;
        let fingerprint = |at: usize| layout.sections[FINGERPRINTS].0 + 8 * at;
        let bytes = || bytes.clone();

        let copied = edited_from(bytes(), |bytes, _| {
            let previous = u64_at(bytes, fingerprint(199));
            bytes[fingerprint(200)..fingerprint(201)].copy_from_slice(&previous.to_le_bytes());
        });
        refused_with(&copied, "not strictly ascending at ordinal 200", what);

        for bucket in [50usize, 127] {
            let at = layout.sections[DIRECTORY].0 + 4 * bucket;
            let derived = u32_at(&bytes(), at);
            let moved = edited_from(bytes(), |bytes, _| put_u32(bytes, at, derived + 1));
            let expected = format!(
                "radix directory entry {bucket} is {}, the fingerprints say {derived}",
                derived + 1
            );
            refused_with(&moved, &expected, what);
        }

        let down = edited_from(bytes(), |bytes, layout| {
            put_u32(
                bytes,
                layout.sections[STARTS].0 + 4 * 300,
                start_at(301) as u32 + 1,
            )
        });
        refused_with(&down, "index starts decrease at user ordinal 300", what);

        // A user past the first vector steps with two entries: its second
        // slot made equal to its first.
        let user = (250..400)
            .find(|&user| start_at(user + 1) - start_at(user) >= 2)
            .expect("a user with two entries");
        let first = start_at(user);
        let same = edited_from(bytes(), |bytes, layout| {
            let (_, hours) = entry_at(bytes, layout, first + 1);
            put_entry(bytes, layout, first + 1, slot_at(first), hours)
        });
        let expected = format!("entries of user ordinal {user} are not in ascending slot order");
        refused_with(&same, &expected, what);

        // A user whose first entry is a descent and who has two entries:
        // moved one entry later, the descent falls inside the user before.
        let user = (200..400)
            .find(|&user| {
                let start = start_at(user);
                start_at(user + 1) - start >= 2
                    && start > start_at(user - 1)
                    && slot_at(start) <= slot_at(start - 1)
            })
            .expect("a user starting with a descent");
        let shifted = edited_from(bytes(), |bytes, layout| {
            put_u32(
                bytes,
                layout.sections[STARTS].0 + 4 * user,
                start_at(user) as u32 + 1,
            )
        });
        let expected = format!(
            "entries of user ordinal {} are not in ascending slot order",
            user - 1
        );
        refused_with(&shifted, &expected, what);
    }
}
