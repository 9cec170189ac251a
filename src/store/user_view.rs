//! One user's view of a serving state: the user's index entries in every
//! pack, found once when the view is made, and the membership answer for one
//! segment at a time. Owns the membership rule (the pack's index, recency
//! and TTL, the real-time overlay on top); must never allocate for states of
//! up to [`INLINE_PACKS`] packs, nor find the user again per question: a
//! 50-candidate `Decide` asks ~150 times per request.

use super::index::{EntrySlice, IndexEntry};
use super::loaded::LoadedPack;
use super::overlay::{UserOverlay, UserOverlayRef};
use super::state::{SegmentLocation, ServingState};

/// How one segment id stands for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    UnknownSegment,
}

/// Views over states of at most this many packs keep the per-pack parts
/// inline, so a lookup allocates nothing for them.
const INLINE_PACKS: usize = 8;

/// Words of a [`SlotFilter`]: 512 bits, 64 bytes.
const FILTER_WORDS: usize = 8;

/// One bit per slot modulo 512, set for every slot the user holds an entry
/// for. A clear bit proves the user is not in that segment, so most probes
/// (a user is in ~20 of hundreds of segments) end on one bit test instead of
/// a binary search; a set bit is checked by the search. Exact for packs of at
/// most 512 segments.
#[derive(Debug, Clone, Copy, Default)]
struct SlotFilter([u64; FILTER_WORDS]);

impl SlotFilter {
    fn of(entries: impl IntoIterator<Item = IndexEntry>) -> Self {
        let mut words = [0u64; FILTER_WORDS];
        for entry in entries {
            let (word, bit) = Self::position(entry.slot);
            words[word] |= bit;
        }
        SlotFilter(words)
    }

    #[inline]
    fn position(slot: u16) -> (usize, u64) {
        let bit = slot as usize % (FILTER_WORDS * 64);
        (bit / 64, 1u64 << (bit % 64))
    }

    #[inline]
    fn may_hold(&self, slot: u16) -> bool {
        let (word, bit) = Self::position(slot);
        self.0[word] & bit != 0
    }
}

/// The user in one pack: their entries (empty when the pack does not know
/// them or is withheld), sorted by slot, and the filter over those slots.
#[derive(Debug, Clone, Copy, Default)]
struct InPack<'state> {
    entries: EntrySlice<'state>,
    filter: SlotFilter,
}

impl<'state> InPack<'state> {
    fn of(pack: &'state LoadedPack, withheld: bool, fingerprint: u64) -> Self {
        // A withheld pack has no members: skipping its dictionary also keeps
        // it out of "all segments".
        if withheld {
            return InPack::default();
        }
        let Some(entries) = pack.user_entries(fingerprint) else {
            return InPack::default();
        };
        InPack {
            entries,
            filter: SlotFilter::of(entries),
        }
    }

    /// The user's entry for `slot`, if any.
    #[inline]
    fn entry(&self, slot: u16) -> Option<IndexEntry> {
        if !self.filter.may_hold(slot) {
            return None;
        }
        self.entries.find(slot)
    }
}

