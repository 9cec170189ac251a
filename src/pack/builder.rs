//! Builds a `Pack` from the TSV inputs of `segctl build`.
//!
//! Membership lines are `user_id<TAB>segment_id[<TAB>last_seen_unix]`; segment
//! definition lines are `segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]`.
//! Lines starting with `#` and blank lines are skipped; any other malformed
//! line is an error naming the file and line.
//!
//! Built for tens of millions of lines: membership lines are split as bytes in
//! a reused buffer (no allocation per line) into compact tuples, which are
//! sorted once by user fingerprint; ordinals then come out ascending, so every
//! segment's ordinals and recency are appended in order. This module reads
//! from `BufRead`s given to it and never opens files itself.

use std::collections::BTreeMap;
use std::io::BufRead;

use ahash::AHashMap;
use roaring::RoaringBitmap;

use super::error::BuildError;
use super::format::{MAX_SEGMENTS, MAX_STRING_BYTES, MAX_USERS, validate_pack};
use super::{Pack, Segment, hours_ago};

/// `progress` is called after this many membership lines, and at the end.
pub const PROGRESS_EVERY_LINES: u64 = 1 << 20;

/// Accumulates segment definitions and memberships, then builds the pack.
#[derive(Debug)]
pub struct PackBuilder {
    name: String,
    version: String,
    built_at_unix_seconds: i64,
    /// Segment id → its definition and where it was given.
    definitions: BTreeMap<u32, Definition>,
    /// Segments seen in memberships, in order of first appearance.
    segments_seen: Vec<SegmentSeen>,
    /// Segment id → index in `segments_seen`, for ids below `SMALL_SEGMENT_IDS`
    /// (`NO_INDEX` when not seen yet)...
    small_segment_index_by_id: Vec<u16>,
    /// ...and for larger ids.
    segment_index_by_id: AHashMap<u32, u16>,
    /// One per membership line, duplicates included.
    memberships: Vec<MembershipLine>,
}

#[derive(Debug)]
struct Definition {
    name: String,
    kind: String,
    ttl_seconds: u32,
    defined_at: String,
}

#[derive(Debug)]
struct SegmentSeen {
    id: u32,
    /// At least one line of this segment carried a last-seen time.
    has_time: bool,
}

/// One membership line as a single sortable `u128`: user fingerprint in the
/// top 64 bits, then the segment index (16 bits), then hours ago (16 bits).
/// Sorting these orders by user, then segment, most recent first, so the first
/// of a run of duplicates is the one to keep; sorting plain integers is about
/// twice as fast as sorting a struct by its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MembershipLine(u128);

impl MembershipLine {
    fn new(user_fingerprint: u64, segment_index: u16, hours_ago: u16) -> Self {
        MembershipLine(
            (u128::from(user_fingerprint) << 32)
                | (u128::from(segment_index) << 16)
                | u128::from(hours_ago),
        )
    }

    fn user_fingerprint(self) -> u64 {
        (self.0 >> 32) as u64
    }

    fn segment_index(self) -> u16 {
        (self.0 >> 16) as u16
    }

    fn hours_ago(self) -> u16 {
        self.0 as u16
    }
}

/// Segment ids below this are mapped to their index through a flat table
/// instead of a hash map: the common case, and one array read per line.
const SMALL_SEGMENT_IDS: u32 = 1 << 16;
const NO_INDEX: u16 = u16::MAX;

