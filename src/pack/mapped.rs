//! The bytes of a format-v2 pack as the server serves from them, and typed
//! columns into them: the crate's only memory-mapping code and, with
//! `memory`, its only `unsafe`.
//!
//! A [`PackBytes`] is an immutable, 8-byte-aligned byte buffer: either a
//! read-only mapping of a pack file or an owned copy (packs that arrive as
//! bytes and tests). A [`Column<T>`] is a slice of fixed-size little-endian
//! values (`u32`, `u64`, [`IndexEntry`]) inside one, or an owned `Vec<T>`
//! (indexes built at load from a v1 pack): the user dictionary and the
//! user-major index are columns, so a v2 pack is served straight from the
//! file with no decoding and no copy.
//!
//! # Why mapping a pack file is sound
//!
//! A mapping is only as immutable as the file behind it: if another process
//! truncated or rewrote the file in place, reads through the mapping would
//! see changing bytes (breaking the checks done at load) or fault (`SIGBUS`).
//! segd never modifies a file in the data directory in place: every pack file
//! is written whole under a temporary name, fsynced and renamed into place
//! (`writer::write_pack_file_atomic`, the catalog's push), and replaced or
//! removed only by rename and unlink, which leave a mapped inode intact until
//! the last mapping goes. The one file it overwrites is a retired version
//! recycled as an upload's file (`store::pack_files`), and only when this
//! process maps no file of its inode (`mapped_inodes`, which every mapping
//! made here registers in) and no other name links to it. The data directory belongs to segd; an operator who
//! edits a served file in place breaks that contract (as they would for any
//! database's files). Within that contract the mapped bytes never change, so
//! handing out `&[u8]` over them is sound.
//!
//! This module never interprets the bytes; `view` checks them before any
//! column is made.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use super::mapped_inodes::MappedInode;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "format-v2 packs are served in place and are little-endian: build on a little-endian target"
);

/// One membership in the user-major index: which segment of the pack, and how
/// long before the pack's build time the member was last seen, as decoded
/// from the index (`entries`: the file packs it into 1-4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct IndexEntry {
    /// Index into the pack's segment table.
    pub slot: u16,
    /// Hours before the pack's build time (rounded toward older).
    pub hours_ago: u16,
}

/// Fixed-size values a column may hold. Sealed: only types for which every
/// bit pattern is a valid value, with no padding, may be read out of file bytes.
pub trait Scalar: Copy + Send + Sync + 'static + private::Sealed {}

mod private {
    pub trait Sealed {}
}

impl private::Sealed for u8 {}
impl private::Sealed for u32 {}
impl private::Sealed for u64 {}
impl private::Sealed for IndexEntry {}
impl Scalar for u8 {}
impl Scalar for u32 {}
impl Scalar for u64 {}
impl Scalar for IndexEntry {}

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 4);
const _: () = assert!(std::mem::align_of::<IndexEntry>() == 2);

/// The alignment every v2 section starts at, and that `PackBytes` guarantees
/// for its first byte.
pub const ALIGNMENT: usize = 8;

enum Storage {
    /// A file mapping, counted in `mapped_inodes` while it lives.
    Mapped { map: Mmap, _counted: MappedInode },
    /// `u64`s so the buffer is 8-aligned; `len` bytes of it are the pack.
    Copied { words: Box<[u64]>, len: usize },
    /// A byte vector that happened to be 8-aligned: kept without a copy.
    Vec(Vec<u8>),
}

/// Immutable pack bytes whose first byte is [`ALIGNMENT`]-aligned.
pub struct PackBytes {
    storage: Storage,
}

