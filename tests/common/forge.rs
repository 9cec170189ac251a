//! Pack bytes a hostile client could send: headers cut out of real packs and
//! strings swapped with every checksum recomputed, so only the server's own
//! rules can refuse them. Knows the header layout of formats 1 and 2.

use xxhash_rust::xxh3::xxh3_64;

/// Bytes of the preamble and header, without the header checksum after them.
pub fn header_bytes(pack: &[u8]) -> usize {
    let format_version = u32::from_le_bytes(pack[8..12].try_into().unwrap());
    match format_version {
        1 => {
            let name_at = 36;
            let version_at = name_at + 1 + pack[name_at] as usize;
            version_at + 1 + pack[version_at] as usize
        }
        2 => u32::from_le_bytes(pack[12..16].try_into().unwrap()) as usize,
        other => panic!("unknown pack format {other}"),
    }
}

/// The preamble, header and header checksum: a valid start of a pack file.
pub fn valid_header(pack: &[u8]) -> Vec<u8> {
    pack[..header_bytes(pack) + 8].to_vec()
}

/// `pack` with the header string `placeholder` replaced by `forged` (same
/// byte length) and the header and whole-file checksums recomputed.
pub fn with_header_string(pack: &[u8], placeholder: &str, forged: &str) -> Vec<u8> {
    assert_eq!(
        placeholder.len(),
        forged.len(),
        "same length keeps the layout"
    );
    let header_end = header_bytes(pack);
    let at = pack[..header_end]
        .windows(placeholder.len())
        .position(|window| window == placeholder.as_bytes())
        .expect("placeholder in the header");
    let mut bytes = pack.to_vec();
    bytes[at..at + forged.len()].copy_from_slice(forged.as_bytes());
    let header_checksum = xxh3_64(&bytes[..header_end]);
    bytes[header_end..header_end + 8].copy_from_slice(&header_checksum.to_le_bytes());
    let file_checksum_at = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..file_checksum_at]);
    bytes[file_checksum_at..].copy_from_slice(&file_checksum.to_le_bytes());
    bytes
}

/// `pack` with the header's membership count set to `membership_count` and
/// the header and whole-file checksums recomputed: every checksum holds, the
/// content does not.
pub fn with_membership_count(pack: &[u8], membership_count: u64) -> Vec<u8> {
    let format_version = u32::from_le_bytes(pack[8..12].try_into().unwrap());
    let at = match format_version {
        1 => 28,
        2 => 32,
        other => panic!("unknown pack format {other}"),
    };
    let mut bytes = pack.to_vec();
    bytes[at..at + 8].copy_from_slice(&membership_count.to_le_bytes());
    let header_end = header_bytes(&bytes);
    let header_checksum = xxh3_64(&bytes[..header_end]);
    bytes[header_end..header_end + 8].copy_from_slice(&header_checksum.to_le_bytes());
    let file_checksum_at = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..file_checksum_at]);
    bytes[file_checksum_at..].copy_from_slice(&file_checksum.to_le_bytes());
    bytes
}
