//! One generation of serving data: every loaded pack plus the table that says
//! which pack holds each segment id. Immutable once built; a change builds a
//! new value (sharing the untouched packs) and the [`super::Store`] swaps it in.

use std::sync::Arc;

use ahash::AHashMap;

use super::loaded::{LoadedPack, SegmentMeta};
use super::overlay::Overlay;
use super::user_view::{Membership, UserView};

/// Where a segment id lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLocation {
    /// Index into [`ServingState::packs`].
    pub pack_index: u16,
    /// Index into that pack's segment table.
    pub slot: u16,
    /// The pack is withheld (stale under `--stale-packs drop`): the segment
    /// answers as unknown. Kept here so the hot path pays no extra load.
    pub withheld: bool,
}

#[derive(Debug, Default)]
pub struct ServingState {
    /// Bumps on every swap.
    pub generation: u64,
    /// Sorted by name; at most one pack of each name.
    packs: Vec<Arc<LoadedPack>>,
    /// Parallel to `packs`: withheld packs still own their segment ids (a push
    /// cannot take them) but answer nothing.
    withheld: Vec<bool>,
    locations: SegmentLocations,
    /// Real-time updates and forgotten users, shared by every generation;
    /// consulted after the pack index answered.
    overlay: Arc<Overlay>,
    /// Parallel to `packs`: overlay entries stamped at or before this are
    /// folded for good (every version served since carries them), whatever
    /// the build time of the version served now. See `Store::install_at`.
    fold_horizons: Vec<i64>,
}

/// Segment id → location. Batch jobs number segments densely (1..n or a
/// few ranges), so a table indexed by id answers with one load where a hash
/// map costs a hash and a probe per segment of every request; ids too sparse
/// for a table fall back to the map.
#[derive(Debug)]
enum SegmentLocations {
    /// `table[id]`; [`ABSENT`] where no pack holds the id.
    Dense(Vec<SegmentLocation>),
    Sparse(AHashMap<u32, SegmentLocation>),
}

/// Marks a free entry of [`SegmentLocations::Dense`]; its pack index is
/// never a real one (a state holds far fewer than 65,535 packs).
const ABSENT: SegmentLocation = SegmentLocation {
    pack_index: u16::MAX,
    slot: u16::MAX,
    withheld: false,
};

/// A dense table may have at most this many entries per segment (plus
/// [`DENSE_SLACK`]): at 4 bytes an entry, a few bytes per id held.
const DENSE_ENTRIES_PER_SEGMENT: usize = 4;
const DENSE_SLACK: usize = 4096;

impl Default for SegmentLocations {
    fn default() -> Self {
        SegmentLocations::Dense(Vec::new())
    }
}

impl SegmentLocations {
    fn new(located: &[(u32, SegmentLocation)]) -> Self {
        let max_id = located.iter().map(|(id, _)| *id as usize).max();
        match max_id {
            Some(max_id) if max_id >= located.len() * DENSE_ENTRIES_PER_SEGMENT + DENSE_SLACK => {
                SegmentLocations::Sparse(located.iter().copied().collect())
            }
            _ => {
                let mut table = vec![ABSENT; max_id.map_or(0, |max_id| max_id + 1)];
                for &(id, location) in located {
                    table[id as usize] = location;
                }
                SegmentLocations::Dense(table)
            }
        }
    }

    /// One load and one compare for the dense table (every membership probe
    /// starts here); the map's hashing stays out of line.
    #[inline]
    fn get(&self, segment_id: u32) -> Option<SegmentLocation> {
        match self {
            SegmentLocations::Dense(table) => match table.get(segment_id as usize) {
                // Only `ABSENT` has this pack index (see there).
                Some(location) if location.pack_index != ABSENT.pack_index => Some(*location),
                _ => None,
            },
            SegmentLocations::Sparse(map) => sparse_location(map, segment_id),
        }
    }
}

#[inline(never)]
fn sparse_location(
    map: &AHashMap<u32, SegmentLocation>,
    segment_id: u32,
) -> Option<SegmentLocation> {
    map.get(&segment_id).copied()
}

/// A segment id that two packs would both hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment_id} is owned by pack {owner:?}, refused for pack {claimant:?}")]
pub struct OwnershipConflict {
    pub segment_id: u32,
    pub owner: String,
    pub claimant: String,
}

/// The answer to one lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupResult {
    /// Ascending, no duplicates.
    pub segment_ids: Vec<u32>,
    /// Asked for but held by no pack; ascending, no duplicates.
    pub unknown_segment_ids: Vec<u32>,
}

