//! Decoding a `DecideRequest` as the server does (`api::wire`, one pass into
//! flat arrays) against prost's owned decode, on the load tester's request
//! shape: 50 inline candidates, each with 3 segment refs (ids up to 1,000,
//! `max_age_seconds` 0, 7 or 30 days) and 2 caps (`li:{n}` per day,
//! `camp:{n}` per rolling hour). The decode is a quarter of the server's
//! CPU samples under inline `Decide` load (BENCHMARKS.md). A third row
//! times the validation that follows the decode (`api::limits`). Two more
//! decode the unary `Lookup`'s request (a user id and 20 segment ids) both ways.
//!
//! ```sh
//! cargo bench --bench wire_decode
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use segd::api::RequestLimits;
use segd::api::wire::{WireDecideRequest, WireLookupRequest};
use segd::proto::{Calendar, Candidate, DecideRequest, FrequencyCap, LookupRequest, SegmentRef};

/// The allocator segd serves with (src/bin/segd.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY_SECONDS: u32 = 86_400;

fn segment_ref(rng: &mut StdRng) -> SegmentRef {
    SegmentRef {
        segment_id: rng.random_range(1..=1_000),
        max_age_seconds: [0, 7 * DAY_SECONDS, 30 * DAY_SECONDS][rng.random_range(0..3)],
    }
}

fn candidate(line_item: u32, rng: &mut StdRng) -> Candidate {
    let shape = rng.random_range(0..10);
    let (all_of, any_of) = match shape {
        0..5 => (vec![segment_ref(rng)], vec![segment_ref(rng)]),
        5..8 => (vec![], vec![segment_ref(rng), segment_ref(rng)]),
        _ => (vec![segment_ref(rng), segment_ref(rng)], vec![]),
    };
    Candidate {
        id: format!("li:{line_item}"),
        all_of,
        any_of,
        none_of: vec![segment_ref(rng)],
        caps: vec![
            FrequencyCap {
                key: format!("li:{line_item}"),
                limit: 3,
                window_seconds: 0,
                calendar: Calendar::Day as i32,
                utc_offset_minutes: 0,
            },
            FrequencyCap {
                key: format!("camp:{}", line_item / 20),
                limit: 10,
                window_seconds: 3_600,
                calendar: Calendar::Rolling as i32,
                utc_offset_minutes: 0,
            },
        ],
    }
}

fn request_bytes() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    DecideRequest {
        user_id: "u:123456".to_owned(),
        candidates: (0..50)
            .map(|_| candidate(rng.random_range(0..2_000), &mut rng))
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The server's default limits (`settings::limits`), and a retention that
/// covers the request's caps.
fn limits() -> RequestLimits {
    RequestLimits {
        max_segment_ids: 1_000,
        max_batch_lookups: 1_000,
        max_candidates: 500,
        max_refs_per_candidate: 64,
        max_caps_per_candidate: 16,
        max_impressions: 10_000,
        max_cap_keys: 16,
        max_cap_key_bytes: 128,
        max_user_id_bytes: 512,
        freq_retention_seconds: 31 * 86_400,
    }
}

fn bench(c: &mut Criterion) {
    let bytes = request_bytes();
    let mut group = c.benchmark_group("wire_decode");
    group.bench_function("wire_50_candidates", |b| {
        b.iter(|| WireDecideRequest::decode(black_box(&bytes[..])).expect("valid"))
    });
    group.bench_function("prost_50_candidates", |b| {
        b.iter(|| DecideRequest::decode(black_box(&bytes[..])).expect("valid"))
    });
    // What the handler does next (`api::limits`): the checks of every
    // candidate and cap, on the decoded request.
    let request = WireDecideRequest::decode(&bytes[..]).expect("valid");
    let limits = limits();
    group.bench_function("validate_50_candidates", |b| {
        b.iter(|| {
            limits
                .check_wire_decide(black_box(&request))
                .expect("valid")
        })
    });
    // The load tester's `Lookup`: 20 distinct ids of 1,000 segments.
    let lookup = LookupRequest {
        user_id: "u:731904".to_owned(),
        segment_ids: (0..20).map(|n| 13 + n * 49).collect(),
        max_age_seconds: 30 * DAY_SECONDS,
        at_unix_seconds: 0,
    }
    .encode_to_vec();
    group.bench_function("wire_lookup_20_ids", |b| {
        b.iter(|| WireLookupRequest::decode(black_box(&lookup[..])).expect("valid"))
    });
    group.bench_function("prost_lookup_20_ids", |b| {
        b.iter(|| LookupRequest::decode(black_box(&lookup[..])).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
