//! `DecideRequest` as the server receives it: one pass over the request's
//! bytes into a few flat arrays (candidates, segment refs, caps) and one
//! text buffer holding every string, instead of prost's ~7 owned `String`s
//! and `Vec`s per candidate. Candidates are read back as
//! [`CandidateView`]s borrowing those arrays.
//!
//! The wire contract is prost's, checked by the round-trip tests: the last
//! occurrence of a singular field wins, repeated fields append, unknown
//! fields are skipped, strings must be UTF-8, a wrong wire type or a broken
//! length is refused, and a refused request gets exactly the error prost
//! gives (it is asked again on the error path).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};

use super::reader::{Fields, Malformed, SHORT_TEXT, prost_refusal, read_whole, short_ascii, text};
use crate::candidate::{CandidateView, Caps, WireCap};
use crate::proto::{self, SegmentRef};

/// A byte range of [`WireDecideRequest`]'s text buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// One inline candidate: ranges of the request's arrays. The three segment
/// lists are stored one after the other: `refs[refs_start..all_of_end]` is
/// `all_of`, then `any_of` up to `any_of_end`, then `none_of` up to `refs_end`.
#[derive(Debug, Clone, Copy, Default)]
struct WireCandidate {
    id: Span,
    refs_start: u32,
    all_of_end: u32,
    any_of_end: u32,
    refs_end: u32,
    caps_start: u32,
    caps_end: u32,
}

/// A decoded `segd.v1.DecideRequest`.
#[derive(Debug, Clone, Default)]
pub struct WireDecideRequest {
    /// Every string of the request, back to back.
    text: String,
    /// `text` while a read appends to it (each piece checked as it comes).
    building: Vec<u8>,
    user_id: Span,
    at_unix_seconds: i64,
    candidates: Vec<WireCandidate>,
    refs: Vec<SegmentRef>,
    caps: Vec<WireCap>,
    line_item_ids: Vec<Span>,
}

impl WireDecideRequest {
    pub fn user_id(&self) -> &str {
        self.span(self.user_id)
    }

    pub fn at_unix_seconds(&self) -> i64 {
        self.at_unix_seconds
    }

