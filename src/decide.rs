//! `Decide`: targeting plus frequency caps for many candidate line items at once.
//!
//! A candidate is eligible when the user is in none of `none_of`, in every
//! `all_of`, in at least one `any_of` (when any are given), and every cap has
//! room (count < limit). When several fail, the first in the order EXCLUDED,
//! NOT_IN_AUDIENCE, FREQUENCY_CAPPED is reported, with `detail` naming the
//! segment or cap key. Unknown segments are non-members.
//!
//! This reads the wire types directly: a 50-candidate request converted into a
//! parallel domain struct would cost allocations per request and buy nothing.
//! Targeting is answered for every candidate first; then the caps of the
//! candidates still in the running are counted in one call (one shard lock).
//! Requests are validated by the caller (`api::limits`).

use crate::freq::{Calendar, CapWindow, CountQuery, FreqStore, cap_key_hash};
use crate::proto::{self, Candidate, Decision, Reason, SegmentRef};
use crate::store::{Membership, ServingState, UserView};

/// A candidate of one `Decide`: inline in the request, or a registered line
/// item (`None` when its id is not registered).
#[derive(Debug, Clone, Copy)]
pub enum CandidateRef<'a> {
    Inline(&'a Candidate),
    Registered {
        id: &'a str,
        line_item: Option<&'a Candidate>,
    },
}

impl<'a> CandidateRef<'a> {
    fn definition(&self) -> Option<&'a Candidate> {
        match *self {
            CandidateRef::Inline(candidate) => Some(candidate),
            CandidateRef::Registered { line_item, .. } => line_item,
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
    let user = state.user(user_fingerprint);
    let mut decisions: Vec<Decision> = candidates
        .iter()
        .map(|candidate| match (candidate, candidate.definition()) {
            (_, Some(definition)) => targeting(&user, definition, at_unix_seconds),
            (CandidateRef::Registered { id, .. }, None) => Decision {
                candidate_id: (*id).to_owned(),
                eligible: false,
                reason: Reason::Unspecified as i32,
                detail: "unknown line item".to_owned(),
            },
            (CandidateRef::Inline(_), None) => unreachable!("inline candidates are always defined"),
        })
        .collect();

    let mut queries: Vec<CountQuery> = Vec::new();
    for (candidate, decision) in candidates.iter().zip(&decisions) {
        let Some(candidate) = candidate.definition() else {
            continue;
        };
        if decision.eligible {
            queries.extend(candidate.caps.iter().map(|cap| {
                let (after_exclusive, until_inclusive) =
                    cap_window(cap).count_range(at_unix_seconds, retention_seconds);
                CountQuery {
                    cap_key_hash: cap_key_hash(&cap.key),
                    after_exclusive,
                    until_inclusive,
                }
            }));
        }
    }
    if queries.is_empty() {
        return decisions;
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
        for cap in &candidate.caps {
            let count = next_count.next().unwrap_or(u32::MAX);
            if capped_by.is_none() && count >= cap.limit {
                capped_by = Some(&cap.key);
            }
        }
        if let Some(key) = capped_by {
            *decision = refused(&candidate.id, Reason::FrequencyCapped, key.to_owned());
        }
    }
    decisions
}

/// The cap's window in the frequency store's terms.
pub fn cap_window(cap: &proto::FrequencyCap) -> CapWindow {
    let calendar = match proto::Calendar::try_from(cap.calendar) {
        Ok(proto::Calendar::Day) => Calendar::Day,
        Ok(proto::Calendar::Week) => Calendar::Week,
        Ok(proto::Calendar::Month) => Calendar::Month,
        // Validation refuses unknown values before this point.
        Ok(proto::Calendar::Rolling) | Err(_) => Calendar::Rolling,
    };
    CapWindow {
        window_seconds: cap.window_seconds,
        calendar,
        utc_offset_minutes: cap.utc_offset_minutes,
    }
}

fn refused(candidate_id: &str, reason: Reason, detail: String) -> Decision {
    Decision {
        candidate_id: candidate_id.to_owned(),
        eligible: false,
        reason: reason as i32,
        detail,
    }
}

fn is_member(user: &UserView<'_>, segment: &SegmentRef, at_unix_seconds: i64) -> bool {
    user.membership(segment.segment_id, segment.max_age_seconds, at_unix_seconds)
        == Membership::Member
}

/// Targeting alone: EXCLUDED before NOT_IN_AUDIENCE; eligible otherwise
/// (caps are applied afterwards).
fn targeting(user: &UserView<'_>, candidate: &Candidate, at_unix_seconds: i64) -> Decision {
    if let Some(excluded_by) = candidate
        .none_of
        .iter()
        .find(|segment| is_member(user, segment, at_unix_seconds))
    {
        return refused(
            &candidate.id,
            Reason::Excluded,
            format!("segment {}", excluded_by.segment_id),
        );
    }
    if let Some(missing) = candidate
        .all_of
        .iter()
        .find(|segment| !is_member(user, segment, at_unix_seconds))
    {
        return refused(
            &candidate.id,
            Reason::NotInAudience,
            format!("segment {}", missing.segment_id),
        );
    }
    if !candidate.any_of.is_empty()
        && !candidate
            .any_of
            .iter()
            .any(|segment| is_member(user, segment, at_unix_seconds))
    {
        let listed: Vec<String> = candidate
            .any_of
            .iter()
            .map(|segment| segment.segment_id.to_string())
            .collect();
        return refused(
            &candidate.id,
            Reason::NotInAudience,
            format!("none of segments {}", listed.join(",")),
        );
    }
    Decision {
        candidate_id: candidate.id.clone(),
        eligible: true,
        reason: Reason::Eligible as i32,
        detail: String::new(),
    }
}
