//! `decide` against a naive evaluation straight from the packs' bitmaps, over
//! random packs and candidates: the answer of the served path (the user's
//! entries found once, a slot filter in front of each probe, the dense
//! segment table) must equal reading the roaring bitmaps and last-seen hours
//! member by member. Packs of up to ~1,500 segments, so slots collide in the
//! 512-bit filter; users in every segment, in none, and strangers; v1 packs
//! indexed at load and v2 packs served from their bytes; withheld packs.
//! Each request is also answered the server's way (decoded by `api::wire`,
//! `decide_unnamed` over views of it, the response encoded by hand) and the
//! bytes decoded by prost must carry the same decisions.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use segd::api::wire::{WireDecideRequest, WireDecideResponse};
use segd::decide::CandidateRef;
use segd::freq::{FreqConfig, FreqStore, FsyncPolicy};
use segd::pack::{self, Pack, PackBytes, Segment};
use segd::proto::{
    Candidate, DecideRequest, DecideResponse, Decision, FrequencyCap, Reason, SegmentRef,
};
use segd::store::{BuildThreads, LoadedPack, ServingState};

const BUILT_AT: i64 = 1_790_000_000;
const USERS: u32 = 40;

fn fingerprint(user: u32) -> u64 {
    segd::user_fingerprint(&format!("user-{user}"))
}

/// A pack of `segment_count` segments with ids `first_id..`; user `0` is in
/// every segment, user `USERS - 1` in none; the rest at random.
fn random_pack(
    rng: &mut StdRng,
    name: &str,
    first_id: u32,
    segment_count: u32,
) -> (Pack, Vec<u64>) {
    let mut fingerprints: Vec<u64> = (0..USERS).map(fingerprint).collect();
    fingerprints.sort_unstable();
    let segments = (0..segment_count)
        .map(|number| {
            let share = [0.0, 0.02, 0.1, 0.5][rng.random_range(0..4)];
            let mut members = RoaringBitmap::new();
            for ordinal in 0..USERS {
                let user = fingerprints[ordinal as usize];
                let in_all = user == fingerprint(0);
                let in_none = user == fingerprint(USERS - 1);
                if in_all || (!in_none && rng.random_bool(share)) {
                    members.insert(ordinal);
                }
            }
            let hours = (0..members.len())
                .map(|_| rng.random_range(0..1_000u16))
                .collect();
            Segment {
                id: first_id + number,
                name: format!("{name}-{number}"),
                kind: String::new(),
                ttl_seconds: [0, 3_600 * 24, 3_600 * 200][rng.random_range(0..3)],
                members,
                last_seen_hours_ago: Some(hours),
            }
        })
        .collect();
    let pack = Pack {
        name: name.into(),
        version: "v1".into(),
        built_at_unix_seconds: BUILT_AT,
        user_fingerprints: fingerprints.clone(),
        segments,
    };
    (pack, fingerprints)
}

/// Naive membership: the bitmap, then the age against max age and TTL.
fn naive_member(packs: &[(Pack, bool)], user: u64, segment: &SegmentRef, at: i64) -> bool {
    for (pack, withheld) in packs {
        let Some(found) = pack.segments.iter().find(|s| s.id == segment.segment_id) else {
            continue;
        };
        let Some(ordinal) = pack.user_fingerprints.iter().position(|&f| f == user) else {
            return false;
        };
        if *withheld || !found.members.contains(ordinal as u32) {
            return false;
        }
        let rank = found.members.rank(ordinal as u32) as usize - 1;
        let hours = found.last_seen_hours_ago.as_ref().expect("hours")[rank];
        let last_seen = BUILT_AT - i64::from(hours) * pack::RECENCY_STEP_SECONDS;
        let age = (at - last_seen).max(0);
        return (segment.max_age_seconds == 0 || age <= i64::from(segment.max_age_seconds))
            && (found.ttl_seconds == 0 || age <= i64::from(found.ttl_seconds));
    }
    false
}

/// The decision docs/DESIGN.md defines, caps against an empty store (a cap
/// refuses only at limit 0).
fn naive_decision(packs: &[(Pack, bool)], user: u64, candidate: &Candidate, at: i64) -> Decision {
    let member = |segment: &SegmentRef| naive_member(packs, user, segment, at);
    let refused = |reason: Reason, detail: String| Decision {
        candidate_id: candidate.id.clone(),
        eligible: false,
        reason: reason as i32,
        detail,
    };
    if let Some(segment) = candidate.none_of.iter().find(|s| member(s)) {
        return refused(Reason::Excluded, format!("segment {}", segment.segment_id));
    }
    if let Some(segment) = candidate.all_of.iter().find(|s| !member(s)) {
        return refused(
            Reason::NotInAudience,
            format!("segment {}", segment.segment_id),
        );
    }
    if !candidate.any_of.is_empty() && !candidate.any_of.iter().any(member) {
        let ids: Vec<String> = candidate
            .any_of
            .iter()
            .map(|s| s.segment_id.to_string())
            .collect();
        return refused(
            Reason::NotInAudience,
            format!("none of segments {}", ids.join(",")),
        );
    }
    if let Some(cap) = candidate.caps.iter().find(|cap| cap.limit == 0) {
        return refused(Reason::FrequencyCapped, cap.key.clone());
    }
    Decision {
        candidate_id: candidate.id.clone(),
        eligible: true,
        reason: Reason::Eligible as i32,
        detail: String::new(),
    }
}

