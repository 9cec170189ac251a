//! Hostile bytes fed to the log and checkpoint decoders: a clean error or a
//! clean partial result, never a panic or an over-allocation.

use proptest::prelude::*;
use segd::freq::checkpoint::decode_checkpoint;
use segd::freq::log::{
    LogImpression, LogRecord, SEGMENT_HEADER_BYTES, encode_record, encode_segment_header,
};
use segd::freq::{SegmentDecodeError, decode_log_segment};

fn record_strategy() -> impl Strategy<Value = LogRecord> {
    prop::collection::vec(
        (
            any::<u64>(),
            any::<i64>(),
            prop::option::of(any::<u64>()),
            prop::collection::vec(any::<u64>(), 0..4),
        ),
        1..6,
    )
    .prop_map(|impressions| LogRecord {
        impressions: impressions
            .into_iter()
            .map(
                |(user_fingerprint, at_unix_seconds, impression_id_hash, cap_key_hashes)| {
                    LogImpression {
                        user_fingerprint,
                        at_unix_seconds,
                        impression_id_hash,
                        cap_key_hashes,
                    }
                },
            )
            .collect(),
    })
}

fn segment_bytes(first_seq: u64, records: &[LogRecord]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_segment_header(first_seq).to_vec();
    let mut record_starts = Vec::new();
    for record in records {
        record_starts.push(bytes.len());
        bytes.extend(encode_record(record));
    }
    (bytes, record_starts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn segments_round_trip(first_seq in any::<u64>(), records in prop::collection::vec(record_strategy(), 0..8)) {
        let (bytes, _) = segment_bytes(first_seq, &records);
        let decoded = decode_log_segment(&bytes).expect("decodes");
        prop_assert_eq!(decoded.first_seq, first_seq);
        prop_assert_eq!(decoded.records, records);
        prop_assert_eq!(decoded.torn_tail_bytes, 0);
    }

    #[test]
    fn a_truncated_segment_yields_exactly_the_complete_records(
        records in prop::collection::vec(record_strategy(), 1..8),
        cut_fraction in 0.0f64..1.0,
    ) {
        let (bytes, record_starts) = segment_bytes(7, &records);
        let cut = (bytes.len() as f64 * cut_fraction) as usize;
        match decode_log_segment(&bytes[..cut]) {
            Ok(decoded) => {
                let complete = record_starts.iter().skip(1).chain([&bytes.len()]).filter(|&&end| end <= cut).count();
                prop_assert_eq!(&decoded.records[..], &records[..complete]);
                prop_assert_eq!(decoded.valid_bytes + decoded.torn_tail_bytes, cut as u64);
            }
            Err(SegmentDecodeError::TruncatedHeader { length }) => {
                prop_assert!(cut < SEGMENT_HEADER_BYTES);
                prop_assert_eq!(length, cut as u64);
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn mutated_segments_never_panic(
        records in prop::collection::vec(record_strategy(), 0..6),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (mut bytes, _) = segment_bytes(1, &records);
        for (index, value) in mutations {
            let position = index.index(bytes.len());
            bytes[position] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        match decode_log_segment(&bytes) {
            Ok(decoded) => prop_assert!(decoded.valid_bytes + decoded.torn_tail_bytes == bytes.len() as u64),
            Err(SegmentDecodeError::Corrupt { offset, .. }) => prop_assert!(offset < bytes.len() as u64),
            Err(SegmentDecodeError::TruncatedHeader { .. }) => {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2_000)) {
        let _ = decode_log_segment(&bytes);
        let _ = decode_checkpoint(&bytes);
        let mut with_header = encode_segment_header(3).to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = decode_log_segment(&with_header);
    }

    #[test]
    fn a_flipped_byte_before_the_last_record_is_reported_at_its_record(
        records in prop::collection::vec(record_strategy(), 2..6),
        victim in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut bytes, record_starts) = segment_bytes(1, &records);
        let victim = victim.index(records.len() - 1);
        let start = record_starts[victim];
        let end = record_starts[victim + 1];
        bytes[start + byte.index(end - start)] ^= flip;
        match decode_log_segment(&bytes) {
            Err(SegmentDecodeError::Corrupt { offset, records_before, .. }) => {
                prop_assert_eq!(offset, start as u64);
                prop_assert_eq!(&records_before[..], &records[..victim]);
            }
            other => prop_assert!(false, "expected corruption at {}, got {:?}", start, other),
        }
    }
}
