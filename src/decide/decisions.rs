//! The answer of one `Decide` as the server holds it: per candidate a reason
//! and a range of one text buffer that holds every detail back to back, and
//! no candidate id (the encoder reads the ids from the request). Two
//! allocations per request instead of a `String` per refused candidate plus
//! an id copy per decision (`proto::Decision`), which were a third of
//! `decide`'s instructions (BENCHMARKS.md, "Decide details in one buffer").
//!
//! This module owns the representation and the spelling of the details
//! ("segment 7", "none of segments 1,2", a cap's key); it never decides.

use crate::proto::{Decision, Reason, SegmentRef};

/// The decisions of one request, in candidate order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    verdicts: Vec<Verdict>,
    /// Every detail, back to back; a verdict's range points into it.
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    reason: Reason,
    detail_start: u32,
    detail_end: u32,
}

/// One decision, borrowed from [`Decisions`]; eligible exactly when the
/// reason is `ELIGIBLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionView<'a> {
    pub reason: Reason,
    pub detail: &'a str,
}

impl DecisionView<'_> {
    pub fn eligible(&self) -> bool {
        self.reason == Reason::Eligible
    }

    /// The owned message, answering to `candidate_id`.
    pub fn to_proto(&self, candidate_id: &str) -> Decision {
        Decision {
            candidate_id: candidate_id.to_owned(),
            eligible: self.eligible(),
            reason: self.reason as i32,
            detail: self.detail.to_owned(),
        }
    }
}

/// Text bytes reserved per candidate: "none of segments " and two ids fit,
/// so the buffer of a typical request is allocated once.
const TEXT_PER_CANDIDATE: usize = 24;

impl Decisions {
    /// Room for `candidates` decisions.
    pub fn with_capacity(candidates: usize) -> Self {
        Self {
            verdicts: Vec::with_capacity(candidates),
            text: String::with_capacity(candidates * TEXT_PER_CANDIDATE),
        }
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }

    /// Decision `index` (panics past the end, like slice indexing).
    #[inline]
    pub fn get(&self, index: usize) -> DecisionView<'_> {
        let verdict = self.verdicts[index];
        DecisionView {
            reason: verdict.reason,
            // Ranges are written by this type only, on char boundaries.
            detail: &self.text[verdict.detail_start as usize..verdict.detail_end as usize],
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = DecisionView<'_>> {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Decision `index` with its detail as bytes (the wire encoder: no
    /// char-boundary checks on a range this type wrote).
    #[inline]
    pub fn get_bytes(&self, index: usize) -> (Reason, &[u8]) {
        let verdict = self.verdicts[index];
        let detail =
            &self.text.as_bytes()[verdict.detail_start as usize..verdict.detail_end as usize];
        (verdict.reason, detail)
    }

    /// The reasons alone, in order (outcome counters).
    pub fn reasons(&self) -> impl ExactSizeIterator<Item = Reason> + '_ {
        self.verdicts.iter().map(|verdict| verdict.reason)
    }

    /// Whether decision `index` is eligible, without touching the text.
    #[inline]
    pub fn is_eligible(&self, index: usize) -> bool {
        self.verdicts[index].reason == Reason::Eligible
    }

    /// The owned messages, answering to `ids` in order (clients, tests and
    /// the library's `decide::decide`).
    pub fn to_proto<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<Decision> {
        self.iter()
            .zip(ids)
            .map(|(decision, id)| decision.to_proto(id))
            .collect()
    }

    /// Appends a decision with `detail` as its text.
    pub fn push(&mut self, reason: Reason, detail: &str) {
        let start = self.text.len();
        self.text.push_str(detail);
        self.push_verdict(reason, start);
    }

    /// Appends an eligible decision (no detail).
    #[inline]
    pub(crate) fn push_eligible(&mut self) {
        self.push_verdict(Reason::Eligible, self.text.len());
    }

    /// Appends a refusal naming one segment: "segment 123".
    #[inline]
    pub(crate) fn push_segment(&mut self, reason: Reason, segment_id: u32) {
        let start = self.text.len();
        write_segment(&mut self.text, segment_id);
        self.push_verdict(reason, start);
    }

    /// Appends NOT_IN_AUDIENCE for a user in none of `any_of`:
    /// "none of segments 4,5,6".
    pub(crate) fn push_none_of(&mut self, any_of: &[SegmentRef]) {
        let start = self.text.len();
        write_none_of(&mut self.text, any_of);
        self.push_verdict(Reason::NotInAudience, start);
    }

    /// Turns decision `index` into a refusal with `detail` (a cap's key,
    /// once the caps are counted); its old detail stays unused in the text.
    pub(crate) fn refuse(&mut self, index: usize, reason: Reason, detail: &str) {
        let start = self.text.len();
        self.text.push_str(detail);
        self.verdicts[index] = Verdict {
            reason,
            detail_start: text_offset(start),
            detail_end: text_offset(self.text.len()),
        };
    }

    #[inline]
    fn push_verdict(&mut self, reason: Reason, start: usize) {
        self.verdicts.push(Verdict {
            reason,
            detail_start: text_offset(start),
            detail_end: text_offset(self.text.len()),
        });
    }
}

/// A text offset as stored: a request's details are far below 4 GiB
/// (validation bounds candidates and key lengths), so this never saturates
/// in practice; if it did, `get` would panic rather than read a wrong range.
#[inline]
fn text_offset(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(u32::MAX)
}

