//! Request validation (`api::limits`) on the hot path: a valid `Decide` (50
//! candidates x 3 refs + 2 caps) and a valid `RecordImpressions` batch are
//! checked without a single heap allocation (field paths are formatted only
//! into error messages), and the error messages stay word for word what they
//! were when the paths were formatted up front. The unary `Lookup`'s request
//! decodes without one too.
//!
//! Allocations are counted by a global allocator wrapping the system one, per
//! thread, so the test harness's own threads do not disturb the count.

mod counting_allocator;
use counting_allocator::allocations_of;
use segd::api::RequestLimits;
use segd::proto::{
    Calendar, Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest,
    SegmentRef,
};

fn limits() -> RequestLimits {
    RequestLimits {
        max_segment_ids: 1_000,
        max_batch_lookups: 1_000,
        max_candidates: 100,
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

fn cap(key: &str, calendar: Calendar, window_seconds: u32) -> FrequencyCap {
    FrequencyCap {
        key: key.to_owned(),
        limit: 3,
        window_seconds,
        calendar: calendar as i32,
        utc_offset_minutes: 0,
    }
}

/// The request shape of the `Decide` target: 50 candidates x 3 refs + 2 caps.
fn decide_request() -> DecideRequest {
    let candidates = (0..50)
        .map(|number| Candidate {
            id: format!("li-{number}"),
            all_of: vec![segment(1)],
            any_of: vec![segment(2), segment(3)],
            none_of: vec![],
            caps: vec![
                cap(&format!("li:{number}"), Calendar::Day, 0),
                cap(&format!("camp:{}", number % 5), Calendar::Rolling, 3_600),
            ],
        })
        .collect();
    DecideRequest {
        user_id: "u:42".to_owned(),
        candidates,
        at_unix_seconds: 0,
        line_item_ids: vec!["registered-1".to_owned()],
    }
}

fn record_request() -> RecordImpressionsRequest {
    RecordImpressionsRequest {
        impressions: (0..100)
            .map(|number| Impression {
                user_id: format!("u:{number}"),
                cap_keys: vec![format!("li:{number}"), "camp:1".to_owned()],
                at_unix_seconds: 0,
                impression_id: format!("imp-{number}"),
            })
            .collect(),
    }
}

#[test]
fn a_valid_decide_is_checked_without_allocating() {
    let limits = limits();
    let request = decide_request();
    let (allocations, outcome) = allocations_of(|| limits.check_decide(&request));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(allocations, 0, "allocations while checking a valid Decide");
}

#[test]
fn a_valid_line_item_and_impression_batch_are_checked_without_allocating() {
    let limits = limits();
    let request = decide_request();
    let field = String::from("line_items[7]");
    let (allocations, outcome) =
        allocations_of(|| limits.check_candidate(&field, &request.candidates[7]));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        allocations, 0,
        "allocations while checking a valid line item"
    );

    let request = record_request();
    let (allocations, outcome) = allocations_of(|| limits.check_record(&request));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        allocations, 0,
        "allocations while checking valid impressions"
    );
}

/// The unary `Lookup`'s request decodes without an allocation at the
/// shape the load tester sends (prost's type: a `String` and a `Vec` grown
/// id by id, five allocations for 20 ids).
#[test]
fn a_unary_lookup_request_decodes_without_allocating() {
    use prost::Message;
    let request = segd::proto::LookupRequest {
        user_id: "u:123456".to_owned(),
        segment_ids: (1..=20).map(|id| id * 37).collect(),
        max_age_seconds: 86_400,
        at_unix_seconds: 0,
    };
    let bytes = request.encode_to_vec();
    let (allocations, decoded) =
        allocations_of(|| segd::api::wire::WireLookupRequest::decode(bytes.as_slice()));
    let decoded = decoded.expect("the request decodes");
    assert_eq!(allocations, 0, "allocations while decoding a Lookup");
    assert_eq!(decoded.user_id(), "u:123456");
    assert_eq!(decoded.segment_ids(), request.segment_ids.as_slice());
    let (allocations, _) = allocations_of(|| segd::proto::LookupRequest::decode(bytes.as_slice()));
    assert!(
        allocations >= 2,
        "prost's decode, for contrast: {allocations}"
    );
}

