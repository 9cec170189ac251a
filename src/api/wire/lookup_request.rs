//! `LookupRequest` as the unary `Lookup` receives it: one pass over the
//! request's bytes, the user id and the segment ids kept inline, so a
//! request of up to [`INLINE_USER_ID_BYTES`] and [`INLINE_SEGMENT_IDS`]
//! allocates nothing. prost's decode is a `String` and a `Vec<u32>` grown
//! one id at a time (an allocation and three reallocations for 20 ids) and
//! was ~0.3 µs of the ~1.7 µs a `Lookup` costs over a health check
//! (BENCHMARKS.md, seventh session). `BatchLookup` keeps prost's type.
//!
//! The wire contract is prost's, as for `decide_request`: the last
//! occurrence of a singular field wins, `segment_ids` append (packed or
//! not), unknown fields are skipped, the user id must be UTF-8, and a
//! refused request gets exactly the error prost gives.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use smallvec::SmallVec;

use super::reader::{Fields, Malformed, Value, prost_refusal, read_whole, text};
use crate::proto::{self, LookupRequest};

/// User ids up to this many bytes are kept without an allocation.
pub const INLINE_USER_ID_BYTES: usize = 64;

/// Requests listing up to this many segment ids keep them without an
/// allocation (a line item's targeting lists a handful to a few dozen).
pub const INLINE_SEGMENT_IDS: usize = 32;

/// A decoded `segd.v1.LookupRequest`.
#[derive(Debug, Clone, Default)]
pub struct WireLookupRequest {
    /// UTF-8, checked when decoded.
    user_id: SmallVec<[u8; INLINE_USER_ID_BYTES]>,
    segment_ids: SmallVec<[u32; INLINE_SEGMENT_IDS]>,
    max_age_seconds: u32,
    at_unix_seconds: i64,
}

impl WireLookupRequest {
    pub fn user_id(&self) -> &str {
        std::str::from_utf8(&self.user_id).expect("the user id is checked UTF-8 when decoded")
    }

    pub fn segment_ids(&self) -> &[u32] {
        &self.segment_ids
    }

    pub fn max_age_seconds(&self) -> u32 {
        self.max_age_seconds
    }

    pub fn at_unix_seconds(&self) -> i64 {
        self.at_unix_seconds
    }

    /// The owned form (tests, and the rare paths that need prost's type).
    pub fn to_proto(&self) -> LookupRequest {
        LookupRequest {
            user_id: self.user_id().to_owned(),
            segment_ids: self.segment_ids.to_vec(),
            max_age_seconds: self.max_age_seconds,
            at_unix_seconds: self.at_unix_seconds,
        }
    }

    /// Reads every field of `bytes` onto `self`.
    fn read(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        let mut fields = Fields::new(bytes, 0, bytes.len());
        while let Some((tag, value)) = fields.next_field()? {
            match tag {
                1 => {
                    let user_id = text(bytes, value.delimited()?)?;
                    self.user_id.clear();
                    self.user_id.extend_from_slice(user_id);
                }
                2 => self.read_segment_ids(bytes, value)?,
                3 => self.max_age_seconds = value.varint()? as u32,
                4 => self.at_unix_seconds = value.varint()? as i64,
                _ => {}
            }
        }
        Ok(())
    }

    /// One id (unpacked) or a run of them (packed): prost takes both.
    fn read_segment_ids(&mut self, bytes: &[u8], value: Value) -> Result<(), Malformed> {
        match value {
            Value::Varint(id) => self.segment_ids.push(id as u32),
            Value::Delimited { start, end } => {
                let mut packed = Fields::new(bytes, start, end);
                while !packed.at_end() {
                    self.segment_ids.push(packed.small_varint()? as u32);
                }
            }
            Value::Skipped => return Err(Malformed),
        }
        Ok(())
    }

    /// Decodes one whole message (the error path asks prost for its error).
    fn merge_bytes(&mut self, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        match self.read(bytes) {
            Ok(()) => Ok(()),
            Err(Malformed) => Err(prost_refusal::<proto::LookupRequest>(
                bytes,
                "LookupRequest",
            )),
        }
    }
}

impl prost::Message for WireLookupRequest {
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
        // Only when embedded in another message (the server decodes whole
        // requests through `merge`): merged by the owned type, read back.
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
