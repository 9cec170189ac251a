//! Pack load time (target: <= 2 ms per 1M memberships in release, checked).
//! Throughput is reported per membership. Rows:
//!
//! - `read_pack`: the checked reader alone (checksums, structure, bitmaps);
//! - `index`: `LoadedPack::from_pack`, the user-major index build alone;
//! - `load`: the whole path a push or start-up pays, bytes to `LoadedPack`:
//!   read and verify, then index.
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
use segd::pack::{Pack, Segment, read_pack, write_pack};
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
        let bytes = write_pack(&pack).expect("writes");
        let memberships = pack.memberships();
        eprintln!(
            "pack_load/{shape}: {} users, {memberships} memberships, {} bytes",
            pack.user_fingerprints.len(),
            bytes.len()
        );
        let size = format!("{shape}/{memberships}");
        group.throughput(Throughput::Elements(memberships));
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
