//! The user-major index entries as a pack stores them and the server reads
//! them: each entry one little-endian integer of `bytes` bytes (1 to 4),
//! the low `slot_bits` bits the slot, the bits above them `hours_ago` (see
//! `format_v2`, "Index entries"). The writer picks the narrowest layout the
//! pack needs ([`EntryLayout::narrowest`]); [`EntryLayout::WIDE`] is the
//! 4-byte `slot: u16, hours_ago: u16` of the first v2 files.
//!
//! Every read is one unaligned 4-byte load at `index * bytes`, masked: no
//! branch on the layout. The bytes behind entries therefore run
//! [`ENTRY_SLACK`] bytes past the last entry (the pack's later sections and
//! footer in a file, zero bytes in a built index). This module only decodes;
//! `view` checks the entries of a file before any are read.

use std::ops::Range;

use super::mapped::{Column, IndexEntry};

/// Readable bytes after the last entry, so that a 4-byte load at it (and
/// the checked load's 8-byte load of two entries) stays in bounds whatever
/// the entry width. A file always has them: later sections and the 24-byte
/// footer follow the entries.
pub const ENTRY_SLACK: usize = 7;

/// How an index entry is encoded: its width and where the slot ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLayout {
    bytes: u8,
    slot_bits: u8,
    /// The low `8 * bytes` bits of a loaded word.
    word_mask: u32,
    /// The low `slot_bits` bits.
    slot_mask: u32,
}

impl EntryLayout {
    /// `slot: u16` then `hours_ago: u16`: the layout of every v2 file written
    /// before the layout bytes existed (header bytes 49-50 zero).
    pub const WIDE: EntryLayout = EntryLayout::new_unchecked(4, 16);

    const fn new_unchecked(bytes: u8, slot_bits: u8) -> EntryLayout {
        EntryLayout {
            bytes,
            slot_bits,
            word_mask: u32::MAX >> (32 - 8 * bytes as u32),
            slot_mask: ((1u64 << slot_bits) - 1) as u32,
        }
    }

    /// A layout of `bytes` bytes (1..=4) whose low `slot_bits` bits are the
    /// slot; `None` unless both fields fit a `u16` (slots and hours are
    /// `u16`s, so neither may have more than 16 bits).
    pub const fn new(bytes: u8, slot_bits: u8) -> Option<EntryLayout> {
        let word_bits = 8 * bytes as u32;
        let slot_bits_u32 = slot_bits as u32;
        if bytes == 0 || bytes > 4 || slot_bits_u32 > 16 || slot_bits_u32 > word_bits {
            return None;
        }
        if word_bits - slot_bits_u32 > 16 {
            return None;
        }
        Some(EntryLayout::new_unchecked(bytes, slot_bits))
    }

    /// The narrowest layout that holds every slot of `segment_count`
    /// segments and every `hours_ago` up to `max_hours_ago`; spare bits go
    /// to the slot (so a pack without recency and with at most 65,536
    /// segments has 2-byte entries, `slot_bits` 16).
    pub fn narrowest(segment_count: usize, max_hours_ago: u16) -> EntryLayout {
        let slot_needs = usize::BITS - segment_count.saturating_sub(1).leading_zeros();
        let hours_needs = u16::BITS - max_hours_ago.leading_zeros();
        let bytes = (slot_needs.min(16) + hours_needs).div_ceil(8).max(1);
        let slot_bits = (8 * bytes - hours_needs).min(16);
        EntryLayout::new(bytes as u8, slot_bits as u8).expect("at most 16 + 16 bits in 4 bytes")
    }

    /// Bytes an entry takes.
    #[inline]
    pub fn bytes(self) -> usize {
        self.bytes as usize
    }

    /// Bits of the slot, the low bits of an entry.
    pub fn slot_bits(self) -> u32 {
        u32::from(self.slot_bits)
    }

    /// Bits of `hours_ago`, the bits above the slot.
    pub fn hours_bits(self) -> u32 {
        8 * u32::from(self.bytes) - u32::from(self.slot_bits)
    }

    /// The largest slot and `hours_ago` this layout can hold.
    pub fn max_slot(self) -> u32 {
        self.slot_mask
    }

    pub fn max_hours_ago(self) -> u32 {
        self.word_mask >> self.slot_bits
    }

    /// The entry in a word loaded at its offset (bytes above the entry
    /// are ignored).
    #[inline]
    pub fn decode(self, word: u32) -> IndexEntry {
        let word = word & self.word_mask;
        IndexEntry {
            slot: (word & self.slot_mask) as u16,
            hours_ago: (word >> self.slot_bits) as u16,
        }
    }

    /// The slot alone, from a word loaded at the entry's offset.
    #[inline]
    pub fn slot_of(self, word: u32) -> u32 {
        word & self.slot_mask
    }

    /// The bits of a loaded word that are the entry (the low `8 * bytes`).
    #[inline]
    pub fn word_mask(self) -> u32 {
        self.word_mask
    }