/// Where `decide` writes its decisions, in candidate order: the server's
/// [`Decisions`], or owned messages for the library's `decide::decide` (a
/// `String` per detail, as it returns them, without a detour through the
/// shared buffer). Both spell the details with the same writers below.
pub(crate) trait Answer {
    fn push_eligible(&mut self);
    fn push_segment(&mut self, reason: Reason, segment_id: u32);
    fn push_none_of(&mut self, any_of: &[SegmentRef]);
    fn push_unknown_line_item(&mut self);
    fn is_eligible(&self, index: usize) -> bool;
    fn refuse(&mut self, index: usize, reason: Reason, detail: &str);
}

/// The detail of an unknown registered line item.
const UNKNOWN_LINE_ITEM: &str = "unknown line item";

impl Answer for Decisions {
    #[inline]
    fn push_eligible(&mut self) {
        Decisions::push_eligible(self);
    }

    #[inline]
    fn push_segment(&mut self, reason: Reason, segment_id: u32) {
        Decisions::push_segment(self, reason, segment_id);
    }

    fn push_none_of(&mut self, any_of: &[SegmentRef]) {
        Decisions::push_none_of(self, any_of);
    }

    fn push_unknown_line_item(&mut self) {
        self.push(Reason::Unspecified, UNKNOWN_LINE_ITEM);
    }

    #[inline]
    fn is_eligible(&self, index: usize) -> bool {
        Decisions::is_eligible(self, index)
    }

    fn refuse(&mut self, index: usize, reason: Reason, detail: &str) {
        Decisions::refuse(self, index, reason, detail);
    }
}

/// Owned decisions with their `candidate_id`s left empty (the caller fills
/// them in).
impl Answer for Vec<Decision> {
    fn push_eligible(&mut self) {
        self.push(owned(Reason::Eligible, String::new()));
    }

    fn push_segment(&mut self, reason: Reason, segment_id: u32) {
        let mut detail = String::with_capacity(DETAIL_CAPACITY);
        write_segment(&mut detail, segment_id);
        self.push(owned(reason, detail));
    }

    fn push_none_of(&mut self, any_of: &[SegmentRef]) {
        let mut detail = String::with_capacity(17 + any_of.len() * 11);
        write_none_of(&mut detail, any_of);
        self.push(owned(Reason::NotInAudience, detail));
    }

    fn push_unknown_line_item(&mut self) {
        self.push(owned(Reason::Unspecified, UNKNOWN_LINE_ITEM.to_owned()));
    }

    fn is_eligible(&self, index: usize) -> bool {
        self[index].eligible
    }

    fn refuse(&mut self, index: usize, reason: Reason, detail: &str) {
        self[index] = owned(reason, detail.to_owned());
    }
}

/// Room for "segment " and any `u32`.
const DETAIL_CAPACITY: usize = 24;

fn owned(reason: Reason, detail: String) -> Decision {
    Decision {
        candidate_id: String::new(),
        eligible: reason == Reason::Eligible,
        reason: reason as i32,
        detail,
    }
}

/// "segment 123". Inlined into `decide`'s targeting: as a call it saved
/// and restored five registers around ~30 instructions of work.
#[inline(always)]
fn write_segment(out: &mut String, segment_id: u32) {
    out.push_str("segment ");
    push_number(out, segment_id);
}

/// "none of segments 4,5,6".
fn write_none_of(out: &mut String, any_of: &[SegmentRef]) {
    out.push_str("none of segments ");
    for (position, segment) in any_of.iter().enumerate() {
        if position > 0 {
            out.push(',');
        }
        push_number(out, segment.segment_id);
    }
}

/// Appends the decimal digits of `number`, as `Display` writes them: below
/// 10,000 (every segment id of a typical pack) one 4-byte window of
/// [`DIGITS`] cut to the number's length, with no division loop and no
/// `push` per digit (those were ~65 instructions per number, a fifth of
/// `decide_unnamed`'s; callgrind); larger numbers in groups of four digits.
#[inline]
fn push_number(out: &mut String, number: u32) {
    if number < 10_000 {
        push_leading_group(out, number as usize);
    } else {
        push_long_number(out, number);
    }
}

#[inline(never)]
fn push_long_number(out: &mut String, number: u32) {
    let (high, low) = ((number / 10_000) as usize, (number % 10_000) as usize);
    if high < 10_000 {
        push_leading_group(out, high);
    } else {
        push_leading_group(out, high / 10_000);
        push_group(out, high % 10_000);
    }
    push_group(out, low);
}

/// `group` (below 10,000) without leading zeros: the window of its entry
/// that starts at its first digit, 4 bytes whatever its length (a copy of a
/// constant size is two instructions; of a variable one a `memcpy` call),
/// then the bytes past its last digit cut off again.
#[inline(always)]
fn push_leading_group(out: &mut String, group: usize) {
    let length =
        1 + usize::from(group >= 10) + usize::from(group >= 100) + usize::from(group >= 1_000);
    let start = out.len();
    let from = 4 * group + 4 - length;
    out.push_str(&DIGITS[from..from + 4]);
    out.truncate(start + length);
}

/// `group` (below 10,000) as four digits, leading zeros included.
#[inline(always)]
fn push_group(out: &mut String, group: usize) {
    out.push_str(&DIGITS[4 * group..4 * group + 4]);
}

/// "0000", "0001", … "9999" back to back, and 4 bytes more so a window may
/// start at any digit of the last entry.
static DIGITS: &str = match std::str::from_utf8(&DIGIT_BYTES) {
    Ok(digits) => digits,
    Err(_) => panic!("digits are ASCII"),
};

static DIGIT_BYTES: [u8; 40_004] = {
    let mut bytes = [b'0'; 40_004];
    let mut group = 0;
    while group < 10_000 {
        let mut rest = group;
        let mut position = 4 * group + 3;
        while rest > 0 {
            bytes[position] = b'0' + (rest % 10) as u8;
            rest /= 10;
            position -= 1;
        }
        group += 1;
    }
    bytes
};

#[cfg(test)]
mod tests;
