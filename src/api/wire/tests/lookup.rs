//! The `LookupRequest` wire decoder against prost: prost's encodings,
//! fields in any order and repeated, `segment_ids` packed and unpacked,
//! unknown fields of every wire type, corrupted and random bytes.

use proptest::prelude::*;
use prost::Message;

use super::{Field, assert_decodes_like_prost, encode, text, unknown};
use crate::api::wire::WireLookupRequest;
use crate::proto::LookupRequest;

/// A packed run of ids, as prost writes repeated scalars.
fn packed(ids: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &id in ids {
        prost::encoding::encode_varint(id, &mut bytes);
    }
    bytes
}

/// Requests in any field order, singular fields repeated, ids packed or
/// not (and packed runs of raw bytes), unknowns anywhere.
fn request_fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec(
        prop_oneof![
            2 => text().prop_map(|user| Field::Bytes(1, user)),
            2 => any::<u64>().prop_map(|id| Field::Varint(2, id)),
            3 => prop::collection::vec(any::<u64>(), 0..40).prop_map(|ids| Field::Bytes(2, packed(&ids))),
            1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(|raw| Field::Bytes(2, raw)),
            1 => any::<u64>().prop_map(|age| Field::Varint(3, age)),
            1 => any::<u64>().prop_map(|at| Field::Varint(4, at)),
            1 => unknown(),
        ],
        0..10,
    )
}

fn owned_request() -> impl Strategy<Value = LookupRequest> {
    (
        "[a-z0-9:é-]{0,80}",
        prop::collection::vec(any::<u32>(), 0..60),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(
            |(user_id, segment_ids, max_age_seconds, at_unix_seconds)| LookupRequest {
                user_id,
                segment_ids,
                max_age_seconds,
                at_unix_seconds,
            },
        )
}

/// Both `LookupRequest` decoders on `bytes`.
fn assert_same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
    assert_decodes_like_prost(bytes, WireLookupRequest::to_proto)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prost_encodings_decode_to_the_same_lookup(request in owned_request()) {
        let decoded = WireLookupRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(decoded.to_proto(), request);
    }

    #[test]
    fn any_field_order_and_encoding_decode_like_prost(fields in request_fields()) {
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        assert_same_as_prost(&bytes)?;
    }

    #[test]
    fn corrupted_lookups_are_refused_exactly_when_prost_refuses(
        fields in request_fields(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        if !bytes.is_empty() {
            let at = at.index(bytes.len());
            match how {
                0 => bytes.truncate(at),
                1 => bytes[at] = byte,
                _ => bytes.insert(at, byte),
            }
        }
        assert_same_as_prost(&bytes)?;
    }

    #[test]
    fn random_bytes_are_refused_as_lookups_exactly_when_prost_refuses(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        assert_same_as_prost(&bytes)?;
    }
}

#[test]
fn a_fixed_width_segment_id_is_refused_with_prosts_message() {
    let mut bytes = Vec::new();
    encode(&[Field::Fixed32(2, 7)], &mut bytes);
    let error = WireLookupRequest::decode(bytes.as_slice()).unwrap_err();
    let reference = LookupRequest::decode(bytes.as_slice()).unwrap_err();
    assert_eq!(error.to_string(), reference.to_string());
    assert!(error.to_string().contains("invalid wire type"), "{error}");
}

#[test]
fn an_invalid_utf8_user_id_is_refused() {
    let mut bytes = Vec::new();
    encode(&[Field::Bytes(1, vec![b'u', 0xff])], &mut bytes);
    let error = WireLookupRequest::decode(bytes.as_slice()).unwrap_err();
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

/// Past the inline sizes the request spills to the heap and still reads whole.
#[test]
fn long_user_ids_and_many_segment_ids_read_whole() {
    let request = LookupRequest {
        user_id: "u".repeat(300),
        segment_ids: (0..1_000).map(|id| id * 7_919).collect(),
        max_age_seconds: 3_600,
        at_unix_seconds: -5,
    };
    let decoded = WireLookupRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.to_proto(), request);
}

#[test]
fn merging_lookups_appends_ids_and_replaces_the_rest_like_prost() {
    let first = LookupRequest {
        user_id: "a".into(),
        segment_ids: vec![1, 2],
        max_age_seconds: 9,
        ..Default::default()
    };
    let second = LookupRequest {
        user_id: "b".into(),
        segment_ids: vec![3],
        at_unix_seconds: 7,
        ..Default::default()
    };
    let mut wire = WireLookupRequest::decode(first.encode_to_vec().as_slice()).unwrap();
    wire.merge(second.encode_to_vec().as_slice()).unwrap();
    let mut reference = first.clone();
    reference.merge(second.encode_to_vec().as_slice()).unwrap();
    assert_eq!(wire.to_proto(), reference);
    let embedded = WireLookupRequest::decode_length_delimited(
        reference.encode_length_delimited_to_vec().as_slice(),
    )
    .unwrap();
    assert_eq!(embedded.to_proto(), reference);
}
