//! The wire decoder against prost, the reference: random requests in
//! prost's own encoding and in encodings prost never writes (fields out of
//! order and repeated, unknown fields of every wire type, groups) decode to
//! the same request; corrupted bytes are refused exactly when prost refuses
//! them, with prost's message; the response encodes to prost's bytes.

use proptest::prelude::*;
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::{WireDecideRequest, WireDecideResponse};
use crate::decide::Decisions;
use crate::proto::{self, DecideRequest};

mod layouts;
mod lookup;

/// A field as written on the wire, for encodings prost does not produce.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    Bytes(u32, Vec<u8>),
    Message(u32, Vec<Field>),
    /// A group (wire types 3 and 4) around its fields.
    Group(u32, Vec<Field>),
    /// Bytes as they are (a key no encoder writes, say).
    Raw(Vec<u8>),
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for field in fields {
        match field {
            Field::Varint(tag, value) => {
                encode_key(*tag, WireType::Varint, out);
                encode_varint(*value, out);
            }
            Field::Fixed32(tag, value) => {
                encode_key(*tag, WireType::ThirtyTwoBit, out);
                out.put_u32_le(*value);
            }
            Field::Fixed64(tag, value) => {
                encode_key(*tag, WireType::SixtyFourBit, out);
                out.put_u64_le(*value);
            }
            Field::Bytes(tag, bytes) => {
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
            Field::Message(tag, inner) => {
                let mut body = Vec::new();
                encode(inner, &mut body);
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(body.len() as u64, out);
                out.extend_from_slice(&body);
            }
            Field::Group(tag, inner) => {
                encode_key(*tag, WireType::StartGroup, out);
                encode(inner, out);
                encode_key(*tag, WireType::EndGroup, out);
            }
            Field::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// Unknown fields (numbers no message of `DecideRequest` uses), every wire type.
fn unknown() -> impl Strategy<Value = Field> {
    // Mostly small numbers, next to the known ones; some beyond one-byte keys.
    let tag = prop_oneof![3 => 6u32..16, 1 => 16u32..2_000];
    prop_oneof![
        (tag.clone(), any::<u64>()).prop_map(|(tag, value)| Field::Varint(tag, value)),
        (tag.clone(), any::<u32>()).prop_map(|(tag, value)| Field::Fixed32(tag, value)),
        (tag.clone(), any::<u64>()).prop_map(|(tag, value)| Field::Fixed64(tag, value)),
        (tag.clone(), prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(tag, bytes)| Field::Bytes(tag, bytes)),
        (tag, any::<u64>())
            .prop_map(|(tag, value)| Field::Group(tag, vec![Field::Varint(1, value)])),
    ]
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    "[a-z0-9:é€-]{0,12}".prop_map(String::into_bytes)
}

fn segment_ref() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1u32..=2, any::<u64>()).prop_map(|(tag, value)| Field::Varint(tag, value)),
            1 => unknown(),
        ],
        0..4,
    )
}

fn cap() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        prop_oneof![
            2 => text().prop_map(|key| Field::Bytes(1, key)),
            4 => (2u32..=5, any::<u64>()).prop_map(|(tag, value)| Field::Varint(tag, value)),
            1 => unknown(),
        ],
        0..7,
    )
}

fn candidate() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        prop_oneof![
            2 => text().prop_map(|id| Field::Bytes(1, id)),
            6 => (2u32..=4, segment_ref()).prop_map(|(tag, inner)| Field::Message(tag, inner)),
            3 => cap().prop_map(|inner| Field::Message(5, inner)),
            1 => unknown(),
        ],
        0..10,
    )
}

/// Requests in any field order, singular fields repeated, unknowns anywhere.
fn request_fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        prop_oneof![
            2 => text().prop_map(|user| Field::Bytes(1, user)),
            6 => candidate().prop_map(|inner| Field::Message(2, inner)),
            1 => any::<u64>().prop_map(|at| Field::Varint(3, at)),
            2 => text().prop_map(|id| Field::Bytes(4, id)),
            1 => unknown(),
        ],
        0..12,
    )
}