impl ServingState {
    /// A state holding `packs` (any order), refusing segment ids held twice.
    pub fn new(generation: u64, packs: Vec<Arc<LoadedPack>>) -> Result<Self, OwnershipConflict> {
        Self::with_withheld(generation, packs, |_| false)
    }

    /// Like [`ServingState::new`], withholding the packs `is_withheld` names:
    /// they stay listed and keep their segment ids, but answer nothing.
    pub fn with_withheld(
        generation: u64,
        mut packs: Vec<Arc<LoadedPack>>,
        is_withheld: impl Fn(&LoadedPack) -> bool,
    ) -> Result<Self, OwnershipConflict> {
        packs.sort_by(|left, right| left.name.cmp(&right.name));
        let withheld: Vec<bool> = packs.iter().map(|pack| is_withheld(pack)).collect();
        let mut owners: AHashMap<u32, SegmentLocation> = AHashMap::new();
        let mut located = Vec::new();
        for (pack_index, pack) in packs.iter().enumerate() {
            for (slot, segment) in pack.segments.iter().enumerate() {
                let location = SegmentLocation {
                    pack_index: pack_index as u16,
                    slot: slot as u16,
                    withheld: withheld[pack_index],
                };
                if let Some(existing) = owners.insert(segment.id, location) {
                    return Err(OwnershipConflict {
                        segment_id: segment.id,
                        owner: packs[existing.pack_index as usize].name.clone(),
                        claimant: pack.name.clone(),
                    });
                }
                located.push((segment.id, location));
            }
        }
        Ok(Self {
            generation,
            packs,
            withheld,
            locations: SegmentLocations::new(&located),
            overlay: Arc::default(),
            fold_horizons: Vec::new(),
        })
    }

    /// This state with each pack's fold horizon as `horizon_of` says.
    pub fn with_fold_horizons(mut self, horizon_of: impl Fn(&LoadedPack) -> i64) -> Self {
        self.fold_horizons = self.packs.iter().map(|pack| horizon_of(pack)).collect();
        self
    }

    /// The fold horizon of the named pack (`i64::MIN` when nothing is folded).
    pub fn fold_horizon(&self, name: &str) -> Option<i64> {
        let index = self.packs.iter().position(|pack| pack.name == name)?;
        Some(self.horizon_at(index))
    }

    /// Overlay entries of the pack at `pack_index` count when stamped after this.
    #[inline]
    pub(super) fn overlay_floor(&self, pack_index: usize) -> i64 {
        self.packs[pack_index]
            .built_at_unix_seconds
            .max(self.horizon_at(pack_index))
    }

    #[inline]
    fn horizon_at(&self, pack_index: usize) -> i64 {
        self.fold_horizons
            .get(pack_index)
            .copied()
            .unwrap_or(i64::MIN)
    }

    /// This state answering with `overlay` on top of its packs.
    pub fn with_overlay(mut self, overlay: Arc<Overlay>) -> Self {
        self.overlay = overlay;
        self
    }

    /// The real-time overlay this state consults.
    pub fn overlay(&self) -> &Arc<Overlay> {
        &self.overlay
    }

