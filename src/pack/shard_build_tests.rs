//! `PackBuilder::finish_shards`: each shard's pack holds exactly the users of
//! its shard, every segment, and together they equal the unsharded pack.

use std::collections::BTreeMap;

use super::{Pack, PackBuilder};
use crate::shard::shard_of_fingerprint;

const BUILT_AT: i64 = 1_790_000_000;

fn builder(input: &str) -> PackBuilder {
    let mut builder = PackBuilder::new("crm", "v1", BUILT_AT);
    builder
        .add_segment_definitions("7\tdefined-only\n".as_bytes(), "defs")
        .unwrap();
    builder
        .add_memberships(input.as_bytes(), "input", |_| {})
        .unwrap();
    builder
}

/// fingerprint → segment id → hours ago (None when the segment has no times).
fn memberships(pack: &Pack) -> BTreeMap<u64, BTreeMap<u32, Option<u16>>> {
    let mut users: BTreeMap<u64, BTreeMap<u32, Option<u16>>> = BTreeMap::new();
    for segment in &pack.segments {
        for (position, ordinal) in segment.members.iter().enumerate() {
            let hours = segment
                .last_seen_hours_ago
                .as_ref()
                .map(|hours| hours[position]);
            users
                .entry(pack.user_fingerprints[ordinal as usize])
                .or_default()
                .insert(segment.id, hours);
        }
    }
    users
}

#[test]
fn shards_partition_the_users_and_keep_every_segment() {
    let mut input = String::new();
    for user in 0..500 {
        input.push_str(&format!(
            "u{user}\t{}\t{}\n",
            1 + user % 3,
            BUILT_AT - user * 60
        ));
        if user % 4 == 0 {
            input.push_str(&format!("u{user}\t5\n"));
            input.push_str(&format!("u{user}\t5\n"));
        }
    }
    let whole = builder(&input).finish().unwrap();
    for count in [1u32, 2, 3, 16] {
        let shards: Vec<Pack> = builder(&input)
            .finish_shards(count)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(shards.len(), count as usize);
        let mut union = BTreeMap::new();
        for (index, shard) in shards.iter().enumerate() {
            let ids: Vec<u32> = shard.segments.iter().map(|segment| segment.id).collect();
            assert_eq!(ids, vec![1, 2, 3, 5, 7], "shard {index} of {count}");
            for fingerprint in &shard.user_fingerprints {
                assert_eq!(shard_of_fingerprint(*fingerprint, count), index as u32);
            }
            union.extend(memberships(shard));
        }
        assert_eq!(union, memberships(&whole), "{count} shards");
        let users: usize = shards
            .iter()
            .map(|shard| shard.user_fingerprints.len())
            .sum();
        assert_eq!(users, whole.user_fingerprints.len());
    }
}
