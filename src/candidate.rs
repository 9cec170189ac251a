//! The borrowed view of one `Decide` candidate that validation and
//! [`crate::decide`] read: from an owned [`proto::Candidate`] (a registered
//! line item, a client-side request) or straight from the bytes of a request
//! (`api::wire`), with no copy and no allocation either way.
//!
//! This module owns only the shape of the view; it never decodes bytes (the
//! wire reader does) and holds no decision logic.

use crate::freq::{Calendar, CapWindow};
use crate::proto::{self, Candidate, FrequencyCap, SegmentRef};

/// One candidate: its id, its three segment lists and its caps.
#[derive(Debug, Clone, Copy)]
pub struct CandidateView<'a> {
    pub id: &'a str,
    pub all_of: &'a [SegmentRef],
    pub any_of: &'a [SegmentRef],
    pub none_of: &'a [SegmentRef],
    pub caps: Caps<'a>,
}

impl<'a> From<&'a Candidate> for CandidateView<'a> {
    fn from(candidate: &'a Candidate) -> Self {
        Self {
            id: &candidate.id,
            all_of: &candidate.all_of,
            any_of: &candidate.any_of,
            none_of: &candidate.none_of,
            caps: Caps::Owned(&candidate.caps),
        }
    }
}

/// A candidate's caps: owned messages, or the wire reader's cap records
/// whose keys are byte ranges of the request (`text`).
#[derive(Debug, Clone, Copy)]
pub enum Caps<'a> {
    Owned(&'a [FrequencyCap]),
    Wire { text: &'a str, caps: &'a [WireCap] },
}

impl<'a> Caps<'a> {
    pub fn len(&self) -> usize {
        match self {
            Caps::Owned(caps) => caps.len(),
            Caps::Wire { caps, .. } => caps.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caps in request order.
    pub fn iter(&self) -> CapsIter<'a> {
        match *self {
            Caps::Owned(caps) => CapsIter::Owned(caps.iter()),
            Caps::Wire { text, caps } => CapsIter::Wire(text, caps.iter()),
        }
    }
}

/// The iterator of [`Caps::iter`]: one branch per cap on a variant that
/// never changes, so it predicts perfectly.
pub enum CapsIter<'a> {
    Owned(std::slice::Iter<'a, FrequencyCap>),
    Wire(&'a str, std::slice::Iter<'a, WireCap>),
}

impl<'a> Iterator for CapsIter<'a> {
    type Item = CapView<'a>;

    #[inline]
    fn next(&mut self) -> Option<CapView<'a>> {
        match self {
            CapsIter::Owned(caps) => caps.next().map(CapView::from),
            CapsIter::Wire(text, caps) => caps.next().map(|cap| cap.view(text)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match self {
            CapsIter::Owned(caps) => caps.len(),
            CapsIter::Wire(_, caps) => caps.len(),
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for CapsIter<'_> {}

/// One frequency cap, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapView<'a> {
    pub key: &'a str,
    pub limit: u32,
    pub window_seconds: u32,
    /// `proto::Calendar` as sent (validation refuses unknown values).
    pub calendar: i32,
    pub utc_offset_minutes: i32,
}

impl<'a> From<&'a FrequencyCap> for CapView<'a> {
    fn from(cap: &'a FrequencyCap) -> Self {
        Self {
            key: &cap.key,
            limit: cap.limit,
            window_seconds: cap.window_seconds,
            calendar: cap.calendar,
            utc_offset_minutes: cap.utc_offset_minutes,
        }
    }
}

impl CapView<'_> {
    /// The cap's window in the frequency store's terms.
    pub fn window(&self) -> CapWindow {
        let calendar = match proto::Calendar::try_from(self.calendar) {
            Ok(proto::Calendar::Day) => Calendar::Day,
            Ok(proto::Calendar::Week) => Calendar::Week,
            Ok(proto::Calendar::Month) => Calendar::Month,
            // Validation refuses unknown values before this point.
            Ok(proto::Calendar::Rolling) | Err(_) => Calendar::Rolling,
        };
        CapWindow {
            window_seconds: self.window_seconds,
            calendar,
            utc_offset_minutes: self.utc_offset_minutes,
        }
    }
}

/// A cap as the wire reader records it: the key is `key_start..key_end` of
/// the request's text, already checked to be UTF-8 on a char boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireCap {
    pub key_start: u32,
    pub key_end: u32,
    pub limit: u32,
    pub window_seconds: u32,
    pub calendar: i32,
    pub utc_offset_minutes: i32,
}

impl WireCap {
    fn view<'a>(&self, text: &'a str) -> CapView<'a> {
        CapView {
            key: &text[self.key_start as usize..self.key_end as usize],
            limit: self.limit,
            window_seconds: self.window_seconds,
            calendar: self.calendar,
            utc_offset_minutes: self.utc_offset_minutes,
        }
    }
}
