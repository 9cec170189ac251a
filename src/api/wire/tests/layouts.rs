//! The decoder's shape-specialised readers (candidates, segment refs and
//! caps laid out as encoders write them) against prost: requests in prost's
//! own layout, then with one surprise or a few slipped into random places —
//! an unknown field between known ones, two fields swapped, a field
//! repeated, a `uint32` sent length-delimited (the packed form, which prost
//! refuses for a singular field), a key in two bytes — so a reader that
//! meets the surprise halfway through a candidate, a ref or a cap falls back
//! to the general loop and still answers exactly what prost answers.

use proptest::prelude::*;
use prost::Message;
use prost::encoding::encode_varint;

use super::{Field, assert_same_as_prost, encode, owned_request, unknown};
use crate::proto::{Candidate, DecideRequest, FrequencyCap, SegmentRef};

/// `request` as fields in prost's layout: number order, defaults left out.
fn canonical(request: &DecideRequest) -> Vec<Field> {
    let mut fields = Vec::new();
    text_field(&mut fields, 1, &request.user_id);
    for candidate in &request.candidates {
        fields.push(Field::Message(2, candidate_fields(candidate)));
    }
    varint_field(&mut fields, 3, request.at_unix_seconds as u64);
    for id in &request.line_item_ids {
        fields.push(Field::Bytes(4, id.clone().into_bytes()));
    }
    fields
}

fn candidate_fields(candidate: &Candidate) -> Vec<Field> {
    let mut fields = Vec::new();
    text_field(&mut fields, 1, &candidate.id);
    for (tag, refs) in [
        (2, &candidate.all_of),
        (3, &candidate.any_of),
        (4, &candidate.none_of),
    ] {
        fields.extend(
            refs.iter()
                .map(|segment| Field::Message(tag, ref_fields(segment))),
        );
    }
    for cap in &candidate.caps {
        fields.push(Field::Message(5, cap_fields(cap)));
    }
    fields
}

fn ref_fields(segment: &SegmentRef) -> Vec<Field> {
    let mut fields = Vec::new();
    varint_field(&mut fields, 1, u64::from(segment.segment_id));
    varint_field(&mut fields, 2, u64::from(segment.max_age_seconds));
    fields
}

fn cap_fields(cap: &FrequencyCap) -> Vec<Field> {
    let mut fields = Vec::new();
    text_field(&mut fields, 1, &cap.key);
    varint_field(&mut fields, 2, u64::from(cap.limit));
    varint_field(&mut fields, 3, u64::from(cap.window_seconds));
    // int32 and enums: negative values sign-extended to 64 bits, as prost.
    varint_field(&mut fields, 4, i64::from(cap.calendar) as u64);
    varint_field(&mut fields, 5, i64::from(cap.utc_offset_minutes) as u64);
    fields
}

fn text_field(fields: &mut Vec<Field>, tag: u32, value: &str) {
    if !value.is_empty() {
        fields.push(Field::Bytes(tag, value.as_bytes().to_vec()));
    }
}

fn varint_field(fields: &mut Vec<Field>, tag: u32, value: u64) {
    if value != 0 {
        fields.push(Field::Varint(tag, value));
    }
}

/// One surprise for the shape-specialised readers.
#[derive(Debug, Clone)]
enum Surprise {
    Unknown(Field),
    /// The field at the position and the next one trade places.
    Swap,
    /// The field at the position is written twice.
    Repeat,
    /// A varint field sent as a length-delimited run of varints.
    Packed,
    /// A varint field's key in two bytes (an overlong varint).
    LongKey,
}

fn surprise() -> impl Strategy<Value = Surprise> {
    prop_oneof![
        3 => unknown().prop_map(Surprise::Unknown),
        2 => Just(Surprise::Swap),
        2 => Just(Surprise::Repeat),
        1 => Just(Surprise::Packed),
        1 => Just(Surprise::LongKey),
    ]
}

/// Where a surprise goes: a candidate, then the candidate's own fields
/// (`nested` None) or those of one of its refs or caps, at `position`.
#[derive(Debug, Clone)]
struct Place {
    candidate: prop::sample::Index,
    nested: Option<prop::sample::Index>,
    position: prop::sample::Index,
}

fn place() -> impl Strategy<Value = Place> {
    (
        any::<prop::sample::Index>(),
        any::<Option<prop::sample::Index>>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(candidate, nested, position)| Place {
            candidate,
            nested,
            position,
        })
}

/// The field list `place` names in `request`, if the request has one.
fn fields_at<'a>(request: &'a mut [Field], place: &Place) -> Option<&'a mut Vec<Field>> {
    let mut candidates: Vec<&mut Vec<Field>> = request
        .iter_mut()
        .filter_map(|field| match field {
            Field::Message(2, inner) => Some(inner),
            _ => None,
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let chosen = place.candidate.index(candidates.len());
    let candidate = candidates.swap_remove(chosen);
    let Some(nested) = &place.nested else {
        return Some(candidate);
    };
    let mut messages: Vec<&mut Vec<Field>> = candidate
        .iter_mut()
        .filter_map(|field| match field {
            Field::Message(_, inner) => Some(inner),
            _ => None,
        })
        .collect();
    if messages.is_empty() {
        return None;
    }
    let chosen = nested.index(messages.len());
    Some(messages.swap_remove(chosen))
}

/// Slips `surprise` into `fields` at `at` (a no-op where it cannot apply:
/// swapping in a list of one, a varint trick on a field that is none).
fn slip_in(fields: &mut Vec<Field>, at: &prop::sample::Index, surprise: &Surprise) {
    let position = at.index(fields.len() + 1);
    match surprise {
        Surprise::Unknown(field) => fields.insert(position, field.clone()),
        Surprise::Swap if position + 1 < fields.len() => fields.swap(position, position + 1),
        Surprise::Repeat if position < fields.len() => {
            let field = fields[position].clone();
            fields.insert(position, field);
        }
        Surprise::Packed => {
            if let Some(Field::Varint(tag, value)) = fields.get(position) {
                let mut run = Vec::new();
                encode_varint(*value, &mut run);
                fields[position] = Field::Bytes(*tag, run);
            }
        }
        Surprise::LongKey => {
            // An unknown field's number may need two bytes already.
            if let Some(&Field::Varint(tag, value)) = fields.get(position)
                && tag < 16
            {
                // The one-byte key, padded to two.
                let mut bytes = vec![(tag << 3) as u8 | 0x80, 0x00];
                encode_varint(value, &mut bytes);
                fields[position] = Field::Raw(bytes);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_canonical_layout_is_prosts(request in owned_request()) {
        let mut bytes = Vec::new();
        encode(&canonical(&request), &mut bytes);
        prop_assert_eq!(bytes, request.encode_to_vec());
    }

    #[test]
    fn surprises_in_the_canonical_layout_decode_like_prost(
        request in owned_request(),
        surprises in prop::collection::vec((place(), surprise()), 1..4),
    ) {
        let mut fields = canonical(&request);
        let mut refusable = false;
        for (place, surprise) in &surprises {
            if let Some(list) = fields_at(&mut fields, place) {
                slip_in(list, &place.position, surprise);
                refusable |= matches!(surprise, Surprise::Packed);
            }
        }
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        prop_assert!(
            refusable || DecideRequest::decode(bytes.as_slice()).is_ok(),
            "only a packed varint makes the request invalid"
        );
        assert_same_as_prost(&bytes)?;
    }
}
