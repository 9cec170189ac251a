//! Feeds arbitrary bytes to segd's pack readers: `read_pack` and
//! `read_header` (both formats), and the server's checked load of format v2
//! (`PackView::open`) followed by lookups on whatever it accepts. Any input
//! must give a clean `Ok` or `Err`, never a panic, an over-allocation, a
//! hang, or (for an accepted v2 view) an out-of-bounds access in a lookup.
//!
//! Every byte of a pack is covered by checksums, so random mutations almost
//! always stop at a checksum check. To reach the structure checks behind
//! them, the first input byte is a mode: bit 0 recomputes the v1 footer
//! (total length and file checksum), bit 1 recomputes every v2 checksum
//! (header, each section, section table, file) where the bytes hold them,
//! so the fuzzer explores hostile contents that carry valid checksums, the
//! case a buggy or malicious pack builder produces.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use segd::pack::{PackBytes, PackView};
use segd::store::LoadedPack;
use xxhash_rust::xxh3::xxh3_64;

/// Footer: total length `u64`, end magic, file checksum `u64`.
const FOOTER_BYTES: usize = 24;

fn reseal_footer(bytes: &mut [u8]) {
    if bytes.len() < FOOTER_BYTES {
        return;
    }
    let total_length = bytes.len() as u64;
    let footer_start = bytes.len() - FOOTER_BYTES;
    bytes[footer_start..footer_start + 8].copy_from_slice(&total_length.to_le_bytes());
    let checksum_start = bytes.len() - 8;
    let file_checksum = xxh3_64(&bytes[..checksum_start]);
    bytes[checksum_start..].copy_from_slice(&file_checksum.to_le_bytes());
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(offset..offset + 8)?.try_into().ok()?))
}

fn put_checksum_of(bytes: &mut [u8], covered: std::ops::Range<usize>, at: usize) -> Option<()> {
    let value = xxh3_64(bytes.get(covered)?);
    bytes.get_mut(at..at + 8)?.copy_from_slice(&value.to_le_bytes());
    Some(())
}

/// Recomputes the v2 checksums the bytes have room for (see `format_v2`).
fn reseal_v2(bytes: &mut [u8]) -> Option<()> {
    let header_bytes = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    put_checksum_of(bytes, 0..header_bytes, header_bytes)?;
    let table_start = header_bytes + 8;
    for section in 0..6 {
        let entry = table_start + section * 24;
        let offset = usize::try_from(u64_at(bytes, entry)?).ok()?;
        let length = usize::try_from(u64_at(bytes, entry + 8)?).ok()?;
        let end = offset.checked_add(length)?;
        put_checksum_of(bytes, offset..end, entry + 16)?;
    }
    let table_end = table_start + 6 * 24;
    put_checksum_of(bytes, table_start..table_end, table_end)?;
    Some(())
}

/// Every lookup a server makes must stay in bounds on an accepted view.
fn exercise(view: PackView, probes: &[u8]) {
    let fingerprints: Vec<u64> = view.fingerprints().to_vec();
    let segments = view.segments().len();
    let _ = view.to_pack();
    let loaded = LoadedPack::from_view(view, 0);
    let strangers = probes
        .chunks_exact(8)
        .take(64)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    for fingerprint in fingerprints.iter().copied().chain(strangers) {
        let Some(ordinal) = loaded.ordinal(fingerprint) else {
            continue;
        };
        for entry in loaded.entries_of(ordinal) {
            assert!((entry.slot as usize) < segments);
            let _ = loaded.counts(entry.slot, entry, 3600, 0);
        }
        for slot in 0..segments.min(64) as u16 {
            let _ = loaded.entry(ordinal, slot);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 2 == 2 {
        let _ = reseal_v2(&mut bytes);
    }
    if mode & 1 == 1 || mode & 2 == 2 {
        reseal_footer(&mut bytes);
    }
    let _ = segd::pack::read_header(&bytes);
    if let Ok(pack) = segd::pack::read_pack(&bytes) {
        // Whatever the reader accepts, the writers must be able to write back.
        for written in [
            segd::pack::write_pack(&pack).expect("an accepted pack writes"),
            segd::pack::write_pack_v1(&pack).expect("an accepted pack writes as v1"),
        ] {
            let reread = segd::pack::read_pack(&written).expect("a written pack reads");
            assert_eq!(reread, pack);
        }
    }
    if matches!(segd::pack::format_version_of(&bytes), Ok(segd::pack::FORMAT_VERSION_V2))
        && let Ok(view) = PackView::open(Arc::new(PackBytes::copy_from(&bytes)))
    {
        exercise(view, &bytes);
    }
});
