//! Per-request limits and the validation that enforces them. Messages name the
//! field and index at fault, e.g. `requests[3].user_id: must not be empty`.
//!
//! Validation runs on every hot-path request (a `Decide` checks 50 candidates
//! and 100 caps), so it must allocate nothing when the request is valid: field
//! paths are `impl Display` (usually `format_args!`), written out only when an
//! error message is built.

use std::fmt::Display;

use tonic::Status;

use crate::candidate::{CandidateView, CapView};
use crate::settings::ServeConfig;

#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_segment_ids: usize,
    pub max_batch_lookups: usize,
    pub max_candidates: usize,
    pub max_refs_per_candidate: usize,
    pub max_caps_per_candidate: usize,
    pub max_impressions: usize,
    pub max_cap_keys: usize,
    pub max_cap_key_bytes: usize,
    pub max_user_id_bytes: usize,
    pub freq_retention_seconds: i64,
}

impl RequestLimits {
    pub fn from_settings(settings: &ServeConfig) -> Self {
        let limits = &settings.limits;
        Self {
            max_segment_ids: limits.max_segment_ids,
            max_batch_lookups: limits.max_batch_lookups,
            max_candidates: limits.max_candidates,
            max_refs_per_candidate: limits.max_refs_per_candidate,
            max_caps_per_candidate: limits.max_caps_per_candidate,
            max_impressions: limits.max_impressions,
            max_cap_keys: limits.max_cap_keys,
            max_cap_key_bytes: limits.max_cap_key_bytes,
            max_user_id_bytes: limits.max_user_id_bytes,
            freq_retention_seconds: settings.frequency.retention_seconds(),
        }
    }

