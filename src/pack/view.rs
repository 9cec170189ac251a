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

use super::entries::{ENTRY_SLACK, Entries, EntryLayout};
use super::error::{PackError, PackSection};
use super::format::PackHeader;
use super::format_v2::{SECTIONS, Section};
use super::index_build::bucket_of;
use super::mapped::{Column, PackBytes, Scalar};
use super::view_check::{BLOCK_BYTES, Findings, Served, SlotRules, hash_and_check};
use super::view_header::{
    check_footer, locate_damage, read_header_v2, read_section_table, read_segment_table,
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
    entry_layout: EntryLayout,
}

impl PackView {
    /// The checked load: one pass over the file that computes the
    /// whole-file checksum and, block by block behind it, checks the
    /// served sections (`view_check`); a checksum failure is reported
    /// first (section by section, to name the damage), then the first
    /// structural rule of `format_v2` that fails. Bitmaps are not decoded.
    pub fn open(bytes: Arc<PackBytes>) -> Result<PackView, PackError> {
        Self::open_in_blocks(bytes, BLOCK_BYTES)
    }

    /// [`PackView::open`], hashing and checking `block_bytes` at a time (the
    /// outcome must not depend on it: tests vary it).
    pub(super) fn open_in_blocks(
        bytes: Arc<PackBytes>,
        block_bytes: usize,
    ) -> Result<PackView, PackError> {
        let all = bytes.as_bytes();
        let read = read_header_v2(all)?;
        let sections = read_section_table(all, &read)?;
        // Parsed before the checksum is known (it only reads in bounds);
        // its verdict waits for the checksum's.
        let segments = read_segment_table(
            &all[sections[Section::SegmentTable as usize].clone()],
            &read.header,
            sections[Section::Bitmaps as usize].clone(),
        );
        let mut view = PackView {
            header: read.header,
            bytes: Arc::clone(&bytes),
            sections,
            segments: Vec::new(),
            radix_bits: read.radix_bits,
            entry_layout: read.entry_layout,
        };
        let findings = view.hash_and_check(segments.as_deref().ok(), block_bytes);
        if !findings.checksum_matches {
            return Err(locate_damage(all, read.header_bytes, &view.sections));
        }
        check_footer(all, &view.sections)?;
        view.segments = segments?;
        view.report(&findings)?;
        Ok(view)
    }

