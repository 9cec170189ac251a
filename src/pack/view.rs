//! The checked reader of format-v2 pack bytes (see `format_v2`): a
//! [`PackView`] is a pack whose every structural rule has been verified, over
//! bytes it shares (usually a file mapping), handing out typed columns for
//! the server to serve from in place.
//!
//! It trusts nothing in the file: every offset and length is checked against
//! the bytes present before use, nothing is allocated by a count the file
//! declares before the bytes backing it are known to exist, and a file that
//! fails any check is an error, never a panic or a partly built view.

use std::ops::Range;
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::error::{PackError, PackSection};
use super::format::PackHeader;
use super::format_v2::{SECTIONS, Section};
use super::index_build::bucket_of;
use super::mapped::{Column, IndexEntry, PackBytes};
use super::view_header::{
    check_footer, locate_damage, read_header_v2, read_section_table, read_segment_table,
    whole_file_checksum_matches,
};
use super::{Pack, Segment};

/// A segment table entry of a checked v2 pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u32,
    pub name: String,
    pub kind: String,
    pub ttl_seconds: u32,
    pub member_count: u32,
    pub has_recency: bool,
    /// Where the segment's portable bitmap lies in the file.
    pub bitmap: Range<usize>,
}

/// A format-v2 pack that passed every check of a checked load.
#[derive(Debug)]
pub struct PackView {
    pub header: PackHeader,
    bytes: Arc<PackBytes>,
    /// Byte ranges of the sections, in `SECTIONS` order.
    sections: [Range<usize>; SECTIONS.len()],
    segments: Vec<SegmentInfo>,
    radix_bits: u32,
}

