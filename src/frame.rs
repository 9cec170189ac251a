//! The checksummed record frame shared by the frequency log and the
//! real-time journal: `u32 payload_len | u64 xxh3_64_with_seed(payload,
//! seed = payload_len) | payload`, little-endian. Seeding with the length
//! means a torn length never matches a checksum by accident.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::le::LeReader;

/// Length and checksum before each payload.
pub const FRAME_HEADER_BYTES: usize = 12;

/// Appends `payload` framed to `out`.
pub fn write_frame(payload: &[u8], out: &mut Vec<u8>) {
    let payload_len = payload.len() as u32;
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&xxh3_64_with_seed(payload, u64::from(payload_len)).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Checks the frame at the start of `bytes`: the payload and the frame's
/// whole length, or why it is no frame (incomplete, too long, damaged).
pub fn read_frame(bytes: &[u8], max_payload_bytes: usize) -> Result<(&[u8], usize), String> {
    let mut reader = LeReader::new(bytes);
    if reader.ensure(FRAME_HEADER_BYTES).is_err() {
        return Err("incomplete record header".to_owned());
    }
    let payload_len = reader.u32()? as usize;
    let stored_checksum = reader.u64()?;
    if payload_len > max_payload_bytes {
        return Err(format!("record length {payload_len} exceeds the maximum"));
    }
    let Ok(payload) = reader.take(payload_len) else {
        return Err("incomplete record payload".to_owned());
    };
    if xxh3_64_with_seed(payload, payload_len as u64) != stored_checksum {
        return Err("record checksum mismatch".to_owned());
    }
    Ok((payload, FRAME_HEADER_BYTES + payload_len))
}
