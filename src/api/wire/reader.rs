//! A protobuf field reader over one message's bytes that allocates nothing:
//! each step yields a field number and its value (a varint, or the byte
//! range of a length-delimited value); unknown fields are skipped with
//! prost's own `skip_field`, keys and varints are read with prost's own
//! functions, so what this accepts is what prost accepts.
//!
//! It never interprets a field: the message readers (`decide_request`) say
//! which numbers they know and which wire type each must have.

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// The input is not a valid encoding of the message. The reader does not
/// say why: the caller asks prost for the exact error (the error path only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Varint(u64),
    /// `start..end` of the message's bytes.
    Delimited {
        start: usize,
        end: usize,
    },
    /// Fixed-width or group: skipped (no field of ours has these types).
    Skipped,
}

/// Walks the fields of `bytes[start..end]`.
pub struct Fields<'a> {
    bytes: &'a [u8],
    position: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8], start: usize, end: usize) -> Self {
        Self {
            bytes,
            position: start,
            end,
        }
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, Malformed> {
        if self.position == self.end {
            return Ok(None);
        }
        let mut rest = &self.bytes[self.position..self.end];
        let (tag, wire_type) = decode_key(&mut rest).map_err(|_| Malformed)?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(decode_varint(&mut rest).map_err(|_| Malformed)?),
            WireType::LengthDelimited => {
                let length = decode_varint(&mut rest).map_err(|_| Malformed)?;
                if length > rest.len() as u64 {
                    return Err(Malformed);
                }
                let start = self.end - rest.len();
                rest = &rest[length as usize..];
                Value::Delimited {
                    start,
                    end: start + length as usize,
                }
            }
            other => {
                skip_field(other, tag, &mut rest, DecodeContext::default())
                    .map_err(|_| Malformed)?;
                Value::Skipped
            }
        };
        self.position = self.end - rest.len();
        Ok(Some((tag, value)))
    }
}

impl Value {
    /// The value of a varint field (`uint32`, `int32`, `int64`, enum, bool):
    /// any other wire type is what prost refuses for these.
    pub fn varint(self) -> Result<u64, Malformed> {
        match self {
            Value::Varint(value) => Ok(value),
            _ => Err(Malformed),
        }
    }

    /// The range of a length-delimited field (string, message).
    pub fn delimited(self) -> Result<(usize, usize), Malformed> {
        match self {
            Value::Delimited { start, end } => Ok((start, end)),
            _ => Err(Malformed),
        }
    }
}

/// `bytes[start..end]` as text, or `Malformed` where it is not UTF-8 (prost
/// refuses such a `string` field).
pub fn text(bytes: &[u8], (start, end): (usize, usize)) -> Result<&str, Malformed> {
    std::str::from_utf8(&bytes[start..end]).map_err(|_| Malformed)
}
