//! One generation of serving data: every loaded pack plus the table that says
//! which pack holds each segment id. Immutable once built; a change builds a
//! new value (sharing the untouched packs) and the [`super::Store`] swaps it in.

use std::sync::Arc;

use ahash::AHashMap;

use super::loaded::{LoadedPack, SegmentMeta};

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
    locations: AHashMap<u32, SegmentLocation>,
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

/// How one segment id stands for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    UnknownSegment,
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
        let mut locations = AHashMap::new();
        for (pack_index, pack) in packs.iter().enumerate() {
            for (slot, segment) in pack.segments.iter().enumerate() {
                let location = SegmentLocation {
                    pack_index: pack_index as u16,
                    slot: slot as u16,
                    withheld: withheld[pack_index],
                };
                if let Some(existing) = locations.insert(segment.id, location) {
                    return Err(OwnershipConflict {
                        segment_id: segment.id,
                        owner: packs[existing.pack_index as usize].name.clone(),
                        claimant: pack.name.clone(),
                    });
                }
            }
        }
        Ok(Self {
            generation,
            packs,
            withheld,
            locations,
        })
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
        let location = self.locations.get(&segment_id)?;
        let pack = &self.packs[location.pack_index as usize];
        Some((pack, &pack.segments[location.slot as usize]))
    }

    /// A view of one user across all packs, for several checks in a row.
    pub fn user(&self, fingerprint: u64) -> UserView<'_> {
        UserView {
            state: self,
            // A withheld pack has no members: skipping its dictionary also
            // keeps it out of "all segments".
            ordinals: self
                .packs
                .iter()
                .zip(&self.withheld)
                .map(|(pack, &withheld)| {
                    if withheld {
                        None
                    } else {
                        pack.ordinal(fingerprint)
                    }
                })
                .collect(),
        }
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
        result.segment_ids.sort_unstable();
        result.segment_ids.dedup();
        result.unknown_segment_ids.sort_unstable();
        result.unknown_segment_ids.dedup();
        result
    }
}

/// One user's ordinals in every pack of a state.
pub struct UserView<'state> {
    state: &'state ServingState,
    /// Parallel to `state.packs`.
    ordinals: Vec<Option<u32>>,
}

impl UserView<'_> {
    /// Whether the user is in the segment, recently enough. A yes is counted
    /// in the pack's per-segment match counters (see [`LoadedPack::match_count`]).
    #[inline]
    pub fn membership(
        &self,
        segment_id: u32,
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> Membership {
        let Some(location) = self.state.locations.get(&segment_id) else {
            return Membership::UnknownSegment;
        };
        if location.withheld {
            return Membership::UnknownSegment;
        }
        let Some(ordinal) = self.ordinals[location.pack_index as usize] else {
            return Membership::NotMember;
        };
        let pack = &self.state.packs[location.pack_index as usize];
        match pack.entry(ordinal, location.slot) {
            Some(entry) if pack.counts(location.slot, entry, max_age_seconds, at_unix_seconds) => {
                pack.count_match(location.slot);
                Membership::Member
            }
            _ => Membership::NotMember,
        }
    }

    /// Appends every segment the user is in, recently enough (unsorted across packs).
    pub fn all_segments(&self, max_age_seconds: u32, at_unix_seconds: i64, out: &mut Vec<u32>) {
        for (pack, ordinal) in self.state.packs.iter().zip(&self.ordinals) {
            let Some(ordinal) = *ordinal else { continue };
            for entry in pack.entries_of(ordinal) {
                if pack.counts(entry.slot, *entry, max_age_seconds, at_unix_seconds) {
                    pack.count_match(entry.slot);
                    out.push(pack.segments[entry.slot as usize].id);
                }
            }
        }
    }
}