impl std::fmt::Debug for PackBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PackBytes")
            .field("len", &self.as_bytes().len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl PackBytes {
    /// Maps a pack file read-only and reads it in up front, in bounded steps
    /// ([`populate`]) so the checked load that follows does not fault page by
    /// page, and so that no single system call holds the process's
    /// `mmap_lock` for the whole file (see [`ADVICE_CHUNK_BYTES`]).
    pub fn map_file(path: &Path) -> std::io::Result<PackBytes> {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        let len = metadata.len();
        if len == 0 {
            // mmap refuses empty files; an empty pack is refused by the reader.
            return Ok(PackBytes::copy_from(&[]));
        }
        #[allow(unsafe_code)]
        // SAFETY: the mapping is read-only and files in the data directory are
        // never modified in place (see the module docs), so the bytes behind
        // the returned `&[u8]` do not change while the mapping lives.
        let map = unsafe { MmapOptions::new().map(&file)? };
        prefer_huge_pages(&map);
        populate(&map);
        Ok(PackBytes {
            storage: Storage::Mapped {
                map,
                _counted: MappedInode::register(&metadata),
            },
        })
    }

    /// An aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> PackBytes {
        let mut words = vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice();
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut buffer = [0u8; 8];
            buffer[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(buffer);
        }
        PackBytes {
            storage: Storage::Copied {
                words,
                len: bytes.len(),
            },
        }
    }

    /// Keeps `bytes` without a copy when its buffer is aligned (large
    /// allocations always are), copies it otherwise.
    pub fn from_vec(bytes: Vec<u8>) -> PackBytes {
        if (bytes.as_ptr() as usize).is_multiple_of(ALIGNMENT) {
            PackBytes {
                storage: Storage::Vec(bytes),
            }
        } else {
            PackBytes::copy_from(&bytes)
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped { map, .. } => map,
            Storage::Vec(bytes) => bytes,
            Storage::Copied { words, len } => &words_as_bytes(words)[..*len],
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are a file mapping (resident only while touched).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// Drops the pages of `range` from this process's resident memory; a
    /// later read maps them in again from the file (the page cache). Used
    /// after verification for the regions lookups never touch (the bitmaps).
    /// Only whole pages inside `range` are released; owned bytes are kept.
    pub fn release(&self, range: Range<usize>) {
        if let Storage::Mapped { map, .. } = &self.storage {
            release_pages(map, range);
        }
    }
}

impl Drop for PackBytes {
    /// A mapping's resident pages are released in bounded steps before the
    /// `munmap`, which then has next to nothing left to tear down under the
    /// `mmap_lock` (see [`ADVICE_CHUNK_BYTES`]). Runs on whichever thread
    /// drops the last reference: the store's retirement thread for a served
    /// pack, never a request thread.
    fn drop(&mut self) {
        if let Storage::Mapped { map, .. } = &self.storage {
            release_pages(map, 0..map.len());
        }
    }
}

/// The most bytes one `madvise` covers. Populating or releasing a range
/// holds the process's `mmap_lock` (shared) while the call lasts, and while
/// it is held every `mmap`/`munmap`/`mprotect` of another thread waits — the
/// allocator's and thread stacks', on the request threads too — and behind
/// such a waiting writer, other takers of the lock. One `MAP_POPULATE` of a
/// 1.2 GB pack, on the push thread at nice +10 on a loaded box, held it for
/// 145 ms in one go (BENCHMARKS.md, "Swaps, third session"); in 16 MiB steps
/// (4,096 pages) a waiting thread gets the lock between two steps.
pub const ADVICE_CHUNK_BYTES: usize = 16 << 20;

/// `MADV_HUGEPAGE` on the whole mapping, before it is read in: the part of
/// the file not yet in the page cache is then read in 2 MiB folios, which the
/// kernel maps with one TLB entry each (`file_blocks` has why lookups care,
/// and how segd writes its files so the cached part is in such folios too).
fn prefer_huge_pages(map: &Mmap) {
    #[cfg(target_os = "linux")]
    {
        // Advice is an optimisation: on a refusal the file is read in pages.
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// Reads the whole mapping in, one chunk per `MADV_POPULATE_READ`. Where the
/// kernel lacks it (before Linux 5.14) the pages fault in as they are read.
fn populate(map: &Mmap) {
    #[cfg(target_os = "linux")]
    for start in (0..map.len()).step_by(ADVICE_CHUNK_BYTES) {
        let len = ADVICE_CHUNK_BYTES.min(map.len() - start);
        // Advice is an optimisation: on a refusal the checked load's reads
        // fault the pages in instead.
        if map
            .advise_range(memmap2::Advice::PopulateRead, start, len)
            .is_err()
        {
            return;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// `MADV_DONTNEED` over the whole pages inside `range`, chunk by chunk.
fn release_pages(map: &Mmap, range: Range<usize>) {
    let page = page_size();
    let start = range.start.next_multiple_of(page);
    let end = range.end.min(map.len()) / page * page;
    let mut chunk_start = start;
    while chunk_start < end {
        let len = ADVICE_CHUNK_BYTES.min(end - chunk_start);
        #[allow(unsafe_code)]
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping discards
        // nothing that cannot be read again: later accesses fault the same
        // file bytes back in. No `&mut` to the mapping exists anywhere.
        let result = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, chunk_start, len)
        };
        // Advice is an optimisation: a refusal leaves the pages resident
        // (and `munmap` releases them).
        if result.is_err() {
            return;
        }
        chunk_start += len;
    }
}

fn page_size() -> usize {
    // 4 KiB pages are the norm; a larger real page size only means fewer
    // pages are released (the range is rounded inward to this unit).
    const ASSUMED_PAGE_BYTES: usize = 4096;
    #[cfg(unix)]
    {
        // SAFETY: sysconf takes an integer and reads a constant.
        #[allow(unsafe_code)]
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            return page as usize;
        }
    }
    ASSUMED_PAGE_BYTES
}

fn words_as_bytes(words: &[u64]) -> &[u8] {
    #[allow(unsafe_code)]
    // SAFETY: any `u64` is 8 initialised bytes, `u8` has alignment 1, and the
    // returned slice covers exactly the words' memory for the same lifetime.
    unsafe {
        std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words))
    }
}

/// A slice of `T` either inside shared pack bytes or owned.
pub struct Column<T: Scalar> {
    /// Points at `len` values, valid while `owner` lives.
    start: std::ptr::NonNull<T>,
    len: usize,
    owner: Owner<T>,
}

enum Owner<T> {
    /// Held only to keep the bytes `start` points into alive.
    Pack {
        _bytes: Arc<PackBytes>,
    },
    Vec(Vec<T>),
}

// SAFETY: a column only hands out shared references to immutable data owned
// by (or kept alive through) itself; `T: Scalar` is `Send + Sync`, and so are
// `Arc<PackBytes>` and `Vec<T>`.
#[allow(unsafe_code)]
unsafe impl<T: Scalar> Send for Column<T> {}
// SAFETY: as for `Send`: no interior mutability anywhere behind a column.
#[allow(unsafe_code)]
unsafe impl<T: Scalar> Sync for Column<T> {}

impl<T: Scalar> std::fmt::Debug for Column<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Column")
            .field("len", &self.len)
            .field("in_pack", &matches!(self.owner, Owner::Pack { .. }))
            .finish()
    }
}