/// A change that makes a valid request invalid.
type Mutation = Box<dyn FnOnce(&mut DecideRequest)>;

/// The message of the first problem `limits` finds in `request`.
fn decide_error(mutate: impl FnOnce(&mut DecideRequest)) -> String {
    let mut request = decide_request();
    mutate(&mut request);
    let status = limits().check_decide(&request).expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    status.message().to_owned()
}

#[test]
fn decide_errors_name_the_field_as_before() {
    let cases: [(&str, Mutation); 9] = [
        (
            "user_id: must not be empty",
            Box::new(|request| request.user_id.clear()),
        ),
        (
            "user_id: 65 bytes, more than the limit of 64",
            Box::new(|request| request.user_id = "u".repeat(65)),
        ),
        (
            "candidates+line_item_ids: 101 entries, more than the limit of 100",
            Box::new(|request| request.line_item_ids = vec!["x".to_owned(); 51]),
        ),
        (
            "candidates[3] all_of+any_of+none_of: 9 entries, more than the limit of 8",
            Box::new(|request| request.candidates[3].none_of = vec![segment(9); 6]),
        ),
        (
            "candidates[4].caps: 5 entries, more than the limit of 4",
            Box::new(|request| {
                let caps = request.candidates[4].caps.clone();
                request.candidates[4].caps = caps.into_iter().cycle().take(5).collect();
            }),
        ),
        (
            "candidates[5].caps[1].key: must not be empty",
            Box::new(|request| request.candidates[5].caps[1].key.clear()),
        ),
        (
            "candidates[6].caps[0].limit: must be at least 1",
            Box::new(|request| request.candidates[6].caps[0].limit = 0),
        ),
        (
            "candidates[7].caps[1].calendar: unknown calendar 9",
            Box::new(|request| request.candidates[7].caps[1].calendar = 9),
        ),
        (
            "candidates[8].caps[0].utc_offset_minutes: -2147483648 is beyond ±1080",
            Box::new(|request| request.candidates[8].caps[0].utc_offset_minutes = i32::MIN),
        ),
    ];
    for (expected, mutate) in cases {
        assert_eq!(decide_error(mutate), expected);
    }
    assert_eq!(
        decide_error(|request| request.candidates[9].caps[1].window_seconds = 40 * 86_400),
        "candidates[9].caps[1].window_seconds: a window of 3456000 s is longer than the \
         retention of 2678400 s (--freq-retention-days)"
    );
}

#[test]
fn impression_errors_name_the_field_as_before() {
    let error = |mutate: fn(&mut RecordImpressionsRequest)| {
        let mut request = record_request();
        mutate(&mut request);
        limits()
            .check_record(&request)
            .expect_err("refused")
            .message()
            .to_owned()
    };
    assert_eq!(
        error(|request| request.impressions[2].user_id.clear()),
        "impressions[2].user_id: must not be empty"
    );
    assert_eq!(
        error(|request| request.impressions[3].cap_keys.clear()),
        "impressions[3].cap_keys: must not be empty: an impression counts toward at least one cap key"
    );
    assert_eq!(
        error(|request| request.impressions[4].cap_keys = vec!["k".to_owned(); 5]),
        "impressions[4].cap_keys: 5 entries, more than the limit of 4"
    );
    assert_eq!(
        error(|request| request.impressions[5].cap_keys[1] = "k".repeat(65)),
        "impressions[5].cap_keys[1]: 65 bytes, more than the limit of 64"
    );
    assert_eq!(
        error(|request| request.impressions[6].impression_id = "i".repeat(257)),
        "impressions[6].impression_id: longer than 256 bytes"
    );
    assert_eq!(
        error(|request| request.impressions[7].at_unix_seconds = -1),
        "impressions[7].at_unix_seconds: must not be negative"
    );
}