    pub fn check_user_id(&self, field: impl Display, user_id: &str) -> Result<(), Status> {
        if user_id.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if user_id.len() > self.max_user_id_bytes {
            return Err(invalid(
                field,
                &format!(
                    "{} bytes, more than the limit of {}",
                    user_id.len(),
                    self.max_user_id_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn check_count(
        &self,
        field: impl Display,
        count: usize,
        limit: usize,
    ) -> Result<(), Status> {
        if count > limit {
            return Err(invalid(
                field,
                &format!("{count} entries, more than the limit of {limit}"),
            ));
        }
        Ok(())
    }
}

/// `INVALID_ARGUMENT` naming the field.
pub fn invalid(field: impl Display, problem: &str) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// The longest span a cap's window covers: a rolling window's length, or
/// the longest calendar period.
fn longest_window_seconds(calendar: crate::proto::Calendar, window_seconds: u32) -> i64 {
    use crate::proto::Calendar;
    match calendar {
        Calendar::Rolling => i64::from(window_seconds),
        Calendar::Day => 86_400,
        Calendar::Week => 7 * 86_400,
        Calendar::Month => 31 * 86_400,
    }
}

/// Longest impression id, in bytes.
pub const MAX_IMPRESSION_ID_BYTES: usize = 256;
/// Calendar caps are aligned at most this far from UTC (UTC-12 … UTC+14, with margin).
pub const MAX_UTC_OFFSET_MINUTES: i32 = 18 * 60;

impl RequestLimits {
    pub fn check_cap_key(&self, field: impl Display, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if key.len() > self.max_cap_key_bytes {
            return Err(invalid(
                field,
                &format!(
                    "{} bytes, more than the limit of {}",
                    key.len(),
                    self.max_cap_key_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A cap the store can answer: a key, a positive limit, a known calendar,
    /// a plausible offset and a window the retention covers.
    pub fn check_cap<'a>(
        &self,
        field: impl Display,
        cap: impl Into<CapView<'a>>,
    ) -> Result<(), Status> {
        use crate::proto::Calendar;
        let cap = cap.into();
        self.check_cap_key(format_args!("{field}.key"), cap.key)?;
        if cap.limit == 0 {
            return Err(invalid(format_args!("{field}.limit"), "must be at least 1"));
        }
        let calendar = Calendar::try_from(cap.calendar).map_err(|_| {
            invalid(
                format_args!("{field}.calendar"),
                &format!("unknown calendar {}", cap.calendar),
            )
        })?;
        // A range check, not `abs()`: `i32::MIN.abs()` overflows (wraps in
        // release and so passed this check).
        if !(-MAX_UTC_OFFSET_MINUTES..=MAX_UTC_OFFSET_MINUTES).contains(&cap.utc_offset_minutes) {
            return Err(invalid(
                format_args!("{field}.utc_offset_minutes"),
                &format!(
                    "{} is beyond ±{MAX_UTC_OFFSET_MINUTES}",
                    cap.utc_offset_minutes
                ),
            ));
        }
        let longest_window_seconds = longest_window_seconds(calendar, cap.window_seconds);
        if longest_window_seconds > self.freq_retention_seconds {
            return Err(invalid(
                format_args!("{field}.window_seconds"),
                &format!(
                    "a window of {longest_window_seconds} s is longer than the retention of {} s (--freq-retention-days)",
                    self.freq_retention_seconds
                ),
            ));
        }
        Ok(())
    }

    pub fn check_decide(&self, request: &crate::proto::DecideRequest) -> Result<(), Status> {
        self.check_user_id("user_id", &request.user_id)?;
        self.check_count(
            "candidates+line_item_ids",
            request.candidates.len() + request.line_item_ids.len(),
            self.max_candidates,
        )?;
        for (index, candidate) in request.candidates.iter().enumerate() {
            self.check_candidate(format_args!("candidates[{index}]"), candidate)?;
        }
        Ok(())
    }

    /// [`Self::check_decide`] over the server's wire form of the request:
    /// the same checks in the same order, the same messages.
    pub fn check_wire_decide(
        &self,
        request: &crate::api::wire::WireDecideRequest,
    ) -> Result<(), Status> {
        self.check_user_id("user_id", request.user_id())?;
        self.check_count(
            "candidates+line_item_ids",
            request.candidates().len() + request.line_item_ids().len(),
            self.max_candidates,
        )?;
        for (index, candidate) in request.candidates().enumerate() {
            self.check_candidate(format_args!("candidates[{index}]"), candidate)?;
        }
        Ok(())
    }

    /// One candidate's refs and caps.
    pub fn check_candidate<'a>(
        &self,
        field: impl Display,
        candidate: impl Into<CandidateView<'a>>,
    ) -> Result<(), Status> {
        let candidate = candidate.into();
        if self.candidate_is_valid(&candidate) {
            return Ok(());
        }
        let refs = candidate.all_of.len() + candidate.any_of.len() + candidate.none_of.len();
        self.check_count(
            format_args!("{field} all_of+any_of+none_of"),
            refs,
            self.max_refs_per_candidate,
        )?;
        self.check_count(
            format_args!("{field}.caps"),
            candidate.caps.len(),
            self.max_caps_per_candidate,
        )?;
        for (cap_index, cap) in candidate.caps.iter().enumerate() {
            self.check_cap(format_args!("{field}.caps[{cap_index}]"), cap)?;
        }
        Ok(())
    }

    /// Whether [`Self::check_candidate`] accepts `candidate`, with none of
    /// its field paths built and no call per check: a `Decide` checks 50
    /// candidates and 100 caps, ~200 instructions per cap through the
    /// checks that name the field at fault (callgrind). Only a candidate
    /// this refuses goes through them, for the message.
    #[inline]
    fn candidate_is_valid(&self, candidate: &CandidateView<'_>) -> bool {
        let refs = candidate.all_of.len() + candidate.any_of.len() + candidate.none_of.len();
        refs <= self.max_refs_per_candidate
            && candidate.caps.len() <= self.max_caps_per_candidate
            && candidate.caps.iter().all(|cap| self.cap_is_valid(&cap))
    }

    /// Whether [`Self::check_cap`] accepts `cap`.
    #[inline]
    fn cap_is_valid(&self, cap: &CapView<'_>) -> bool {
        let Ok(calendar) = crate::proto::Calendar::try_from(cap.calendar) else {
            return false;
        };
        !cap.key.is_empty()
            && cap.key.len() <= self.max_cap_key_bytes
            && cap.limit != 0
            && (-MAX_UTC_OFFSET_MINUTES..=MAX_UTC_OFFSET_MINUTES).contains(&cap.utc_offset_minutes)
            && longest_window_seconds(calendar, cap.window_seconds) <= self.freq_retention_seconds
    }

    pub fn check_record(
        &self,
        request: &crate::proto::RecordImpressionsRequest,
    ) -> Result<(), Status> {
        if request.impressions.is_empty() {
            return Err(invalid("impressions", "must not be empty"));
        }
        self.check_count(
            "impressions",
            request.impressions.len(),
            self.max_impressions,
        )?;
        for (index, impression) in request.impressions.iter().enumerate() {
            self.check_user_id(
                format_args!("impressions[{index}].user_id"),
                &impression.user_id,
            )?;
            if impression.cap_keys.is_empty() {
                return Err(invalid(
                    format_args!("impressions[{index}].cap_keys"),
                    "must not be empty: an impression counts toward at least one cap key",
                ));
            }
            self.check_count(
                format_args!("impressions[{index}].cap_keys"),
                impression.cap_keys.len(),
                self.max_cap_keys,
            )?;
            for (key_index, key) in impression.cap_keys.iter().enumerate() {
                self.check_cap_key(
                    format_args!("impressions[{index}].cap_keys[{key_index}]"),
                    key,
                )?;
            }
            if impression.impression_id.len() > MAX_IMPRESSION_ID_BYTES {
                return Err(invalid(
                    format_args!("impressions[{index}].impression_id"),
                    &format!("longer than {MAX_IMPRESSION_ID_BYTES} bytes"),
                ));
            }
            if impression.at_unix_seconds < 0 {
                return Err(invalid(
                    format_args!("impressions[{index}].at_unix_seconds"),
                    "must not be negative",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::{Candidate, FrequencyCap, SegmentRef};

    fn limits() -> RequestLimits {
        RequestLimits {
            max_segment_ids: 10,
            max_batch_lookups: 10,
            max_candidates: 10,
            max_refs_per_candidate: 4,
            max_caps_per_candidate: 2,
            max_impressions: 10,
            max_cap_keys: 2,
            max_cap_key_bytes: 6,
            max_user_id_bytes: 8,
            freq_retention_seconds: 8 * 86_400,
        }
    }

    /// Caps on both sides of every check: key lengths around the limit,
    /// limits of 0, calendars known and not, offsets around the bound
    /// (`i32::MIN` included), windows around the retention.
    fn cap() -> impl Strategy<Value = FrequencyCap> {
        (
            "[a-z]{0,8}",
            0u32..3,
            prop_oneof![
                0u32..10,
                Just(8 * 86_400),
                Just(8 * 86_400 + 1),
                any::<u32>()
            ],
            -1i32..6,
            prop_oneof![
                -1_090i32..-1_070,
                -2i32..2,
                1_070i32..1_090,
                Just(i32::MIN),
                Just(i32::MAX)
            ],
        )
            .prop_map(
                |(key, limit, window_seconds, calendar, utc_offset_minutes)| FrequencyCap {
                    key,
                    limit,
                    window_seconds,
                    calendar,
                    utc_offset_minutes,
                },
            )
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        let segments = prop::collection::vec(Just(SegmentRef::default()), 0..3);
        (
            segments.clone(),
            segments.clone(),
            segments,
            prop::collection::vec(cap(), 0..4),
        )
            .prop_map(|(all_of, any_of, none_of, caps)| Candidate {
                id: "c".to_owned(),
                all_of,
                any_of,
                none_of,
                caps,
            })
    }

    proptest! {
        /// The quick test accepts exactly what the checks that name the
        /// field at fault accept.
        #[test]
        fn the_quick_test_agrees_with_the_checks(candidate in candidate()) {
            let limits = limits();
            let view = CandidateView::from(&candidate);
            let mut checked = Ok(());
            let refs = view.all_of.len() + view.any_of.len() + view.none_of.len();
            if refs > limits.max_refs_per_candidate || view.caps.len() > limits.max_caps_per_candidate {
                checked = Err(());
            }
            for cap in &candidate.caps {
                if limits.check_cap("cap", cap).is_err() {
                    checked = Err(());
                }
            }
            prop_assert_eq!(limits.candidate_is_valid(&view), checked.is_ok());
            prop_assert_eq!(limits.check_candidate("candidate", &candidate).is_ok(), checked.is_ok());
        }
    }
}