impl PackBuilder {
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        built_at_unix_seconds: i64,
    ) -> Self {
        PackBuilder {
            name: name.into(),
            version: version.into(),
            built_at_unix_seconds,
            definitions: BTreeMap::new(),
            segments_seen: Vec::new(),
            small_segment_index_by_id: Vec::new(),
            segment_index_by_id: AHashMap::new(),
            memberships: Vec::new(),
        }
    }

    /// Reads segment definitions: `segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]`.
    /// `file_label` names the input in errors (`-` for stdin). A segment defined
    /// twice, in this file or an earlier one, is an error.
    pub fn add_segment_definitions(
        &mut self,
        reader: impl BufRead,
        file_label: &str,
    ) -> Result<(), BuildError> {
        for_each_line(
            reader,
            file_label,
            |_| {},
            |line_number, line| {
                let parse_error = |message: String| BuildError::Parse {
                    file: file_label.to_string(),
                    line: line_number,
                    message,
                };
                let (id, definition) = parse_definition(line).map_err(parse_error)?;
                if let Some(previous) = self.definitions.get(&id) {
                    return Err(parse_error(format!(
                        "segment {id} defined twice (first at {})",
                        previous.defined_at
                    )));
                }
                self.definitions.insert(
                    id,
                    Definition {
                        defined_at: format!("{file_label}:{line_number}"),
                        ..definition
                    },
                );
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Reads membership lines: `user_id<TAB>segment_id[<TAB>last_seen_unix]`.
    /// `file_label` names the input in errors (`-` for stdin); `progress` gets
    /// the number of lines read so far, every `PROGRESS_EVERY_LINES` and at
    /// the end. Returns the number of lines read.
    pub fn add_memberships(
        &mut self,
        reader: impl BufRead,
        file_label: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, BuildError> {
        // Inputs are usually grouped by segment: skip the map lookup then.
        let mut cached_segment: Option<(u32, u16)> = None;
        let on_line_read = |line_number: usize| {
            if (line_number as u64).is_multiple_of(PROGRESS_EVERY_LINES) {
                progress(line_number as u64);
            }
        };
        let lines = for_each_line(reader, file_label, on_line_read, |line_number, line| {
            let parse_error = |message: String| BuildError::Parse {
                file: file_label.to_string(),
                line: line_number,
                message,
            };
            let parsed = parse_membership(line).map_err(parse_error)?;
            let segment_index = match cached_segment {
                Some((id, index)) if id == parsed.segment_id => index,
                _ => {
                    let index = self.segment_index(parsed.segment_id).map_err(parse_error)?;
                    cached_segment = Some((parsed.segment_id, index));
                    index
                }
            };
            let hours = match parsed.last_seen_unix_seconds {
                Some(last_seen) => {
                    self.segments_seen[segment_index as usize].has_time = true;
                    hours_ago(self.built_at_unix_seconds, last_seen)
                }
                None => 0,
            };
            self.memberships.push(MembershipLine::new(
                crate::user_fingerprint(parsed.user_id),
                segment_index,
                hours,
            ));
            Ok(())
        })?;
        progress(lines as u64);
        Ok(lines as u64)
    }

    fn segment_index(&mut self, segment_id: u32) -> Result<u16, String> {
        let is_small = segment_id < SMALL_SEGMENT_IDS;
        if is_small {
            if self.small_segment_index_by_id.is_empty() {
                self.small_segment_index_by_id = vec![NO_INDEX; SMALL_SEGMENT_IDS as usize];
            }
            let index = self.small_segment_index_by_id[segment_id as usize];
            if index != NO_INDEX {
                return Ok(index);
            }
        } else if let Some(&index) = self.segment_index_by_id.get(&segment_id) {
            return Ok(index);
        }
        if self.segments_seen.len() >= MAX_SEGMENTS {
            return Err(format!(
                "more than {MAX_SEGMENTS} segments in one pack (segment {segment_id})"
            ));
        }
        let index = self.segments_seen.len() as u16;
        self.segments_seen.push(SegmentSeen {
            id: segment_id,
            has_time: false,
        });
        if is_small {
            self.small_segment_index_by_id[segment_id as usize] = index;
        } else {
            self.segment_index_by_id.insert(segment_id, index);
        }
        Ok(index)
    }

    /// Builds the pack: users get ordinals in fingerprint order; a user listed
    /// twice in a segment keeps the most recent time; a segment without a
    /// definition is named `segment-<id>`; a defined segment without members is
    /// kept, empty.
    pub fn finish(self) -> Result<Pack, BuildError> {
        self.finish_shards(1)
            .next()
            .expect("one shard yields one pack")
    }

    /// Builds one pack per shard among `shard_count`, in shard order, each
    /// holding the users of its shard ([`crate::shard::shard_of_fingerprint`])
    /// and every segment of the input (empty where the shard has no member),
    /// so every shard owns the same segment ids. One sort of the input: shards
    /// are contiguous fingerprint ranges, so each is a slice of the sorted
    /// lines. Packs are built lazily, one at a time, so a caller that writes
    /// each before asking for the next holds one shard's pack at once.
    pub fn finish_shards(self, shard_count: u32) -> ShardPacks {
        let PackBuilder {
            name,
            version,
            built_at_unix_seconds,
            mut definitions,
            segments_seen,
            memberships: mut membership_lines,
            ..
        } = self;
        membership_lines.sort_unstable();
        let mut segments: Vec<SegmentShape> = segments_seen
            .iter()
            .map(|seen| {
                let (name, kind, ttl_seconds) = match definitions.remove(&seen.id) {
                    Some(definition) => (definition.name, definition.kind, definition.ttl_seconds),
                    None => (format!("segment-{}", seen.id), String::new(), 0),
                };
                SegmentShape {
                    id: seen.id,
                    name,
                    kind,
                    ttl_seconds,
                    has_time: seen.has_time,
                }
            })
            .collect();
        segments.extend(
            definitions
                .into_iter()
                .map(|(id, definition)| SegmentShape {
                    id,
                    name: definition.name,
                    kind: definition.kind,
                    ttl_seconds: definition.ttl_seconds,
                    has_time: false,
                }),
        );
        ShardPacks {
            name,
            version,
            built_at_unix_seconds,
            segments,
            membership_lines,
            shard_count: shard_count.max(1),
            next_shard: 0,
            next_line: 0,
        }
    }
}

/// A segment as every shard's pack carries it; `has_time` only for segments
/// seen in memberships (their index in `ShardPacks::segments` is the one the
/// membership lines hold).
struct SegmentShape {
    id: u32,
    name: String,
    kind: String,
    ttl_seconds: u32,
    has_time: bool,
}

/// The packs of [`PackBuilder::finish_shards`], one per shard in shard order.
pub struct ShardPacks {
    name: String,
    version: String,
    built_at_unix_seconds: i64,
    segments: Vec<SegmentShape>,
    /// Sorted: by user fingerprint, then segment, most recent first.
    membership_lines: Vec<MembershipLine>,
    shard_count: u32,
    next_shard: u32,
    next_line: usize,
}

impl Iterator for ShardPacks {
    type Item = Result<Pack, BuildError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_shard >= self.shard_count {
            return None;
        }
        let (shard, count) = (self.next_shard, self.shard_count);
        if shard + 1 == count {
            // The last shard: its lines are the rest; the sorted lines are
            // freed with its pack built, not held by the iterator.
            self.next_shard += 1;
            let lines = std::mem::take(&mut self.membership_lines);
            return Some(self.assemble(&lines[self.next_line..]));
        }
        let rest = &self.membership_lines[self.next_line..];
        let in_shard = rest.partition_point(|line| {
            crate::shard::shard_of_fingerprint(line.user_fingerprint(), count) <= shard
        });
        let lines = &rest[..in_shard];
        self.next_line += in_shard;
        self.next_shard += 1;
        Some(self.assemble(lines))
    }
}

impl ShardPacks {
    /// The pack of one shard's sorted membership lines.
    fn assemble(&self, membership_lines: &[MembershipLine]) -> Result<Pack, BuildError> {
        struct SegmentMembers {
            ordinals: Vec<u32>,
            hours_ago: Option<Vec<u16>>,
        }
        let mut members: Vec<SegmentMembers> = self
            .segments
            .iter()
            .map(|shape| SegmentMembers {
                ordinals: Vec::new(),
                hours_ago: shape.has_time.then(Vec::new),
            })
            .collect();
        let mut user_fingerprints: Vec<u64> = Vec::new();
        let mut previous: Option<(u64, u16)> = None;
        for &line in membership_lines {
            let user_fingerprint = line.user_fingerprint();
            let segment_index = line.segment_index();
            if previous == Some((user_fingerprint, segment_index)) {
                // A duplicate: sorting put the most recent first.
                continue;
            }
            if previous.map(|(fingerprint, _)| fingerprint) != Some(user_fingerprint) {
                user_fingerprints.push(user_fingerprint);
            }
            previous = Some((user_fingerprint, segment_index));
            let user_ordinal = (user_fingerprints.len() - 1) as u64;
            if user_ordinal >= MAX_USERS {
                return Err(super::PackError::TooLarge {
                    what: "user count",
                    found: user_ordinal + 1,
                    limit: MAX_USERS,
                }
                .into());
            }
            let segment = &mut members[segment_index as usize];
            segment.ordinals.push(user_ordinal as u32);
            if let Some(hours) = &mut segment.hours_ago {
                hours.push(line.hours_ago());
            }
        }
        let mut segments: Vec<Segment> = self
            .segments
            .iter()
            .zip(members)
            .map(|(shape, segment_members)| Segment {
                id: shape.id,
                name: shape.name.clone(),
                kind: shape.kind.clone(),
                ttl_seconds: shape.ttl_seconds,
                members: RoaringBitmap::from_sorted_iter(segment_members.ordinals)
                    .expect("ordinals come out of the sort ascending and deduplicated"),
                last_seen_hours_ago: segment_members.hours_ago,
            })
            .collect();
        segments.sort_unstable_by_key(|segment| segment.id);
        let pack = Pack {
            name: self.name.clone(),
            version: self.version.clone(),
            built_at_unix_seconds: self.built_at_unix_seconds,
            user_fingerprints,
            segments,
        };
        validate_pack(&pack)?;
        Ok(pack)
    }
}

struct MembershipFields<'a> {
    user_id: &'a str,
    segment_id: u32,
    last_seen_unix_seconds: Option<i64>,
}

fn parse_membership(line: &[u8]) -> Result<MembershipFields<'_>, String> {
    let mut fields = line.split(|&byte| byte == b'\t');
    let user_id = fields.next().unwrap_or_default();
    let Some(segment_field) = fields.next() else {
        return Err(
            "missing tab: expected user_id<TAB>segment_id[<TAB>last_seen_unix]".to_string(),
        );
    };
    let last_seen_field = fields.next();
    if fields.next().is_some() {
        return Err(
            "too many fields: expected user_id<TAB>segment_id[<TAB>last_seen_unix]".to_string(),
        );
    }
    if user_id.is_empty() {
        return Err("empty user id".to_string());
    }
    let user_id =
        std::str::from_utf8(user_id).map_err(|_| "user id is not valid UTF-8".to_string())?;
    let segment_id = parse_u32(segment_field)
        .ok_or_else(|| format!("bad segment id {}", quoted(segment_field)))?;
    let last_seen_unix_seconds = match last_seen_field {
        Some(field) => {
            Some(parse_i64(field).ok_or_else(|| format!("bad last-seen time {}", quoted(field)))?)
        }
        None => None,
    };
    Ok(MembershipFields {
        user_id,
        segment_id,
        last_seen_unix_seconds,
    })
}