impl PackView {
    /// The checked load: the whole-file checksum in one pass (section by
    /// section only when it fails, to name the damage), then every
    /// structural rule of `format_v2`. Bitmaps are not decoded.
    pub fn open(bytes: Arc<PackBytes>) -> Result<PackView, PackError> {
        let all = bytes.as_bytes();
        let (header, header_bytes, radix_bits) = read_header_v2(all)?;
        let sections = read_section_table(all, header_bytes, &header, radix_bits)?;
        if !whole_file_checksum_matches(all) {
            return Err(locate_damage(all, header_bytes, &sections));
        }
        check_footer(all, &sections)?;
        let segments = read_segment_table(
            &all[sections[Section::SegmentTable as usize].clone()],
            &header,
            sections[Section::Bitmaps as usize].clone(),
        )?;
        let view = PackView {
            header,
            bytes,
            sections,
            segments,
            radix_bits,
        };
        view.check_dictionary()?;
        view.check_index()?;
        Ok(view)
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    pub fn radix_bits(&self) -> u32 {
        self.radix_bits
    }

    pub fn file_bytes(&self) -> usize {
        self.bytes.len()
    }

    fn column<T: super::mapped::Scalar>(&self, section: Section) -> Column<T> {
        Column::in_pack(&self.bytes, self.sections[section as usize].clone())
            .expect("section ranges were checked in bounds and aligned")
    }

    pub fn fingerprints(&self) -> Column<u64> {
        self.column(Section::Fingerprints)
    }

    pub fn radix_directory(&self) -> Column<u32> {
        self.column(Section::RadixDirectory)
    }

    pub fn index_starts(&self) -> Column<u32> {
        self.column(Section::IndexStarts)
    }

    pub fn index_entries(&self) -> Column<IndexEntry> {
        self.column(Section::IndexEntries)
    }

    /// Releases the resident pages of what lookups never read (segment
    /// table, bitmaps) after the checked load touched them.
    pub fn release_unserved(&self) {
        let table = &self.sections[Section::SegmentTable as usize];
        self.bytes.release(table.start..self.bytes.len());
    }

    fn check_dictionary(&self) -> Result<(), PackError> {
        let fingerprints = self.fingerprints();
        if let Some(position) = fingerprints.windows(2).position(|pair| pair[0] >= pair[1]) {
            return Err(PackError::malformed(format!(
                "user fingerprints not strictly ascending at ordinal {}",
                position + 1
            )));
        }
        // The directory must be exactly the one derived from the
        // fingerprints. With ascending fingerprints that holds iff it is
        // monotone, spans 0..users, and every user sits inside its bucket's
        // range: flat passes with no branch per user. The walk that names
        // the wrong entry runs only when the check fails.
        let directory = self.radix_directory();
        let bucket_count = directory.len() - 1;
        let spans_users =
            directory[0] == 0 && directory[bucket_count] as usize == fingerprints.len();
        let monotone = directory.windows(2).all(|pair| pair[0] <= pair[1]);
        let users_in_their_buckets = spans_users
            && monotone
            && fingerprints
                .iter()
                .enumerate()
                .fold(true, |fits, (index, &fingerprint)| {
                    let bucket = bucket_of(fingerprint, self.radix_bits);
                    let range = directory[bucket] as usize..directory[bucket + 1] as usize;
                    fits & range.contains(&index)
                });
        if users_in_their_buckets {
            return Ok(());
        }
        Err(self.wrong_directory_entry())
    }

    /// Walks the directory as `index_build::radix_directory` builds it and
    /// names the first entry that differs.
    fn wrong_directory_entry(&self) -> PackError {
        let fingerprints = self.fingerprints();
        let directory = self.radix_directory();
        let bucket_count = directory.len() - 1;
        let mut index = 0usize;
        for (bucket, &start) in directory[..bucket_count].iter().enumerate() {
            while index < fingerprints.len()
                && bucket_of(fingerprints[index], self.radix_bits) < bucket
            {
                index += 1;
            }
            if start as usize != index {
                return PackError::malformed(format!(
                    "radix directory entry {bucket} is {start}, the fingerprints say {index}"
                ));
            }
        }
        PackError::malformed("radix directory does not end at the user count")
    }

    fn check_index(&self) -> Result<(), PackError> {
        let starts = self.index_starts();
        let entries = self.index_entries();
        if starts[0] != 0 {
            return Err(PackError::malformed("index starts do not begin at 0"));
        }
        if let Some(user) = starts.windows(2).position(|pair| pair[0] > pair[1]) {
            return Err(PackError::malformed(format!(
                "index starts decrease at user ordinal {user}"
            )));
        }
        if starts[starts.len() - 1] as usize != entries.len() {
            return Err(PackError::malformed(
                "index starts do not end at the membership count",
            ));
        }
        let counts = count_entries_per_slot(&starts, &entries, &self.segments)?;
        for (slot, segment) in self.segments.iter().enumerate() {
            if counts[slot] != segment.member_count {
                return Err(PackError::malformed(format!(
                    "segment {} has {} members in the table and {} in the index",
                    segment.id, segment.member_count, counts[slot]
                )));
            }
        }
        Ok(())
    }

    /// Decodes the whole pack, bitmaps included, and refuses it unless the
    /// bitmaps agree with the index member for member (what a checked load
    /// takes on trust). For tools and tests, not the serving path.
    pub fn to_pack(&self) -> Result<Pack, PackError> {
        let per_slot = self.memberships_by_slot();
        let all = self.bytes.as_bytes();
        let mut segments = Vec::with_capacity(self.segments.len());
        for (info, (ordinals, hours)) in self.segments.iter().zip(per_slot) {
            let section = PackSection::Bitmap {
                segment_id: info.id,
            };
            let mut bitmap_bytes = &all[info.bitmap.clone()];
            let members = RoaringBitmap::deserialize_from(&mut bitmap_bytes).map_err(|error| {
                PackError::malformed(format!("segment {} bitmap: {error}", info.id))
            })?;
            if !bitmap_bytes.is_empty() {
                return Err(PackError::malformed(format!(
                    "{section} has {} unused bytes",
                    bitmap_bytes.len()
                )));
            }
            if !members.iter().eq(ordinals.iter().copied()) {
                return Err(PackError::malformed(format!(
                    "{section} does not hold the members the index gives segment {}",
                    info.id
                )));
            }
            segments.push(Segment {
                id: info.id,
                name: info.name.clone(),
                kind: info.kind.clone(),
                ttl_seconds: info.ttl_seconds,
                members,
                last_seen_hours_ago: info.has_recency.then_some(hours),
            });
        }
        Ok(Pack {
            name: self.header.name.clone(),
            version: self.header.version.clone(),
            built_at_unix_seconds: self.header.built_at_unix_seconds,
            user_fingerprints: self.fingerprints().to_vec(),
            segments,
        })
    }

    /// Per slot, the member ordinals (ascending) and their hours, from the index.
    fn memberships_by_slot(&self) -> Vec<(Vec<u32>, Vec<u16>)> {
        let mut per_slot: Vec<(Vec<u32>, Vec<u16>)> = self
            .segments
            .iter()
            .map(|info| {
                let count = info.member_count as usize;
                (Vec::with_capacity(count), Vec::with_capacity(count))
            })
            .collect();
        let starts = self.index_starts();
        let entries = self.index_entries();
        for (ordinal, pair) in starts.windows(2).enumerate() {
            for entry in &entries[pair[0] as usize..pair[1] as usize] {
                let (ordinals, hours) = &mut per_slot[entry.slot as usize];
                ordinals.push(ordinal as u32);
                hours.push(entry.hours_ago);
            }
        }
        per_slot
    }
}

/// Checks every entry's slot (in range, strictly ascending within its user,
/// recency only where flagged) and counts the entries of each slot.
fn count_entries_per_slot(
    starts: &[u32],
    entries: &[IndexEntry],
    segments: &[SegmentInfo],
) -> Result<Vec<u32>, PackError> {
    if has_disorder_within_a_user(starts, entries) {
        return Err(PackError::malformed(format!(
            "index entries of user ordinal {} are not in ascending slot order",
            first_disordered_user(starts, entries)
        )));
    }
    // Tables over every possible `u16` slot: indexing by a slot never fails,
    // so the loops have no bounds checks; out-of-range slots are caught after.
    let mut without_recency = vec![false; 1 << 16];
    for (slot, segment) in segments.iter().enumerate() {
        without_recency[slot] = !segment.has_recency;
    }
    // `&`, not `&&`: whether an entry has a time is data-dependent, and a
    // branch on it mispredicts about every other entry.
    let stray_recency = entries.iter().fold(false, |stray, entry| {
        stray | ((entry.hours_ago != 0) & without_recency[entry.slot as usize])
    });
    let counts = histogram_of_slots(entries);
    if let Some(slot) = counts[segments.len()..].iter().position(|&count| count > 0) {
        return Err(PackError::malformed(format!(
            "index entry names slot {}, the pack has {} segments",
            segments.len() + slot,
            segments.len()
        )));
    }
    if stray_recency {
        return Err(PackError::malformed(
            "index entry has a last-seen time for a segment without recency",
        ));
    }
    let mut counts = counts;
    counts.truncate(segments.len());
    Ok(counts)
}

/// Whether some user's entries are not in strictly ascending slot order,
/// without a loop per user: every place where the slot does not rise must be
/// a user boundary. One flat pass counts those places (no branch, no
/// dependency between entries); a pass over the boundaries counts the ones
/// that are boundaries. Monotone starts ending at `entries.len()` were
/// checked before.
fn has_disorder_within_a_user(starts: &[u32], entries: &[IndexEntry]) -> bool {
    let descents: usize = entries
        .windows(2)
        .map(|two| usize::from(two[1].slot <= two[0].slot))
        .sum();
    let mut descents_at_boundaries = 0usize;
    let mut previous_boundary = 0u32;
    let interior = starts.get(1..starts.len().saturating_sub(1)).unwrap_or(&[]);
    for &boundary in interior {
        // Empty users share a boundary (count each place once), and trailing
        // ones sit at the end, which is no place between two entries.
        if boundary != previous_boundary && (boundary as usize) < entries.len() {
            let at = boundary as usize;
            descents_at_boundaries += usize::from(entries[at].slot <= entries[at - 1].slot);
            previous_boundary = boundary;
        }
    }
    descents != descents_at_boundaries
}

/// Entries per slot. Four interleaved tables, so consecutive entries of the
/// same slot do not wait on each other's increment.
fn histogram_of_slots(entries: &[IndexEntry]) -> Vec<u32> {
    let mut tables = vec![[0u32; 4]; 1 << 16];
    let mut quads = entries.chunks_exact(4);
    for quad in &mut quads {
        for (lane, entry) in quad.iter().enumerate() {
            tables[entry.slot as usize][lane] += 1;
        }
    }
    for entry in quads.remainder() {
        tables[entry.slot as usize][0] += 1;
    }
    tables.iter().map(|lanes| lanes.iter().sum()).collect()
}

fn first_disordered_user(starts: &[u32], entries: &[IndexEntry]) -> usize {
    starts
        .windows(2)
        .position(|pair| {
            entries[pair[0] as usize..pair[1] as usize]
                .windows(2)
                .any(|two| two[0].slot >= two[1].slot)
        })
        .unwrap_or(0)
}
