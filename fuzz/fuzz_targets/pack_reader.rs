//! Feeds arbitrary bytes to `segd::pack::read_pack` (and `read_header`): any
//! input must give a clean `Ok` or `Err`, never a panic, an over-allocation or
//! a hang.
//!
//! Every byte of a pack is covered by the footer's whole-file checksum, so
//! random mutations almost always stop at the checksum check. To reach the
//! structure checks behind it, an input whose first byte is odd has that byte
//! dropped and its footer (total length and file checksum) recomputed before
//! it is read: the fuzzer then explores hostile contents that carry valid
//! checksums, the case a buggy or malicious pack builder produces.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

/// Footer: total length `u64`, end magic, file checksum `u64`.
const FOOTER_BYTES: usize = 24;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= FOOTER_BYTES {
        let total_length = bytes.len() as u64;
        let footer_start = bytes.len() - FOOTER_BYTES;
        bytes[footer_start..footer_start + 8].copy_from_slice(&total_length.to_le_bytes());
        let checksum_start = bytes.len() - 8;
        let file_checksum = xxh3_64(&bytes[..checksum_start]);
        bytes[checksum_start..].copy_from_slice(&file_checksum.to_le_bytes());
    }
    let _ = segd::pack::read_header(&bytes);
    if let Ok(pack) = segd::pack::read_pack(&bytes) {
        // Whatever the reader accepts, the writer must be able to write back.
        let written = segd::pack::write_pack(&pack).expect("an accepted pack writes");
        let reread = segd::pack::read_pack(&written).expect("a written pack reads");
        assert_eq!(reread, pack);
    }
});
