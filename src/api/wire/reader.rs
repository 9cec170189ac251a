//! A protobuf field reader over one message's bytes that allocates nothing:
//! each step yields a field number and its value (a varint, or the byte
//! range of a length-delimited value); unknown fields are skipped with
//! prost's own `skip_field`, and keys and varints longer than one byte are
//! read with prost's own functions, so what this accepts is what prost
//! accepts (one-byte keys and varints, nearly all of a request, inline).
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
    #[inline]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, Malformed> {
        if self.position == self.end {
            return Ok(None);
        }
        let (tag, wire_type) = self.key()?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::LengthDelimited => {
                let length = self.varint()?;
                if length > (self.end - self.position) as u64 {
                    return Err(Malformed);
                }
                let start = self.position;
                self.position += length as usize;
                Value::Delimited {
                    start,
                    end: self.position,
                }
            }
            other => {
                let mut rest = &self.bytes[self.position..self.end];
                skip_field(other, tag, &mut rest, DecodeContext::default())
                    .map_err(|_| Malformed)?;
                self.position = self.end - rest.len();
                Value::Skipped
            }
        };
        Ok(Some((tag, value)))
    }

    /// A field key: one byte for field numbers up to 15 (all of ours),
    /// prost's `decode_key` otherwise.
    #[inline]
    fn key(&mut self) -> Result<(u32, WireType), Malformed> {
        let first = self.bytes[self.position];
        if first < 0x80 {
            let tag = u32::from(first >> 3);
            let wire_type = WireType::try_from(u64::from(first & 0x07)).map_err(|_| Malformed)?;
            if tag == 0 {
                return Err(Malformed);
            }
            self.position += 1;
            return Ok((tag, wire_type));
        }
        let mut rest = &self.bytes[self.position..self.end];
        let key = decode_key(&mut rest).map_err(|_| Malformed)?;
        self.position = self.end - rest.len();
        Ok(key)
    }

    /// A varint: one byte inline, prost's `decode_varint` for longer ones.
    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        match self.bytes[self.position..self.end].first() {
            Some(&byte) if byte < 0x80 => {
                self.position += 1;
                Ok(u64::from(byte))
            }
            _ => {
                let mut rest = &self.bytes[self.position..self.end];
                let value = decode_varint(&mut rest).map_err(|_| Malformed)?;
                self.position = self.end - rest.len();
                Ok(value)
            }
        }
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

/// `bytes[start..end]` if it is UTF-8 (prost refuses a `string` field that
/// is not); ASCII, the common case, is checked inline.
#[inline]
pub fn text(bytes: &[u8], (start, end): (usize, usize)) -> Result<&[u8], Malformed> {
    let value = &bytes[start..end];
    if !value.is_ascii() {
        std::str::from_utf8(value).map_err(|_| Malformed)?;
    }
    Ok(value)
}