fn parse_definition(line: &[u8]) -> Result<(u32, Definition), String> {
    let fields: Vec<&[u8]> = line.split(|&byte| byte == b'\t').collect();
    if fields.len() < 2 {
        return Err(
            "missing tab: expected segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]".into(),
        );
    }
    if fields.len() > 4 {
        return Err(
            "too many fields: expected segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]".into(),
        );
    }
    let id = parse_u32(fields[0]).ok_or_else(|| format!("bad segment id {}", quoted(fields[0])))?;
    let name = text_field("segment name", fields[1])?;
    if name.is_empty() {
        return Err("empty segment name".to_string());
    }
    let kind = match fields.get(2) {
        Some(field) => text_field("segment kind", field)?,
        None => String::new(),
    };
    let ttl_seconds = match fields.get(3) {
        Some(field) => {
            parse_u32(field).ok_or_else(|| format!("bad ttl_seconds {}", quoted(field)))?
        }
        None => 0,
    };
    Ok((
        id,
        Definition {
            name,
            kind,
            ttl_seconds,
            defined_at: String::new(),
        },
    ))
}

fn text_field(what: &str, field: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(field).map_err(|_| format!("{what} is not valid UTF-8"))?;
    if text.len() > MAX_STRING_BYTES {
        return Err(format!(
            "{what} is {} bytes, the limit is {MAX_STRING_BYTES}",
            text.len()
        ));
    }
    // The one label rule a push applies too, named with the file and line.
    super::names::check_label(what, text).map_err(|error| error.to_string())?;
    Ok(text.to_string())
}

