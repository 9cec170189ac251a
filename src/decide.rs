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

/// [`decide`] over inline candidates and registered line items.
pub fn decide_refs(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[CandidateRef<'_>],
    at_unix_seconds: i64,
    retention_seconds: i64,
) -> Vec<Decision> {
    let mut decisions = decide_unnamed(
        state,
        counters,
        user_fingerprint,
        candidates,
        at_unix_seconds,
        retention_seconds,
    );
    for (candidate, decision) in candidates.iter().zip(&mut decisions) {
        decision.candidate_id = candidate.id().to_owned();
    }
    decisions
}

/// [`decide_refs`] with every `candidate_id` left empty, for a caller that
/// owns the request and moves the ids in (the `Decide` handler): a copy of
/// each id would be 50 allocations per request for strings already in hand.
pub fn decide_unnamed(
    state: &ServingState,
    counters: &FreqStore,
    user_fingerprint: u64,
    candidates: &[CandidateRef<'_>],
    at_unix_seconds: i64,
    retention_seconds: i64,
) -> Vec<Decision> {
    let user = state.user(user_fingerprint);
    let mut decisions: Vec<Decision> = candidates
        .iter()
        .map(|candidate| match (candidate, candidate.definition()) {
            (_, Some(definition)) => targeting(&user, &definition, at_unix_seconds),
            (CandidateRef::Registered { .. }, None) => Decision {
                candidate_id: String::new(),
                eligible: false,
                reason: Reason::Unspecified as i32,
                detail: "unknown line item".to_owned(),
            },
            (CandidateRef::Inline(_) | CandidateRef::View(_), None) => {
                unreachable!("inline candidates are always defined")
            }
        })
        .collect();

    let cap_count: usize = candidates
        .iter()
        .zip(&decisions)
        .filter(|(_, decision)| decision.eligible)
        .filter_map(|(candidate, _)| candidate.definition())
        .map(|candidate| candidate.caps.len())
        .sum();
    if cap_count == 0 {
        return decisions;
    }
    let mut queries: Vec<CountQuery> = Vec::with_capacity(cap_count);
    // Line items of one request mostly share a few windows ("3 a day", "10
    // an hour"): remember the last range of each position in the cap list
    // instead of redoing the calendar arithmetic per cap.
    let mut recent_ranges: [Option<(CapWindow, (i64, i64))>; 2] = [None; 2];
    for (candidate, decision) in candidates.iter().zip(&decisions) {
        let Some(candidate) = candidate.definition() else {
            continue;
        };
        if decision.eligible {
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
    }
    let mut counts = Vec::with_capacity(queries.len());
    counters.count_many(user_fingerprint, &queries, &mut counts);
    let mut next_count = counts.into_iter();
    for (candidate, decision) in candidates.iter().zip(&mut decisions) {
        let Some(candidate) = candidate.definition() else {
            continue;
        };
        if !decision.eligible {
            continue;
        }
        let mut capped_by: Option<&str> = None;
        for cap in candidate.caps.iter() {
            let count = next_count.next().unwrap_or(u32::MAX);
            if capped_by.is_none() && count >= cap.limit {
                capped_by = Some(cap.key);
            }
        }
        if let Some(key) = capped_by {
            *decision = refused(Reason::FrequencyCapped, key.to_owned());
        }
    }
    decisions
}

/// The cap's window in the frequency store's terms.
pub fn cap_window(cap: &proto::FrequencyCap) -> CapWindow {
    CapView::from(cap).window()
}

/// "segment 123", in one allocation: most candidates of a request are refused,
/// so this runs dozens of times per `Decide` and `format!` showed in profiles.
fn segment_detail(segment_id: u32) -> String {
    let mut detail = String::with_capacity(DETAIL_CAPACITY);
    detail.push_str("segment ");
    push_number(&mut detail, segment_id);
    detail
}

/// Room for "segment " and any `u32`.
const DETAIL_CAPACITY: usize = 24;

/// Appends the decimal digits of `number`.
fn push_number(out: &mut String, number: u32) {
    let mut digits = [0u8; 10];
    let mut rest = number;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // A `push` per digit: `push_str` of a checked `from_utf8` was slower
    // (two calls out of line for a few bytes; callgrind).
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

/// A refusal; `candidate_id` is filled in by the caller.
fn refused(reason: Reason, detail: String) -> Decision {
    Decision {
        candidate_id: String::new(),
        eligible: false,
        reason: reason as i32,
        detail,
    }
}

/// Inlined with the probe it wraps into the `find`s of [`targeting`]: as a
/// call it was ~12 instructions of saved registers per probe (callgrind).
#[inline(always)]
fn is_member(user: &UserView<'_>, segment: &SegmentRef, at_unix_seconds: i64) -> bool {
    user.membership(segment.segment_id, segment.max_age_seconds, at_unix_seconds)
        == Membership::Member
}

/// Targeting alone: EXCLUDED before NOT_IN_AUDIENCE; eligible otherwise
/// (caps are applied afterwards).
/// The decision's `candidate_id` is left empty.
fn targeting(user: &UserView<'_>, candidate: &CandidateView<'_>, at_unix_seconds: i64) -> Decision {
    if let Some(excluded_by) = candidate
        .none_of
        .iter()
        .find(|segment| is_member(user, segment, at_unix_seconds))
    {
        return refused(Reason::Excluded, segment_detail(excluded_by.segment_id));
    }
    if let Some(missing) = candidate
        .all_of
        .iter()
        .find(|segment| !is_member(user, segment, at_unix_seconds))
    {
        return refused(Reason::NotInAudience, segment_detail(missing.segment_id));
    }
    if !candidate.any_of.is_empty()
        && !candidate
            .any_of
            .iter()
            .any(|segment| is_member(user, segment, at_unix_seconds))
    {
        let mut detail = String::with_capacity(17 + candidate.any_of.len() * 11);
        detail.push_str("none of segments ");
        for (position, segment) in candidate.any_of.iter().enumerate() {
            if position > 0 {
                detail.push(',');
            }
            push_number(&mut detail, segment.segment_id);
        }
        return refused(Reason::NotInAudience, detail);
    }
    Decision {
        candidate_id: String::new(),
        eligible: true,
        reason: Reason::Eligible as i32,
        detail: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_spell_numbers_like_display() {
        for number in [0u32, 7, 10, 99, 100, 123_456, u32::MAX] {
            assert_eq!(segment_detail(number), format!("segment {number}"));
        }
    }
}
