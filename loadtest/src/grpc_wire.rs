//! The generator's own gRPC codec: a request goes out as protobuf bytes built
//! before the call, and a reply is walked just far enough to check its shape —
//! how many answers, which generation — instead of being decoded into owned
//! messages. Cloning, encoding and dropping 50 `Candidate`s and decoding 50
//! `Decision`s (two strings each) per inline `Decide` cost the generator
//! 15–17 µs of its 37–41 µs per request: CPU taken from the server under test
//! on a small box (BENCHMARKS.md, "The generator sends bytes").

use prost::DecodeError;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// What the generator checks of a reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplyShape {
    /// Occurrences of the repeated message field named by the codec.
    pub items: u32,
    /// The reply's `generation`; 0 when absent, as protobuf reads it.
    pub generation: u64,
}

/// Sends `Bytes` as they are; reads replies as a [`ReplyShape`].
#[derive(Debug, Clone, Copy)]
pub struct RawCodec {
    /// The repeated message field to count (`DecideResponse.decisions` = 1).
    items_field: Option<u32>,
    /// The `uint64 generation` field.
    generation_field: u32,
}

impl RawCodec {
    /// `DecideResponse`: `repeated Decision decisions = 1; uint64 generation = 2`.
    pub const DECIDE: RawCodec = RawCodec {
        items_field: Some(1),
        generation_field: 2,
    };
    /// `LookupResponse`: `uint64 generation = 3` (its segment lists are skipped).
    pub const LOOKUP: RawCodec = RawCodec {
        items_field: None,
        generation_field: 3,
    };

    /// Walks one encoded reply; malformed bytes are an error, as in a full decode.
    pub fn shape_of(&self, buf: &mut impl Buf) -> Result<ReplyShape, DecodeError> {
        let mut shape = ReplyShape::default();
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(buf)?;
            if tag == self.generation_field && wire_type == WireType::Varint {
                shape.generation = decode_varint(buf)?;
                continue;
            }
            if Some(tag) == self.items_field && wire_type == WireType::LengthDelimited {
                shape.items += 1;
            }
            // Checks a length against what is left, as a decode would.
            skip_field(wire_type, tag, buf, DecodeContext::default())?;
        }
        Ok(shape)
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ReplyShape;
    type Encoder = RawEncoder;
    type Decoder = ShapeDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ShapeDecoder {
        ShapeDecoder(*self)
    }
}

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

pub struct ShapeDecoder(RawCodec);

impl Decoder for ShapeDecoder {
    type Item = ReplyShape;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ReplyShape>, Status> {
        self.0
            .shape_of(src)
            .map(Some)
            .map_err(|error| Status::internal(format!("malformed reply: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use segd::proto::{DecideResponse, Decision, LookupResponse};

    use super::*;

    fn decide_reply(decisions: usize, generation: u64) -> Vec<u8> {
        DecideResponse {
            decisions: (0..decisions)
                .map(|index| Decision {
                    candidate_id: format!("li:{index}"),
                    eligible: index % 2 == 0,
                    reason: 2,
                    detail: "segment 7".to_owned(),
                })
                .collect(),
            generation,
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_decisions_and_reads_the_generation() {
        for (decisions, generation) in [(0, 0), (1, 7), (50, 1 << 40), (100, u64::MAX)] {
            let bytes = decide_reply(decisions, generation);
            let shape = RawCodec::DECIDE.shape_of(&mut bytes.as_slice()).unwrap();
            assert_eq!(
                shape,
                ReplyShape {
                    items: decisions as u32,
                    generation
                }
            );
        }
    }

    #[test]
    fn skips_lookup_segment_lists() {
        let bytes = LookupResponse {
            segment_ids: vec![1, 300, 70_000],
            unknown_segment_ids: vec![9],
            generation: 42,
        }
        .encode_to_vec();
        let shape = RawCodec::LOOKUP.shape_of(&mut bytes.as_slice()).unwrap();
        assert_eq!(shape.generation, 42);
    }

    #[test]
    fn refuses_what_a_decode_refuses() {
        let bytes = decide_reply(3, 9);
        // Cut inside the last field, and a length running past the end.
        for cut in [bytes.len() - 1, 3] {
            assert!(RawCodec::DECIDE.shape_of(&mut &bytes[..cut]).is_err());
            assert!(DecideResponse::decode(&bytes[..cut]).is_err());
        }
        let overlong = [0x0a, 0x7f, 0x01];
        assert!(RawCodec::DECIDE.shape_of(&mut &overlong[..]).is_err());
    }
}
