//! The one bounds-checked little-endian reader over a byte slice, shared by
//! every file format segd reads (packs, frequency log segments, checkpoints).
//!
//! It never panics on short input and never trusts a length: each read
//! checks the bytes left first and reports where it ran out. Each format maps
//! [`Truncated`] to its own error, naming the section or record.

/// A read that needed more bytes than were left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Where the read started.
    pub offset: usize,
    pub needed_bytes: usize,
    pub available_bytes: usize,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "truncated at byte offset {}: {} bytes needed, {} left",
            self.offset, self.needed_bytes, self.available_bytes
        )
    }
}

/// For decoders whose errors are plain text (the frequency log and
/// checkpoints): `?` turns a shortfall into its description.
impl From<Truncated> for String {
    fn from(short: Truncated) -> String {
        short.to_string()
    }
}

/// A position in a byte slice.
#[derive(Debug, Clone)]
pub struct LeReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> LeReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Everything, read or not.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.position..]
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// Errors unless `count` more bytes are present.
    pub fn ensure(&self, count: usize) -> Result<(), Truncated> {
        if count > self.remaining() {
            return Err(Truncated {
                offset: self.position,
                needed_bytes: count,
                available_bytes: self.remaining(),
            });
        }
        Ok(())
    }

    pub fn take(&mut self, count: usize) -> Result<&'a [u8], Truncated> {
        self.ensure(count)?;
        let taken = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(taken)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let taken = self.take(N)?;
        Ok(taken.try_into().expect("take returned N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        self.array::<1>().map(|[byte]| byte)
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let bytes = [1, 0, 0, 0, 0xff, 2, 0, 0, 0, 0, 0, 0, 0x80];
        let mut reader = LeReader::new(&bytes);
        assert_eq!(reader.u32(), Ok(1));
        assert_eq!(reader.u8(), Ok(0xff));
        assert_eq!(reader.i64(), Ok(i64::MIN + 2));
        assert_eq!(reader.remaining(), 0);
        assert_eq!(
            reader.u8(),
            Err(Truncated {
                offset: 13,
                needed_bytes: 1,
                available_bytes: 0
            })
        );
        let mut short = LeReader::new(&bytes[..3]);
        assert!(short.u32().is_err());
        assert_eq!(short.position(), 0, "a failed read consumes nothing");
        assert_eq!(short.take(usize::MAX).unwrap_err().available_bytes, 3);
    }
}
