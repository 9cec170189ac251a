//! Real-time maintenance, off the request path: folding overlay entries the
//! packs carry out of memory, counting forgotten users still in packs, and
//! the records a compacted journal is rewritten with. Called by
//! [`super::Realtime::maintain`] and the writes, under the writer mutex.

use std::sync::Arc;
use std::time::Instant;

use ahash::{AHashMap, AHashSet};
use tracing::warn;

use super::journal::JournalRecord;
use super::{ForgottenInPack, ITEMS_PER_SNAPSHOT_RECORD};
use crate::store::{Forget, OverlayEntry, ServingState};

/// What maintenance remembers between runs; guarded by the writer mutex.
#[derive(Default)]
pub(super) struct MaintenanceState {
    pub(super) folded_generation: u64,
    /// The fold horizons last written to the journal.
    pub(super) journaled_horizons: AHashMap<String, i64>,
    /// (pack, version, loaded_at) → forgotten users it contains.
    pub(super) forgotten_in_packs: AHashMap<(String, String, i64), u64>,
    pub(super) last_forget_expiry: Option<Instant>,
    pub(super) folded_entries_total: u64,
    pub(super) expired_forgets_total: u64,
}

/// Drops the entries at or before their pack's fold horizon from memory
/// (lookups already ignore them).
pub(super) fn fold(
    state: &ServingState,
    overlay: &crate::store::Overlay,
    horizons: &AHashMap<String, i64>,
) -> u64 {
    overlay.retain_entries(|_, entry| {
        // An entry of a segment no pack serves is kept: a rollback of a
        // dropped pack brings the segment back.
        state
            .segment(entry.segment_id)
            .and_then(|(pack, _)| horizons.get(&pack.name))
            .is_none_or(|&horizon| entry.is_on_top_of(horizon))
    })
}

pub(super) fn forgotten_in_packs(
    maintenance: &MaintenanceState,
    state: &ServingState,
) -> Vec<ForgottenInPack> {
    state
        .packs()
        .iter()
        .map(|pack| ForgottenInPack {
            pack: pack.name.clone(),
            version: pack.version.clone(),
            users: maintenance
                .forgotten_in_packs
                .get(&pack_key(pack))
                .copied()
                .unwrap_or(0),
        })
        .collect()
}

pub(super) fn pack_key(pack: &crate::store::LoadedPack) -> (String, String, i64) {
    (
        pack.name.clone(),
        pack.version.clone(),
        pack.loaded_at_unix_seconds,
    )
}

/// Counts the forgotten users of every served pack not counted yet, logging
/// each pack version that still contains some once.
pub(super) fn recount_packs(
    maintenance: &mut MaintenanceState,
    state: &ServingState,
    overlay: &crate::store::Overlay,
) {
    let served: AHashSet<(String, String, i64)> =
        state.packs().iter().map(|pack| pack_key(pack)).collect();
    maintenance
        .forgotten_in_packs
        .retain(|key, _| served.contains(key));
    let uncounted: Vec<&Arc<crate::store::LoadedPack>> = state
        .packs()
        .iter()
        .filter(|pack| !maintenance.forgotten_in_packs.contains_key(&pack_key(pack)))
        .collect();
    if uncounted.is_empty() {
        return;
    }
    let forgotten: Vec<u64> = overlay
        .snapshot()
        .into_iter()
        .filter(|(_, record)| record.forgotten.is_some())
        .map(|(fingerprint, _)| fingerprint)
        .collect();
    for pack in uncounted {
        let users = forgotten
            .iter()
            .filter(|&&fingerprint| pack.ordinal(fingerprint).is_some())
            .count() as u64;
        if users > 0 {
            warn!(
                pack = %pack.name,
                version = %pack.version,
                forgotten_users = users,
                "pack still contains forgotten users; serving it without them"
            );
        }
        maintenance.forgotten_in_packs.insert(pack_key(pack), users);
    }
}

/// Adds users forgotten just now to the counts of the packs containing them.
pub(super) fn count_in_served_packs(
    maintenance: &mut MaintenanceState,
    state: &ServingState,
    newly_forgotten: &[u64],
) {
    for pack in state.packs() {
        let Some(count) = maintenance.forgotten_in_packs.get_mut(&pack_key(pack)) else {
            // Not counted yet: the next maintenance run counts it whole.
            continue;
        };
        *count += newly_forgotten
            .iter()
            .filter(|&&fingerprint| pack.ordinal(fingerprint).is_some())
            .count() as u64;
    }
}

/// The journal records that rebuild the overlay and the fold horizons:
/// forgets before updates (an entry kept for a forgotten user was applied
/// after the forget), and last the fleet stream position (when not 0).
pub(super) fn snapshot_records(
    overlay: &crate::store::Overlay,
    horizons: &AHashMap<String, i64>,
    stream_position: u64,
) -> Vec<JournalRecord> {
    let snapshot = overlay.snapshot();
    let forgets: Vec<(u64, Forget)> = snapshot
        .iter()
        .filter_map(|(fingerprint, record)| record.forgotten.map(|forget| (*fingerprint, forget)))
        .collect();
    let updates: Vec<(u64, OverlayEntry)> = snapshot
        .iter()
        .flat_map(|(fingerprint, record)| record.entries.iter().map(|entry| (*fingerprint, *entry)))
        .collect();
    let mut records = vec![JournalRecord::Horizons(
        horizons
            .iter()
            .map(|(pack, horizon)| (pack.clone(), *horizon))
            .collect(),
    )];
    records.extend(
        forgets
            .chunks(ITEMS_PER_SNAPSHOT_RECORD)
            .map(|chunk| JournalRecord::Forgets(chunk.to_vec())),
    );
    records.extend(
        updates
            .chunks(ITEMS_PER_SNAPSHOT_RECORD)
            .map(|chunk| JournalRecord::Updates(chunk.to_vec())),
    );
    if stream_position > 0 {
        records.push(JournalRecord::Position(stream_position));
    }
    records
}
