//! In-process lookup cost on a realistic pack: 20 listed segments, and all
//! segments of a user. Sizes from the environment so the same bench covers the
//! 1M-user default and the 10M-user target row of DESIGN.md:
//!
//! ```sh
//! cargo bench --bench lookup
//! SEGD_BENCH_USERS=10000000 SEGD_BENCH_SEGMENTS=1000 cargo bench --bench lookup
//! ```
//!
//! Besides criterion's estimates it prints a latency distribution (p50, p99,
//! p99.9) from timing each of 200,000 lookups, since the targets are p99s.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;

use segd::pack::{Pack, Segment};
use segd::store::{LoadedPack, ServingState};

const BUILT_AT: i64 = 1_790_000_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A pack whose segment sizes fall off like real audiences: a few pools of
/// 20–30 % of users, a long tail down to a handful, `per_user` on average.
pub fn synthetic_pack(users: usize, segments: usize, per_user: f64, seed: u64) -> Pack {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut user_fingerprints: Vec<u64> = (0..users)
        .map(|number| segd::user_fingerprint(&format!("u:{number}")))
        .collect();
    user_fingerprints.sort_unstable();
    user_fingerprints.dedup();
    let weights: Vec<f64> = (0..segments)
        .map(|rank| 1.0 / (rank as f64 + 1.0).powf(0.9))
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let target_memberships = per_user * users as f64;
    let segments = weights
        .iter()
        .enumerate()
        .map(|(index, weight)| {
            let share =
                (weight / total_weight * target_memberships / users as f64).clamp(0.0001, 0.3);
            // Geometric skips pick each user with probability `share` in O(members).
            let mut members = RoaringBitmap::new();
            let mut ordinal: f64 = -1.0;
            loop {
                let uniform: f64 = rng.random::<f64>().max(1e-12);
                ordinal += 1.0 + (uniform.ln() / (1.0 - share).ln()).floor();
                if ordinal >= users as f64 {
                    break;
                }
                members.insert(ordinal as u32);
            }
            let hours = (0..members.len())
                .map(|_| rng.random_range(0..2160u16))
                .collect();
            Segment {
                id: index as u32 + 1,
                name: format!("segment-{}", index + 1),
                kind: "retargeting".into(),
                ttl_seconds: if index % 4 == 0 { 30 * 86_400 } else { 0 },
                members,
                last_seen_hours_ago: Some(hours),
            }
        })
        .collect();
    Pack {
        name: "bench".into(),
        version: "v1".into(),
        built_at_unix_seconds: BUILT_AT,
        user_fingerprints,
        segments,
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * fraction) as usize]
}

fn print_distribution(label: &str, mut nanos: Vec<u64>) {
    nanos.sort_unstable();
    println!(
        "{label}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} samples)",
        percentile(&nanos, 0.5),
        percentile(&nanos, 0.99),
        percentile(&nanos, 0.999),
        nanos[nanos.len() - 1],
        nanos.len()
    );
}

fn lookups(criterion: &mut Criterion) {
    let users = env_or("SEGD_BENCH_USERS", 1_000_000);
    let segment_count = env_or("SEGD_BENCH_SEGMENTS", 200);
    let started = Instant::now();
    let pack = synthetic_pack(users, segment_count, 20.0, 1);
    let memberships = pack.memberships();
    let built = started.elapsed();
    let started = Instant::now();
    let loaded = LoadedPack::from_pack(pack, 0, BUILT_AT).expect("index builds");
    let state = ServingState::new(1, vec![Arc::new(loaded)]).expect("one pack");
    println!(
        "pack: {users} users, {segment_count} segments, {memberships} memberships; generated in {built:.1?}, indexed in {:.1?}",
        started.elapsed()
    );

    let mut rng = StdRng::seed_from_u64(2);
    // 90 % known users, 10 % strangers, as an ad server would see.
    let queries: Vec<u64> = (0..4096)
        .map(|_| {
            if rng.random_bool(0.9) {
                segd::user_fingerprint(&format!("u:{}", rng.random_range(0..users)))
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
    group.finish();

    for (label, all) in [("listed_20", false), ("all_segments", true)] {
        let mut nanos = Vec::with_capacity(200_000);
        for sample in 0..200_000usize {
            let user = queries[sample % queries.len()];
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
