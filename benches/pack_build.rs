//! Pack build throughput: TSV membership lines to a `Pack` (target: >= 5M
//! input lines/s in release).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::pack::PackBuilder;

const BUILT_AT: i64 = 1_717_200_000;

/// `line_count` lines over `line_count / 4` users and 200 segments; segments
/// below 100 carry last-seen times up to 90 days old.
fn membership_tsv(line_count: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    let user_count = (line_count / 4).max(1) as u64;
    let mut tsv = Vec::with_capacity(line_count * 40);
    for _ in 0..line_count {
        let user = rng.random_range(0..user_count);
        let segment_id: u32 = rng.random_range(0..200);
        if segment_id < 100 {
            let last_seen = BUILT_AT - rng.random_range(0..90 * 86_400);
            tsv.extend_from_slice(
                format!("ifa:{user:016x}-aa\t{segment_id}\t{last_seen}\n").as_bytes(),
            );
        } else {
            tsv.extend_from_slice(format!("ifa:{user:016x}-aa\t{segment_id}\n").as_bytes());
        }
    }
    tsv
}

fn build(tsv: &[u8]) -> segd::pack::Pack {
    let mut builder = PackBuilder::new("bench", "v1", BUILT_AT);
    builder
        .add_memberships(tsv, "bench.tsv", |_| {})
        .expect("parses");
    builder.finish().expect("builds")
}

fn bench_build(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("pack_build");
    group.sample_size(10);
    for line_count in [200_000usize, 2_000_000] {
        let tsv = membership_tsv(line_count);
        group.throughput(Throughput::Elements(line_count as u64));
        group.bench_with_input(
            BenchmarkId::new("tsv_to_pack", line_count),
            &tsv,
            |bencher, tsv| {
                bencher.iter_batched(|| (), |()| black_box(build(tsv)), BatchSize::PerIteration)
            },
        );
        let pack = build(&tsv);
        group.bench_with_input(
            BenchmarkId::new("write_pack", line_count),
            &pack,
            |bencher, pack| {
                bencher.iter(|| black_box(segd::pack::write_pack(pack).expect("writes")))
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_build);
criterion_main!(benches);
