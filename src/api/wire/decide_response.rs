//! `DecideResponse` as the server sends it: each `candidate_id` taken from
//! the request's own text and each detail from the one text buffer of
//! `decide::Decisions`, instead of two `String`s per decision. The bytes are
//! those prost writes for the same `proto::DecideResponse` (tested).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use super::WireDecideRequest;
use crate::decide::Decisions;
use crate::proto::{self, Decision};

/// A `segd.v1.DecideResponse`.
#[derive(Debug, Clone, Default)]
pub struct WireDecideResponse {
    body: Body,
    generation: u64,
}

#[derive(Debug, Clone)]
enum Body {
    /// What the server sends: the ids come from the request (inline
    /// candidates first, then the registered line items: the decisions'
    /// order), the reasons and details from `decisions`.
    Served {
        request: WireDecideRequest,
        decisions: Decisions,
    },
    /// A decoded response (a client's view), or an empty one.
    Owned(Vec<Decision>),
}

impl Default for Body {
    fn default() -> Self {
        Body::Owned(Vec::new())
    }
}

/// One decision as encoded: `(candidate_id, eligible, reason, detail)`.
type Fields<'a> = (&'a str, bool, i32, &'a str);

impl WireDecideResponse {
    /// `decisions` answer `request`'s candidates in order.
    pub fn new(request: WireDecideRequest, decisions: Decisions, generation: u64) -> Self {
        debug_assert_eq!(
            decisions.len(),
            request.candidates().len() + request.line_item_ids().len()
        );
        Self {
            body: Body::Served { request, decisions },
            generation,
        }
    }

    /// The request the response was built from (a bench reuses it); `None`
    /// for a decoded response.
    pub fn into_request(self) -> Option<WireDecideRequest> {
        match self.body {
            Body::Served { request, .. } => Some(request),
            Body::Owned(_) => None,
        }
    }

    fn len(&self) -> usize {
        match &self.body {
            Body::Served { decisions, .. } => decisions.len(),
            Body::Owned(decisions) => decisions.len(),
        }
    }

    /// Decision `index`'s fields: plain indexing, since this runs twice per
    /// response (length, then bytes) and chained iterators over the two id
    /// lists showed in profiles.
    #[inline]
    fn fields(&self, index: usize) -> Fields<'_> {
        match &self.body {
            Body::Served { request, decisions } => {
                let decision = decisions.get(index);
                (
                    request.id(index),
                    decision.eligible(),
                    decision.reason as i32,
                    decision.detail,
                )
            }
            Body::Owned(decisions) => {
                let decision = &decisions[index];
                (
                    &decision.candidate_id,
                    decision.eligible,
                    decision.reason,
                    &decision.detail,
                )
            }
        }
    }

    fn each(&self) -> impl Iterator<Item = Fields<'_>> {
        (0..self.len()).map(|index| self.fields(index))
    }

    /// The owned prost form (tests, and decoding on a client).
    pub fn to_proto(&self) -> proto::DecideResponse {
        proto::DecideResponse {
            decisions: self
                .each()
                .map(|(id, eligible, reason, detail)| Decision {
                    candidate_id: id.to_owned(),
                    eligible,
                    reason,
                    detail: detail.to_owned(),
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

/// A `Decision`'s body length; fields at their default are not written
/// (proto3, as prost does).
fn decision_len((id, eligible, reason, detail): Fields<'_>) -> usize {
    string_len(1, id)
        + if eligible { key_len(2) + 1 } else { 0 }
        + if reason != 0 {
            key_len(3) + encoded_len_varint(reason as i64 as u64)
        } else {
            0
        }
        + string_len(4, detail)
}

impl prost::Message for WireDecideResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for fields in self.each() {
            let (id, eligible, reason, detail) = fields;
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(decision_len(fields) as u64, buf);
            put_string(1, id, buf);
            if eligible {
                encode_key(2, WireType::Varint, buf);
                encode_varint(1, buf);
            }
            if reason != 0 {
                encode_key(3, WireType::Varint, buf);
                encode_varint(reason as i64 as u64, buf);
            }
            put_string(4, detail, buf);
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
            body: Body::Owned(owned.decisions),
            generation: owned.generation,
        };
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        let decisions: usize = self
            .each()
            .map(|fields| {
                let body = decision_len(fields);
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