fn random_refs(rng: &mut StdRng, count: usize, max_id: u32) -> Vec<SegmentRef> {
    (0..count)
        .map(|_| SegmentRef {
            // Past the last id now and then: an unknown segment.
            segment_id: rng.random_range(1..=max_id + 3),
            max_age_seconds: [0, 3_600 * 30, 3_600 * 500][rng.random_range(0..3)],
        })
        .collect()
}

fn random_candidates(rng: &mut StdRng, max_id: u32) -> Vec<Candidate> {
    (0..rng.random_range(1..60))
        .map(|number| Candidate {
            id: format!("c{number}"),
            all_of: {
                let count = rng.random_range(0..3);
                random_refs(rng, count, max_id)
            },
            any_of: {
                let count = rng.random_range(0..4);
                random_refs(rng, count, max_id)
            },
            none_of: {
                let count = rng.random_range(0..3);
                random_refs(rng, count, max_id)
            },
            caps: (0..rng.random_range(0..3))
                .map(|cap| FrequencyCap {
                    key: format!("k{cap}"),
                    limit: rng.random_range(0..3),
                    window_seconds: 3_600,
                    calendar: 0,
                    utc_offset_minutes: 0,
                })
                .collect(),
        })
        .collect()
}

fn loaded(pack: &Pack, v2: bool) -> Arc<LoadedPack> {
    let bytes = if v2 {
        pack::write_pack_v2(pack).expect("writes v2")
    } else {
        pack::write_pack_v1(pack).expect("writes v1")
    };
    let bytes = Arc::new(PackBytes::from_vec(bytes));
    Arc::new(LoadedPack::from_bytes(bytes, BUILT_AT, BuildThreads::AllCores).expect("loads"))
}

/// The `Decide` handler's path after validation (src/api/segments.rs):
/// prost's bytes of the request decoded by `api::wire`, decided over views
/// of it, the response encoded by hand and decoded again by prost.
fn serve(
    state: &ServingState,
    counters: &FreqStore,
    user: u64,
    candidates: &[Candidate],
    at: i64,
) -> DecideResponse {
    let request = DecideRequest {
        user_id: "ignored: the fingerprint is given".to_owned(),
        candidates: candidates.to_vec(),
        at_unix_seconds: at,
        line_item_ids: Vec::new(),
    };
    let wire = WireDecideRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
    let decisions = {
        let views: Vec<CandidateRef<'_>> = wire.candidates().map(CandidateRef::View).collect();
        segd::decide::decide_unnamed(state, counters, user, &views, at, 30 * 86_400)
    };
    let bytes = WireDecideResponse::new(wire, decisions, 1).encode_to_vec();
    DecideResponse::decode(bytes.as_slice()).expect("prost decodes the response")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn decide_equals_a_naive_evaluation(
        seed in any::<u64>(),
        first_segments in 1u32..1_500,
        second_segments in 0u32..700,
        v2 in any::<bool>(),
        withhold_second in any::<bool>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (first, users) = random_pack(&mut rng, "a", 1, first_segments);
        let mut packs = vec![(first, false)];
        if second_segments > 0 {
            let (second, _) = random_pack(&mut rng, "b", first_segments + 1, second_segments);
            packs.push((second, withhold_second));
        }
        let served: Vec<Arc<LoadedPack>> = packs.iter().map(|(pack, _)| loaded(pack, v2)).collect();
        let state = ServingState::with_withheld(1, served, |pack| {
            pack.name == "b" && withhold_second
        })
        .expect("state");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = FreqConfig {
            fsync: FsyncPolicy::Never,
            checkpoint_interval: Duration::from_secs(3_600),
            sweep_interval: Duration::from_secs(3_600),
            ..FreqConfig::new(dir.path())
        };
        let (counters, _) = FreqStore::open(config).expect("store opens");
        let max_id = first_segments + second_segments;
        let at = BUILT_AT + rng.random_range(0..3_600 * 100);
        let asked: Vec<u64> = users.iter().copied().chain([fingerprint(USERS + 7)]).collect();
        for user in asked {
            let candidates = random_candidates(&mut rng, max_id);
            let decisions =
                segd::decide::decide(&state, &counters, user, &candidates, at, 30 * 86_400);
            let expected: Vec<Decision> = candidates
                .iter()
                .map(|candidate| naive_decision(&packs, user, candidate, at))
                .collect();
            prop_assert_eq!(&decisions, &expected);
            let served = serve(&state, &counters, user, &candidates, at);
            prop_assert_eq!(served, DecideResponse { decisions: expected, generation: 1 });
        }
        counters.shutdown().expect("store stops");
    }
}