// The inline variant is the point: a view lives on the stack for one
// request, and boxing it would be an allocation per `Lookup` and `Decide`.
#[allow(clippy::large_enum_variant)]
enum PerPack<'state> {
    Inline([InPack<'state>; INLINE_PACKS]),
    Heap(Vec<InPack<'state>>),
}

/// One user's entries in every pack of a state.
pub struct UserView<'state> {
    state: &'state ServingState,
    /// Parallel to `state.packs()` (the inline array is longer).
    packs: PerPack<'state>,
    /// The user's real-time record; `None` (the common case) costs nothing.
    overlay: Option<UserOverlayRef<'state>>,
}

impl<'state> UserView<'state> {
    pub(super) fn new(state: &'state ServingState, fingerprint: u64) -> Self {
        let packs = state.packs();
        let withheld = state.withheld_flags();
        let in_pack = |(pack, &withheld): (&'state std::sync::Arc<LoadedPack>, &bool)| {
            InPack::of(pack, withheld, fingerprint)
        };
        let per_pack = if packs.len() <= INLINE_PACKS {
            let mut inline = [InPack::default(); INLINE_PACKS];
            for (slot, pack) in inline.iter_mut().zip(packs.iter().zip(withheld)) {
                *slot = in_pack(pack);
            }
            PerPack::Inline(inline)
        } else {
            PerPack::Heap(packs.iter().zip(withheld).map(in_pack).collect())
        };
        UserView {
            state,
            packs: per_pack,
            overlay: state.overlay().user(fingerprint),
        }
    }

    /// Parallel to the state's packs.
    #[inline]
    fn in_packs(&self) -> &[InPack<'state>] {
        match &self.packs {
            PerPack::Inline(inline) => &inline[..self.state.packs().len()],
            PerPack::Heap(packs) => packs,
        }
    }

    /// Whether the user is in the segment, recently enough. A yes is counted
    /// in the pack's per-segment match counters (see [`LoadedPack::match_count`]).
    ///
    /// Inlined into its callers: a `Decide` makes ~150 of these, and the call
    /// with its saved registers was a third of each probe. The overlay's path
    /// stays out of line (most users have no real-time record).
    #[inline(always)]
    pub fn membership(
        &self,
        segment_id: u32,
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> Membership {
        let Some(location) = self.state.location(segment_id) else {
            return Membership::UnknownSegment;
        };
        if location.withheld {
            return Membership::UnknownSegment;
        }
        if let Some(overlay) = &self.overlay {
            return self.membership_with_overlay(
                overlay,
                location,
                segment_id,
                max_age_seconds,
                at_unix_seconds,
            );
        }
        self.pack_membership(location, max_age_seconds, at_unix_seconds)
    }

    /// What the pack's index says, the overlay aside.
    #[inline(always)]
    fn pack_membership(
        &self,
        location: SegmentLocation,
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> Membership {
        let pack_index = location.pack_index as usize;
        match self.in_packs()[pack_index].entry(location.slot) {
            Some(entry) => {
                let pack = &self.state.packs()[pack_index];
                if pack.counts(location.slot, entry, max_age_seconds, at_unix_seconds) {
                    pack.count_match(location.slot);
                    Membership::Member
                } else {
                    Membership::NotMember
                }
            }
            None => Membership::NotMember,
        }
    }

    /// [`UserView::membership`] for a user the overlay holds something for:
    /// an update on top of the pack answers, else the pack does.
    #[inline(never)]
    fn membership_with_overlay(
        &self,
        overlay: &UserOverlay,
        location: SegmentLocation,
        segment_id: u32,
        max_age_seconds: u32,
        at_unix_seconds: i64,
    ) -> Membership {
        let pack_index = location.pack_index as usize;
        let pack = &self.state.packs()[pack_index];
        match overlay_membership(
            overlay,
            pack,
            self.state.overlay_floor(pack_index),
            location.slot,
            segment_id,
            max_age_seconds,
            at_unix_seconds,
        ) {
            Some(true) => {
                pack.count_match(location.slot);
                Membership::Member
            }
            Some(false) => Membership::NotMember,
            None => self.pack_membership(location, max_age_seconds, at_unix_seconds),
        }
    }

    /// Appends every segment the user is in, recently enough (unsorted across packs).
    pub fn all_segments(&self, max_age_seconds: u32, at_unix_seconds: i64, out: &mut Vec<u32>) {
        if let Some(overlay) = &self.overlay {
            self.all_segments_with_overlay(overlay, max_age_seconds, at_unix_seconds, out);
            return;
        }
        for (pack, user) in self.state.packs().iter().zip(self.in_packs()) {
            for entry in user.entries {
                if pack.counts(entry.slot, entry, max_age_seconds, at_unix_seconds) {
                    pack.count_match(entry.slot);
                    out.push(pack.segments[entry.slot as usize].id);
                }
            }
        }
    }

    /// [`UserView::all_segments`] for a user the overlay holds something for:
    /// pack memberships the overlay overrides are skipped, its adds appended.
    fn all_segments_with_overlay(
        &self,
        overlay: &UserOverlay,
        max_age_seconds: u32,
        at_unix_seconds: i64,
        out: &mut Vec<u32>,
    ) {
        if overlay.forgotten.is_some() {
            return;
        }
        for (pack_index, (pack, user)) in self.state.packs().iter().zip(self.in_packs()).enumerate()
        {
            let floor = self.state.overlay_floor(pack_index);
            for entry in user.entries {
                let segment_id = pack.segments[entry.slot as usize].id;
                let overridden = overlay
                    .entry(segment_id)
                    .is_some_and(|update| update.is_on_top_of(floor));
                if !overridden && pack.counts(entry.slot, entry, max_age_seconds, at_unix_seconds) {
                    pack.count_match(entry.slot);
                    out.push(segment_id);
                }
            }
        }
        for update in &overlay.entries {
            let Some(location) = self.state.location(update.segment_id) else {
                continue;
            };
            if location.withheld {
                continue;
            }
            let pack = &self.state.packs()[location.pack_index as usize];
            if overlay_membership(
                overlay,
                pack,
                self.state.overlay_floor(location.pack_index as usize),
                location.slot,
                update.segment_id,
                max_age_seconds,
                at_unix_seconds,
            ) == Some(true)
            {
                pack.count_match(location.slot);
                out.push(update.segment_id);
            }
        }
    }
}

/// What the overlay says of (user, segment) in `pack`: `None` when it says
/// nothing (the pack answers), else whether the user is a member. A forgotten
/// user is in no segment; an update stamped at or before `floor` (the pack's
/// build or its fold horizon) is folded.
#[inline]
fn overlay_membership(
    overlay: &UserOverlay,
    pack: &LoadedPack,
    floor: i64,
    slot: u16,
    segment_id: u32,
    max_age_seconds: u32,
    at_unix_seconds: i64,
) -> Option<bool> {
    if overlay.forgotten.is_some() {
        return Some(false);
    }
    let update = overlay.entry(segment_id)?;
    if !update.is_on_top_of(floor) {
        return None;
    }
    let ttl_seconds = pack.segments[slot as usize].ttl_seconds;
    Some(update.counts(ttl_seconds, max_age_seconds, at_unix_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter never hides a slot the user holds, whatever the slots
    /// (collisions modulo 512 included), and clears what no entry sets.
    #[test]
    fn slot_filter_holds_every_entry_slot() {
        let slots = [0u16, 1, 63, 64, 511, 512, 513, 1_000, 40_000, u16::MAX];
        let entries: Vec<IndexEntry> = slots
            .iter()
            .map(|&slot| IndexEntry { slot, hours_ago: 0 })
            .collect();
        let filter = SlotFilter::of(entries.iter().copied());
        for slot in slots {
            assert!(filter.may_hold(slot), "slot {slot}");
        }
        assert!(!filter.may_hold(2));
        assert!(!filter.may_hold(300));
        let empty = SlotFilter::of(std::iter::empty());
        assert!((0..=u16::MAX).all(|slot| !empty.may_hold(slot)));
    }
}