/// Strips the line terminator (`\n` or `\r\n`).
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_skipped(line: &[u8]) -> bool {
    line.first() == Some(&b'#') || line.iter().all(u8::is_ascii_whitespace)
}

/// Plain decimal digits only: no sign, no spaces, no `_`.
fn parse_u32(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 10 {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in field {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(byte - b'0');
    }
    u32::try_from(value).ok()
}

/// Decimal digits with an optional leading `-`.
fn parse_i64(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, field),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    Some(if negative { -value } else { value })
}

/// A field for an error message, cut short if long.
fn quoted(field: &[u8]) -> String {
    const SHOWN_BYTES: usize = 40;
    let shown = &field[..field.len().min(SHOWN_BYTES)];
    let ellipsis = if field.len() > SHOWN_BYTES { "..." } else { "" };
    format!("{:?}{ellipsis}", String::from_utf8_lossy(shown))
}

/// Reads `reader` line by line into one reused buffer (no allocation per
/// line), calls `on_line_read` with every line's number and `each_line` with
/// every line that is neither blank nor a `#` comment, line ending trimmed.
/// Returns the number of lines read.
fn for_each_line(
    mut reader: impl BufRead,
    file_label: &str,
    mut on_line_read: impl FnMut(usize),
    mut each_line: impl FnMut(usize, &[u8]) -> Result<(), BuildError>,
) -> Result<usize, BuildError> {
    let mut buffer = Vec::with_capacity(256);
    let mut line_number = 0usize;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|source| BuildError::Io {
                file: file_label.to_string(),
                source,
            })?;
        if read == 0 {
            return Ok(line_number);
        }
        line_number += 1;
        on_line_read(line_number);
        let line = trim_line_end(&buffer);
        if !is_skipped(line) {
            each_line(line_number, line)?;
        }
    }
}