fn owned_request() -> impl Strategy<Value = DecideRequest> {
    let segment =
        (any::<u32>(), any::<u32>()).prop_map(|(segment_id, max_age_seconds)| proto::SegmentRef {
            segment_id,
            max_age_seconds,
        });
    let segments = prop::collection::vec(segment, 0..4);
    let cap = (
        "[a-z:0-9]{0,8}",
        any::<u32>(),
        any::<u32>(),
        -5i32..5,
        any::<i32>(),
    )
        .prop_map(
            |(key, limit, window_seconds, calendar, utc_offset_minutes)| proto::FrequencyCap {
                key,
                limit,
                window_seconds,
                calendar,
                utc_offset_minutes,
            },
        );
    let candidate = (
        "[a-z0-9-]{0,8}",
        segments.clone(),
        segments.clone(),
        segments,
        prop::collection::vec(cap, 0..3),
    )
        .prop_map(|(id, all_of, any_of, none_of, caps)| proto::Candidate {
            id,
            all_of,
            any_of,
            none_of,
            caps,
        });
    (
        "[a-z0-9:]{0,10}",
        prop::collection::vec(candidate, 0..8),
        any::<i64>(),
        prop::collection::vec("[a-z0-9-]{0,8}", 0..4),
    )
        .prop_map(
            |(user_id, candidates, at_unix_seconds, line_item_ids)| DecideRequest {
                user_id,
                candidates,
                at_unix_seconds,
                line_item_ids,
            },
        )
}

/// prost (`P`) and a wire decoder (`W`, read back as `P` by `to_proto`) on
/// `bytes`: the same request, or the same error.
fn assert_decodes_like_prost<P, W>(
    bytes: &[u8],
    to_proto: impl Fn(&W) -> P,
) -> Result<(), TestCaseError>
where
    P: Message + Default + PartialEq + std::fmt::Debug,
    W: Message + Default + std::fmt::Debug,
{
    match (P::decode(bytes), W::decode(bytes)) {
        (Ok(reference), Ok(wire)) => prop_assert_eq!(to_proto(&wire), reference),
        (Err(reference), Err(wire)) => prop_assert_eq!(wire.to_string(), reference.to_string()),
        (reference, wire) => prop_assert!(false, "prost {reference:?}, wire {wire:?}"),
    }
    Ok(())
}

