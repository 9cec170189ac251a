//! The real-time figures for `GET /metrics`, read at scrape time.

use std::sync::Arc;

use super::{Realtime, RealtimeFigures};
use crate::telemetry::{Collector, DescriptorEncoder, MetricType, counter, gauge};

/// The real-time collector.
pub struct RealtimeMetrics(pub Arc<Realtime>);

impl std::fmt::Debug for RealtimeMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RealtimeMetrics")
    }
}

/// A figure: name, help, how to read it.
type Figure = (&'static str, &'static str, fn(&RealtimeFigures) -> u64);

const GAUGES: [Figure; 4] = [
    (
        "segd_overlay_entries",
        "Real-time (user, segment) updates held on top of the packs.",
        |figures| figures.overlay_entries,
    ),
    (
        "segd_overlay_max_entries",
        "The --max-overlay-entries bound.",
        |figures| figures.max_overlay_entries,
    ),
    (
        "segd_forgotten_users",
        "Forgotten users retained (as fingerprints), applied to every pack.",
        |figures| figures.forgotten_users,
    ),
    (
        "segd_realtime_journal_bytes",
        "Bytes of the real-time journal on disk.",
        |figures| figures.journal_bytes,
    ),
];

/// Counters, named without `_total`, which the encoding appends.
const COUNTERS: [Figure; 5] = [
    (
        "segd_member_updates",
        "Member updates applied through UpdateMembers.",
        |figures| figures.updates_applied_total,
    ),
    (
        "segd_member_update_requests_refused",
        "UpdateMembers requests refused (unknown segment, overlay full, storage).",
        |figures| figures.update_requests_refused_total,
    ),
    (
        "segd_users_forgotten",
        "Users forgotten through ForgetUsers.",
        |figures| figures.users_forgotten_total,
    ),
    (
        "segd_overlay_folded_entries",
        "Overlay entries dropped from memory because the packs carry them.",
        |figures| figures.folded_entries_total,
    ),
    (
        "segd_forgets_expired",
        "Forgets dropped after --forget-retention-days.",
        |figures| figures.expired_forgets_total,
    ),
];

impl Collector for RealtimeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = self.0.figures();
        for (name, help, value) in GAUGES {
            gauge(&mut encoder, name, help, value(&figures) as i64)?;
        }
        for (name, help, value) in COUNTERS {
            counter(&mut encoder, name, help, value(&figures))?;
        }
        let mut family = encoder.encode_descriptor(
            "segd_forgotten_users_in_packs",
            "Forgotten users a served pack still contains (served without them): its batch job missed the deletion.",
            None,
            MetricType::Gauge,
        )?;
        for pack in self.0.forgotten_in_packs() {
            family
                .encode_family(&[("pack", &pack.pack), ("version", &pack.version)])?
                .encode_gauge(&(pack.users as i64))?;
        }
        Ok(())
    }
}
