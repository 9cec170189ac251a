//! Real-time audiences in process: what 1M overlay entries cost a lookup, and
//! how fast updates and forgets go through the domain (journal included).
//!
//! ```sh
//! cargo bench --bench realtime
//! SEGD_BENCH_OVERLAY_ENTRIES=1000000 SEGD_BENCH_USERS=1000000 cargo bench --bench realtime
//! ```
//!
//! Lookup rows compare the same pack and queries without an overlay and with
//! `SEGD_BENCH_OVERLAY_ENTRIES` entries (two per user, on half the pack's
//! users: about 45 % of queries hit a user the overlay holds something for).
//! Besides criterion's estimates it prints p50/p99/p99.9 of 200,000 timed
//! lookups per state, sampled alternately so both see the same machine.
//! Update and forget rows time `update_members_at` / `forget_users_at` in
//! batches of 10,000 against a journal in a temp dir (`--fsync never`, the
//! write to the OS included).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use segd::freq::{FreqConfig, FreqStore, FsyncPolicy};
use segd::realtime::{NewUpdate, Realtime, RealtimeConfig};
use segd::store::{LoadedPack, MemberOp, Overlay, OverlayEntry, ServingState, Store};

mod common;
use common::{BUILT_AT, env_or, print_distribution, synthetic_pack, user_id};

const BATCH: usize = 10_000;

/// `entries` overlay entries over the first `entries / 2` users, stamped after the build.
fn filled_overlay(entries: usize, users: usize, segments: u32) -> Arc<Overlay> {
    let overlay = Arc::new(Overlay::new());
    let mut rng = StdRng::seed_from_u64(7);
    for index in 0..entries {
        let user = (index / 2) % users;
        let entry = OverlayEntry {
            segment_id: rng.random_range(1..=segments),
            op: if rng.random_bool(0.8) {
                MemberOp::Add
            } else {
                MemberOp::Remove
            },
            last_seen_unix_seconds: BUILT_AT + 60,
            expires_at_unix_seconds: 0,
            stamped_at_unix_millis: (BUILT_AT + 60) * 1000,
        };
        overlay.upsert(segd::user_fingerprint(&user_id(user)), entry);
    }
    overlay
}

fn lookups(criterion: &mut Criterion) {
    let users = env_or("SEGD_BENCH_USERS", 1_000_000);
    let segment_count = env_or("SEGD_BENCH_SEGMENTS", 200);
    let overlay_entries = env_or("SEGD_BENCH_OVERLAY_ENTRIES", 1_000_000);
    let pack = synthetic_pack(users, segment_count, 20.0, 1, BUILT_AT);
    let loaded = Arc::new(LoadedPack::from_pack(pack, 0, BUILT_AT).expect("index builds"));
    let plain = ServingState::new(1, vec![loaded.clone()]).expect("one pack");
    let started = Instant::now();
    let overlay = filled_overlay(overlay_entries, users, segment_count as u32);
    println!(
        "overlay: {} entries in {:.1?}",
        overlay.figures().entries,
        started.elapsed()
    );
    let with_overlay = ServingState::new(1, vec![loaded])
        .expect("one pack")
        .with_overlay(overlay);

    let mut rng = StdRng::seed_from_u64(2);
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
    let at = BUILT_AT + 3600;
    let states = [("no_overlay", &plain), ("overlay", &with_overlay)];

    let mut group = criterion.benchmark_group("realtime_lookup");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(3));
    let mut index = 0usize;
    for (label, state) in states {
        let size = format!("{label}_{overlay_entries}e");
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
    }
    group.finish();

    for all in [false, true] {
        let mut nanos = [Vec::with_capacity(200_000), Vec::with_capacity(200_000)];
        // Alternating blocks of 1,000 distinct users: neither state gets a
        // user the other just pulled into the cache.
        for sample in 0..400_000usize {
            let which = (sample / 1000) % 2;
            let user = queries[sample % queries.len()];
            let segment_ids: &[u32] = if all {
                &[]
            } else {
                &listed[sample % listed.len()]
            };
            let started = Instant::now();
            black_box(states[which].1.lookup(user, segment_ids, 7 * 86_400, at));
            nanos[which].push(started.elapsed().as_nanos() as u64);
        }
        let row = if all { "all_segments" } else { "listed_20" };
        for ((label, _), nanos) in states.iter().zip(nanos) {
            print_distribution(&format!("realtime_lookup/{row}/{label}"), nanos);
        }
    }
}

fn domain(users: usize) -> (tempfile::TempDir, Arc<Realtime>, Arc<FreqStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pack = synthetic_pack(users, 200, 5.0, 3, BUILT_AT);
    let store = Arc::new(Store::new());
    store
        .install(vec![Arc::new(
            LoadedPack::from_pack(pack, 0, BUILT_AT).expect("index builds"),
        )])
        .expect("installs");
    let config = RealtimeConfig {
        dir: dir.path().join("realtime"),
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(10),
        max_overlay_entries: u64::MAX,
        forget_retention_seconds: 30 * 86_400,
    };
    let (realtime, forgotten) =
        Realtime::open(config, store, segd::unix_now_seconds()).expect("opens");
    let mut freq = FreqConfig::new(dir.path().join("freq"));
    freq.fsync = FsyncPolicy::Never;
    let (counters, _) = FreqStore::open_forgetting(freq, &forgotten).expect("opens");
    realtime.set_counters(counters.clone());
    (dir, realtime, counters)
}

fn writes(criterion: &mut Criterion) {
    let users = env_or("SEGD_BENCH_USERS", 1_000_000);
    let (_dir, realtime, _counters) = domain(users);
    let mut rng = StdRng::seed_from_u64(5);
    let batches: Vec<Vec<NewUpdate>> = (0..64)
        .map(|_| {
            (0..BATCH)
                .map(|_| NewUpdate {
                    user_fingerprint: segd::user_fingerprint(&user_id(rng.random_range(0..users))),
                    segment_id: rng.random_range(1..=200),
                    op: MemberOp::Add,
                    last_seen_unix_seconds: 0,
                    expires_at_unix_seconds: 0,
                })
                .collect()
        })
        .collect();
    let forgets: Vec<Vec<u64>> = (0..64)
        .map(|batch| {
            (0..BATCH)
                .map(|user| segd::user_fingerprint(&format!("gone:{batch}:{user}")))
                .collect()
        })
        .collect();
    let mut group = criterion.benchmark_group("realtime_write");
    group.sample_size(20);
    group.throughput(criterion::Throughput::Elements(BATCH as u64));
    let mut index = 0usize;
    group.bench_function(BenchmarkId::new("update_members", BATCH), |bencher| {
        bencher.iter(|| {
            index = index.wrapping_add(1);
            realtime
                .update_members_at(&batches[index % batches.len()], (BUILT_AT + 60) * 1000)
                .expect("applies")
        })
    });
    group.bench_function(BenchmarkId::new("forget_users", BATCH), |bencher| {
        bencher.iter(|| {
            index = index.wrapping_add(1);
            realtime
                .forget_users_at(&forgets[index % forgets.len()], BUILT_AT + 60)
                .expect("forgets")
        })
    });
    group.finish();
    println!("after the runs: {:?}", realtime.figures());
}

criterion_group!(benches, lookups, writes);
criterion_main!(benches);
