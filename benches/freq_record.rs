//! `FreqStore::record` throughput per fsync policy (batches of 100 impressions,
//! 2 cap keys each, unique impression ids), single caller and 4 concurrent
//! callers (group commit), and the cost of `count`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use segd::freq::{FreqConfig, FreqStore, FsyncPolicy, NewImpression};

const BATCH_IMPRESSIONS: u64 = 100;
const USERS: u64 = 1_000_000;

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> Arc<FreqStore> {
    let config = FreqConfig {
        fsync,
        fsync_interval: Duration::from_millis(10),
        checkpoint_interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
        ..FreqConfig::new(dir)
    };
    FreqStore::open(config).expect("open").0
}

fn make_batch(next_id: &AtomicU64, now: i64) -> Vec<NewImpression> {
    (0..BATCH_IMPRESSIONS)
        .map(|_| {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let user = xxhash_rust::xxh3::xxh3_64(&(id % USERS).to_le_bytes());
            NewImpression {
                user_fingerprint: user,
                cap_keys: vec![format!("li:{}", id % 50), format!("camp:{}", id % 7)],
                at_unix_seconds: now - (id % 3_600) as i64,
                impression_id: format!("bid-{id}"),
            }
        })
        .collect()
}

fn policy_name(policy: FsyncPolicy) -> &'static str {
    match policy {
        FsyncPolicy::Never => "never",
        FsyncPolicy::Interval => "interval_10ms",
        FsyncPolicy::Always => "always",
    }
}

fn bench_record(criterion: &mut Criterion) {
    let now = segd::unix_now_seconds();
    let mut group = criterion.benchmark_group("record");
    group.throughput(Throughput::Elements(BATCH_IMPRESSIONS));
    for policy in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval,
        FsyncPolicy::Always,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), policy);
        let next_id = AtomicU64::new(0);
        group.bench_function(
            BenchmarkId::new(policy_name(policy), "1_caller"),
            |bencher| {
                bencher.iter_batched(
                    || make_batch(&next_id, now),
                    |batch| store.record(&batch).expect("record"),
                    BatchSize::SmallInput,
                )
            },
        );
        // 4 callers at once: the writer commits their records together.
        group.bench_function(
            BenchmarkId::new(policy_name(policy), "4_callers"),
            |bencher| {
                bencher.iter_custom(|iterations| {
                    let per_caller = iterations.div_ceil(4);
                    let batches: Vec<Vec<Vec<NewImpression>>> = (0..4)
                        .map(|_| (0..per_caller).map(|_| make_batch(&next_id, now)).collect())
                        .collect();
                    let started = Instant::now();
                    std::thread::scope(|scope| {
                        for caller_batches in &batches {
                            let store = &store;
                            scope.spawn(move || {
                                for batch in caller_batches {
                                    store.record(batch).expect("record");
                                }
                            });
                        }
                    });
                    // Scale to the time per batch of the iterations asked for.
                    started
                        .elapsed()
                        .mul_f64(iterations as f64 / (4 * per_caller) as f64)
                })
            },
        );
        store.shutdown().expect("shutdown");
    }
    group.finish();
}

fn bench_count(criterion: &mut Criterion) {
    let now = segd::unix_now_seconds();
    let mut group = criterion.benchmark_group("count");
    for users in [100_000u64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), FsyncPolicy::Never);
        let next_id = AtomicU64::new(0);
        // About 5 impressions per (user, key).
        while next_id.load(Ordering::Relaxed) < users * 5 {
            let mut batch = make_batch(&next_id, now);
            for impression in &mut batch {
                impression.user_fingerprint %= users;
            }
            store.record(&batch).expect("record");
        }
        let mut user = 0u64;
        group.bench_function(BenchmarkId::new("one_cap", users), |bencher| {
            bencher.iter(|| {
                user = (user + 7_919) % users;
                black_box(store.count(black_box(user), "li:7", now - 86_400, now))
            })
        });
        let key_hash = segd::freq::cap_key_hash("li:7");
        group.bench_function(BenchmarkId::new("one_cap_prehashed", users), |bencher| {
            bencher.iter(|| {
                user = (user + 7_919) % users;
                black_box(store.count_hashed(black_box(user), key_hash, now - 86_400, now))
            })
        });
        // A Decide of 50 candidates with 2 caps each: 100 caps of one user.
        let queries: Vec<segd::freq::CountQuery> = (0..100)
            .map(|index| segd::freq::CountQuery {
                cap_key_hash: segd::freq::cap_key_hash(&if index % 2 == 0 {
                    format!("li:{}", index % 50)
                } else {
                    format!("camp:{}", index % 7)
                }),
                after_exclusive: now - 86_400,
                until_inclusive: now,
            })
            .collect();
        let mut counts = Vec::with_capacity(queries.len());
        group.bench_function(BenchmarkId::new("count_many_100_caps", users), |bencher| {
            bencher.iter(|| {
                user = (user + 7_919) % users;
                counts.clear();
                store.count_many(black_box(user), &queries, &mut counts);
                black_box(&counts);
            })
        });
        store.shutdown().expect("shutdown");
    }
    group.finish();
}

/// A checkpoint of 200k users x 2 keys: the pause `record` sees (the maps are
/// copied under the apply gate) is part of it; the write and fsync are not.
fn bench_checkpoint(criterion: &mut Criterion) {
    let now = segd::unix_now_seconds();
    let mut group = criterion.benchmark_group("checkpoint");
    group.sample_size(10);
    let users = 200_000u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), FsyncPolicy::Never);
    let next_id = AtomicU64::new(0);
    while next_id.load(Ordering::Relaxed) < users {
        let mut batch = make_batch(&next_id, now);
        for impression in &mut batch {
            impression.user_fingerprint %= users;
        }
        store.record(&batch).expect("record");
    }
    let entries = store.stats().entries;
    group.bench_function(BenchmarkId::new("write", entries), |bencher| {
        bencher.iter_batched(
            || make_batch(&next_id, now),
            |batch| {
                store.record(&batch).expect("record");
                store.checkpoint().expect("checkpoint");
            },
            BatchSize::SmallInput,
        )
    });
    let stats = store.stats();
    println!(
        "checkpoint of {} entries: pause for record {} µs, total {} µs",
        stats.entries, stats.last_checkpoint_pause_micros, stats.last_checkpoint_micros
    );
    store.shutdown().expect("shutdown");
    group.finish();
}

criterion_group!(benches, bench_record, bench_count, bench_checkpoint);
criterion_main!(benches);
