//! In-process `decide::decide` cost: 50 candidates, each with 3 segment refs
//! (a mix of all_of / any_of / none_of) and 2 caps (`li:{n}` 3 per calendar
//! day, `camp:{n % 5}` 10 per rolling hour), on a realistic pack and a
//! frequency store pre-filled with impressions of the benched users. Target
//! (docs/DESIGN.md, issue 10): p50 <= 5 µs.
//!
//! It allocates with mimalloc, the global allocator of the segd binary
//! (src/bin/segd.rs), so the decisions' strings cost what they cost when
//! serving.
//!
//! ```sh
//! cargo bench --bench decide
//! SEGD_BENCH_USERS=10000000 cargo bench --bench decide
//! # fewer samples in the printed distributions (e.g. under callgrind)
//! SEGD_BENCH_SAMPLES=1000 cargo bench --bench decide
//! ```
//!
//! Two request shapes:
//! - `mixed`: refs on popular and tail segments, as a DSP's line items look;
//!   most candidates fail targeting, the rest have their caps counted;
//! - `caps_all`: three `none_of` refs on tail segments, so nearly every
//!   candidate reaches the caps (100 counts per request): the worst case.
//!
//! Besides criterion's estimates it prints a latency distribution per shape
//! and how the decisions came out.
//!
//! Two functions per shape:
//! - `decide/SHAPE`: `decide::decide`, the library call over owned candidates
//!   that returns owned `Decision`s (ids and details as `String`s);
//! - `unnamed/SHAPE`: `decide::decide_unnamed` over the same owned
//!   candidates, the server's form of the answer (no ids), dropped;
//! - `server/SHAPE`: what the `Decide` handler does after validation: the
//!   request decoded by `api::wire` (once, outside the loop), `decide_unnamed`
//!   over views of it, the response encoded into a reused buffer as tonic
//!   encodes it, and everything dropped.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use prost::Message;

use segd::api::wire::{WireDecideRequest, WireDecideResponse};
use segd::decide::CandidateRef;
use segd::freq::{FreqConfig, FreqStore, FsyncPolicy, NewImpression};
use segd::proto::{Calendar, Candidate, DecideRequest, FrequencyCap, Reason, SegmentRef};
use segd::store::{LoadedPack, ServingState};

mod common;
use common::{env_or, print_distribution, synthetic_pack, user_id};

/// The allocator segd serves with (src/bin/segd.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CANDIDATES: usize = 50;
const RETENTION_SECONDS: i64 = 30 * 86_400;
const BENCHED_USERS: usize = 4096;
const IMPRESSIONS_PER_USER: usize = 60;
/// Impressions are spread over this many seconds before now.
const IMPRESSION_SPREAD_SECONDS: i64 = 3 * 3_600;

fn segment_ref(segment_id: u32, max_age_seconds: u32) -> SegmentRef {
    SegmentRef {
        segment_id,
        max_age_seconds,
    }
}

fn caps(number: usize) -> Vec<FrequencyCap> {
    vec![
        FrequencyCap {
            key: format!("li:{number}"),
            limit: 3,
            window_seconds: 0,
            calendar: Calendar::Day as i32,
            utc_offset_minutes: 0,
        },
        FrequencyCap {
            key: format!("camp:{}", number % 5),
            limit: 10,
            window_seconds: 3600,
            calendar: Calendar::Rolling as i32,
            utc_offset_minutes: 0,
        },
    ]
}

/// Line items as a DSP would hold them: audiences on popular segments,
/// exclusions on the tail, half with a 30-day lookback.
fn mixed_candidates(rng: &mut StdRng, segments: u32) -> Vec<Candidate> {
    (0..CANDIDATES)
        .map(|number| {
            let max_age = if number % 2 == 0 { 30 * 86_400 } else { 0 };
            let popular = |rng: &mut StdRng| segment_ref(rng.random_range(1..=10), max_age);
            let common = |rng: &mut StdRng| segment_ref(rng.random_range(1..=50), max_age);
            let tail = |rng: &mut StdRng| segment_ref(rng.random_range(100..=segments), 0);
            let (all_of, any_of, none_of) = match number % 3 {
                0 => (vec![popular(rng)], vec![common(rng), common(rng)], vec![]),
                1 => (vec![popular(rng)], vec![common(rng)], vec![tail(rng)]),
                _ => (vec![], vec![common(rng), common(rng)], vec![tail(rng)]),
            };
            Candidate {
                id: format!("li-{number}"),
                all_of,
                any_of,
                none_of,
                caps: caps(number),
            }
        })
        .collect()
}

