//! Errors of the pack layer: `PackError` for reading, writing and validating a
//! pack file, `BuildError` for building a pack from TSV input.
//!
//! Messages are lowercase and name the section, offset, file or line at fault.

use std::fmt;
use std::path::PathBuf;

/// A region of a pack file, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackSection {
    /// Magic bytes and format version.
    Preamble,
    /// Pack name, version, build time and counts.
    Header,
    /// The sorted user fingerprints.
    UserDictionary,
    /// Format v2: where each section lies.
    SectionTable,
    /// Format v2: the radix directory over the fingerprints.
    RadixDirectory,
    /// Format v2: where each user's index entries start.
    IndexStarts,
    /// Format v2: the user-major index entries.
    IndexEntries,
    /// Format v2: all segments' bitmaps.
    Bitmaps,
    /// One entry per segment: id, name, kind, TTL, sizes.
    SegmentTable,
    /// A segment's roaring bitmap.
    Bitmap { segment_id: u32 },
    /// A segment's recency column.
    Recency { segment_id: u32 },
    /// Total length, end magic and whole-file checksum.
    Footer,
}

impl fmt::Display for PackSection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackSection::Preamble => formatter.write_str("preamble"),
            PackSection::Header => formatter.write_str("header"),
            PackSection::UserDictionary => formatter.write_str("user dictionary"),
            PackSection::SectionTable => formatter.write_str("section table"),
            PackSection::RadixDirectory => formatter.write_str("radix directory"),
            PackSection::IndexStarts => formatter.write_str("index starts"),
            PackSection::IndexEntries => formatter.write_str("index entries"),
            PackSection::Bitmaps => formatter.write_str("bitmaps"),
            PackSection::SegmentTable => formatter.write_str("segment table"),
            PackSection::Bitmap { segment_id } => write!(formatter, "segment {segment_id} bitmap"),
            PackSection::Recency { segment_id } => {
                write!(formatter, "segment {segment_id} recency")
            }
            PackSection::Footer => formatter.write_str("footer"),
        }
    }
}

/// Why a pack could not be read, written or validated.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The bytes end before a length the file itself declares.
    #[error(
        "pack truncated: {what} at offset {offset} needs {needed_bytes} bytes, {available_bytes} remain"
    )]
    Truncated {
        what: PackSection,
        offset: u64,
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// Not a pack file at all.
    #[error("not a pack file: bad magic bytes")]
    BadMagic,
    /// A pack file of a format this build does not read.
    #[error("unsupported pack format version {found} (this build reads versions 1 to {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A stored checksum does not match the bytes it covers.
    #[error("checksum mismatch in {section} at offset {offset}")]
    ChecksumMismatch { section: PackSection, offset: u64 },
    /// Checksums match but the content breaks an invariant of the format.
    #[error("malformed pack: {what}")]
    Malformed { what: String },
    /// A count or length above what the format allows.
    #[error("too large: {what} is {found}, the limit is {limit}")]
    TooLarge {
        what: &'static str,
        found: u64,
        limit: u64,
    },
    /// Reading a pack file from disk failed.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PackError {
    pub(crate) fn malformed(what: impl Into<String>) -> PackError {
        PackError::Malformed { what: what.into() }
    }
}

/// Why a pack could not be built from TSV input.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A line of an input file is malformed.
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    /// Reading an input failed.
    #[error("reading {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The input parsed but the resulting pack breaks a limit of the format
    /// (too many users or segments, a name too long...).
    #[error(transparent)]
    Pack(#[from] PackError),
}
