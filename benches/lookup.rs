//! In-process lookup cost on a realistic pack: 20 listed segments, and all
//! segments of a user. Sizes from the environment so the same bench covers the
//! 1M-user default and the 10M-user target row of docs/DESIGN.md:
//!
//! ```sh
//! cargo bench --bench lookup
//! SEGD_BENCH_USERS=10000000 SEGD_BENCH_SEGMENTS=1000 cargo bench --bench lookup
//! ```
//!
//! Besides criterion's estimates it prints a latency distribution (p50, p99,
//! p99.9) from timing each of 200,000 lookups, since the targets are p99s, and
//! the load time and memory of the pack (heap bytes against file bytes).
//!
//! Rows: `listed_20` (20 listed segments, 90 % known users), `all_segments`
//! (every segment of a random user, ~20), `all_segments_heavy_user` (every
//! segment of a user who is in all of them: 1,000 at `SEGD_BENCH_SEGMENTS=1000`),
//! `all_segments_cold_user` (as `all_segments` over users from the whole pack,
//! one lookup at a time: the cache misses a server pays per request).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use segd::store::{LoadedPack, ServingState};

mod common;
use common::{BUILT_AT, HEAVY_USERS, env_or, print_distribution, synthetic_pack, user_id};

fn lookups(criterion: &mut Criterion) {
    let users = env_or("SEGD_BENCH_USERS", 1_000_000);
    let segment_count = env_or("SEGD_BENCH_SEGMENTS", 200);
    let started = Instant::now();
    let pack = synthetic_pack(users, segment_count, 20.0, 1, BUILT_AT);
    let memberships = pack.memberships();
    let built = started.elapsed();
    let heavy_users: Vec<u64> = pack.user_fingerprints[..HEAVY_USERS.min(users)].to_vec();
    let bytes = segd::pack::write_pack(&pack).expect("writes");
    drop(pack);
    // The whole load path a push or start-up pays: checked read, then index.
    let started = Instant::now();
    let pack = segd::pack::read_pack(&bytes).expect("reads");
    let read = started.elapsed();
    let loaded = LoadedPack::from_pack(pack, bytes.len() as u64, BUILT_AT).expect("index builds");
    let load = started.elapsed();
    let per_million =
        |elapsed: std::time::Duration| elapsed.as_secs_f64() * 1e3 / (memberships as f64 / 1e6);
    println!(
        "pack: {users} users, {segment_count} segments, {memberships} memberships, {} file bytes; generated in {built:.1?}; loaded in {load:.1?} ({:.2} ms per 1M memberships; read and verify {read:.1?}, {:.2} ms per 1M)",
        bytes.len(),
        per_million(load),
        per_million(read),
    );
    let heap_bytes = loaded.heap_bytes();
    println!(
        "memory: {heap_bytes} heap bytes = {:.2} x the file; {:.2} bytes per membership, {:.1} bytes per user",
        heap_bytes as f64 / bytes.len() as f64,
        heap_bytes as f64 / memberships as f64,
        heap_bytes as f64 / users as f64,
    );
    drop(bytes);
    let state = ServingState::new(1, vec![Arc::new(loaded)]).expect("one pack");

    let mut rng = StdRng::seed_from_u64(2);
    // 90 % known users, 10 % strangers, as an ad server would see.
    let queries: Vec<u64> = (0..4096)
        .map(|_| {
            if rng.random_bool(0.9) {
                segd::user_fingerprint(&user_id(rng.random_range(0..users)))
            } else {
                segd::user_fingerprint(&format!("stranger:{}", rng.random::<u64>()))
            }
        })
        .collect();
    let listed: Vec<Vec<u32>> = (0..64)
        .map(|_| {
            (0..20)
                .map(|_| rng.random_range(1..=segment_count as u32))
                .collect()
        })
        .collect();
    // Users from the whole pack, for the row whose lookups wait on memory.
    let cold_queries: Vec<u64> = (0..1 << 20)
        .map(|_| segd::user_fingerprint(&user_id(rng.random_range(0..users))))
        .collect();
    let at = BUILT_AT + 3600;

    let size = format!("{users}u_{segment_count}s");
    let mut group = criterion.benchmark_group("lookup");
    let mut index = 0usize;
    group.bench_function(BenchmarkId::new("listed_20", &size), |bencher| {
        bencher.iter(|| {
            index = index.wrapping_add(1);
            black_box(state.lookup(
                queries[index % queries.len()],
                &listed[index % listed.len()],
                7 * 86_400,
                at,
            ))
        })
    });
    group.bench_function(BenchmarkId::new("all_segments", &size), |bencher| {
        bencher.iter(|| {
            index = index.wrapping_add(1);
            black_box(state.lookup(queries[index % queries.len()], &[], 0, at))
        })
    });
    // A server's lookups are microseconds of other work apart, so none of
    // them overlaps the next one's cache misses. Here each query's position
    // depends on the previous answer (through an opaque zero), which keeps
    // the processor from running lookups ahead, and users come from the
    // whole pack, so a lookup pays the misses a server pays.
    group.bench_function(
        BenchmarkId::new("all_segments_cold_user", &size),
        |bencher| {
            let mut position = 0usize;
            bencher.iter(|| {
                let segments =
                    state.lookup(cold_queries[position % cold_queries.len()], &[], 0, at);
                position = position.wrapping_add(1 + (segments.segment_ids.len() & black_box(0)));
                segments
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("all_segments_heavy_user", &size),
        |bencher| {
            bencher.iter(|| {
                index = index.wrapping_add(1);
                black_box(state.lookup(heavy_users[index % heavy_users.len()], &[], 0, at))
            })
        },
    );
    group.finish();

    for (label, all, users) in [
        ("listed_20", false, &queries),
        ("all_segments", true, &queries),
        ("all_segments_heavy_user", true, &heavy_users),
    ] {
        let mut nanos = Vec::with_capacity(200_000);
        for sample in 0..200_000usize {
            let user = users[sample % users.len()];
            let segment_ids: &[u32] = if all {
                &[]
            } else {
                &listed[sample % listed.len()]
            };
            let started = Instant::now();
            black_box(state.lookup(user, segment_ids, 7 * 86_400, at));
            nanos.push(started.elapsed().as_nanos() as u64);
        }
        print_distribution(&format!("lookup/{label}/{size}"), nanos);
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
