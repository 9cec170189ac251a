//! Pack load time (target: <= 1 ms per 1M memberships in release, checked).
//! Throughput is reported per membership. Rows:
//!
//! - `load_v2`: the checked load of a format-v2 pack, what a push or start-up
//!   pays now: bytes (already in memory, as after `MAP_POPULATE`) to a
//!   served `LoadedPack` (one checksum pass, structural checks, no decoding);
//! - `checksum_v2`: the whole-file xxh3 pass alone, the floor of `load_v2`;
//! - `read_pack`: the v1 checked reader alone (checksums, structure, bitmaps);
//! - `index`: `LoadedPack::from_pack`, the user-major index build alone;
//! - `load`: the whole v1 path, bytes to `LoadedPack`: read and verify, then
//!   index (before v2, what every push and start-up paid).
//!
//! Packs: `realistic_pack` (50 segments, ~5 memberships per user) and the
//! lookup bench's `synthetic_pack` (1,000 segments, 20 per user).
//!
//! ```sh
//! cargo bench --bench pack_load
//! ```

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use std::sync::Arc;

use segd::pack::{Pack, PackBytes, Segment, read_pack, write_pack_v1, write_pack_v2};
use segd::store::BuildThreads;
use segd::store::LoadedPack;

mod common;

/// `user_count` users; 20 dense segments (20% of users, bitmap containers,
/// with recency) and 30 sparse ones (1 in 30 users, array containers, half
/// with recency): about 5 memberships per user.
fn realistic_pack(user_count: u32) -> Pack {
    let mut rng = StdRng::seed_from_u64(11);
    let mut user_fingerprints: Vec<u64> = (0..user_count).map(|_| rng.random()).collect();
    user_fingerprints.sort_unstable();
    user_fingerprints.dedup();
    let user_count = user_fingerprints.len() as u32;
    let mut segments = Vec::new();
    for id in 0..50u32 {
        let (one_in, with_recency) = if id < 20 {
            (5, true)
        } else {
            (30, id % 2 == 0)
        };
        let members: RoaringBitmap = (0..user_count)
            .filter(|_| rng.random_range(0..one_in) == 0)
            .collect();
        let last_seen_hours_ago = with_recency.then(|| {
            (0..members.len())
                .map(|_| rng.random_range(0..2160))
                .collect()
        });
        segments.push(Segment {
            id: 1000 + id,
            name: format!("segment-{id}"),
            kind: "retargeting".to_string(),
            ttl_seconds: 30 * 86_400,
            members,
            last_seen_hours_ago,
        });
    }
    Pack {
        name: "bench".to_string(),
        version: "v1".to_string(),
        built_at_unix_seconds: 1_717_200_000,
        user_fingerprints,
        segments,
    }
}

fn bench_load(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("pack_load");
    group.sample_size(10);
    let packs = [
        ("5_per_user", realistic_pack(200_000)),
        ("5_per_user", realistic_pack(1_000_000)),
        (
            "20_per_user_1000s",
            common::synthetic_pack(250_000, 1_000, 20.0, 1, common::BUILT_AT),
        ),
    ];
    for (shape, pack) in packs {
        let bytes = write_pack_v1(&pack).expect("writes");
        let v2_bytes = Arc::new(PackBytes::copy_from(&write_pack_v2(&pack).expect("writes")));
        let memberships = pack.memberships();
        eprintln!(
            "pack_load/{shape}: {} users, {memberships} memberships, v1 {} bytes ({:.2} a membership), v2 {} bytes ({:.2} a membership)",
            pack.user_fingerprints.len(),
            bytes.len(),
            bytes.len() as f64 / memberships as f64,
            v2_bytes.len(),
            v2_bytes.len() as f64 / memberships as f64,
        );
        let size = format!("{shape}/{memberships}");
        group.throughput(Throughput::Elements(memberships));
        group.bench_with_input(
            BenchmarkId::new("load_v2", &size),
            &v2_bytes,
            |bencher, bytes| {
                bencher.iter_batched(
                    || Arc::clone(bytes),
                    |bytes| {
                        black_box(
                            LoadedPack::from_bytes(bytes, 0, BuildThreads::One).expect("loads"),
                        )
                    },
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("checksum_v2", &size),
            &v2_bytes,
            |bencher, bytes| {
                bencher.iter(|| black_box(xxhash_rust::xxh3::xxh3_64(bytes.as_bytes())))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("read_pack", &size),
            &bytes,
            |bencher, bytes| bencher.iter(|| black_box(read_pack(bytes).expect("reads"))),
        );
        group.bench_with_input(BenchmarkId::new("index", &size), &pack, |bencher, pack| {
            bencher.iter_batched(
                || pack.clone(),
                |pack| black_box(LoadedPack::from_pack(pack, 0, 0).expect("indexes")),
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("load", &size), &bytes, |bencher, bytes| {
            // Freeing the result is not part of a load: dropped outside the timing.
            bencher.iter_batched(
                || (),
                |()| {
                    let pack = read_pack(bytes).expect("reads");
                    black_box(LoadedPack::from_pack(pack, bytes.len() as u64, 0).expect("indexes"))
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
