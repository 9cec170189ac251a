//! The pack: the unit a batch job pushes, and its file format.
//!
//! A pack holds a name, a version, a build time, a user dictionary (sorted
//! fingerprints; ordinal = rank) and segments (roaring bitmaps of ordinals with
//! optional per-member last-seen times). This module owns the in-memory value,
//! the file formats (`format` for v1, `format_v2` for v2, which stores the
//! serving tables `index_build` derives, their entries encoded by
//! `entries`), the writers, the checked readers
//! (`reader`, and `view` over shared, usually memory-mapped bytes from
//! `mapped`) and the builder from TSV. It knows nothing of gRPC, tokio or the
//! serving state.

use roaring::RoaringBitmap;

pub mod builder;
pub mod entries;
mod entry_scan;
pub mod error;
pub mod file_blocks;
pub mod format;
pub mod format_v2;
pub mod index_build;
pub mod mapped;
pub mod mapped_inodes;
pub mod names;
pub mod reader;
pub mod stream_check;
pub mod view;
mod view_check;
mod view_header;
pub mod writer;
pub mod writer_v2;

pub use builder::PackBuilder;
pub use entries::EntryLayout;
pub use error::{BuildError, PackError, PackSection};
pub use format::{FILE_EXTENSION, FILE_SUFFIX, FORMAT_VERSION, FORMAT_VERSION_V1, PackHeader};
pub use format_v2::FORMAT_VERSION_V2;
pub use mapped::{IndexEntry, PackBytes};
pub use reader::{
    entry_layout_of, format_version_of, read_header, read_header_file, read_pack, read_pack_file,
};
pub use view::PackView;
pub use writer::{write_pack_file_atomic, write_pack_v1};
pub use writer_v2::{
    ShardSpec, entry_layout_for, write_pack_v2, write_pack_v2_layout, write_pack_v2_shard,
};

/// Encodes a pack in the default format, v2 (see `format_v2`).
pub fn write_pack(pack: &Pack) -> Result<Vec<u8>, PackError> {
    write_pack_v2(pack)
}

/// Seconds in one stored recency step. Stored times are rounded toward older by
/// at most one step.
pub const RECENCY_STEP_SECONDS: i64 = 3600;

/// A pack in memory, as read from or written to a pack file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// Pack name, e.g. `crm`; one pack of each name is served.
    pub name: String,
    /// Version string chosen by the batch job; compared to decide what is newer.
    pub version: String,
    /// When the batch job built this pack; members without a time were last seen then.
    pub built_at_unix_seconds: i64,
    /// User fingerprints (xxh3-64 of the user id), sorted strictly ascending;
    /// a user's ordinal is its index here.
    pub user_fingerprints: Vec<u64>,
    /// Segments, sorted by id ascending, ids unique.
    pub segments: Vec<Segment>,
}

/// One segment of a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: u32,
    pub name: String,
    /// `retargeting`, `exclusion`, `prospecting`...; empty when not given.
    pub kind: String,
    /// A member older than this is no member; 0 = no TTL.
    pub ttl_seconds: u32,
    /// Member user ordinals; every one is below the pack's user count.
    pub members: RoaringBitmap,
    /// Per member, in ascending ordinal order (the bitmap's iteration order):
    /// hours before `built_at_unix_seconds` the member was last seen, rounded
    /// up (toward older). `None`: every member was last seen at build time.
    pub last_seen_hours_ago: Option<Vec<u16>>,
}

impl Pack {
    /// Total memberships over all segments.
    pub fn memberships(&self) -> u64 {
        self.segments
            .iter()
            .map(|segment| segment.members.len())
            .sum()
    }
}

/// Hours before `built_at` for a last-seen time, rounded toward older and
/// saturated; a time at or after the build time is 0.
pub fn hours_ago(built_at_unix_seconds: i64, last_seen_unix_seconds: i64) -> u16 {
    let seconds_ago = built_at_unix_seconds.saturating_sub(last_seen_unix_seconds);
    if seconds_ago <= 0 {
        return 0;
    }
    let hours = (seconds_ago + RECENCY_STEP_SECONDS - 1) / RECENCY_STEP_SECONDS;
    hours.min(u16::MAX as i64) as u16
}

/// The last-seen time a stored hour count stands for.
pub fn last_seen_from_hours_ago(built_at_unix_seconds: i64, hours_ago: u16) -> i64 {
    // Saturating: a hostile pack may carry a build time near `i64::MIN`.
    built_at_unix_seconds.saturating_sub(i64::from(hours_ago) * RECENCY_STEP_SECONDS)
}

#[cfg(test)]
mod shard_build_tests;
#[cfg(test)]
mod tests;
