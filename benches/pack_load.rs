//! Pack load time: `read_pack` with every check (target: <= 2 ms per 1M
//! memberships in release). Throughput is reported per membership.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use segd::pack::{Pack, Segment, read_pack, write_pack};

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
    group.sample_size(20);
    for user_count in [200_000u32, 1_000_000] {
        let pack = realistic_pack(user_count);
        let bytes = write_pack(&pack).expect("writes");
        let memberships = pack.memberships();
        eprintln!(
            "pack_load/{user_count}: {memberships} memberships, {} bytes",
            bytes.len()
        );
        group.throughput(Throughput::Elements(memberships));
        group.bench_with_input(
            BenchmarkId::new("read_pack", memberships),
            &bytes,
            |bencher, bytes| bencher.iter(|| black_box(read_pack(bytes).expect("reads"))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
