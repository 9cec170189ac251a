//! The served `Decide` path allocates a fixed handful per request, whatever
//! its candidate count: `decide_unnamed` writes every detail into one
//! buffer (it made a `String` per refused candidate before), and the
//! response is rendered into one `Vec` with the ids read from the request.
//! Most candidates here are refused, some are capped, some eligible.
//!
//! Allocations are counted per thread by a global allocator wrapping the
//! system one (`counting_allocator`, shared with `wire_decode.rs`).

mod counting_allocator;
use std::sync::Arc;
use std::time::Duration;

use counting_allocator::allocations_of;
use prost::Message;
use roaring::RoaringBitmap;
use segd::api::wire::{WireDecideRequest, WireDecideResponse};
use segd::decide::CandidateRef;
use segd::freq::{FreqConfig, FreqStore, FsyncPolicy, NewImpression};
use segd::pack::{self, Pack, PackBytes, Segment};
use segd::proto::{
    Calendar, Candidate, DecideRequest, DecideResponse, FrequencyCap, Reason, SegmentRef,
};
use segd::store::{BuildThreads, LoadedPack, ServingState};

/// 20 segments; the user (ordinal 0 of 2) is in the even ones.
fn state(user: u64, built_at: i64) -> ServingState {
    let other = segd::user_fingerprint("someone else");
    let mut fingerprints = vec![user, other];
    fingerprints.sort_unstable();
    let ordinal = fingerprints.iter().position(|&f| f == user).unwrap() as u32;
    let segments = (1..=20u32)
        .map(|id| {
            let mut members = RoaringBitmap::new();
            if id % 2 == 0 {
                members.insert(ordinal);
            }
            Segment {
                id,
                name: format!("s{id}"),
                kind: String::new(),
                ttl_seconds: 0,
                last_seen_hours_ago: Some(vec![0; members.len() as usize]),
                members,
            }
        })
        .collect();
    let pack = Pack {
        name: "a".into(),
        version: "v1".into(),
        built_at_unix_seconds: built_at,
        user_fingerprints: fingerprints,
        segments,
    };
    let bytes = Arc::new(PackBytes::from_vec(pack::write_pack_v2(&pack).unwrap()));
    let loaded = LoadedPack::from_bytes(bytes, built_at, BuildThreads::AllCores).unwrap();
    ServingState::new(1, vec![Arc::new(loaded)]).unwrap()
}

fn segment(segment_id: u32) -> SegmentRef {
    SegmentRef {
        segment_id,
        max_age_seconds: 0,
    }
}

/// `count` candidates x 3 refs + 2 caps, in four shapes: excluded (odd
/// segments miss, even ones hit), not in any of, capped by `li:N` (limit
/// 1, one impression recorded in the day before), eligible.
fn request(count: usize, at: i64) -> DecideRequest {
    DecideRequest {
        user_id: "u:42".to_owned(),
        candidates: (0..count)
            .map(|number| {
                let (all_of, any_of, none_of) = match number % 4 {
                    0 => (vec![segment(2)], vec![segment(4)], vec![segment(6)]),
                    1 => (vec![segment(2)], vec![segment(3), segment(5)], vec![]),
                    _ => (vec![segment(2)], vec![segment(4)], vec![segment(7)]),
                };
                Candidate {
                    id: format!("li-{number}"),
                    all_of,
                    any_of,
                    none_of,
                    caps: vec![
                        FrequencyCap {
                            key: format!("li:{number}"),
                            limit: if number % 4 == 2 { 1 } else { 5 },
                            window_seconds: 86_400,
                            calendar: Calendar::Rolling as i32,
                            utc_offset_minutes: 0,
                        },
                        FrequencyCap {
                            key: format!("camp:{}", number % 5),
                            limit: 10,
                            window_seconds: 3_600,
                            calendar: Calendar::Rolling as i32,
                            utc_offset_minutes: 0,
                        },
                    ],
                }
            })
            .collect(),
        at_unix_seconds: at,
        line_item_ids: Vec::new(),
    }
}

#[test]
fn the_served_decide_allocates_a_fixed_handful_whatever_the_candidate_count() {
    // The store keeps impressions of the retention window before the clock.
    let at = segd::unix_now_seconds();
    let user = segd::user_fingerprint("u:42");
    let state = state(user, at - 3_600);
    let dir = tempfile::tempdir().unwrap();
    let config = FreqConfig {
        fsync: FsyncPolicy::Never,
        checkpoint_interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
        ..FreqConfig::new(dir.path())
    };
    let (counters, _) = FreqStore::open(config).unwrap();
    let impressions: Vec<NewImpression> = (0..100)
        .map(|number| NewImpression {
            user_fingerprint: user,
            cap_keys: vec![format!("li:{number}")],
            at_unix_seconds: at - 1,
            impression_id: String::new(),
        })
        .collect();
    counters.record(&impressions).unwrap();

    let mut seen = Vec::new();
    for count in [10, 50, 100] {
        let owned = request(count, at);
        let wire = WireDecideRequest::decode(owned.encode_to_vec().as_slice()).unwrap();
        let (allocations, bytes) = allocations_of(|| {
            let decisions = {
                let views: Vec<CandidateRef<'_>> =
                    wire.candidates().map(CandidateRef::View).collect();
                segd::decide::decide_unnamed(&state, &counters, user, &views, at, 30 * 86_400)
            };
            let response = WireDecideResponse::new(wire, decisions, 1);
            let mut bytes = Vec::with_capacity(response.encoded_len());
            response.encode(&mut bytes).unwrap();
            bytes
        });
        let response = DecideResponse::decode(bytes.as_slice()).unwrap();
        let reasons: Vec<i32> = response.decisions.iter().map(|d| d.reason).collect();
        for reason in [
            Reason::Excluded,
            Reason::NotInAudience,
            Reason::FrequencyCapped,
            Reason::Eligible,
        ] {
            assert!(
                reasons.contains(&(reason as i32)),
                "{reason:?} in {reasons:?}"
            );
        }
        assert_eq!(
            response.decisions[1].detail, "none of segments 3,5",
            "the details are sent"
        );
        seen.push(allocations);
        // The candidate refs, the decisions and their text, the count
        // queries and counts, the rendered bytes and the output buffer.
        assert!(
            allocations <= 8,
            "{allocations} allocations for {count} candidates (before: one per refusal)"
        );
    }
    println!("allocations per request for 10, 50, 100 candidates: {seen:?}");
    assert!(
        seen.windows(2).all(|pair| pair[0] == pair[1]),
        "the same count whatever the candidate count: {seen:?}"
    );
    counters.shutdown().unwrap();
}
