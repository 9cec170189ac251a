//! Checks a pack file's footer (total length, end magic, whole-file
//! checksum) while its bytes stream past, holding back only the last 24
//! bytes: a push is refused at its end without its bytes ever being in memory
//! at once. The footer is the same in formats v1 and v2 (see `format`).
//!
//! Only a first filter, never a substitute for the checked reader, which
//! verifies every section afterwards. It does no I/O.

use xxhash_rust::xxh3::Xxh3;

use super::error::{PackError, PackSection};
use super::format::{CHECKSUM_BYTES, END_MAGIC, FOOTER_BYTES};

/// Feed every byte of a pack file in order with [`FooterCheck::update`], then
/// call [`FooterCheck::finish`].
pub struct FooterCheck {
    /// Over every byte before the last `FOOTER_BYTES` seen so far.
    hasher: Xxh3,
    /// The last (at most `FOOTER_BYTES`) bytes seen.
    tail: Vec<u8>,
    total_bytes: u64,
}

impl Default for FooterCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl FooterCheck {
    pub fn new() -> Self {
        Self {
            hasher: Xxh3::new(),
            tail: Vec::with_capacity(2 * FOOTER_BYTES),
            total_bytes: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.total_bytes += bytes.len() as u64;
        if bytes.len() >= FOOTER_BYTES {
            self.hasher.update(&self.tail);
            let (body, tail) = bytes.split_at(bytes.len() - FOOTER_BYTES);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > FOOTER_BYTES {
            let excess = self.tail.len() - FOOTER_BYTES;
            self.hasher.update(&self.tail[..excess]);
            self.tail.drain(..excess);
        }
    }

    /// Bytes seen so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether the bytes seen end in a footer that matches them.
    pub fn finish(mut self) -> Result<(), PackError> {
        let footer_offset = self.total_bytes.saturating_sub(FOOTER_BYTES as u64);
        if self.tail.len() < FOOTER_BYTES {
            return Err(PackError::Truncated {
                what: PackSection::Footer,
                offset: footer_offset,
                needed_bytes: FOOTER_BYTES as u64,
                available_bytes: self.tail.len() as u64,
            });
        }
        let checksum_at = FOOTER_BYTES - CHECKSUM_BYTES;
        self.hasher.update(&self.tail[..checksum_at]);
        let field = |range: std::ops::Range<usize>| -> [u8; 8] {
            self.tail[range].try_into().expect("8-byte footer field")
        };
        if field(8..16) != END_MAGIC {
            return Err(PackError::Malformed {
                what: format!("no footer end magic at offset {}", footer_offset + 8),
            });
        }
        let declared_bytes = u64::from_le_bytes(field(0..8));
        if declared_bytes != self.total_bytes {
            return Err(PackError::Malformed {
                what: format!(
                    "footer declares {declared_bytes} bytes, the file has {}",
                    self.total_bytes
                ),
            });
        }
        if self.hasher.digest() != u64::from_le_bytes(field(checksum_at..FOOTER_BYTES)) {
            return Err(PackError::ChecksumMismatch {
                section: PackSection::Footer,
                offset: footer_offset,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_pack() -> Vec<u8> {
        crate::pack::write_pack(&crate::pack::Pack {
            name: "crm".into(),
            version: "v1".into(),
            built_at_unix_seconds: 1_700_000_000,
            user_fingerprints: vec![1, 2, 3],
            segments: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn a_whole_pack_passes_in_chunks_of_any_size() {
        let bytes = small_pack();
        for chunk_bytes in [1, 7, 23, 24, 25, 64, bytes.len()] {
            let mut check = FooterCheck::new();
            bytes
                .chunks(chunk_bytes)
                .for_each(|chunk| check.update(chunk));
            check
                .finish()
                .unwrap_or_else(|error| panic!("{chunk_bytes}: {error}"));
        }
    }

    #[test]
    fn a_flipped_byte_a_cut_or_trailing_zeros_fail() {
        let bytes = small_pack();
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            let mut check = FooterCheck::new();
            check.update(&damaged);
            assert!(check.finish().is_err(), "flip at {position}");
        }
        let mut check = FooterCheck::new();
        check.update(&bytes[..bytes.len() - 1]);
        assert!(check.finish().is_err());
        let mut check = FooterCheck::new();
        check.update(&bytes);
        check.update(&[0; 4096]);
        assert!(check.finish().is_err());
    }
}