    /// The inline candidates, in request order.
    pub fn candidates(&self) -> impl ExactSizeIterator<Item = CandidateView<'_>> {
        self.candidates.iter().map(|candidate| self.view(candidate))
    }

    /// The registered line items asked for, in request order.
    pub fn line_item_ids(&self) -> impl ExactSizeIterator<Item = &str> {
        self.line_item_ids.iter().map(|&id| self.span(id))
    }

    /// The id of candidate `index` in decision order: the inline
    /// candidates, then the registered line items.
    pub fn id(&self, index: usize) -> &str {
        match self.candidates.get(index) {
            Some(candidate) => self.span(candidate.id),
            None => self.span(self.line_item_ids[index - self.candidates.len()]),
        }
    }

    /// [`Self::id`] as bytes (the response encoder: no char-boundary
    /// checks on ranges the reader checked).
    #[inline]
    pub(super) fn id_bytes(&self, index: usize) -> &[u8] {
        let span = match self.candidates.get(index) {
            Some(candidate) => candidate.id,
            None => self.line_item_ids[index - self.candidates.len()],
        };
        &self.text.as_bytes()[span.start as usize..span.end as usize]
    }

    /// The owned prost form (tests, and `Message::encode`).
    pub fn to_proto(&self) -> proto::DecideRequest {
        proto::DecideRequest {
            user_id: self.user_id().to_owned(),
            candidates: self
                .candidates()
                .map(|candidate| proto::Candidate {
                    id: candidate.id.to_owned(),
                    all_of: candidate.all_of.to_vec(),
                    any_of: candidate.any_of.to_vec(),
                    none_of: candidate.none_of.to_vec(),
                    caps: candidate
                        .caps
                        .iter()
                        .map(|cap| proto::FrequencyCap {
                            key: cap.key.to_owned(),
                            limit: cap.limit,
                            window_seconds: cap.window_seconds,
                            calendar: cap.calendar,
                            utc_offset_minutes: cap.utc_offset_minutes,
                        })
                        .collect(),
                })
                .collect(),
            at_unix_seconds: self.at_unix_seconds,
            line_item_ids: self.line_item_ids().map(str::to_owned).collect(),
        }
    }

    #[inline]
    fn span(&self, span: Span) -> &str {
        &self.text[span.start as usize..span.end as usize]
    }

    /// Inlined into the callers' loops: as a call it returned the 100-byte
    /// view through memory, ~85 instructions per candidate (callgrind).
    #[inline]
    fn view(&self, candidate: &WireCandidate) -> CandidateView<'_> {
        let refs = |start: u32, end: u32| &self.refs[start as usize..end as usize];
        CandidateView {
            id: self.span(candidate.id),
            all_of: refs(candidate.refs_start, candidate.all_of_end),
            any_of: refs(candidate.all_of_end, candidate.any_of_end),
            none_of: refs(candidate.any_of_end, candidate.refs_end),
            caps: Caps::Wire {
                text: &self.text,
                caps: &self.caps[candidate.caps_start as usize..candidate.caps_end as usize],
            },
        }
    }

    /// Copies `bytes[range]` (checked UTF-8) to the text being built. A
    /// short ASCII string (ids and cap keys) is copied as a fixed-size
    /// window, two moves where `memcpy` was a call, and the bytes copied past
    /// its end are cut off again: ~100 instructions per string were 15 % of
    /// the decode (callgrind).
    #[inline]
    fn push_text(&mut self, bytes: &[u8], range: (usize, usize)) -> Result<Span, Malformed> {
        let start = self.building.len();
        if let Some(window) = short_ascii(bytes, range) {
            self.building.extend_from_slice(window);
            self.building.truncate(start + (range.1 - range.0));
        } else {
            self.building.extend_from_slice(text(bytes, range)?);
        }
        Ok(Span {
            start: start as u32,
            end: self.building.len() as u32,
        })
    }

    /// Appends the fields of `bytes` (one whole encoded message). The text
    /// is built as bytes, each string checked on its own (as prost does);
    /// the whole is then UTF-8 by construction, and checked once more in one
    /// pass when it becomes the `String` again.
    fn read(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        self.building = std::mem::take(&mut self.text).into_bytes();
        let read = self.read_fields(bytes);
        let text = String::from_utf8(std::mem::take(&mut self.building));
        self.text = text.map_err(|_| Malformed)?;
        read
    }

    fn read_fields(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        // Strings are at most the request's size (plus the slack of one
        // window copy): one allocation for them all.
        self.building.reserve(bytes.len() + SHORT_TEXT);
        self.reserve_arrays(bytes)?;
        let mut scratch = Scratch::default();
        let mut fields = Fields::new(bytes, 0, bytes.len());
        while let Some((tag, value)) = fields.next_field()? {
            match tag {
                1 => self.user_id = self.push_text(bytes, value.delimited()?)?,
                2 => self.read_candidate(bytes, value.delimited()?, &mut scratch)?,
                3 => self.at_unix_seconds = value.varint()? as i64,
                4 => {
                    let id = self.push_text(bytes, value.delimited()?)?;
                    self.line_item_ids.push(id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sizes the arrays once: the candidates counted by a walk over the
    /// top-level keys (cheap: each candidate is skipped whole), refs and caps
    /// for the common shape (up to 4 refs and 2 caps each; more grows).
    fn reserve_arrays(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        let (mut candidates, mut line_items) = (0, 0);
        let mut fields = Fields::new(bytes, 0, bytes.len());
        while let Some((tag, _)) = fields.next_field()? {
            match tag {
                2 => candidates += 1,
                4 => line_items += 1,
                _ => {}
            }
        }
        self.candidates.reserve(candidates);
        self.refs.reserve(candidates * 4);
        self.caps.reserve(candidates * 2);
        self.line_item_ids.reserve(line_items);
        Ok(())
    }

    /// Appends one candidate: read in the order encoders write it when it
    /// has that shape, else again from its first byte by the general loop.
    fn read_candidate(
        &mut self,
        bytes: &[u8],
        range: (usize, usize),
        scratch: &mut Scratch,
    ) -> Result<(), Malformed> {
        let (refs, caps, text) = (self.refs.len(), self.caps.len(), self.building.len());
        if self.read_canonical_candidate(bytes, range)? {
            return Ok(());
        }
        self.refs.truncate(refs);
        self.caps.truncate(caps);
        self.building.truncate(text);
        self.read_any_candidate(bytes, range, scratch)
    }

    /// A candidate laid out as every protobuf encoder writes it: its fields
    /// in number order, each repeated one in a single run, no unknown field
    /// and one-byte keys. One expected key after another, with no dispatch
    /// per field and no detour of `any_of`/`none_of` through [`Scratch`].
    ///
    /// Appends the candidate and answers true; false at the first surprise,
    /// with what it appended left for the caller to undo. An error is the
    /// general loop's error too: up to it both read the same fields with the
    /// same readers.
    fn read_canonical_candidate(
        &mut self,
        bytes: &[u8],
        (start, end): (usize, usize),
    ) -> Result<bool, Malformed> {
        let mut fields = Fields::new(bytes, start, end);
        let mut candidate = WireCandidate {
            refs_start: self.refs.len() as u32,
            caps_start: self.caps.len() as u32,
            ..WireCandidate::default()
        };
        if fields.expect_key(key(1, WireType::LengthDelimited)) {
            candidate.id = self.push_text(bytes, fields.delimited_value()?)?;
        }
        candidate.all_of_end = self.read_canonical_refs(bytes, &mut fields, 2)?;
        candidate.any_of_end = self.read_canonical_refs(bytes, &mut fields, 3)?;
        candidate.refs_end = self.read_canonical_refs(bytes, &mut fields, 4)?;
        while fields.expect_key(key(5, WireType::LengthDelimited)) {
            let cap = self.read_cap(bytes, fields.delimited_value()?)?;
            self.caps.push(cap);
        }
        if !fields.at_end() {
            return Ok(false);
        }
        candidate.caps_end = self.caps.len() as u32;
        self.candidates.push(candidate);
        Ok(true)
    }

    /// The run of segment refs with field number `tag` at the reader's
    /// position, appended; answers where the refs end.
    #[inline(always)]
    fn read_canonical_refs(
        &mut self,
        bytes: &[u8],
        fields: &mut Fields<'_>,
        tag: u8,
    ) -> Result<u32, Malformed> {
        while fields.expect_key(key(tag, WireType::LengthDelimited)) {
            self.refs
                .push(read_segment_ref(bytes, fields.delimited_value()?)?);
        }
        Ok(self.refs.len() as u32)
    }

    /// A candidate in any layout: fields in any order, singular ones
    /// repeated (the last wins), unknown ones skipped.
    fn read_any_candidate(
        &mut self,
        bytes: &[u8],
        (start, end): (usize, usize),
        scratch: &mut Scratch,
    ) -> Result<(), Malformed> {
        scratch.any_of.clear();
        scratch.none_of.clear();
        let mut candidate = WireCandidate {
            refs_start: self.refs.len() as u32,
            caps_start: self.caps.len() as u32,
            ..WireCandidate::default()
        };
        let mut fields = Fields::new(bytes, start, end);
        while let Some((tag, value)) = fields.next_field()? {
            match tag {
                1 => candidate.id = self.push_text(bytes, value.delimited()?)?,
                2 => self.refs.push(read_segment_ref(bytes, value.delimited()?)?),
                3 => scratch
                    .any_of
                    .push(read_segment_ref(bytes, value.delimited()?)?),
                4 => scratch
                    .none_of
                    .push(read_segment_ref(bytes, value.delimited()?)?),
                5 => {
                    let cap = self.read_cap(bytes, value.delimited()?)?;
                    self.caps.push(cap);
                }
                _ => {}
            }
        }
        candidate.all_of_end = self.refs.len() as u32;
        self.refs.extend_from_slice(&scratch.any_of);
        candidate.any_of_end = self.refs.len() as u32;
        self.refs.extend_from_slice(&scratch.none_of);
        candidate.refs_end = self.refs.len() as u32;
        candidate.caps_end = self.caps.len() as u32;
        self.candidates.push(candidate);
        Ok(())
    }

    /// One cap: in the encoders' layout when it has it, else again by the
    /// general loop.
    #[inline]
    fn read_cap(&mut self, bytes: &[u8], range: (usize, usize)) -> Result<WireCap, Malformed> {
        let text = self.building.len();
        if let Some(cap) = self.read_canonical_cap(bytes, range)? {
            return Ok(cap);
        }
        self.building.truncate(text);
        self.read_any_cap(bytes, range)
    }

    /// A cap whose fields come in number order, each at most once (what
    /// encoders write: a field at its default is left out); `None` on any
    /// other layout. Errors as [`Self::read_canonical_candidate`]'s do.
    #[inline(always)]
    fn read_canonical_cap(
        &mut self,
        bytes: &[u8],
        (start, end): (usize, usize),
    ) -> Result<Option<WireCap>, Malformed> {
        let mut fields = Fields::new(bytes, start, end);
        let key_at = self.building.len() as u32;
        let mut cap = WireCap {
            key_start: key_at,
            key_end: key_at,
            ..WireCap::default()
        };
        if fields.expect_key(key(1, WireType::LengthDelimited)) {
            let key = self.push_text(bytes, fields.delimited_value()?)?;
            (cap.key_start, cap.key_end) = (key.start, key.end);
        }
        if fields.expect_key(key(2, WireType::Varint)) {
            cap.limit = fields.varint()? as u32;
        }
        if fields.expect_key(key(3, WireType::Varint)) {
            cap.window_seconds = fields.varint()? as u32;
        }
        if fields.expect_key(key(4, WireType::Varint)) {
            cap.calendar = fields.varint()? as i32;
        }
        if fields.expect_key(key(5, WireType::Varint)) {
            cap.utc_offset_minutes = fields.varint()? as i32;
        }
        Ok(fields.at_end().then_some(cap))
    }

    /// A cap in any layout.
    fn read_any_cap(
        &mut self,
        bytes: &[u8],
        (start, end): (usize, usize),
    ) -> Result<WireCap, Malformed> {
        let mut cap = WireCap::default();
        let key_at = self.building.len() as u32;
        cap.key_start = key_at;
        cap.key_end = key_at;
        let mut fields = Fields::new(bytes, start, end);
        while let Some((tag, value)) = fields.next_field()? {
            match tag {
                1 => {
                    let key = self.push_text(bytes, value.delimited()?)?;
                    (cap.key_start, cap.key_end) = (key.start, key.end);
                }
                2 => cap.limit = value.varint()? as u32,
                3 => cap.window_seconds = value.varint()? as u32,
                4 => cap.calendar = value.varint()? as i32,
                5 => cap.utc_offset_minutes = value.varint()? as i32,
                _ => {}
            }
        }
        Ok(cap)
    }

    /// Decodes one whole message (the error path asks prost for its error).
    fn merge_bytes(&mut self, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        match self.read(bytes) {
            Ok(()) => Ok(()),
            Err(Malformed) => Err(prost_refusal::<proto::DecideRequest>(
                bytes,
                "DecideRequest",
            )),
        }
    }
}

/// Per-request buffers for the lists read out of order (`any_of` and
/// `none_of` may come before or between `all_of` entries on the wire).
#[derive(Default)]
struct Scratch {
    any_of: Vec<SegmentRef>,
    none_of: Vec<SegmentRef>,
}

/// One segment ref: `segment_id` then `max_age_seconds`, either left out
/// at 0, is the encoders' layout and read as such; any other goes to the
/// general loop from the ref's first byte (errors as
/// [`WireDecideRequest::read_canonical_candidate`]'s do).
#[inline(always)]
fn read_segment_ref(bytes: &[u8], range: (usize, usize)) -> Result<SegmentRef, Malformed> {
    let mut fields = Fields::new(bytes, range.0, range.1);
    let mut segment = SegmentRef::default();
    if fields.expect_key(key(1, WireType::Varint)) {
        segment.segment_id = fields.varint()? as u32;
    }
    if fields.expect_key(key(2, WireType::Varint)) {
        segment.max_age_seconds = fields.varint()? as u32;
    }
    if fields.at_end() {
        return Ok(segment);
    }
    read_any_segment_ref(bytes, range)
}

#[inline(never)]
fn read_any_segment_ref(
    bytes: &[u8],
    (start, end): (usize, usize),
) -> Result<SegmentRef, Malformed> {
    let mut segment = SegmentRef::default();
    let mut fields = Fields::new(bytes, start, end);
    while let Some((tag, value)) = fields.next_field()? {
        match tag {
            1 => segment.segment_id = value.varint()? as u32,
            2 => segment.max_age_seconds = value.varint()? as u32,
            _ => {}
        }
    }
    Ok(segment)
}

/// The one-byte key of field `tag` (1 to 15) with `wire_type`.
const fn key(tag: u8, wire_type: WireType) -> u8 {
    tag << 3 | wire_type as u8
}

impl prost::Message for WireDecideRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.to_proto().encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // One field at a time (only when embedded in another message; the
        // server decodes whole requests through `merge`): merged by the
        // owned type, then read back here.
        let mut owned = self.to_proto();
        owned.merge_field(tag, wire_type, buf, ctx)?;
        *self = Self::default();
        self.merge_bytes(&owned.encode_to_vec())
    }

    fn encoded_len(&self) -> usize {
        self.to_proto().encoded_len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    /// The whole request in one pass over tonic's buffer.
    fn merge(&mut self, buf: impl Buf) -> Result<(), prost::DecodeError> {
        read_whole(buf, |bytes| self.merge_bytes(bytes))
    }
}
