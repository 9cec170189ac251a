//! The synthetic demo pack behind `segd serve --demo`: a few thousand users and
//! a dozen named segments, so a newcomer can query a fresh server at once.
//! Memberships are derived from fingerprints, so every run builds the same pack
//! (bar the build time), and the users named in [`DEMO_QUERIES`] are in the
//! segments the queries ask about.

use std::path::Path;

use roaring::RoaringBitmap;

use crate::pack::{self, Pack, Segment};

pub const DEMO_PACK_NAME: &str = "demo";
pub const DEMO_USERS: u32 = 5000;

/// (id, name, kind, ttl seconds, share of users in per mille).
const DEMO_SEGMENTS: [(u32, &str, &str, u32, u64); 12] = [
    (1, "viewed_product_7d", "retargeting", 7 * 86_400, 300),
    (2, "viewed_product_30d", "retargeting", 30 * 86_400, 450),
    (3, "cart_abandoners", "retargeting", 14 * 86_400, 120),
    (4, "purchasers", "exclusion", 0, 80),
    (5, "newsletter_subscribers", "prospecting", 0, 200),
    (6, "brand_page_visitors", "retargeting", 30 * 86_400, 250),
    (7, "high_value_browsers", "retargeting", 14 * 86_400, 60),
    (8, "app_installers", "exclusion", 0, 100),
    (9, "lookalike_sports", "prospecting", 0, 350),
    (10, "lookalike_travel", "prospecting", 0, 300),
    (11, "churned_customers", "retargeting", 90 * 86_400, 90),
    (12, "loyalty_members", "exclusion", 0, 40),
];

/// The user the printed queries ask about; forced into segments 1, 3 and 7.
pub const DEMO_FEATURED_USER: &str = "demo-user-42";

pub fn demo_user_id(number: u32) -> String {
    format!("demo-user-{number}")
}

/// Builds the demo pack as of `built_at_unix_seconds`.
pub fn demo_pack(built_at_unix_seconds: i64) -> Pack {
    let mut user_fingerprints: Vec<u64> = (1..=DEMO_USERS)
        .map(|number| crate::user_fingerprint(&demo_user_id(number)))
        .collect();
    user_fingerprints.sort_unstable();
    user_fingerprints.dedup();
    let featured = crate::user_fingerprint(DEMO_FEATURED_USER);
    let segments = DEMO_SEGMENTS
        .iter()
        .map(|&(id, name, kind, ttl_seconds, per_mille)| {
            let mut members = RoaringBitmap::new();
            let mut last_seen_hours_ago = Vec::new();
            for (ordinal, &fingerprint) in user_fingerprints.iter().enumerate() {
                let draw =
                    xxhash_rust::xxh3::xxh3_64_with_seed(&fingerprint.to_le_bytes(), id as u64);
                let featured_member = fingerprint == featured && matches!(id, 1 | 3 | 7);
                let excluded_featured = fingerprint == featured && matches!(id, 4 | 8 | 12);
                if excluded_featured || (!featured_member && draw % 1000 >= per_mille) {
                    continue;
                }
                members.insert(ordinal as u32);
                // Spread last-seen times over the segment's TTL (or 60 days);
                // the featured user was seen two hours ago.
                let horizon_hours = if ttl_seconds == 0 {
                    60 * 24
                } else {
                    ttl_seconds as u64 / 3600
                };
                let hours = if featured_member {
                    2
                } else {
                    (draw >> 20) % (horizon_hours + 1)
                };
                last_seen_hours_ago.push(hours as u16);
            }
            Segment {
                id,
                name: name.to_owned(),
                kind: kind.to_owned(),
                ttl_seconds,
                members,
                last_seen_hours_ago: Some(last_seen_hours_ago),
            }
        })
        .collect();
    Pack {
        name: DEMO_PACK_NAME.to_owned(),
        version: "demo-1".to_owned(),
        built_at_unix_seconds,
        user_fingerprints,
        segments,
    }
}

/// Writes the demo pack into a packs directory, atomically.
pub fn write_demo_pack(packs_dir: &Path) -> anyhow::Result<()> {
    let bytes = pack::write_pack(&demo_pack(crate::unix_now_seconds()))?;
    let path = packs_dir.join(format!("{DEMO_PACK_NAME}{}", crate::pack::FILE_SUFFIX));
    pack::write_pack_file_atomic(&bytes, &path)?;
    tracing::info!(path = %path.display(), "wrote the demo pack");
    Ok(())
}

/// Queries that work against a fresh `--demo` server, ready to paste.
pub fn demo_queries(query_addr: &str) -> String {
    format!(
        "Try:\n  \
         cargo run --release -q --bin segctl -- lookup --addr http://{query_addr} {DEMO_FEATURED_USER} --segments 1,3,4\n  \
         cargo run --release -q --bin segctl -- lookup --addr http://{query_addr} {DEMO_FEATURED_USER} --max-age-seconds 86400\n  \
         grpcurl -plaintext -d '{{\"user_id\":\"{DEMO_FEATURED_USER}\",\"segment_ids\":[1,3,4]}}' {query_addr} segd.v1.Segments/Lookup\n"
    )
}
