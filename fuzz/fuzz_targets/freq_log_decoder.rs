//! Feeds arbitrary bytes to `segd::freq::decode_log_segment`: any input must
//! give a clean result or error, never a panic, an over-allocation or a hang,
//! and the byte counts it reports must add up.
//!
//! Each record carries an xxh3 checksum of its payload, so random mutations
//! rarely reach the payload decoder. An input whose first byte is odd has
//! that byte dropped and its checksums (segment header, then every record
//! frame that fits) recomputed, so the fuzzer explores hostile payloads with
//! valid checksums too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use segd::freq::SegmentDecodeError;
use segd::freq::log::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

fn fix_checksums(bytes: &mut [u8]) {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return;
    }
    let header_checksum = xxh3_64(&bytes[..24]);
    bytes[24..32].copy_from_slice(&header_checksum.to_le_bytes());
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + RECORD_HEADER_BYTES <= bytes.len() {
        let length_bytes: [u8; 4] = bytes[offset..offset + 4].try_into().expect("4 bytes");
        let payload_len = u32::from_le_bytes(length_bytes) as usize;
        let payload_start = offset + RECORD_HEADER_BYTES;
        let Some(payload_end) = payload_start
            .checked_add(payload_len)
            .filter(|&end| end <= bytes.len())
        else {
            return;
        };
        let checksum = xxh3_64_with_seed(&bytes[payload_start..payload_end], payload_len as u64);
        bytes[offset + 4..offset + 12].copy_from_slice(&checksum.to_le_bytes());
        offset = payload_end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_checksums(&mut bytes);
    }
    match segd::freq::decode_log_segment(&bytes) {
        Ok(decoded) => {
            assert_eq!(
                decoded.valid_bytes + decoded.torn_tail_bytes,
                bytes.len() as u64
            );
        }
        Err(SegmentDecodeError::Corrupt { offset, .. }) => {
            assert!(offset < bytes.len() as u64);
        }
        Err(SegmentDecodeError::TruncatedHeader { length }) => {
            assert!(length < SEGMENT_HEADER_BYTES as u64);
        }
    }
});
