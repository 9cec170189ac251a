//! What the services count beyond RPC codes: `Decide` answers by reason, and
//! pushes, rollbacks and drops by outcome. Each is a collector the
//! composition root registers; the services hold the same `Arc`.
//!
//! Hot-path rule: recording is a relaxed atomic add into a preallocated
//! array, never a lock or an allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::NoLabelSet;

use crate::fleet::pack_sync::FleetChangeError;
use crate::proto::Reason;
use crate::store::catalog::CatalogError;
use crate::telemetry::{Collector, DescriptorEncoder, MetricType};

/// `Reason` values are 0..REASONS.
const REASONS: usize = Reason::FrequencyCapped as usize + 1;

/// `Decide` decisions by reason.
#[derive(Debug, Default)]
pub struct DecideCounters {
    /// Indexed by `Reason`.
    by_reason: [AtomicU64; REASONS],
}

impl DecideCounters {
    /// Counts the reasons of a `Decide` answer.
    /// Counts locally first: one atomic add per reason seen, not one per
    /// decision (50 per request, on a cache line every worker writes).
    pub fn record(&self, decisions: &crate::decide::Decisions) {
        let mut by_reason = [0u64; REASONS];
        for reason in decisions.reasons() {
            let reason = (reason as usize).min(REASONS - 1);
            by_reason[reason] += 1;
        }
        for (counter, count) in self.by_reason.iter().zip(by_reason) {
            if count > 0 {
                counter.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}

impl Collector for DecideCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "segd_decide_decisions",
            "Decide decisions, by reason.",
            None,
            MetricType::Counter,
        )?;
        // UNSPECIFIED is never answered.
        for (index, count) in self.by_reason.iter().enumerate().skip(1) {
            let Ok(reason) = Reason::try_from(index as i32) else {
                continue;
            };
            family
                .encode_family(&[("reason", reason.as_str_name())])?
                .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

/// A change to what is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackChange {
    Push,
    Rollback,
    Drop,
}

impl PackChange {
    const ALL: [PackChange; 3] = [PackChange::Push, PackChange::Rollback, PackChange::Drop];

    fn label(self) -> &'static str {
        match self {
            PackChange::Push => "push",
            PackChange::Rollback => "rollback",
            PackChange::Drop => "drop",
        }
    }
}

/// Why a change was refused: the catalog's errors, plus what the admin
/// service refuses before the catalog sees a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InvalidPack,
    InvalidIndex,
    Ownership,
    OlderVersion,
    InvalidPackName,
    NoSuchPack,
    NoPreviousVersion,
    DamagedPack,
    Storage,
    TooLarge,
    EmptyStream,
    StreamError,
    /// Another push was being received or verified (one at a time).
    Busy,
    /// A pack of another shard or shard count than `--shard`.
    WrongShard,
}

impl Refusal {
    const ALL: [Refusal; 14] = [
        Refusal::InvalidPack,
        Refusal::InvalidIndex,
        Refusal::Ownership,
        Refusal::OlderVersion,
        Refusal::InvalidPackName,
        Refusal::NoSuchPack,
        Refusal::NoPreviousVersion,
        Refusal::DamagedPack,
        Refusal::Storage,
        Refusal::TooLarge,
        Refusal::EmptyStream,
        Refusal::StreamError,
        Refusal::Busy,
        Refusal::WrongShard,
    ];

    /// The `reason` label: short and stable, dashboards select on it.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::InvalidPack => "invalid_pack",
            Refusal::InvalidIndex => "invalid_index",
            Refusal::Ownership => "ownership",
            Refusal::OlderVersion => "older_version",
            Refusal::InvalidPackName => "invalid_pack_name",
            Refusal::NoSuchPack => "no_such_pack",
            Refusal::NoPreviousVersion => "no_previous_version",
            Refusal::DamagedPack => "damaged_pack",
            Refusal::Storage => "storage",
            Refusal::TooLarge => "too_large",
            Refusal::EmptyStream => "empty_stream",
            Refusal::StreamError => "stream_error",
            Refusal::WrongShard => "wrong_shard",
            Refusal::Busy => "busy",
        }
    }
}

impl From<&CatalogError> for Refusal {
    fn from(error: &CatalogError) -> Self {
        match error {
            CatalogError::Pack(_) => Refusal::InvalidPack,
            CatalogError::Index(_) => Refusal::InvalidIndex,
            CatalogError::Ownership(_) => Refusal::Ownership,
            CatalogError::OlderVersion { .. } => Refusal::OlderVersion,
            CatalogError::InvalidPackName(_) => Refusal::InvalidPackName,
            CatalogError::WrongShard { .. } => Refusal::WrongShard,
            CatalogError::NoSuchPack(_) => Refusal::NoSuchPack,
            CatalogError::NoPreviousVersion(_) => Refusal::NoPreviousVersion,
            CatalogError::Damaged { .. } => Refusal::DamagedPack,
            CatalogError::Io { .. } => Refusal::Storage,
        }
    }
}

/// The refusal a failed fleet change is counted under. Here, not in
/// `fleet`, so that the fleet never imports the gRPC layer.
impl From<&FleetChangeError> for Refusal {
    fn from(error: &FleetChangeError) -> Self {
        match error {
            FleetChangeError::Catalog(error) => Refusal::from(error),
            FleetChangeError::LineItems(_) => Refusal::InvalidPack,
            FleetChangeError::Unavailable(_) => Refusal::Storage,
            FleetChangeError::Precondition(_) => Refusal::NoPreviousVersion,
        }
    }
}

/// Outcome slots per change: ok, unchanged, then one per refusal.
const OUTCOMES: usize = 2 + Refusal::ALL.len();

/// Pushes, rollbacks and drops by outcome.
#[derive(Debug, Default)]
pub struct PackChanges {
    /// Indexed by [`PackChange`], then by outcome slot.
    counts: [[AtomicU64; OUTCOMES]; PackChange::ALL.len()],
}

impl PackChanges {
    /// Counts a change that took effect; `unchanged` for a re-push of the
    /// served version.
    pub fn record_ok(&self, change: PackChange, unchanged: bool) {
        self.counts[change as usize][usize::from(unchanged)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_refused(&self, change: PackChange, refusal: Refusal) {
        self.counts[change as usize][2 + refusal as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for PackChanges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "segd_pack_changes",
            "Pushes, rollbacks and drops: ok, unchanged (re-push of the served version), or refused by reason.",
            None,
            MetricType::Counter,
        )?;
        for change in PackChange::ALL {
            let slots = &self.counts[change as usize];
            let mut sample = |result: &str, reason: &str, count: u64| {
                let labels = [
                    ("operation", change.label()),
                    ("result", result),
                    ("reason", reason),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)
            };
            sample("ok", "", slots[0].load(Ordering::Relaxed))?;
            if change == PackChange::Push {
                sample("unchanged", "", slots[1].load(Ordering::Relaxed))?;
            }
            // Refusals once seen: most never happen.
            for refusal in Refusal::ALL {
                let count = slots[2 + refusal as usize].load(Ordering::Relaxed);
                if count > 0 {
                    sample("refused", refusal.label(), count)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_index_their_slots() {
        for (index, refusal) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal as usize, index);
        }
        assert_eq!(
            Refusal::from(&CatalogError::NoSuchPack("x".into())),
            Refusal::NoSuchPack
        );
    }
}