    /// The bits of a loaded word that are the entry's `hours_ago`: nonzero
    /// in a word iff its entry has a last-seen time.
    #[inline]
    pub fn hours_mask_in_place(self) -> u32 {
        self.word_mask & !self.slot_mask
    }

    /// Whether `entry` fits this layout.
    pub fn holds(self, entry: IndexEntry) -> bool {
        u32::from(entry.slot) <= self.max_slot()
            && u32::from(entry.hours_ago) <= self.max_hours_ago()
    }

    /// The entry as the integer the file stores (`holds(entry)` must be true).
    #[inline]
    pub fn encode(self, entry: IndexEntry) -> u32 {
        debug_assert!(self.holds(entry), "{entry:?} does not fit {self:?}");
        u32::from(entry.slot) | (u32::from(entry.hours_ago) << self.slot_bits)
    }

    /// Appends the encoded entries to `out`, without the slack.
    pub fn encode_all(self, entries: &[IndexEntry], out: &mut Vec<u8>) {
        let width = self.bytes();
        let start = out.len();
        out.resize(start + entries.len() * width + ENTRY_SLACK, 0);
        // Writing 4 bytes at each entry's offset, in order, is one store per
        // entry; the byte(s) it spills into the next entry are overwritten by
        // that entry's own store, and the last one's land in the slack.
        for (index, &entry) in entries.iter().enumerate() {
            let at = start + index * width;
            out[at..at + 4].copy_from_slice(&self.encode(entry).to_le_bytes());
        }
        out.truncate(start + entries.len() * width);
    }
}

/// Loads the 4-byte word at `at` (little-endian, unaligned).
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The index entries of a pack: `len` entries in `layout`, over bytes that
/// run [`ENTRY_SLACK`] past the last one.
#[derive(Debug)]
pub struct Entries {
    bytes: Column<u8>,
    len: usize,
    layout: EntryLayout,
}

impl Entries {
    /// Encodes built entries in `layout` (every entry must fit it).
    pub fn encode(entries: &[IndexEntry], layout: EntryLayout) -> Entries {
        let mut bytes = Vec::with_capacity(entries.len() * layout.bytes() + ENTRY_SLACK);
        layout.encode_all(entries, &mut bytes);
        bytes.resize(bytes.len() + ENTRY_SLACK, 0);
        Entries::over(Column::from_vec(bytes), entries.len(), layout)
    }

    /// Entries over `bytes`, which hold `len` entries and the slack.
    pub(crate) fn over(bytes: Column<u8>, len: usize, layout: EntryLayout) -> Entries {
        assert!(
            bytes.len() >= len * layout.bytes() + ENTRY_SLACK,
            "entry bytes run short of {len} entries and the slack"
        );
        Entries { bytes, len, layout }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn layout(&self) -> EntryLayout {
        self.layout
    }

    /// Heap bytes held (0 when the entries are inside pack bytes).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.heap_bytes()
    }

    /// Entries `range` (within `0..len`).
    #[inline]
    pub fn slice(&self, range: Range<usize>) -> EntrySlice<'_> {
        assert!(range.start <= range.end && range.end <= self.len);
        let width = self.layout.bytes();
        EntrySlice {
            bytes: &self.bytes[range.start * width..range.end * width + ENTRY_SLACK],
            len: range.end - range.start,
            layout: self.layout,
        }
    }

    /// All entries.
    pub fn all(&self) -> EntrySlice<'_> {
        self.slice(0..self.len)
    }
}

/// A run of entries (one user's, usually): decoded one by one on access.
#[derive(Debug, Clone, Copy)]
pub struct EntrySlice<'a> {
    /// `len * layout.bytes()` bytes of entries, then the slack.
    bytes: &'a [u8],
    len: usize,
    layout: EntryLayout,
}

/// No entries (a user a pack does not know).
impl Default for EntrySlice<'_> {
    fn default() -> Self {
        EntrySlice {
            bytes: &[],
            len: 0,
            layout: EntryLayout::WIDE,
        }
    }
}

impl<'a> EntrySlice<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `index`; panics past the end.
    #[inline]
    pub fn get(&self, index: usize) -> IndexEntry {
        assert!(index < self.len, "entry {index} of {}", self.len);
        self.layout
            .decode(word_at(self.bytes, index * self.layout.bytes()))
    }

    /// The entry of `slot`, if any (entries are in ascending slot order).
    /// A binary search with a fixed number of steps for a length and no
    /// data-dependent branch (the step is a select), as std's is: 5-40
    /// entries cost two or three dependent loads, all in one or two cache
    /// lines.
    #[inline]
    pub fn find(&self, slot: u16) -> Option<IndexEntry> {
        if self.len == 0 {
            return None;
        }
        let width = self.layout.bytes();
        let slot = u32::from(slot);
        let mut base = 0usize;
        let mut size = self.len;
        while size > 1 {
            let half = size / 2;
            let middle = base + half;
            let below = self.layout.slot_of(word_at(self.bytes, middle * width)) <= slot;
            base = std::hint::select_unpredictable(below, middle, base);
            size -= half;
        }
        let entry = self.layout.decode(word_at(self.bytes, base * width));
        (u32::from(entry.slot) == slot).then_some(entry)
    }

    pub fn iter(&self) -> EntryIter<'a> {
        EntryIter {
            slice: *self,
            next: 0,
        }
    }

    pub fn to_vec(&self) -> Vec<IndexEntry> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for EntrySlice<'a> {
    type Item = IndexEntry;
    type IntoIter = EntryIter<'a>;

    fn into_iter(self) -> EntryIter<'a> {
        self.iter()
    }
}

