//! The serving state's figures for `GET /metrics`: the generation, one set of
//! gauges per served pack, and the per-segment match counters the hot path
//! bumps in each [`LoadedPack`]. Read at scrape time from one `load()`.

use std::sync::Arc;

use prometheus_client::encoding::NoLabelSet;

use super::{LoadedPack, Store};
use crate::telemetry::{Collector, DescriptorEncoder, MetricType};

/// The reporting categories of segment kinds.
const KINDS: [&str; 4] = ["retargeting", "exclusion", "prospecting", "other"];

/// The reporting category of a segment kind: retargeting, exclusion,
/// prospecting, or other (empty or anything else).
pub fn kind_category(kind: &str) -> &'static str {
    KINDS[..3]
        .iter()
        .find(|category| kind.trim().eq_ignore_ascii_case(category))
        .copied()
        .unwrap_or("other")
}

/// The store's collector.
pub struct StoreMetrics(pub Arc<Store>);

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("StoreMetrics")
    }
}

/// A per-pack gauge: name, help, value.
type PackGauge = (&'static str, &'static str, fn(&LoadedPack, &Judged) -> i64);

/// What the freshness policy says of a pack at scrape time.
struct Judged {
    now_unix_seconds: i64,
    stale: bool,
    withheld: bool,
}

const PACK_GAUGES: [PackGauge; 8] = [
    (
        "segd_pack_age_seconds",
        "Seconds since the pack was built (now - built_at).",
        |pack, judged| judged.now_unix_seconds - pack.built_at_unix_seconds,
    ),
    (
        "segd_pack_built_timestamp_seconds",
        "When the pack was built, Unix seconds.",
        |pack, _| pack.built_at_unix_seconds,
    ),
    (
        "segd_pack_users",
        "Users in the pack's dictionary.",
        |pack, _| pack.users() as i64,
    ),
    (
        "segd_pack_memberships",
        "Memberships (user, segment) in the pack.",
        |pack, _| pack.memberships() as i64,
    ),
    ("segd_pack_segments", "Segments in the pack.", |pack, _| {
        pack.segments.len() as i64
    }),
    ("segd_pack_bytes", "Size of the pack file.", |pack, _| {
        pack.file_bytes as i64
    }),
    (
        "segd_pack_stale",
        "1 when the pack is older than its freshness bound.",
        |_, judged| i64::from(judged.stale),
    ),
    (
        "segd_pack_withheld",
        "1 when the pack is stale and not answering (--stale-packs drop).",
        |_, judged| i64::from(judged.withheld),
    ),
];

impl Collector for StoreMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.load_full();
        let now_unix_seconds = crate::unix_now_seconds();
        crate::telemetry::gauge(
            &mut encoder,
            "segd_generation",
            "Generation of the serving state; bumps on every swap.",
            state.generation,
        )?;
        let packs = state.packs();
        let mut info = encoder.encode_descriptor(
            "segd_pack_info",
            "The served version of each pack (value 1).",
            None,
            MetricType::Gauge,
        )?;
        for pack in packs {
            info.encode_family(&[("pack", &pack.name), ("version", &pack.version)])?
                .encode_gauge(&1i64)?;
        }
        let judged: Vec<Judged> = packs
            .iter()
            .map(|pack| Judged {
                now_unix_seconds,
                stale: self.0.freshness().is_stale(
                    &pack.name,
                    pack.built_at_unix_seconds,
                    now_unix_seconds,
                ),
                withheld: state.is_withheld(&pack.name),
            })
            .collect();
        for (name, help, value) in PACK_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pack, judged) in packs.iter().zip(&judged) {
                family
                    .encode_family(&[("pack", &pack.name)])?
                    .encode_gauge(&value(pack, judged))?;
            }
        }
        encode_matches(&mut encoder, packs)
    }
}

/// Matches per segment and per kind.
fn encode_matches(
    encoder: &mut DescriptorEncoder,
    packs: &[Arc<LoadedPack>],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "segd_segment_matches",
        "Membership checks answered yes (Lookup, BatchLookup, Decide), by segment; kind is retargeting, exclusion, prospecting or other.",
        None,
        MetricType::Counter,
    )?;
    let mut kind_totals = [0u64; KINDS.len()];
    for pack in packs {
        for (slot, segment) in pack.segments.iter().enumerate() {
            let category = kind_category(&segment.kind);
            let count = pack.match_count(slot);
            if let Some(index) = KINDS.iter().position(|kind| *kind == category) {
                kind_totals[index] += count;
            }
            let segment_id = segment.id.to_string();
            let labels = [
                ("segment_id", segment_id.as_str()),
                ("pack", pack.name.as_str()),
                ("kind", category),
            ];
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "segd_segment_kind_matches",
        "Membership checks answered yes, by segment kind, summed over the served packs (a dropped pack leaves the sum).",
        None,
        MetricType::Counter,
    )?;
    for (kind, total) in KINDS.iter().zip(kind_totals) {
        family
            .encode_family(&[("kind", *kind)])?
            .encode_counter::<NoLabelSet, _, u64>(&total, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_fall_into_categories() {
        assert_eq!(kind_category("Retargeting"), "retargeting");
        assert_eq!(kind_category(" exclusion "), "exclusion");
        assert_eq!(kind_category(""), "other");
        assert_eq!(kind_category("lookalike"), "other");
    }
}
