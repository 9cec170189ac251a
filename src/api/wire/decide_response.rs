//! `DecideResponse` as the server sends it: the decisions, encoded with each
//! `candidate_id` taken from the request's own text instead of a `String`
//! copied per decision. The bytes are those prost writes for the same
//! `proto::DecideResponse` (tested).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use super::WireDecideRequest;
use crate::proto::{self, Decision};

/// A `segd.v1.DecideResponse`.
#[derive(Debug, Clone, Default)]
pub struct WireDecideResponse {
    /// Where the ids come from: the request, inline candidates first and
    /// then the registered line items (the decisions' order); `None` for a
    /// response whose decisions carry their own ids.
    ids: Option<WireDecideRequest>,
    decisions: Vec<Decision>,
    generation: u64,
}

impl WireDecideResponse {
    /// `decisions` answer `request`'s candidates in order; their
    /// `candidate_id`s are ignored (the request's are sent).
    pub fn new(request: WireDecideRequest, decisions: Vec<Decision>, generation: u64) -> Self {
        debug_assert_eq!(
            decisions.len(),
            request.candidates().len() + request.line_item_ids().len()
        );
        Self {
            ids: Some(request),
            decisions,
            generation,
        }
    }

    /// The request the response was built from (a bench reuses it); `None`
    /// for a decoded response.
    pub fn into_request(self) -> Option<WireDecideRequest> {
        self.ids
    }

    /// `(candidate_id, decision)` in order: plain indexing, since this runs
    /// twice per response (length, then bytes) and chained iterators over
    /// the two id lists showed in profiles.
    fn each(&self) -> impl Iterator<Item = (&str, &Decision)> {
        self.decisions
            .iter()
            .enumerate()
            .map(move |(index, decision)| {
                let id = match &self.ids {
                    Some(request) => request.id(index),
                    None => decision.candidate_id.as_str(),
                };
                (id, decision)
            })
    }

    /// The owned prost form (tests, and decoding on a client).
    pub fn to_proto(&self) -> proto::DecideResponse {
        proto::DecideResponse {
            decisions: self
                .each()
                .map(|(id, decision)| Decision {
                    candidate_id: id.to_owned(),
                    ..decision.clone()
                })
                .collect(),
            generation: self.generation,
        }
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

/// A `Decision`'s body length with `id` as its `candidate_id`; fields at
/// their default are not written (proto3, as prost does).
fn decision_len(id: &str, decision: &Decision) -> usize {
    string_len(1, id)
        + if decision.eligible { key_len(2) + 1 } else { 0 }
        + if decision.reason != 0 {
            key_len(3) + encoded_len_varint(decision.reason as i64 as u64)
        } else {
            0
        }
        + string_len(4, &decision.detail)
}

impl prost::Message for WireDecideResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (id, decision) in self.each() {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(decision_len(id, decision) as u64, buf);
            put_string(1, id, buf);
            if decision.eligible {
                encode_key(2, WireType::Varint, buf);
                encode_varint(1, buf);
            }
            if decision.reason != 0 {
                encode_key(3, WireType::Varint, buf);
                encode_varint(decision.reason as i64 as u64, buf);
            }
            put_string(4, &decision.detail, buf);
        }
        if self.generation != 0 {
            encode_key(2, WireType::Varint, buf);
            encode_varint(self.generation, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Decoding is for clients and tests: through the owned type.
        let mut owned = self.to_proto();
        owned.merge_field(tag, wire_type, buf, ctx)?;
        *self = Self {
            ids: None,
            decisions: owned.decisions,
            generation: owned.generation,
        };
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        let decisions: usize = self
            .each()
            .map(|(id, decision)| {
                let body = decision_len(id, decision);
                key_len(1) + encoded_len_varint(body as u64) + body
            })
            .sum();
        let generation = if self.generation != 0 {
            key_len(2) + encoded_len_varint(self.generation)
        } else {
            0
        };
        decisions + generation
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}
