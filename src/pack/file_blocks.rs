//! Pack files are written in whole, aligned blocks of [`FILE_BLOCK_BYTES`].
//!
//! The server serves a format-2 pack from a mapping of its file, and a lookup
//! for a random user touches three places in it (the radix directory, the
//! dictionary with the index starts, the entries), each usually a cache miss
//! and, with 4 KiB pages, a TLB miss too: 100 MB of index is 25,000 pages,
//! far more than a TLB holds. The kernel maps a file with one 2 MiB entry
//! where its page cache holds a 2 MiB folio at a 2 MiB-aligned offset, and it
//! allocates the folios of a buffered write by the write's length and offset:
//! a file written in 1 MiB pushes or 8 KiB copies sits in small folios, one
//! written in aligned 2 MiB writes in 2 MiB folios. A `Lookup` spent ~1.25 µs
//! of server CPU finding its user in a file of small folios, ~0.86 µs in one
//! of 2 MiB folios (BENCHMARKS.md, "Seventh session").
//!
//! Files that are read in from disk get the same folios from the mapping's
//! `MADV_HUGEPAGE` (`mapped`); a file copied into the data directory by hand
//! keeps whatever folios the copy made until its page cache is dropped.

use std::io::{self, Write};

/// 2 MiB: the size of a huge page on x86-64 and of an arm64 PMD with 4 KiB
/// pages. A multiple of every page size in use.
pub const FILE_BLOCK_BYTES: usize = 2 << 20;

/// Hands bytes to `inner` only as whole blocks of [`FILE_BLOCK_BYTES`] at
/// offsets that are multiples of it (counting from where the writer started),
/// except the tail, which [`BlockWriter::finish`] writes.
pub struct BlockWriter<W: Write> {
    inner: W,
    block: Vec<u8>,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            block: Vec::new(),
        }
    }

    /// Buffers `bytes`, writing every block they complete. Whole blocks of a
    /// large write go straight through when nothing is buffered.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.block.is_empty() && bytes.len() >= FILE_BLOCK_BYTES {
                let whole = bytes.len() - bytes.len() % FILE_BLOCK_BYTES;
                self.inner.write_all(&bytes[..whole])?;
                bytes = &bytes[whole..];
                continue;
            }
            if self.block.capacity() == 0 {
                self.block.reserve_exact(FILE_BLOCK_BYTES);
            }
            let taken = bytes.len().min(FILE_BLOCK_BYTES - self.block.len());
            self.block.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if self.block.len() == FILE_BLOCK_BYTES {
                self.inner.write_all(&self.block)?;
                self.block.clear();
            }
        }
        Ok(())
    }

    /// Writes what is buffered and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.inner.write_all(&self.block)?;
        }
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records where each write the writer passes on starts and how long it is.
    #[derive(Default)]
    struct Writes {
        bytes: Vec<u8>,
        calls: Vec<(usize, usize)>,
    }

    impl Write for Writes {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.calls.push((self.bytes.len(), bytes.len()));
            self.bytes.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn written_in(pieces: &[usize]) -> (Vec<u8>, Writes) {
        let total: usize = pieces.iter().sum();
        let source: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut writer = BlockWriter::new(Writes::default());
        let mut at = 0;
        for &piece in pieces {
            writer.write_all(&source[at..at + piece]).unwrap();
            at += piece;
        }
        (source, writer.finish().unwrap())
    }

    #[test]
    fn uneven_pieces_reach_the_file_in_whole_aligned_blocks_and_a_tail() {
        let pieces = [1 << 20, 12_345, 8_192, FILE_BLOCK_BYTES + 7, 3, 1 << 20];
        let (source, writes) = written_in(&pieces);
        assert_eq!(writes.bytes, source);
        let (last, others) = writes.calls.split_last().unwrap();
        for &(offset, len) in others {
            assert_eq!(offset % FILE_BLOCK_BYTES, 0, "write at {offset}");
            assert_eq!(len % FILE_BLOCK_BYTES, 0, "write of {len} at {offset}");
        }
        assert_eq!(last.0 % FILE_BLOCK_BYTES, 0);
        assert_eq!(last.0 + last.1, source.len());
    }

    #[test]
    fn a_large_write_into_an_empty_block_goes_straight_through() {
        let (source, writes) = written_in(&[3 * FILE_BLOCK_BYTES + 10]);
        assert_eq!(writes.bytes, source);
        assert_eq!(
            writes.calls,
            [(0, 3 * FILE_BLOCK_BYTES), (3 * FILE_BLOCK_BYTES, 10)]
        );
    }

    #[test]
    fn nothing_written_means_no_write() {
        let (_, writes) = written_in(&[]);
        assert!(writes.calls.is_empty());
    }
}