/// Why a column could not be made over pack bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("bytes {start}..{end} are outside the {len}-byte pack")]
    OutOfBounds {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("bytes {start}..{end} are not a whole number of {size}-byte values")]
    Length {
        start: usize,
        end: usize,
        size: usize,
    },
    #[error("offset {start} is not a multiple of {align}")]
    Misaligned { start: usize, align: usize },
}

impl<T: Scalar> Column<T> {
    pub fn from_vec(values: Vec<T>) -> Column<T> {
        // The heap buffer does not move when the Vec moves into `owner`.
        let start = std::ptr::NonNull::new(values.as_ptr().cast_mut())
            .unwrap_or(std::ptr::NonNull::dangling());
        Column {
            start,
            len: values.len(),
            owner: Owner::Vec(values),
        }
    }

    /// The values stored in `bytes[range]`, checked to be in bounds, a whole
    /// number of values and aligned for `T`.
    pub fn in_pack(bytes: &Arc<PackBytes>, range: Range<usize>) -> Result<Column<T>, ColumnError> {
        let all = bytes.as_bytes();
        let size = std::mem::size_of::<T>();
        if range.start > range.end || range.end > all.len() {
            return Err(ColumnError::OutOfBounds {
                start: range.start,
                end: range.end,
                len: all.len(),
            });
        }
        if !(range.end - range.start).is_multiple_of(size) {
            return Err(ColumnError::Length {
                start: range.start,
                end: range.end,
                size,
            });
        }
        let address = all.as_ptr() as usize + range.start;
        if !address.is_multiple_of(std::mem::align_of::<T>()) {
            return Err(ColumnError::Misaligned {
                start: range.start,
                align: std::mem::align_of::<T>(),
            });
        }
        let pointer = all[range.clone()].as_ptr().cast::<T>().cast_mut();
        Ok(Column {
            start: std::ptr::NonNull::new(pointer).unwrap_or(std::ptr::NonNull::dangling()),
            len: (range.end - range.start) / size,
            owner: Owner::Pack {
                _bytes: Arc::clone(bytes),
            },
        })
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        #[allow(unsafe_code)]
        // SAFETY: `start` points at `len` initialised `T`s, aligned for `T`
        // (checked in `in_pack`; a Vec's buffer is aligned), which live as
        // long as `owner` and never change (pack bytes are immutable, see the
        // module docs; the Vec is never handed out mutably). Every bit
        // pattern is a valid `T` (`Scalar` is sealed to such types) and the
        // little-endian layout matches the target (checked at compile time).
        unsafe {
            std::slice::from_raw_parts(self.start.as_ptr(), self.len)
        }
    }

