//! The server's own decoding of `Decide` (`api::wire`): a valid request of
//! the target shape (50 candidates x 3 refs + 2 caps) is decoded with a
//! fixed handful of allocations whatever its candidate count (prost's owned
//! decode makes ~7 per candidate) and validated with none; validation of
//! the wire form refuses exactly what the owned form's does, word for word.
//!
//! Allocations are counted per thread by a global allocator wrapping the
//! system one (`counting_allocator`, shared with `validation_allocations.rs`).

mod counting_allocator;
use counting_allocator::allocations_of;
use prost::Message;
use segd::api::RequestLimits;
use segd::api::wire::WireDecideRequest;
use segd::proto::{Calendar, Candidate, DecideRequest, FrequencyCap, SegmentRef};

fn limits() -> RequestLimits {
    RequestLimits {
        max_segment_ids: 1_000,
        max_batch_lookups: 1_000,
        max_candidates: 200,
        max_refs_per_candidate: 8,
        max_caps_per_candidate: 4,
        max_impressions: 1_000,
        max_cap_keys: 4,
        max_cap_key_bytes: 64,
        max_user_id_bytes: 64,
        freq_retention_seconds: 31 * 86_400,
    }
}

fn segment(segment_id: u32) -> SegmentRef {
    SegmentRef {
        segment_id,
        max_age_seconds: 0,
    }
}

fn cap(key: String, calendar: Calendar, window_seconds: u32) -> FrequencyCap {
    FrequencyCap {
        key,
        limit: 3,
        window_seconds,
        calendar: calendar as i32,
        utc_offset_minutes: 0,
    }
}

/// `count` candidates x 3 refs + 2 caps, and one registered line item.
fn decide_request(count: usize) -> DecideRequest {
    DecideRequest {
        user_id: "u:42".to_owned(),
        candidates: (0..count)
            .map(|number| Candidate {
                id: format!("li-{number}"),
                all_of: vec![segment(1)],
                any_of: vec![segment(2), segment(3)],
                none_of: vec![],
                caps: vec![
                    cap(format!("li:{number}"), Calendar::Day, 0),
                    cap(format!("camp:{}", number % 5), Calendar::Rolling, 3_600),
                ],
            })
            .collect(),
        at_unix_seconds: 0,
        line_item_ids: vec!["registered-1".to_owned()],
    }
}

#[test]
fn a_decide_is_decoded_with_a_fixed_handful_of_allocations() {
    let mut counts = Vec::new();
    for candidates in [10, 50, 100] {
        let bytes = decide_request(candidates).encode_to_vec();
        let (allocations, decoded) = allocations_of(|| WireDecideRequest::decode(bytes.as_slice()));
        let decoded = decoded.expect("valid");
        assert_eq!(decoded.to_proto(), decide_request(candidates));
        counts.push(allocations);
    }
    assert!(
        counts.iter().all(|&count| count == counts[0] && count <= 8),
        "allocations decoding 10, 50 and 100 candidates: {counts:?}"
    );
    // What prost's owned decode costs, for the record of what this replaces.
    let bytes = decide_request(50).encode_to_vec();
    let (owned, _) = allocations_of(|| DecideRequest::decode(bytes.as_slice()).unwrap());
    assert!(owned > 300, "prost's owned decode: {owned} allocations");
}

#[test]
fn a_valid_wire_decide_is_checked_without_allocating() {
    let limits = limits();
    let bytes = decide_request(50).encode_to_vec();
    let request = WireDecideRequest::decode(bytes.as_slice()).unwrap();
    let (allocations, outcome) = allocations_of(|| limits.check_wire_decide(&request));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(allocations, 0, "allocations while checking a valid Decide");
}

#[test]
fn the_wire_form_is_refused_as_the_owned_form_is() {
    type Mutation = fn(&mut DecideRequest);
    let cases: [Mutation; 11] = [
        |request| request.user_id.clear(),
        |request| request.user_id = "u".repeat(65),
        |request| request.line_item_ids = vec!["x".to_owned(); 151],
        |request| request.candidates[3].none_of = vec![segment(9); 6],
        |request| {
            let caps = request.candidates[4].caps.clone();
            request.candidates[4].caps = caps.into_iter().cycle().take(5).collect();
        },
        |request| request.candidates[5].caps[1].key.clear(),
        |request| request.candidates[5].caps[0].key = "k".repeat(65),
        |request| request.candidates[6].caps[0].limit = 0,
        |request| request.candidates[7].caps[1].calendar = 9,
        |request| request.candidates[8].caps[0].utc_offset_minutes = i32::MIN,
        |request| request.candidates[9].caps[1].window_seconds = 40 * 86_400,
    ];
    let limits = limits();
    for mutate in cases {
        let mut request = decide_request(50);
        mutate(&mut request);
        let owned = limits.check_decide(&request).expect_err("refused");
        let wire = WireDecideRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let refused = limits.check_wire_decide(&wire).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), owned.message());
    }
}
