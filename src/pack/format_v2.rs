//! Pack file format, version 2: the layout the server queries, stored as is,
//! so a pack is memory-mapped and served in place (see `mapped`); the
//! invariants the writer produces and the checked reader (`view`) enforces.
//!
//! Version 1 (`format`) stores only the exchange data (dictionary, bitmaps,
//! recency columns) and the server derives its lookup tables at load: 7–8 ms
//! of CPU and a heap copy per 1M memberships. Version 2 stores those tables:
//! the radix directory over the user dictionary and the user-major index,
//! each aligned for direct use. The roaring *portable* bitmaps stay in the
//! file (the exchange format other tools read) but lookups never touch them;
//! recency lives only in the index (one copy, as in memory).
//!
//! This module only describes; it never does I/O.
//!
//! # Layout
//!
//! All integers are little-endian; strings are UTF-8 prefixed by a `u8`
//! length; every checksum is xxh3-64, seed 0. Every section starts at a
//! multiple of 8 from the start of the file (so at an aligned address in a
//! mapping); the gap before it is zero bytes (at most 7). The whole-file
//! checksum in the footer is checked on every load in one pass; each section
//! also carries its own checksum in the section table, checked only when the
//! whole-file checksum fails, to name the damaged section.
//!
//! | offset / size | field | notes |
//! | --- | --- | --- |
//! | **preamble** | | |
//! | 0, 8 | magic | `SEGDPACK` |
//! | 8, 4 | format version `u32` | 2 |
//! | **header** | | |
//! | 12, 4 | `header_bytes` `u32` | bytes 0 up to the header checksum; a multiple of 8 |
//! | 16, 8 | `built_at_unix_seconds` `i64` | |
//! | 24, 4 | `user_count` `u32` | |
//! | 28, 4 | `segment_count` `u32` | at most 65,535 |
//! | 32, 8 | `membership_count` `u64` | at most `u32::MAX` (index starts are `u32`) |
//! | 40, 4 | `shard_index` `u32` | below `shard_count`; 0 when unsharded |
//! | 44, 4 | `shard_count` `u32` | at least 1; 1 = unsharded (reserved for sharding) |
//! | 48, 1 | `radix_bits` `u8` | bits of the radix directory; must equal `radix_bits_for(user_count)` |
//! | 49, 1 | `entry_bytes` `u8` | bytes per index entry, 1 to 4; 0 (with `slot_bits` 0) = 4, the layout of the files written before this byte was used |
//! | 50, 1 | `slot_bits` `u8` | low bits of an entry that are its slot, at most 16, and at most 16 left for `hours_ago` (`8 × entry_bytes − slot_bits ≤ 16`); 0 with `entry_bytes` 0 = 16 |
//! | 51, 5 | reserved | zero |
//! | 56, 1 + n | pack name | as in v1 |
//! | .., 1 + n | pack version | as in v1 |
//! | .. | padding | zero bytes up to `header_bytes` |
//! | `header_bytes`, 8 | header checksum | over bytes 0 up to here |
//! | **section table** | | 6 entries in this order, 24 bytes each |
//! | +0, 8 | `offset` `u64` | where the section starts; a multiple of 8 |
//! | +8, 8 | `bytes` `u64` | its length |
//! | +16, 8 | `checksum` `u64` | of its bytes |
//! | .., 8 | section table checksum | over the 6 entries |
//! | **sections** | | each at the first multiple of 8 at or after the end of the one before |
//! | 0: fingerprints | 8 × `user_count` | `u64`, strictly ascending; ordinal = index |
//! | 1: radix directory | 4 × (2^`radix_bits` + 1) | `u32`; entry `b` = first ordinal whose fingerprint's top `radix_bits` bits are `>= b`; the last = `user_count` |
//! | 2: index starts | 4 × (`user_count` + 1) | `u32`; user `u`'s entries are `starts[u]..starts[u+1]`; first 0, non-decreasing, last `membership_count` |
//! | 3: index entries | `entry_bytes` × `membership_count` | per entry one `entry_bytes`-byte little-endian integer: its low `slot_bits` bits the `slot` (index into the segment table), the bits above them `hours_ago` (hours before `built_at` the member was last seen, rounded toward older); with 4 bytes and 16 slot bits that is `slot` `u16` then `hours_ago` `u16`; within a user, slots strictly ascending and below `segment_count`; `hours_ago` is 0 unless the segment has recency. The writer picks the narrowest layout for the pack (`entries::EntryLayout::narrowest`: bits for the largest slot and the largest `hours_ago`, spare bits to the slot) |
//! | 4: segment table | variable | `segment_count` entries exactly as in v1 (id, TTL, member count, bitmap bytes, flags, name, kind); ids strictly ascending; flag bit 0 = recency; member counts equal the entries per slot and sum to `membership_count` |
//! | 5: bitmaps | Σ bitmap bytes | per segment in table order, its members (user ordinals) in the roaring portable serialization; must agree with the index |
//! | **footer** | 24 bytes | at the first multiple of 8 after the bitmaps; the last bytes in the file |
//! | .., 8 | total length `u64` | of the whole file |
//! | .., 8 | end magic | `KCAPDGES` |
//! | .., 8 | file checksum | over every byte before it |
//!
//! # What a checked load verifies, and what only a full read does
//!
//! The server's load (`view::PackView::open`) checks the header, the section
//! table and every offset, length and alignment above, then makes one pass
//! over the file (`view_check`): the whole-file checksum, and behind it,
//! block by block while the block is in cache, every structural rule that
//! makes later accesses in bounds and answers consistent: fingerprints
//! ascending, the directory exactly as derived from them, index starts
//! monotone and ending at the membership count, each entry's slot in range
//! and ascending within its user, the per-slot entry counts against the
//! segment table, and recency only where flagged. (The order within users
//! is checked by a count: each entry whose slot is not above the one before
//! it must be a user's first, so as many of them must be users' first
//! entries as there are in all; exact, `entry_scan::users` has why.) A
//! checksum failure is reported before any structural one. It does not
//! decode the bitmaps: agreement between
//! bitmaps and index is the writer's promise, covered by the checksum
//! against damage. `read_pack` (tools, `segctl inspect`) decodes the
//! bitmaps and refuses a file whose bitmaps and index disagree.
//!
//! **Two of these rules are checked by a randomized test, not exactly: the
//! per-slot entry counts against the segment table, and recency only where
//! flagged.** Every load draws fresh random 32-bit weights per slot (from
//! the OS-seeded CSPRNG) and compares one weighted sum over the entries with
//! the sum the segment table implies (`view_check::SlotChecks` has the
//! construction and the bound). A file that breaks either rule is refused
//! with probability at least 1 − 2^-32 at each load, whatever its author
//! did, since the weights are drawn after the file exists and never leave
//! the process; a refused file is then counted exactly, and the error names
//! the first segment whose count differs (or the stray recency), as an
//! exact check would. Neither rule guards memory safety (the slot range,
//! checked exactly, does): a file that slipped through would serve wrong
//! member counts in the segment metadata, or an `hours_ago` the segment's
//! flags say it lacks, never an out-of-bounds read. Every other rule above
//! is checked exactly.
//!
//! # Size: why the index entries are as narrow as the pack allows
//!
//! What stays resident while serving is what lookups touch: per user 8
//! bytes of fingerprint, 4 of index start and ~1 of radix directory (13
//! bytes); per membership one index entry. At 20 memberships a user (the
//! 1M-user × 1,000-segment memory set, Redis at 13.6 B a membership) the
//! 4-byte entry was 80 % of it: 4.78 B a membership resident, 0.35x Redis.
//! The entry only needs bits for the pack's largest slot and largest
//! `hours_ago`: 1,000 segments are 10 bits and 90 days of hours 12, so 3
//! bytes; a pack without recency needs 2 (up to 65,536 segments), a small
//! one 1. BENCHMARKS.md ("Pack format 2, compact index and fused checks")
//! has the measured bytes per membership and per user of both layouts.
//!
//! Why one integer per entry and not split columns (slots apart from hours,
//! hours omitted where a segment has none): a probe reads one user's entries
//! in one or two cache lines and decodes each with one unaligned 4-byte load,
//! a mask and a shift, whatever the layout; a split layout reads two places
//! per user. Entries are not aligned (3 bytes each): x86 and ARM load
//! unaligned words at full speed, and the section itself still starts at a
//! multiple of 8. The load of the last entry reads up to 3 bytes past the
//! section (the checked load's two-entry load up to 7), which are always in
//! the file: later sections and the 24-byte footer follow.

