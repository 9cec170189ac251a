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
