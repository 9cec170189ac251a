//! `Decide`: targeting plus frequency caps for many candidate line items at once.
//!
//! A candidate is eligible when the user is in none of `none_of`, in every
//! `all_of`, in at least one `any_of` (when any are given), and every cap has
//! room (count < limit). When several fail, the first in the order EXCLUDED,
//! NOT_IN_AUDIENCE, FREQUENCY_CAPPED is reported, with `detail` naming the
//! segment or cap key. Unknown segments are non-members.
//!
//! This reads candidates through `candidate::CandidateView`, a borrowed view
//! of the wire types or of a request's bytes: a 50-candidate request
//! converted into a parallel owned struct would cost allocations per request.
//! Targeting is answered for every candidate first; then the caps of the
//! candidates still in the running are counted in one call (one shard lock).
//! Requests are validated by the caller (`api::limits`).

mod decisions;

pub use decisions::{DecisionView, Decisions};

use decisions::Answer;

use crate::candidate::{CandidateView, CapView};
use crate::freq::{CapWindow, CountQuery, FreqStore, cap_key_hash};
use crate::proto::{self, Candidate, Decision, Reason, SegmentRef};
use crate::store::{Membership, ServingState, UserView};

/// A candidate of one `Decide`: inline in the request (an owned message,
/// or a view of the request's bytes), or a registered line item (`None`
/// when its id is not registered).
#[derive(Debug, Clone, Copy)]
pub enum CandidateRef<'a> {
    Inline(&'a Candidate),
    View(CandidateView<'a>),
    Registered {
        id: &'a str,
        line_item: Option<&'a Candidate>,
    },
}

impl<'a> CandidateRef<'a> {
    /// The id the decision answers to: the candidate's own, or the
    /// registered id asked for (the registry is keyed by the line item's id).
    pub fn id(&self) -> &'a str {
        match *self {
            CandidateRef::Inline(candidate) => &candidate.id,
            CandidateRef::View(candidate) => candidate.id,
            CandidateRef::Registered { id, .. } => id,
        }
    }

    fn definition(&self) -> Option<CandidateView<'a>> {
        match *self {
            CandidateRef::Inline(candidate) => Some(candidate.into()),
            CandidateRef::View(candidate) => Some(candidate),
            CandidateRef::Registered { line_item, .. } => line_item.map(CandidateView::from),
        }
    }
}

/// The decisions for `candidates`, in order.
pub fn decide(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[Candidate],
    at_unix_seconds: i64,
    retention_seconds: i64,
) -> Vec<Decision> {
    let refs: Vec<CandidateRef<'_>> = candidates.iter().map(CandidateRef::Inline).collect();
    decide_refs(
        state,
        counters,
        user_fingerprint,
        &refs,
        at_unix_seconds,
        retention_seconds,
    )
}

