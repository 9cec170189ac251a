//! The one rule for the names and labels a pack carries, used by the builder,
//! the reader and the catalog alike, so `segctl build` refuses exactly what a
//! push would refuse.
//!
//! - A pack name names files in the data directory: 1 to 64 bytes of
//!   `A-Z a-z 0-9 . _ -`, not starting with a dot (the directory's temporary
//!   files do) and not ending in `.previous` or `.rollback` (the suffixes of
//!   the kept and swapped files).
//! - A version, segment name or segment kind is UTF-8 text of at most 255
//!   bytes (a `u8` length in the file) without control characters: these
//!   strings reach logs, terminals and metric labels, where a newline forges
//!   a line and an escape sequence drives the terminal.
//!
//! This module only checks; it does no I/O.

use super::error::PackError;
use super::format::{MAX_STRING_BYTES, PackHeader};

/// Longest pack name, in bytes.
pub const MAX_PACK_NAME_BYTES: usize = 64;

/// Suffixes a pack name may not end in: the data directory uses them.
const RESERVED_NAME_SUFFIXES: [&str; 2] = [".previous", ".rollback"];

/// The pack-name rule, in words, for error messages.
pub const PACK_NAME_RULE: &str = "use 1 to 64 characters from A-Z a-z 0-9 . _ -, not starting with a dot nor ending in .previous or .rollback";

/// Whether `name` may name a pack (see the module docs).
pub fn check_pack_name(name: &str) -> Result<(), PackError> {
    let plain = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    let valid = !name.is_empty()
        && name.len() <= MAX_PACK_NAME_BYTES
        && !name.starts_with('.')
        && name.bytes().all(plain)
        && !RESERVED_NAME_SUFFIXES
            .iter()
            .any(|suffix| name.ends_with(suffix));
    if valid {
        Ok(())
    } else {
        Err(PackError::malformed(format!(
            "invalid pack name {name:?}: {PACK_NAME_RULE}"
        )))
    }
}

/// Whether `value` may be the label `what` (a version, segment name or kind).
pub fn check_label(what: &str, value: &str) -> Result<(), PackError> {
    if value.len() > MAX_STRING_BYTES {
        return Err(PackError::malformed(format!(
            "{what} is {} bytes, the limit is {MAX_STRING_BYTES}",
            value.len()
        )));
    }
    if let Some(control) = value.chars().find(|c| c.is_control()) {
        return Err(PackError::malformed(format!(
            "{what} {value:?} holds the control character {control:?}"
        )));
    }
    Ok(())
}

/// A string read from a pack file, in either format: UTF-8 and, being shown
/// in logs and labels, held to [`check_label`].
pub fn read_label(what: &str, bytes: &[u8]) -> Result<String, PackError> {
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| PackError::malformed(format!("{what} is not valid UTF-8")))?;
    check_label(what, &text)?;
    Ok(text)
}

/// The name and version of a header, in either format, with its segment
/// count: a pack name, a non-empty version, at most `MAX_SEGMENTS` segments.
pub fn read_identity(
    name: &[u8],
    version: &[u8],
    segment_count: u32,
) -> Result<(String, String), PackError> {
    let name = read_label("pack name", name)?;
    check_pack_name(&name)?;
    let version = read_label("pack version", version)?;
    if version.is_empty() {
        return Err(PackError::malformed("pack version is empty"));
    }
    if segment_count as usize > super::format::MAX_SEGMENTS {
        return Err(PackError::TooLarge {
            what: "segment count",
            found: u64::from(segment_count),
            limit: super::format::MAX_SEGMENTS as u64,
        });
    }
    Ok((name, version))
}

/// The header's name and version, as every reader and the push path check them.
pub fn check_header_labels(header: &PackHeader) -> Result<(), PackError> {
    check_pack_name(&header.name)?;
    if header.version.is_empty() {
        return Err(PackError::malformed("pack version is empty"));
    }
    check_label("pack version", &header.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_stay_plain() {
        for good in ["crm", "site-events_v2", "a.b", &"x".repeat(64)] {
            assert!(check_pack_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            ".hidden",
            "a/b",
            "x.previous",
            "x.rollback",
            "new\nline",
            &"x".repeat(65),
        ] {
            assert!(check_pack_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_refuse_control_characters_only() {
        assert!(check_label("pack version", "2026-12-01 v1 é").is_ok());
        assert!(check_label("segment name", "").is_ok());
        for bad in [
            "v1\n",
            "\u{1b}[31mred",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let error = check_label("pack version", bad).unwrap_err().to_string();
            assert!(error.contains("control character"), "{error}");
        }
        assert!(check_label("segment kind", &"k".repeat(256)).is_err());
    }
}
