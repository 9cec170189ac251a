//! Property tests of the format: round trips, and damaged bytes never panic.

use proptest::prelude::*;
use roaring::RoaringBitmap;

use super::{Pack, Segment, read_header, read_pack, write_pack};

/// Small strings, sometimes non-ASCII, up to the 255-byte limit.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![4 => proptest::char::range('a', 'z'), 1 => Just('é'), 1 => Just('-')],
        0..=max_chars,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn segment(user_count: u32) -> impl Strategy<Value = (u32, Segment)> {
    let members = prop_oneof![
        // Sparse: array containers.
        proptest::collection::btree_set(0..user_count.max(1), 0..40).boxed(),
        // Dense ranges: bitmap or run containers.
        (0..user_count.max(1), 0..user_count.max(1))
            .prop_map(|(start, end)| (start.min(end)..start.max(end)).collect())
            .boxed(),
    ];
    (
        any::<u32>(),
        text(20),
        text(12),
        any::<u32>(),
        members,
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(
            move |(id, name, kind, ttl_seconds, members, with_recency, hours_seed)| {
                let members: RoaringBitmap = members
                    .into_iter()
                    .filter(|&ordinal| ordinal < user_count)
                    .collect();
                let last_seen_hours_ago = with_recency.then(|| {
                    (0..members.len())
                        .map(|index| hours_seed.wrapping_mul(index as u16 + 1))
                        .collect()
                });
                let segment = Segment {
                    id,
                    name,
                    kind,
                    ttl_seconds,
                    members,
                    last_seen_hours_ago,
                };
                (id, segment)
            },
        )
}

pub(crate) fn arbitrary_pack() -> impl Strategy<Value = Pack> {
    (
        proptest::collection::btree_set(any::<u64>(), 0..3000),
        any::<i64>(),
        "[a-z0-9][a-z0-9._-]{0,20}",
        text(30).prop_filter("a version is not empty", |version| !version.is_empty()),
    )
        .prop_flat_map(|(fingerprints, built_at_unix_seconds, name, version)| {
            let user_fingerprints: Vec<u64> = fingerprints.into_iter().collect();
            let user_count = user_fingerprints.len() as u32;
            proptest::collection::btree_map(any::<u32>(), segment(user_count), 0..8).prop_map(
                move |segments| Pack {
                    name: name.clone(),
                    version: version.clone(),
                    built_at_unix_seconds,
                    user_fingerprints: user_fingerprints.clone(),
                    segments: segments
                        .into_values()
                        .map(|(_, segment)| segment)
                        .collect::<Vec<_>>(),
                },
            )
        })
        .prop_map(|mut pack| {
            // Segment ids come from the map keys' values; make them unique and sorted.
            pack.segments.sort_by_key(|segment| segment.id);
            pack.segments.dedup_by_key(|segment| segment.id);
            pack
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn write_then_read_returns_the_same_pack(pack in arbitrary_pack()) {
        let bytes = write_pack(&pack).expect("a valid pack is written");
        let read_back = read_pack(&bytes).expect("a written pack is read");
        prop_assert_eq!(&read_back, &pack);
        let header = read_header(&bytes).expect("a written header is read");
        prop_assert_eq!(header.name, pack.name.clone());
        prop_assert_eq!(header.user_count as usize, pack.user_fingerprints.len());
        prop_assert_eq!(header.segment_count as usize, pack.segments.len());
        prop_assert_eq!(header.membership_count, pack.memberships());
        // Writing is deterministic.
        prop_assert_eq!(write_pack(&read_back).expect("written again"), bytes);
    }

    #[test]
    fn damaged_bytes_are_refused_without_panicking(
        pack in arbitrary_pack(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut bytes = write_pack(&pack).expect("a valid pack is written");
        for (index, mask) in flips {
            let position = index.index(bytes.len());
            bytes[position] ^= mask;
        }
        // Flipped bits are caught by a checksum or a structural check.
        prop_assert!(read_pack(&bytes).is_err());
        let _ = read_header(&bytes);
    }

    #[test]
    fn truncated_or_extended_bytes_are_refused_without_panicking(
        pack in arbitrary_pack(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = write_pack(&pack).expect("a valid pack is written");
        let cut_at = cut.index(bytes.len());
        prop_assert!(read_pack(&bytes[..cut_at]).is_err());
        let mut extended = bytes.clone();
        extended.extend_from_slice(&extra);
        prop_assert!(read_pack(&extended).is_err());
    }

    #[test]
    fn random_bytes_after_a_valid_preamble_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = b"SEGDPACK\x01\x00\x00\x00".to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert!(read_pack(&bytes).is_err());
        let _ = read_header(&bytes);
    }
}

/// Recomputes every format-v2 checksum of well-laid-out bytes after an edit
/// that kept the section table, so only the edit is wrong.
fn reseal_v2(bytes: &mut [u8]) {
    use super::format::checksum;
    let u64_at =
        |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let header_bytes = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let value = checksum(&bytes[..header_bytes]);
    bytes[header_bytes..header_bytes + 8].copy_from_slice(&value.to_le_bytes());
    let table_start = header_bytes + 8;
    for section in 0..6 {
        let entry = table_start + section * 24;
        let (offset, length) = (
            u64_at(bytes, entry) as usize,
            u64_at(bytes, entry + 8) as usize,
        );
        let value = checksum(&bytes[offset..offset + length]);
        bytes[entry + 16..entry + 24].copy_from_slice(&value.to_le_bytes());
    }
    let table_end = table_start + 6 * 24;
    let value = checksum(&bytes[table_start..table_end]);
    bytes[table_end..table_end + 8].copy_from_slice(&value.to_le_bytes());
    let file_end = bytes.len() - 8;
    let value = checksum(&bytes[..file_end]);
    bytes[file_end..].copy_from_slice(&value.to_le_bytes());
}

fn view_of(bytes: &[u8]) -> Result<super::PackView, super::PackError> {
    super::PackView::open(std::sync::Arc::new(super::PackBytes::copy_from(bytes)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// The served tables of a v2 file answer exactly as the pack's bitmaps
    /// and recency columns say, and v1 and v2 hold the same pack.
    #[test]
    fn v2_tables_answer_like_the_bitmaps(pack in arbitrary_pack()) {
        let bytes = super::write_pack_v2(&pack).expect("writes");
        let view = view_of(&bytes).expect("a written pack passes the checked load");
        prop_assert_eq!(view.fingerprints().to_vec(), pack.user_fingerprints.clone());
        let loaded = crate::store::LoadedPack::from_view(view, 0);
        for (ordinal, &fingerprint) in pack.user_fingerprints.iter().enumerate() {
            prop_assert_eq!(loaded.ordinal(fingerprint), Some(ordinal as u32));
            for (slot, segment) in pack.segments.iter().enumerate() {
                let expected = segment.members.contains(ordinal as u32).then(|| {
                    let rank = segment.members.rank(ordinal as u32) as usize - 1;
                    segment.last_seen_hours_ago.as_ref().map_or(0, |hours| hours[rank])
                });
                let entry = loaded.entry(ordinal as u32, slot as u16);
                prop_assert_eq!(entry.map(|entry| entry.hours_ago), expected);
            }
        }
        let v1 = super::write_pack_v1(&pack).expect("writes");
        prop_assert_eq!(read_pack(&v1).expect("reads"), read_pack(&bytes).expect("reads"));
    }

    /// Edits anywhere in the served sections, with every checksum made to
    /// match, are refused or (if still consistent) served without a panic.
    #[test]
    fn hostile_v2_sections_with_valid_checksums_never_panic(
        pack in arbitrary_pack(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = super::write_pack_v2(&pack).expect("writes");
        let header_bytes = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let first_section = header_bytes + 8 + 6 * 24 + 8;
        let editable = bytes.len() - 24 - first_section;
        for (index, value) in edits {
            let position = first_section + index.index(editable.max(1));
            bytes[position] = value;
        }
        reseal_v2(&mut bytes);
        if let Ok(view) = view_of(&bytes) {
            let fingerprints = view.fingerprints().to_vec();
            let segments = view.segments().len();
            let _ = view.to_pack();
            let loaded = crate::store::LoadedPack::from_view(view, 0);
            for fingerprint in fingerprints {
                let ordinal = loaded.ordinal(fingerprint).expect("a listed user is found");
                for entry in loaded.entries_of(ordinal) {
                    prop_assert!((entry.slot as usize) < segments);
                }
            }
        }
        let _ = read_pack(&bytes);
    }
}

/// The rules of a checked load over the served sections (`format_v2`, "What
/// a checked load verifies"), read plainly, one at a time, from `bytes`: a
/// v2 file whose header, section table and segment table are `pack`'s.
fn obeys_the_served_rules(bytes: &[u8], pack: &Pack) -> bool {
    use super::view_header::{read_header_v2, read_section_table};
    let read = read_header_v2(bytes).expect("the header is intact");
    let sections = read_section_table(bytes, &read).expect("the section table is intact");
    let words = |index: usize, width: usize| -> Vec<u64> {
        bytes[sections[index].clone()]
            .chunks_exact(width)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..width].copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect()
    };
    let fingerprints = words(0, 8);
    let directory: Vec<u32> = words(1, 4).into_iter().map(|word| word as u32).collect();
    let starts = words(2, 4);
    let layout = read.entry_layout;
    let entries: Vec<super::IndexEntry> = words(3, layout.bytes())
        .into_iter()
        .map(|word| layout.decode(word as u32))
        .collect();
    if !fingerprints.windows(2).all(|pair| pair[0] < pair[1]) {
        return false;
    }
    if directory != super::index_build::radix_directory(&fingerprints, read.radix_bits) {
        return false;
    }
    let starts_ok = starts.first() == Some(&0)
        && starts.windows(2).all(|pair| pair[0] <= pair[1])
        && starts.last() == Some(&(entries.len() as u64));
    if !starts_ok {
        return false;
    }
    let users_sorted = starts.windows(2).all(|pair| {
        entries[pair[0] as usize..pair[1] as usize]
            .windows(2)
            .all(|two| two[0].slot < two[1].slot)
    });
    let in_range = entries
        .iter()
        .all(|entry| (entry.slot as usize) < pack.segments.len());
    if !users_sorted || !in_range {
        return false;
    }
    let recency_ok = entries.iter().all(|entry| {
        entry.hours_ago == 0
            || pack.segments[entry.slot as usize]
                .last_seen_hours_ago
                .is_some()
    });
    let counts_ok = pack.segments.iter().enumerate().all(|(slot, segment)| {
        let count = entries
            .iter()
            .filter(|entry| entry.slot as usize == slot)
            .count();
        count as u64 == segment.members.len()
    });
    recency_ok && counts_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The checked load's fused pass (`view_check`) accepts exactly the
    /// files that obey the rules read plainly, and says the same whatever
    /// its block size: blocks of 8 bytes cut every section into many, so
    /// descents, boundaries and directory buckets straddle blocks.
    #[test]
    fn the_fused_checks_are_the_rules_in_any_block_size(
        pack in arbitrary_pack(),
        wide in any::<bool>(),
        edits in proptest::collection::vec(
            (0usize..4, any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let layout = if wide { super::EntryLayout::WIDE } else { super::entry_layout_for(&pack) };
        let mut bytes = super::write_pack_v2_layout(&pack, super::ShardSpec::UNSHARDED, layout)
            .expect("writes");
        let read = super::view_header::read_header_v2(&bytes).expect("reads");
        let sections = super::view_header::read_section_table(&bytes, &read).expect("reads");
        for (section, index, value) in edits {
            let range = sections[section].clone();
            if !range.is_empty() {
                bytes[range.start + index.index(range.len())] = value;
            }
        }
        reseal_v2(&mut bytes);
        let expected = obeys_the_served_rules(&bytes, &pack);
        let mut outcomes = Vec::new();
        for block_bytes in [8, 24, 1000, super::view_check::BLOCK_BYTES] {
            let opened = super::PackView::open_in_blocks(
                std::sync::Arc::new(super::PackBytes::copy_from(&bytes)),
                block_bytes,
            );
            prop_assert_eq!(opened.is_ok(), expected, "{:?}", opened.as_ref().err());
            outcomes.push(opened.err().map(|error| error.to_string()));
        }
        prop_assert!(outcomes.windows(2).all(|pair| pair[0] == pair[1]), "{:?}", outcomes);
    }
}