/// [`decide`] over inline candidates and registered line items, as owned
/// messages (each id and detail copied into its own `String`).
pub fn decide_refs(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[CandidateRef<'_>],
    at_unix_seconds: i64,
    retention_seconds: i64,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = Vec::with_capacity(candidates.len());
    decide_into(
        state,
        counters,
        user_fingerprint,
        candidates,
        at_unix_seconds,
        retention_seconds,
        &mut decisions,
    );
    for (candidate, decision) in candidates.iter().zip(&mut decisions) {
        decision.candidate_id = candidate.id().to_owned();
    }
    decisions
}

/// [`decide_refs`] in the server's form: no ids (the `Decide` handler's
/// encoder reads them from the request) and every detail in one buffer.
pub fn decide_unnamed(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[CandidateRef<'_>],
    at_unix_seconds: i64,
    retention_seconds: i64,
) -> Decisions {
    let mut decisions = Decisions::with_capacity(candidates.len());
    decide_into(
        state,
        counters,
        user_fingerprint,
        candidates,
        at_unix_seconds,
        retention_seconds,
        &mut decisions,
    );
    decisions
}

/// The decisions for `candidates`, appended to `decisions` in order.
fn decide_into(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[CandidateRef<'_>],
    at_unix_seconds: i64,
    retention_seconds: i64,
    decisions: &mut impl Answer,
) {
    let user = state.user(user_fingerprint);
    let mut cap_count = 0usize;
    for candidate in candidates {
        match candidate.definition() {
            Some(definition) => {
                if targeting(&user, &definition, at_unix_seconds, decisions) {
                    cap_count += definition.caps.len();
                }
            }
            None => decisions.push_unknown_line_item(),
        }
    }
    if cap_count == 0 {
        return;
    }
    let mut queries: Vec<CountQuery> = Vec::with_capacity(cap_count);
    // Line items of one request mostly share a few windows ("3 a day", "10
    // an hour"): remember the last range of each position in the cap list
    // instead of redoing the calendar arithmetic per cap.
    let mut recent_ranges: [Option<(CapWindow, (i64, i64))>; 2] = [None; 2];
    for (index, candidate) in candidates.iter().enumerate() {
        if !decisions.is_eligible(index) {
            continue;
        }
        let Some(candidate) = candidate.definition() else {
            continue;
        };
        queries.extend(candidate.caps.iter().enumerate().map(|(position, cap)| {
            let window = cap.window();
            let memo = &mut recent_ranges[position.min(1)];
            let (after_exclusive, until_inclusive) = match memo {
                Some((remembered, range)) if *remembered == window => *range,
                _ => {
                    let range = window.count_range(at_unix_seconds, retention_seconds);
                    *memo = Some((window, range));
                    range
                }
            };
            CountQuery {
                cap_key_hash: cap_key_hash(cap.key),
                after_exclusive,
                until_inclusive,
            }
        }));
    }
    let mut counts = Vec::with_capacity(queries.len());
    counters.count_many(user_fingerprint, &queries, &mut counts);
    let mut next_count = counts.into_iter();
    for (index, candidate) in candidates.iter().enumerate() {
        if !decisions.is_eligible(index) {
            continue;
        }
        let Some(candidate) = candidate.definition() else {
            continue;
        };
        let mut capped_by: Option<&str> = None;
        for cap in candidate.caps.iter() {
            let count = next_count.next().unwrap_or(u32::MAX);
            if capped_by.is_none() && count >= cap.limit {
                capped_by = Some(cap.key);
            }
        }
        if let Some(key) = capped_by {
            decisions.refuse(index, Reason::FrequencyCapped, key);
        }
    }
}

/// The cap's window in the frequency store's terms.
pub fn cap_window(cap: &proto::FrequencyCap) -> CapWindow {
    CapView::from(cap).window()
}

/// Inlined with the probe it wraps into the `find`s of [`targeting`]: as a
/// call it was ~12 instructions of saved registers per probe (callgrind).
#[inline(always)]
fn is_member(user: &UserView<'_>, segment: &SegmentRef, at_unix_seconds: i64) -> bool {
    user.membership(segment.segment_id, segment.max_age_seconds, at_unix_seconds)
        == Membership::Member
}

/// Targeting alone: EXCLUDED before NOT_IN_AUDIENCE; eligible otherwise
/// (caps are applied afterwards). Appends the decision; true when eligible.
fn targeting(
    user: &UserView<'_>,
    candidate: &CandidateView<'_>,
    at_unix_seconds: i64,
    decisions: &mut impl Answer,
) -> bool {
    if let Some(excluded_by) = candidate
        .none_of
        .iter()
        .find(|segment| is_member(user, segment, at_unix_seconds))
    {
        decisions.push_segment(Reason::Excluded, excluded_by.segment_id);
        return false;
    }
    if let Some(missing) = candidate
        .all_of
        .iter()
        .find(|segment| !is_member(user, segment, at_unix_seconds))
    {
        decisions.push_segment(Reason::NotInAudience, missing.segment_id);
        return false;
    }
    if !candidate.any_of.is_empty()
        && !candidate
            .any_of
            .iter()
            .any(|segment| is_member(user, segment, at_unix_seconds))
    {
        decisions.push_none_of(candidate.any_of);
        return false;
    }
    decisions.push_eligible();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_line_item_is_unspecified_with_its_detail() {
        let state = ServingState::new(1, Vec::new()).expect("an empty state");
        let dir = tempfile::tempdir().expect("tempdir");
        let (counters, _) =
            FreqStore::open(crate::freq::FreqConfig::new(dir.path())).expect("store opens");
        let candidates = [CandidateRef::Registered {
            id: "gone",
            line_item: None,
        }];
        let decisions = decide_refs(&state, &counters, 7, &candidates, 0, 86_400);
        assert_eq!(
            decisions,
            vec![Decision {
                candidate_id: "gone".to_owned(),
                eligible: false,
                reason: Reason::Unspecified as i32,
                detail: "unknown line item".to_owned(),
            }]
        );
        counters.shutdown().expect("store stops");
    }
}