    /// Refuses a pack that would take a segment id another pack serves.
    pub fn check_ownership(&self, candidate: &LoadedPack) -> Result<(), OwnershipConflict> {
        for segment in &candidate.segments {
            if let Some((owner, _)) = self.segment(segment.id)
                && owner.name != candidate.name
            {
                return Err(OwnershipConflict {
                    segment_id: segment.id,
                    owner: owner.name.clone(),
                    claimant: candidate.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The packs of this state with `replacement` in place of (or beside) the
    /// pack of the same name.
    pub fn packs_with(&self, replacement: Arc<LoadedPack>) -> Vec<Arc<LoadedPack>> {
        let mut packs: Vec<Arc<LoadedPack>> = self
            .packs
            .iter()
            .filter(|pack| pack.name != replacement.name)
            .cloned()
            .collect();
        packs.push(replacement);
        packs
    }

    /// The packs of this state without the named one.
    pub fn packs_without(&self, name: &str) -> Vec<Arc<LoadedPack>> {
        self.packs
            .iter()
            .filter(|pack| pack.name != name)
            .cloned()
            .collect()
    }

    pub fn packs(&self) -> &[Arc<LoadedPack>] {
        &self.packs
    }

    pub fn pack(&self, name: &str) -> Option<&Arc<LoadedPack>> {
        self.packs.iter().find(|pack| pack.name == name)
    }

    /// Whether the named pack is served but withheld (stale, `--stale-packs drop`).
    pub fn is_withheld(&self, name: &str) -> bool {
        self.packs
            .iter()
            .zip(&self.withheld)
            .any(|(pack, &withheld)| withheld && pack.name == name)
    }

    pub fn segment(&self, segment_id: u32) -> Option<(&LoadedPack, &SegmentMeta)> {
        let location = self.locations.get(segment_id)?;
        let pack = &self.packs[location.pack_index as usize];
        Some((pack, &pack.segments[location.slot as usize]))
    }

    /// A view of one user across all packs, for several checks in a row.
    pub fn user(&self, fingerprint: u64) -> UserView<'_> {
        UserView::new(self, fingerprint)
    }

    /// Where the segment lives, for the user view's probes.
    #[inline]
    pub(super) fn location(&self, segment_id: u32) -> Option<SegmentLocation> {
        self.locations.get(segment_id)
    }

    /// Parallel to [`ServingState::packs`]: whether each is withheld.
    pub(super) fn withheld_flags(&self) -> &[bool] {
        &self.withheld
    }

    /// Which of `segment_ids` (every segment when empty) the user is in, with
    /// `max_age_seconds` (0 = any) measured at `at_unix_seconds`.
    pub fn lookup(
        &self,
        fingerprint: u64,
        segment_ids: &[u32],
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> LookupResult {
        let user = self.user(fingerprint);
        let mut result = LookupResult::default();
        if segment_ids.is_empty() {
            user.all_segments(max_age_seconds, at_unix_seconds, &mut result.segment_ids);
        } else {
            for &segment_id in segment_ids {
                match user.membership(segment_id, max_age_seconds, at_unix_seconds) {
                    Membership::Member => result.segment_ids.push(segment_id),
                    Membership::NotMember => {}
                    Membership::UnknownSegment => result.unknown_segment_ids.push(segment_id),
                }
            }
        }
        sort_unique(&mut result.segment_ids);
        sort_unique(&mut result.unknown_segment_ids);
        result
    }
}

/// Sorts ascending and removes duplicates, skipping the sort when the ids
/// already are (one pack's segments come out of the index in id order).
fn sort_unique(ids: &mut Vec<u32>) {
    if ids.windows(2).all(|pair| pair[0] < pair[1]) {
        return;
    }
    ids.sort_unstable();
    ids.dedup();
}

#[cfg(test)]
mod tests {
    use roaring::RoaringBitmap;

    use super::*;
    use crate::pack::{Pack, Segment};

    fn pack(name: &str, segment_ids: &[u32]) -> Arc<LoadedPack> {
        let segments = segment_ids
            .iter()
            .map(|&id| Segment {
                id,
                name: format!("s{id}"),
                kind: String::new(),
                ttl_seconds: 0,
                members: RoaringBitmap::from_iter([0u32]),
                last_seen_hours_ago: None,
            })
            .collect();
        let pack = Pack {
            name: name.into(),
            version: "v1".into(),
            built_at_unix_seconds: 1_000_000,
            user_fingerprints: vec![42, 43],
            segments,
        };
        Arc::new(LoadedPack::from_pack(pack, 0, 0).expect("indexes"))
    }

    /// Dense ids use the table, far-apart ids the map: both answer alike.
    #[test]
    fn dense_and_sparse_segment_ids_answer_alike() {
        for (first, second) in [(&[1u32, 2][..], &[7u32][..]), (&[1, 4_000_000_000], &[7])] {
            let state =
                ServingState::new(1, vec![pack("a", first), pack("b", second)]).expect("state");
            let mut asked: Vec<u32> = first.iter().chain(second).copied().collect();
            asked.push(9);
            let result = state.lookup(42, &asked, 0, 1_000_000);
            let mut expected: Vec<u32> = first.iter().chain(second).copied().collect();
            expected.sort_unstable();
            assert_eq!(result.segment_ids, expected);
            assert_eq!(result.unknown_segment_ids, vec![9]);
            assert!(
                state
                    .lookup(43, &asked, 0, 1_000_000)
                    .segment_ids
                    .is_empty()
            );
            assert!(state.segment(4_000_000_001).is_none());
            assert_eq!(
                state.segment(7).map(|(pack, _)| pack.name.as_str()),
                Some("b")
            );
        }
    }
}
