//! `DecideResponse` as the server sends it: each `candidate_id` taken from
//! the request's own text and each detail from the one text buffer of
//! `decide::Decisions`, instead of two `String`s per decision. The bytes are
//! those prost writes for the same `proto::DecideResponse` (tested).
//!
//! The bytes are rendered once, into one `Vec`, the first time tonic asks
//! for the length, and copied out by `encode_raw`: prost's generic `BufMut`
//! path (a call per varint, a length pass and a write pass over the
//! decisions) cost as many instructions as deciding the 50 candidates
//! (BENCHMARKS.md, "Decide details in one buffer").

use std::sync::OnceLock;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encoded_len_varint};

use super::WireDecideRequest;
use crate::decide::Decisions;
use crate::proto::{self, Decision, Reason};

/// A `segd.v1.DecideResponse`.
#[derive(Debug, Clone, Default)]
pub struct WireDecideResponse {
    body: Body,
    generation: u64,
    /// The encoded message, rendered on first need; the fields above never
    /// change after construction (decoding builds a new value).
    bytes: OnceLock<Vec<u8>>,
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
            bytes: OnceLock::new(),
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

    /// The owned prost form (tests, and decoding on a client).
    pub fn to_proto(&self) -> proto::DecideResponse {
        let decisions = match &self.body {
            Body::Served { request, decisions } => decisions
                .iter()
                .enumerate()
                .map(|(index, decision)| decision.to_proto(request.id(index)))
                .collect(),
            Body::Owned(decisions) => decisions.clone(),
        };
        proto::DecideResponse {
            decisions,
            generation: self.generation,
        }
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| self.render())
    }

    /// The message's bytes: each decision as a length-delimited field 1,
    /// then the generation; fields at their default are not written
    /// (proto3, as prost does).
    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.body {
            Body::Served { request, decisions } => {
                // Most decisions are a short id and detail: one allocation.
                out.reserve(decisions.len() * 40 + 11);
                for index in 0..decisions.len() {
                    let (reason, detail) = decisions.get_bytes(index);
                    put_decision(&mut out, request.id_bytes(index), reason as i32, detail);
                }
            }
            Body::Owned(decisions) => {
                for decision in decisions {
                    // A decoded `eligible` is sent as decoded: the owned
                    // form may hold any combination.
                    put_owned_decision(&mut out, decision);
                }
            }
        }
        if self.generation != 0 {
            out.push(key(2, WireType::Varint));
            put_varint(&mut out, self.generation);
        }
        out
    }
}

/// A field's key byte, for field numbers below 16.
const fn key(tag: u8, wire_type: WireType) -> u8 {
    (tag << 3) | wire_type as u8
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `encoded_len_varint` with the one-byte case first (nearly every length
/// and reason here).
#[inline]
fn varint_len(value: u64) -> usize {
    if value < 0x80 {
        1
    } else {
        encoded_len_varint(value)
    }
}

#[inline]
fn bytes_len(value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + varint_len(value.len() as u64) + value.len()
    }
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    if !value.is_empty() {
        out.push(key(tag, WireType::LengthDelimited));
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// A served decision: eligible exactly when the reason is ELIGIBLE.
#[inline]
fn put_decision(out: &mut Vec<u8>, id: &[u8], reason: i32, detail: &[u8]) {
    put_fields(out, id, reason == Reason::Eligible as i32, reason, detail);
}

fn put_owned_decision(out: &mut Vec<u8>, decision: &Decision) {
    put_fields(
        out,
        decision.candidate_id.as_bytes(),
        decision.eligible,
        decision.reason,
        decision.detail.as_bytes(),
    );
}

/// One `Decision` as field 1 of the response.
#[inline]
fn put_fields(out: &mut Vec<u8>, id: &[u8], eligible: bool, reason: i32, detail: &[u8]) {
    // Negative enum values are sign-extended to 10 bytes, as prost writes them.
    let reason = reason as i64 as u64;
    let body = bytes_len(id)
        + if eligible { 2 } else { 0 }
        + if reason != 0 {
            1 + varint_len(reason)
        } else {
            0
        }
        + bytes_len(detail);
    // The common shapes, with every length a one-byte varint, as a few
    // fixed-size writes: the byte-at-a-time path below was ~175
    // instructions per decision (callgrind).
    let short = body < 0x80 && reason < 0x80 && !id.is_empty();
    if short {
        out.extend_from_slice(&[
            key(1, WireType::LengthDelimited),
            body as u8,
            key(1, WireType::LengthDelimited),
            id.len() as u8,
        ]);
        out.extend_from_slice(id);
        if eligible {
            // ELIGIBLE, no detail.
            out.extend_from_slice(&[key(2, WireType::Varint), 1]);
            if reason != 0 {
                out.extend_from_slice(&[key(3, WireType::Varint), reason as u8]);
            }
            put_bytes(out, 4, detail);
        } else if reason != 0 && !detail.is_empty() {
            // A refusal with its detail.
            out.extend_from_slice(&[
                key(3, WireType::Varint),
                reason as u8,
                key(4, WireType::LengthDelimited),
                detail.len() as u8,
            ]);
            out.extend_from_slice(detail);
        } else {
            if reason != 0 {
                out.extend_from_slice(&[key(3, WireType::Varint), reason as u8]);
            }
            put_bytes(out, 4, detail);
        }
        return;
    }
    out.push(key(1, WireType::LengthDelimited));
    put_varint(out, body as u64);
    put_bytes(out, 1, id);
    if eligible {
        out.extend_from_slice(&[key(2, WireType::Varint), 1]);
    }
    if reason != 0 {
        out.push(key(3, WireType::Varint));
        put_varint(out, reason);
    }
    put_bytes(out, 4, detail);
}

impl prost::Message for WireDecideResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.bytes());
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
            bytes: OnceLock::new(),
        };
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.bytes().len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}
