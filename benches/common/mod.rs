//! Helpers shared by the benches: the synthetic pack generator and the latency
//! distribution printout. Each bench binary uses a different subset, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;

use segd::pack::{Pack, Segment};

/// Build time of the packs the lookup bench generates.
pub const BUILT_AT: i64 = 1_790_000_000;

/// The users of ordinals `0..HEAVY_USERS` of a [`synthetic_pack`] are in
/// every segment: the "all segments of a user with 1,000 segments" case.
pub const HEAVY_USERS: usize = 16;

/// A size from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The user id of synthetic user `number`.
pub fn user_id(number: usize) -> String {
    format!("u:{number}")
}

/// A pack whose segment sizes fall off like real audiences: a few pools of
/// 20–30 % of users, a long tail down to a handful, `per_user` on average.
/// Segment ids are `1..=segments`, most popular first; every fourth segment
/// has a 30-day TTL; last-seen times are up to 90 days before `built_at`.
/// The first [`HEAVY_USERS`] ordinals are in every segment.
pub fn synthetic_pack(
    users: usize,
    segments: usize,
    per_user: f64,
    seed: u64,
    built_at_unix_seconds: i64,
) -> Pack {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut user_fingerprints: Vec<u64> = (0..users)
        .map(|number| segd::user_fingerprint(&user_id(number)))
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
            // The heavy users are in every segment.
            members.insert_range(0..HEAVY_USERS.min(users) as u32);
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
        built_at_unix_seconds,
        user_fingerprints,
        segments,
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * fraction) as usize]
}

/// Prints p50, p99, p99.9 and max of per-call timings in nanoseconds.
pub fn print_distribution(label: &str, mut nanos: Vec<u64>) {
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
