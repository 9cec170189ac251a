//! A protobuf field reader over one message's bytes that allocates nothing:
//! each step yields a field number and its value (a varint, or the byte
//! range of a length-delimited value); unknown fields are skipped with
//! prost's own `skip_field`, and keys and varints longer than one byte are
//! read with prost's own functions, so what this accepts is what prost
//! accepts (one-byte keys and varints, nearly all of a request, inline).
//!
//! It never interprets a field: the message readers (`decide_request`,
//! `lookup_request`) say which numbers they know and which wire type each
//! must have. They share [`read_whole`] and [`prost_refusal`].

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// Runs `read` over the whole message in tonic's buffer: its single chunk
/// is read in place; a buffer in pieces is gathered first.
pub fn read_whole<T>(mut buf: impl Buf, read: impl FnOnce(&[u8]) -> T) -> T {
    let length = buf.remaining();
    if buf.chunk().len() == length {
        let result = read(&buf.chunk()[..length]);
        buf.advance(length);
        result
    } else {
        read(&buf.copy_to_bytes(length))
    }
}

/// prost's error for bytes a message reader refused (decoded as `P`, the
/// owned type named `name`), so a malformed request is answered exactly as
/// before. Should prost accept them, the two decoders disagree: that is a
/// bug here, refused loudly rather than guessed at.
pub fn prost_refusal<P: prost::Message + Default>(bytes: &[u8], name: &str) -> prost::DecodeError {
    match P::decode(bytes) {
        Err(error) => error,
        Ok(_) => {
            #[allow(deprecated)] // prost's only constructor for a custom message
            prost::DecodeError::new(format!(
                "{name}: the wire reader refused what prost accepts"
            ))
        }
    }
}

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
    #[inline(always)]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, Malformed> {
        if self.position == self.end {
            return Ok(None);
        }
        let (tag, wire_type) = self.key()?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::LengthDelimited => {
                let (start, end) = self.delimited_value()?;
                Value::Delimited { start, end }
            }
            other => self.skip(tag, other)?,
        };
        Ok(Some((tag, value)))
    }

    /// Whether every field has been read.
    #[inline(always)]
    pub fn at_end(&self) -> bool {
        self.position == self.end
    }

    /// Steps over the next field's key when it is the one-byte `key`: the
    /// shape-specialised readers expect the keys an encoder writes, in the
    /// order it writes them, and take anything else as a surprise.
    #[inline(always)]
    pub fn expect_key(&mut self, key: u8) -> bool {
        if self.position < self.end && self.bytes[self.position] == key {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// The range of a length-delimited field whose key was just read.
    #[inline(always)]
    pub fn delimited_value(&mut self) -> Result<(usize, usize), Malformed> {
        let length = self.length()?;
        if length > (self.end - self.position) as u64 {
            return Err(Malformed);
        }
        let start = self.position;
        self.position += length as usize;
        Ok((start, self.position))
    }

    /// A length: one byte, tested first, for every string and nested
    /// message of a request under 128 bytes (all but the top level's
    /// largest), a branch that predicts where the branchless [`Self::varint`]
    /// spends ~30 instructions on any varint.
    #[inline(always)]
    fn length(&mut self) -> Result<u64, Malformed> {
        match self.bytes.get(self.position) {
            Some(&byte) if byte < 0x80 && self.position < self.end => {
                self.position += 1;
                Ok(u64::from(byte))
            }
            _ => self.varint(),
        }
    }

    /// A field of a wire type none of ours has, skipped by prost.
    #[cold]
    #[inline(never)]
    fn skip(&mut self, tag: u32, wire_type: WireType) -> Result<Value, Malformed> {
        let mut rest = &self.bytes[self.position..self.end];
        skip_field(wire_type, tag, &mut rest, DecodeContext::default()).map_err(|_| Malformed)?;
        self.position = self.end - rest.len();
        Ok(Value::Skipped)
    }

    /// A field key: one byte for field numbers up to 15 (all of ours),
    /// prost's `decode_key` otherwise.
    #[inline(always)]
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
        self.long_key()
    }

    #[cold]
    #[inline(never)]
    fn long_key(&mut self) -> Result<(u32, WireType), Malformed> {
        let mut rest = &self.bytes[self.position..self.end];
        let key = decode_key(&mut rest).map_err(|_| Malformed)?;
        self.position = self.end - rest.len();
        Ok(key)
    }

    /// A varint known to be mostly one or two bytes (a packed run of segment
    /// ids under 16,384): those two lengths with a branch each, a short chain
    /// where [`Fields::varint`]'s branch-free form is ~15 dependent steps;
    /// anything longer goes to it. Not at the end (see [`Fields::at_end`]).
    #[inline(always)]
    pub fn small_varint(&mut self) -> Result<u64, Malformed> {
        let first = self.bytes[self.position];
        if first < 0x80 {
            self.position += 1;
            return Ok(u64::from(first));
        }
        if self.position + 1 < self.end {
            let second = self.bytes[self.position + 1];
            if second < 0x80 {
                self.position += 2;
                return Ok(u64::from(first & 0x7f) | u64::from(second) << 7);
            }
        }
        self.varint()
    }

    /// A varint (a field's value once its key is read). With 8 bytes left
    /// in the buffer and the varint ending within them (every varint of a
    /// request but negative numbers),
    /// one load and no branch per byte: the request's varints are 1 to 4
    /// bytes in no order (segment ids, ages, windows), so a byte-by-byte
    /// loop mispredicts on most of them. Longer ones, and the last bytes of
    /// a message, go to prost's `decode_varint`; a varint of up to 8 bytes
    /// has one value whichever way it is read.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        // The 8 bytes may run past this message's end into the enclosing
        // one's (nested messages are short): only a varint that ends before
        // `end` is taken.
        if let Some(word) = self.bytes[self.position..].first_chunk::<8>() {
            let word = u64::from_le_bytes(*word);
            let ends = !word & 0x8080_8080_8080_8080;
            let length = (ends.trailing_zeros() / 8 + 1) as usize;
            if ends != 0 && length <= self.end - self.position {
                self.position += length;
                return Ok(seven_bit_groups(word & (u64::MAX >> (64 - 8 * length))));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, Malformed> {
        let mut rest = &self.bytes[self.position..self.end];
        let value = decode_varint(&mut rest).map_err(|_| Malformed)?;
        self.position = self.end - rest.len();
        Ok(value)
    }
}

/// The value of varint bytes `bytes` (little-endian, continuation bits
/// included, bytes past the varint zero): each byte's low 7 bits in turn.
///
/// Neighbouring groups are joined pairwise, in three rounds (7-bit groups
/// into 14-bit ones per 16-bit lane, those into 28-bit ones per 32-bit
/// lane, then the two halves): 11 operations where one shift-and-mask per
/// byte took 24, and this was the decoder's hottest line (29 % of its
/// instructions, callgrind).
#[inline(always)]
fn seven_bit_groups(bytes: u64) -> u64 {
    let groups = bytes & 0x7f7f_7f7f_7f7f_7f7f;
    let pairs = (groups & 0x007f_007f_007f_007f) | ((groups & 0x7f00_7f00_7f00_7f00) >> 1);
    let quads = (pairs & 0x0000_3fff_0000_3fff) | ((pairs & 0x3fff_0000_3fff_0000) >> 2);
    (quads & 0x0fff_ffff) | ((quads & 0x0fff_ffff_0000_0000) >> 4)
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

/// The longest string [`short_ascii`] answers for.
pub const SHORT_TEXT: usize = 16;

/// The `SHORT_TEXT` bytes from `start` when `bytes[start..end]` is ASCII
/// and fits in them (so is UTF-8, as prost requires), checked in one masked
/// test; `None` for a longer or non-ASCII string, or too near the buffer's
/// end, which [`text`] checks instead.
#[inline(always)]
pub fn short_ascii(bytes: &[u8], (start, end): (usize, usize)) -> Option<&[u8; SHORT_TEXT]> {
    let length = end - start;
    if length > SHORT_TEXT {
        return None;
    }
    let window = bytes[start..].first_chunk::<SHORT_TEXT>()?;
    // The high bits of the string's `length` bytes (a load: a 128-bit
    // shift by a variable amount is a dozen instructions).
    let mask = HIGH_BITS[SHORT_TEXT - length..][..SHORT_TEXT]
        .first_chunk::<SHORT_TEXT>()
        .expect("SHORT_TEXT bytes");
    let high_bits = u128::from_le_bytes(*window) & u128::from_le_bytes(*mask);
    (high_bits == 0).then_some(window)
}

/// `SHORT_TEXT` bytes of 0x80 then as many zeros: from offset
/// `SHORT_TEXT - n`, the high bits of the first `n` bytes.
const HIGH_BITS: [u8; 2 * SHORT_TEXT] = {
    let mut bits = [0; 2 * SHORT_TEXT];
    let mut index = 0;
    while index < SHORT_TEXT {
        bits[index] = 0x80;
        index += 1;
    }
    bits
};

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The field reader's varint and prost's agree on value, length and
    /// refusal, for every encoding (overlong and 10-byte ones included)
    /// at any distance from the message's end.
    fn same_as_prost(bytes: &[u8]) {
        // The message is `bytes`, alone and followed by more of an
        // enclosing message's bytes (which must not be read as its own).
        for beyond in [0, 1, 7, 12] {
            let mut buffer = bytes.to_vec();
            buffer.extend(std::iter::repeat_n(0x01, beyond));
            let mut fields = Fields::new(&buffer, 0, bytes.len());
            let ours = fields.varint().map(|value| (value, fields.position));
            let mut rest = bytes;
            let theirs = decode_varint(&mut rest)
                .map(|value| (value, bytes.len() - rest.len()))
                .map_err(|_| Malformed);
            assert_eq!(ours, theirs, "{bytes:02x?} then {beyond} bytes");
        }
    }

    #[test]
    fn varints_of_every_length_read_as_prost_reads_them() {
        for bits in 0..64 {
            for value in [1u64 << bits, (1u64 << bits) - 1, u64::MAX >> (63 - bits)] {
                let mut encoded = Vec::new();
                prost::encoding::encode_varint(value, &mut encoded);
                for tail in 0..10 {
                    let mut bytes = encoded.clone();
                    bytes.extend(std::iter::repeat_n(0x81, tail));
                    same_as_prost(&bytes);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_read_as_a_varint_as_prost_reads_them(
            bytes in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            same_as_prost(&bytes);
        }

        #[test]
        fn short_ascii_answers_for_exactly_the_short_ascii_strings(
            bytes in proptest::collection::vec(
                prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()],
                0..40,
            ),
            start in any::<proptest::sample::Index>(),
            length in 0usize..20,
        ) {
            let start = start.index(bytes.len() + 1);
            let end = (start + length).min(bytes.len());
            let string = &bytes[start..end];
            let expected = string.len() <= SHORT_TEXT
                && string.is_ascii()
                && bytes.len() - start >= SHORT_TEXT;
            let window = short_ascii(&bytes, (start, end));
            prop_assert_eq!(window.is_some(), expected, "{:02x?}", string);
            if let Some(window) = window {
                prop_assert_eq!(&window[..string.len()], string);
            }
        }

        #[test]
        fn overlong_varints_read_as_prost_reads_them(
            value in 0u64..1 << 20,
            padding in 0usize..8,
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(value, &mut bytes);
            let last = bytes.len() - 1;
            bytes[last] |= 0x80;
            bytes.extend(std::iter::repeat_n(0x80, padding));
            bytes.push(0);
            bytes.extend(tail);
            same_as_prost(&bytes);
        }
    }
}