/// The format version of this layout.
pub const FORMAT_VERSION_V2: u32 = 2;

/// Header bytes before the two strings.
pub(crate) const HEADER_FIXED_BYTES: usize = 56;
/// The most `header_bytes` can be: two 255-byte strings, padded.
pub(crate) const MAX_HEADER_BYTES: usize = (HEADER_FIXED_BYTES + 2 * 256).next_multiple_of(8);

/// Sections in file order; their index in the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Fingerprints = 0,
    RadixDirectory = 1,
    IndexStarts = 2,
    IndexEntries = 3,
    SegmentTable = 4,
    Bitmaps = 5,
}

pub(crate) const SECTIONS: [Section; 6] = [
    Section::Fingerprints,
    Section::RadixDirectory,
    Section::IndexStarts,
    Section::IndexEntries,
    Section::SegmentTable,
    Section::Bitmaps,
];
pub(crate) const SECTION_ENTRY_BYTES: usize = 24;
pub(crate) const SECTION_TABLE_BYTES: usize = SECTIONS.len() * SECTION_ENTRY_BYTES;

impl Section {
    pub(crate) fn pack_section(self) -> super::PackSection {
        use super::PackSection;
        match self {
            Section::Fingerprints => PackSection::UserDictionary,
            Section::RadixDirectory => PackSection::RadixDirectory,
            Section::IndexStarts => PackSection::IndexStarts,
            Section::IndexEntries => PackSection::IndexEntries,
            Section::SegmentTable => PackSection::SegmentTable,
            Section::Bitmaps => PackSection::Bitmaps,
        }
    }
}

/// Where the section table starts for a given `header_bytes`.
pub(crate) fn section_table_start(header_bytes: usize) -> usize {
    header_bytes + super::format::CHECKSUM_BYTES
}

/// Where the first section starts.
pub(crate) fn first_section_start(header_bytes: usize) -> usize {
    section_table_start(header_bytes) + SECTION_TABLE_BYTES + super::format::CHECKSUM_BYTES
}