/// The entries of an [`EntrySlice`] in order, decoded.
#[derive(Debug, Clone)]
pub struct EntryIter<'a> {
    slice: EntrySlice<'a>,
    next: usize,
}

impl Iterator for EntryIter<'_> {
    type Item = IndexEntry;

    #[inline]
    fn next(&mut self) -> Option<IndexEntry> {
        if self.next >= self.slice.len {
            return None;
        }
        let entry = self.slice.get(self.next);
        self.next += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.slice.len - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EntryIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u16, hours_ago: u16) -> IndexEntry {
        IndexEntry { slot, hours_ago }
    }

    #[test]
    fn layouts_are_valid_only_where_both_fields_fit_a_u16() {
        assert_eq!(EntryLayout::new(4, 16), Some(EntryLayout::WIDE));
        assert!(EntryLayout::new(4, 15).is_none(), "17 bits of hours");
        assert!(EntryLayout::new(3, 7).is_none(), "17 bits of hours");
        assert!(EntryLayout::new(3, 8).is_some());
        assert!(EntryLayout::new(2, 17).is_none(), "17 bits of slot");
        assert!(EntryLayout::new(1, 9).is_none(), "more slot bits than bits");
        assert!(EntryLayout::new(1, 0).is_some());
        assert!(EntryLayout::new(0, 0).is_none());
        assert!(EntryLayout::new(5, 16).is_none());
    }

    #[test]
    fn the_narrowest_layout_fits_the_pack() {
        // 1,000 segments, 90 days of hours: 10 + 12 bits, 3 bytes.
        let layout = EntryLayout::narrowest(1_000, 2_160);
        assert_eq!((layout.bytes(), layout.slot_bits()), (3, 12));
        // No recency: 2 bytes, all of them slot.
        let layout = EntryLayout::narrowest(1_000, 0);
        assert_eq!((layout.bytes(), layout.slot_bits()), (2, 16));
        // A few segments, few hours: 1 byte.
        let layout = EntryLayout::narrowest(3, 48);
        assert_eq!((layout.bytes(), layout.slot_bits()), (1, 2));
        // The widest pack: today's layout.
        assert_eq!(EntryLayout::narrowest(65_536, u16::MAX), EntryLayout::WIDE);
        assert_eq!(EntryLayout::narrowest(0, 0).bytes(), 1);
        for segments in [0usize, 1, 2, 3, 255, 256, 257, 4096, 65_536] {
            for hours in [0u16, 1, 255, 256, 2160, u16::MAX] {
                let layout = EntryLayout::narrowest(segments, hours);
                let last = entry(segments.saturating_sub(1) as u16, hours);
                assert!(
                    layout.holds(last),
                    "{segments} segments, {hours} hours: {layout:?}"
                );
                assert_eq!(layout.decode(layout.encode(last)), last);
            }
        }
    }

    #[test]
    fn encoded_entries_read_back_in_every_layout() {
        let wanted: Vec<IndexEntry> = (0..50u16).map(|n| entry(n * 3, n * 5 % 64)).collect();
        for (bytes, slot_bits) in [(1u8, 0u8), (2, 8), (2, 16), (3, 8), (3, 12), (4, 16)] {
            let layout = EntryLayout::new(bytes, slot_bits).expect("valid");
            let fitting: Vec<IndexEntry> = wanted
                .iter()
                .map(|e| {
                    entry(
                        (u32::from(e.slot) & layout.max_slot()) as u16,
                        (u32::from(e.hours_ago) & layout.max_hours_ago()) as u16,
                    )
                })
                .collect();
            let entries = Entries::encode(&fitting, layout);
            assert_eq!(entries.all().to_vec(), fitting, "{layout:?}");
            assert_eq!(entries.slice(10..20).to_vec(), fitting[10..20].to_vec());
            assert!(entries.slice(50..50).is_empty());
        }
    }

    #[test]
    fn find_returns_the_entry_of_a_slot_or_none() {
        let layout = EntryLayout::new(3, 12).expect("valid");
        for len in 0..40u16 {
            let list: Vec<IndexEntry> = (0..len).map(|n| entry(n * 2 + 1, n)).collect();
            let entries = Entries::encode(&list, layout);
            let slice = entries.all();
            for slot in 0..90u16 {
                let expected = list.iter().copied().find(|e| e.slot == slot);
                assert_eq!(slice.find(slot), expected, "{len} entries, slot {slot}");
            }
        }
    }
}