    /// Heap bytes this column owns (0 for a column inside pack bytes).
    pub fn heap_bytes(&self) -> usize {
        match &self.owner {
            Owner::Pack { .. } => 0,
            Owner::Vec(values) => values.capacity() * std::mem::size_of::<T>(),
        }
    }
}

impl<T: Scalar> std::ops::Deref for Column<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_little_endian_values_in_place() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[5, 0, 9, 0]);
        let bytes = Arc::new(PackBytes::copy_from(&bytes));
        let words: Column<u64> = Column::in_pack(&bytes, 0..8).expect("aligned");
        assert_eq!(&*words, &[7]);
        let entries: Column<IndexEntry> = Column::in_pack(&bytes, 12..16).expect("aligned");
        assert_eq!(
            entries[0],
            IndexEntry {
                slot: 5,
                hours_ago: 9
            }
        );
        assert_eq!(words.heap_bytes(), 0);
    }

    #[test]
    fn bad_ranges_are_errors() {
        let bytes = Arc::new(PackBytes::copy_from(&[0u8; 16]));
        assert!(matches!(
            Column::<u64>::in_pack(&bytes, 4..12),
            Err(ColumnError::Misaligned { .. })
        ));
        assert!(matches!(
            Column::<u64>::in_pack(&bytes, 8..24),
            Err(ColumnError::OutOfBounds { .. })
        ));
        assert!(matches!(
            Column::<u32>::in_pack(&bytes, 0..6),
            Err(ColumnError::Length { .. })
        ));
        assert!(
            Column::<u32>::in_pack(&bytes, 16..16)
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn a_mapped_file_reads_like_its_bytes_and_survives_release() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("pack");
        let content: Vec<u8> = (0..3 * 4096u32).map(|n| (n % 251) as u8).collect();
        std::fs::write(&path, &content).expect("written");
        let bytes = PackBytes::map_file(&path).expect("maps");
        assert!(bytes.is_mapped());
        assert_eq!(bytes.as_bytes(), &content[..]);
        bytes.release(1..3 * 4096);
        assert_eq!(bytes.as_bytes(), &content[..], "released pages read back");
        drop(bytes);
        let empty = directory.path().join("empty");
        std::fs::write(&empty, b"").expect("written");
        assert!(PackBytes::map_file(&empty).expect("empty file").is_empty());
    }

    /// Populating and releasing go in `ADVICE_CHUNK_BYTES` steps: a file of
    /// several chunks and a ragged end reads back whole, before and after a
    /// release that starts and ends inside chunks, and after a second map.
    #[test]
    fn a_mapping_of_several_chunks_reads_back_after_a_chunked_release() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("pack");
        let len = 2 * ADVICE_CHUNK_BYTES + 3 * 4096 + 17;
        let content: Vec<u8> = (0..len).map(|n| (n % 253) as u8).collect();
        std::fs::write(&path, &content).expect("written");
        let bytes = PackBytes::map_file(&path).expect("maps");
        assert_eq!(bytes.as_bytes(), &content[..]);
        bytes.release(4097..len - 5);
        assert_eq!(bytes.as_bytes(), &content[..], "released pages read back");
        bytes.release(0..len);
        assert_eq!(bytes.as_bytes(), &content[..]);
        drop(bytes);
        let again = PackBytes::map_file(&path).expect("maps again");
        assert_eq!(again.as_bytes(), &content[..]);
    }
}