/// Every candidate excludes three tail segments only: nearly all reach caps.
fn caps_all_candidates(rng: &mut StdRng, segments: u32) -> Vec<Candidate> {
    (0..CANDIDATES)
        .map(|number| Candidate {
            id: format!("li-{number}"),
            all_of: vec![],
            any_of: vec![],
            none_of: (0..3)
                .map(|_| segment_ref(rng.random_range(segments / 2..=segments), 0))
                .collect(),
            caps: caps(number),
        })
        .collect()
}

fn bench_decide(criterion: &mut Criterion) {
    let users = env_or("SEGD_BENCH_USERS", 1_000_000);
    let segment_count = env_or("SEGD_BENCH_SEGMENTS", 1_000);
    let now = segd::unix_now_seconds();
    let started = Instant::now();
    let pack = synthetic_pack(users, segment_count, 20.0, 1, now - 3_600);
    let memberships = pack.memberships();
    let loaded = LoadedPack::from_pack(pack, 0, now).expect("index builds");
    let state = ServingState::new(1, vec![Arc::new(loaded)]).expect("one pack");
    println!(
        "pack: {users} users, {segment_count} segments, {memberships} memberships; ready in {:.1?}",
        started.elapsed()
    );

    let mut rng = StdRng::seed_from_u64(3);
    // 90 % known users, 10 % strangers, as an ad server would see.
    let benched: Vec<u64> = (0..BENCHED_USERS)
        .map(|_| {
            if rng.random_bool(0.9) {
                segd::user_fingerprint(&user_id(rng.random_range(0..users)))
            } else {
                segd::user_fingerprint(&format!("stranger:{}", rng.random::<u64>()))
            }
        })
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let config = FreqConfig {
        fsync: FsyncPolicy::Never,
        retention_seconds: RETENTION_SECONDS,
        checkpoint_interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
        ..FreqConfig::new(dir.path())
    };
    let (counters, _) = FreqStore::open(config).expect("frequency store opens");
    let impressions: Vec<NewImpression> = benched
        .iter()
        .flat_map(|&user_fingerprint| {
            (0..IMPRESSIONS_PER_USER)
                .map(|_| {
                    let line_item = rng.random_range(0..CANDIDATES);
                    NewImpression {
                        user_fingerprint,
                        cap_keys: vec![
                            format!("li:{line_item}"),
                            format!("camp:{}", line_item % 5),
                        ],
                        at_unix_seconds: now - rng.random_range(0..IMPRESSION_SPREAD_SECONDS),
                        impression_id: String::new(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for batch in impressions.chunks(1_000) {
        counters.record(batch).expect("records");
    }

    let shapes = [
        ("mixed", mixed_candidates(&mut rng, segment_count as u32)),
        (
            "caps_all",
            caps_all_candidates(&mut rng, segment_count as u32),
        ),
    ];
    let size = format!("{users}u_{segment_count}s");
    let mut group = criterion.benchmark_group("decide");
    for (shape, candidates) in &shapes {
        let mut index = 0usize;
        group.bench_function(BenchmarkId::new(*shape, &size), |bencher| {
            bencher.iter(|| {
                index = index.wrapping_add(1);
                black_box(segd::decide::decide(
                    &state,
                    &counters,
                    benched[index % benched.len()],
                    candidates,
                    now,
                    RETENTION_SECONDS,
                ))
            })
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("unnamed");
    for (shape, candidates) in &shapes {
        let refs: Vec<CandidateRef<'_>> = candidates.iter().map(CandidateRef::Inline).collect();
        let mut index = 0usize;
        group.bench_function(BenchmarkId::new(*shape, &size), |bencher| {
            bencher.iter(|| {
                index = index.wrapping_add(1);
                black_box(segd::decide::decide_unnamed(
                    &state,
                    &counters,
                    benched[index % benched.len()],
                    &refs,
                    now,
                    RETENTION_SECONDS,
                ))
            })
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("server");
    for (shape, candidates) in &shapes {
        let mut request = Some(wire_request(candidates));
        let mut out = Vec::with_capacity(8192);
        let mut index = 0usize;
        group.bench_function(BenchmarkId::new(*shape, &size), |bencher| {
            bencher.iter(|| {
                index = index.wrapping_add(1);
                let user = benched[index % benched.len()];
                let wire = request.take().expect("the request is handed back");
                request = Some(serve(&state, &counters, user, wire, now, &mut out));
                black_box(out.len())
            })
        });
    }
    group.finish();

    for (shape, candidates) in &shapes {
        let refs: Vec<CandidateRef<'_>> = candidates.iter().map(CandidateRef::Inline).collect();
        let samples = env_or("SEGD_BENCH_SAMPLES", 100_000);
        let mut nanos = Vec::with_capacity(samples);
        for sample in 0..samples {
            let user = benched[sample % benched.len()];
            let started = Instant::now();
            let decisions = segd::decide::decide_unnamed(
                &state,
                &counters,
                user,
                &refs,
                now,
                RETENTION_SECONDS,
            );
            drop(black_box(decisions));
            nanos.push(started.elapsed().as_nanos() as u64);
        }
        print_distribution(&format!("unnamed/{shape}/{size}"), nanos);
    }

    for (shape, candidates) in &shapes {
        let mut request = Some(wire_request(candidates));
        let mut out = Vec::with_capacity(8192);
        let samples = env_or("SEGD_BENCH_SAMPLES", 100_000);
        let mut nanos = Vec::with_capacity(samples);
        for sample in 0..samples {
            let user = benched[sample % benched.len()];
            let wire = request.take().expect("the request is handed back");
            let started = Instant::now();
            request = Some(serve(&state, &counters, user, wire, now, &mut out));
            nanos.push(started.elapsed().as_nanos() as u64);
            black_box(out.len());
        }
        print_distribution(&format!("server/{shape}/{size}"), nanos);
    }

    for (shape, candidates) in &shapes {
        let samples = env_or("SEGD_BENCH_SAMPLES", 100_000);
        let mut nanos = Vec::with_capacity(samples);
        let mut reasons = [0usize; 5];
        for sample in 0..samples {
            let user = benched[sample % benched.len()];
            let started = Instant::now();
            let decisions =
                segd::decide::decide(&state, &counters, user, candidates, now, RETENTION_SECONDS);
            nanos.push(started.elapsed().as_nanos() as u64);
            for decision in &decisions {
                reasons[decision.reason as usize] += 1;
            }
        }
        print_distribution(&format!("decide/{shape}/{size}"), nanos);
        let total = (samples * CANDIDATES) as f64;
        let share = |reason: Reason| reasons[reason as usize] as f64 / total * 100.0;
        println!(
            "decide/{shape}: eligible {:.1} %, not in audience {:.1} %, excluded {:.1} %, capped {:.1} %",
            share(Reason::Eligible),
            share(Reason::NotInAudience),
            share(Reason::Excluded),
            share(Reason::FrequencyCapped),
        );
    }
    counters.shutdown().expect("frequency store stops");
}

/// `candidates` as the server receives them: prost's bytes, decoded by
/// `api::wire`.
fn wire_request(candidates: &[Candidate]) -> WireDecideRequest {
    let request = DecideRequest {
        user_id: "u:bench".to_owned(),
        candidates: candidates.to_vec(),
        ..Default::default()
    };
    WireDecideRequest::decode(request.encode_to_vec().as_slice()).expect("decodes")
}

/// The `Decide` handler's work after validation (src/api/segments.rs): the
/// decisions over views of the request, the response encoded into `out`
/// (cleared, its capacity kept, as tonic's encode buffer). Returns the
/// request for the next iteration instead of decoding it again.
fn serve(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    request: WireDecideRequest,
    now: i64,
    out: &mut Vec<u8>,
) -> WireDecideRequest {
    let decisions = {
        let candidates: Vec<CandidateRef<'_>> =
            request.candidates().map(CandidateRef::View).collect();
        segd::decide::decide_unnamed(
            state,
            counters,
            user_fingerprint,
            &candidates,
            now,
            RETENTION_SECONDS,
        )
    };
    let response = WireDecideResponse::new(request, decisions, 1);
    out.clear();
    response.encode(out).expect("the buffer grows");
    response.into_request().expect("built from the request")
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