    fn hash_and_check(&self, segments: Option<&[SegmentInfo]>, block_bytes: usize) -> Findings {
        let fingerprints = self.fingerprints();
        let directory = self.radix_directory();
        let starts = self.index_starts();
        let entries = self.entry_bytes_and_slack();
        let served = Served {
            fingerprints: &fingerprints,
            directory: &directory,
            radix_bits: self.radix_bits,
            starts: &starts,
            entry_bytes: &entries,
            entry_count: self.header.membership_count as usize,
            layout: self.entry_layout,
        };
        let columns: Option<(Vec<bool>, Vec<u32>)> = segments.map(|segments| {
            segments
                .iter()
                .map(|info| (info.has_recency, info.member_count))
                .unzip()
        });
        let rules = columns
            .as_ref()
            .map(|(has_recency, member_counts)| SlotRules {
                has_recency,
                member_counts,
            });
        let section = |section: Section| self.sections[section as usize].clone();
        hash_and_check(
            self.bytes.as_bytes(),
            [
                section(Section::Fingerprints),
                section(Section::RadixDirectory),
                section(Section::IndexStarts),
                section(Section::IndexEntries),
            ],
            &served,
            rules.as_ref(),
            block_bytes,
        )
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    pub fn radix_bits(&self) -> u32 {
        self.radix_bits
    }

    /// How the index entries are encoded.
    pub fn entry_layout(&self) -> EntryLayout {
        self.entry_layout
    }

    pub fn file_bytes(&self) -> usize {
        self.bytes.len()
    }

    fn column<T: Scalar>(&self, range: Range<usize>) -> Column<T> {
        Column::in_pack(&self.bytes, range)
            .expect("section ranges were checked in bounds and aligned")
    }

    pub fn fingerprints(&self) -> Column<u64> {
        self.column(self.sections[Section::Fingerprints as usize].clone())
    }

    pub fn radix_directory(&self) -> Column<u32> {
        self.column(self.sections[Section::RadixDirectory as usize].clone())
    }

    pub fn index_starts(&self) -> Column<u32> {
        self.column(self.sections[Section::IndexStarts as usize].clone())
    }

    /// The entries section and the slack after it: later sections and the
    /// footer (at least 24 bytes) always follow it.
    fn entry_bytes_and_slack(&self) -> Column<u8> {
        let range = self.sections[Section::IndexEntries as usize].clone();
        self.column(range.start..range.end + ENTRY_SLACK)
    }

    pub fn index_entries(&self) -> Entries {
        Entries::over(
            self.entry_bytes_and_slack(),
            self.header.membership_count as usize,
            self.entry_layout,
        )
    }

    /// Releases the resident pages of what lookups never read (segment
    /// table, bitmaps) after the checked load touched them.
    pub fn release_unserved(&self) {
        let table = &self.sections[Section::SegmentTable as usize];
        self.bytes.release(table.start..self.bytes.len());
    }

    /// The first structural rule `findings` says is broken, named, in the
    /// order of `format_v2`'s list; the slow walks that find the first bad
    /// value run only here.
    fn report(&self, findings: &Findings) -> Result<(), PackError> {
        let fingerprints = self.fingerprints();
        if findings.fingerprints_disordered {
            let position = fingerprints
                .windows(2)
                .position(|pair| pair[0] >= pair[1])
                .unwrap_or(0);
            return Err(PackError::malformed(format!(
                "user fingerprints not strictly ascending at ordinal {}",
                position + 1
            )));
        }
        if findings.directory_wrong {
            return Err(self.wrong_directory_entry());
        }
        let starts = self.index_starts();
        if starts[0] != 0 {
            return Err(PackError::malformed("index starts do not begin at 0"));
        }
        if findings.starts_decrease {
            let user = starts
                .windows(2)
                .position(|pair| pair[0] > pair[1])
                .unwrap_or(0);
            return Err(PackError::malformed(format!(
                "index starts decrease at user ordinal {user}"
            )));
        }
        let entries = self.index_entries();
        if starts[starts.len() - 1] as usize != entries.len() {
            return Err(PackError::malformed(
                "index starts do not end at the membership count",
            ));
        }
        if findings.disorder_within_a_user {
            return Err(PackError::malformed(format!(
                "index entries of user ordinal {} are not in ascending slot order",
                first_disordered_user(&starts, &entries)
            )));
        }
        self.report_slots(findings, &entries)
    }

    /// Slots in range, recency only where flagged, member counts as the
    /// segment table says (the fast pass's randomized verdict, named here by
    /// an exact count).
    fn report_slots(&self, findings: &Findings, entries: &Entries) -> Result<(), PackError> {
        let segment_count = self.segments.len();
        if findings.slot_out_of_range {
            let slot = entries
                .all()
                .iter()
                .map(|entry| entry.slot)
                .find(|&slot| slot as usize >= segment_count)
                .unwrap_or(segment_count as u16);
            return Err(PackError::malformed(format!(
                "index entry names slot {slot}, the pack has {segment_count} segments"
            )));
        }
        if !findings.slots_disagree {
            return Ok(());
        }
        // Per slot: entries, and entries with a last-seen time.
        let mut counts = vec![(0u64, 0u64); segment_count];
        for entry in entries.all() {
            let count = &mut counts[entry.slot as usize];
            count.0 += 1;
            count.1 += u64::from(entry.hours_ago != 0);
        }
        let stray_recency = self
            .segments
            .iter()
            .zip(&counts)
            .any(|(segment, &(_, with_time))| !segment.has_recency && with_time > 0);
        if stray_recency {
            return Err(PackError::malformed(
                "index entry has a last-seen time for a segment without recency",
            ));
        }
        for (segment, &(count, _)) in self.segments.iter().zip(&counts) {
            if count != u64::from(segment.member_count) {
                return Err(PackError::malformed(format!(
                    "segment {} has {} members in the table and {count} in the index",
                    segment.id, segment.member_count,
                )));
            }
        }
        // Equal counts and no stray recency give equal sums: the randomized
        // check does not fail on such a file. Still an error, never a panic.
        Err(PackError::malformed(
            "index member counts disagree with the segment table",
        ))
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
            for entry in entries.slice(pair[0] as usize..pair[1] as usize) {
                let (ordinals, hours) = &mut per_slot[entry.slot as usize];
                ordinals.push(ordinal as u32);
                hours.push(entry.hours_ago);
            }
        }
        per_slot
    }
}

/// The first user whose entries are not in strictly ascending slot order
/// (starts were checked monotone and ending at the entry count).
fn first_disordered_user(starts: &[u32], entries: &Entries) -> usize {
    starts
        .windows(2)
        .position(|pair| {
            let user = entries.slice(pair[0] as usize..pair[1] as usize);
            (1..user.len()).any(|index| user.get(index - 1).slot >= user.get(index).slot)
        })
        .unwrap_or(0)
}