/// Both `DecideRequest` decoders on `bytes`.
fn assert_same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
    assert_decodes_like_prost(bytes, WireDecideRequest::to_proto)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prost_encodings_decode_to_the_same_request(request in owned_request()) {
        let decoded = WireDecideRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(decoded.to_proto(), request);
    }

    #[test]
    fn any_field_order_and_unknown_fields_decode_like_prost(fields in request_fields()) {
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        prop_assert!(DecideRequest::decode(bytes.as_slice()).is_ok(), "the generator writes valid requests");
        assert_same_as_prost(&bytes)?;
    }

    #[test]
    fn corrupted_requests_are_refused_exactly_when_prost_refuses(
        fields in request_fields(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        if !bytes.is_empty() {
            match how {
                0 => bytes.truncate(cut.index(bytes.len())),
                1 => { let at = flip.index(bytes.len()); bytes[at] = byte; }
                _ => { let at = flip.index(bytes.len()); bytes.insert(at, byte); }
            }
        }
        assert_same_as_prost(&bytes)?;
    }

    #[test]
    fn random_bytes_are_refused_exactly_when_prost_refuses(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        assert_same_as_prost(&bytes)?;
    }

    #[test]
    fn responses_encode_to_prosts_bytes(
        request in owned_request(),
        // Details past 127 bytes make the decision's length a two-byte varint.
        seed in prop::collection::vec((0i32..5, prop_oneof!["[a-z 0-9,é]{0,12}", "[a-z]{120,140}"]), 12),
        generation in any::<u64>(),
    ) {
        let wire = WireDecideRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let ids: Vec<String> = request
            .candidates
            .iter()
            .map(|candidate| candidate.id.clone())
            .chain(request.line_item_ids.iter().cloned())
            .collect();
        let mut decisions = Decisions::default();
        let mut expected = proto::DecideResponse { decisions: Vec::new(), generation };
        for (id, (reason, detail)) in ids.iter().zip(seed.iter().cycle()) {
            let reason = proto::Reason::try_from(*reason).unwrap();
            decisions.push(reason, detail);
            expected.decisions.push(proto::Decision {
                candidate_id: id.clone(),
                eligible: reason == proto::Reason::Eligible,
                reason: reason as i32,
                detail: detail.clone(),
            });
        }
        let response = WireDecideResponse::new(wire, decisions, generation);
        prop_assert_eq!(response.encoded_len(), expected.encoded_len());
        let bytes = response.encode_to_vec();
        prop_assert_eq!(&bytes, &expected.encode_to_vec());
        // And back through the response's own decoder (a client's view),
        // which re-encodes to the same bytes.
        let decoded = WireDecideResponse::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(decoded.to_proto(), expected);
        prop_assert_eq!(decoded.encode_to_vec(), bytes);
    }

    #[test]
    fn decoded_responses_reencode_to_prosts_bytes(
        decisions in prop::collection::vec(
            (
                prop_oneof!["[a-z0-9é-]{0,8}", "[a-z]{126,130}"],
                any::<bool>(),
                prop_oneof![-2i32..6, any::<i32>()],
                prop_oneof!["[a-z 0-9,é]{0,12}", "[a-z]{120,140}"],
            ),
            0..20,
        ),
        generation in any::<u64>(),
    ) {
        // Any combination a client may decode, negative enum values included.
        let expected = proto::DecideResponse {
            decisions: decisions
                .into_iter()
                .map(|(candidate_id, eligible, reason, detail)| proto::Decision {
                    candidate_id,
                    eligible,
                    reason,
                    detail,
                })
                .collect(),
            generation,
        };
        let bytes = expected.encode_to_vec();
        let decoded = WireDecideResponse::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(decoded.to_proto(), expected.clone());
        prop_assert_eq!(decoded.encoded_len(), bytes.len());
        prop_assert_eq!(decoded.encode_to_vec(), bytes);
    }
}

#[test]
fn a_wrong_wire_type_is_refused_with_prosts_message() {
    // segment_id (a uint32) sent length-delimited, as if packed.
    let mut bytes = Vec::new();
    encode(
        &[Field::Message(
            2,
            vec![Field::Message(2, vec![Field::Bytes(1, vec![1, 2])])],
        )],
        &mut bytes,
    );
    let error = WireDecideRequest::decode(bytes.as_slice()).unwrap_err();
    assert_eq!(
        error.to_string(),
        DecideRequest::decode(bytes.as_slice())
            .unwrap_err()
            .to_string()
    );
    assert!(error.to_string().contains("invalid wire type"), "{error}");
}

#[test]
fn invalid_utf8_is_refused() {
    let mut bytes = Vec::new();
    encode(&[Field::Bytes(1, vec![0xff, 0xfe])], &mut bytes);
    let error = WireDecideRequest::decode(bytes.as_slice()).unwrap_err();
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[test]
fn merging_appends_like_prost() {
    let first = DecideRequest {
        user_id: "a".into(),
        line_item_ids: vec!["x".into()],
        ..Default::default()
    };
    let second = DecideRequest {
        user_id: "b".into(),
        line_item_ids: vec!["y".into()],
        at_unix_seconds: 7,
        ..Default::default()
    };
    let mut wire = WireDecideRequest::decode(first.encode_to_vec().as_slice()).unwrap();
    wire.merge(second.encode_to_vec().as_slice()).unwrap();
    let mut reference = first.clone();
    reference.merge(second.encode_to_vec().as_slice()).unwrap();
    assert_eq!(wire.to_proto(), reference);
    // And embedded in another message, field by field (`merge_field`).
    let embedded = WireDecideRequest::decode_length_delimited(
        reference.encode_length_delimited_to_vec().as_slice(),
    )
    .unwrap();
    assert_eq!(embedded.to_proto(), reference);
}
