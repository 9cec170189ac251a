//! Writes the seed corpus of the cargo-fuzz targets in `fuzz/` from the real
//! writers, so the fuzzers start from valid inputs. Run on purpose, when a
//! format changes: `cargo test --test fuzz_seeds -- --ignored`.
//!
//! Each seed starts with the targets' mode byte (see `fuzz/README.md`): 0 feeds
//! the rest as is, 1 recomputes its checksums first (2: the v2 pack checksums).

mod common;

use std::path::{Path, PathBuf};

use common::model::ModelPack;
use segd::freq::log::{LogImpression, LogRecord, encode_record, encode_segment_header};
use segd::pack::{self, Pack};

const BUILT_AT: i64 = 1_790_000_000;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn write_seed(target: &str, name: &str, body: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    // Mode 2 (v2 pack checksums) means something only to the pack reader.
    let modes: &[u8] = if target == "pack_reader" {
        &[0, 1, 2]
    } else {
        &[0, 1]
    };
    for &mode in modes {
        let mut seed = vec![mode];
        seed.extend_from_slice(body);
        std::fs::write(dir.join(format!("seed-{name}-mode{mode}")), seed).expect("seed written");
    }
}

fn impression(seed: u64, keys: usize, with_id: bool) -> LogImpression {
    LogImpression {
        user_fingerprint: segd::user_fingerprint(&format!("user-{seed}")),
        at_unix_seconds: BUILT_AT + seed as i64,
        impression_id_hash: with_id.then(|| segd::freq::impression_id_hash(&format!("imp-{seed}"))),
        cap_key_hashes: (0..keys)
            .map(|key| segd::freq::cap_key_hash(&format!("li:{key}")))
            .collect(),
    }
}

#[test]
#[ignore]
fn write_fuzz_seeds() {
    let fixture =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.segpack"))
            .expect("fixture");
    write_seed("pack_reader", "fixture-small", &fixture);
    let fixture_v2 = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.v2.segpack"),
    )
    .expect("v2 fixture");
    write_seed("pack_reader", "fixture-small-v2", &fixture_v2);
    let fixture_v2_narrow = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.v2-narrow.segpack"),
    )
    .expect("narrow v2 fixture");
    write_seed("pack_reader", "fixture-small-v2-narrow", &fixture_v2_narrow);
    let empty = Pack {
        name: "empty".to_owned(),
        version: "v1".to_owned(),
        built_at_unix_seconds: BUILT_AT,
        user_fingerprints: Vec::new(),
        segments: Vec::new(),
    };
    write_seed(
        "pack_reader",
        "empty",
        &pack::write_pack(&empty).expect("writes"),
    );
    let model = ModelPack::random(7, "crm", "2026-11-02", BUILT_AT, 40, [3, 9, 70_000]);
    write_seed("pack_reader", "model-40-users", &model.bytes());

    let mut empty_segment = encode_segment_header(1).to_vec();
    write_seed("freq_log_decoder", "header-only", &empty_segment);
    let records = [
        LogRecord {
            impressions: vec![impression(1, 1, true)],
        },
        LogRecord {
            impressions: vec![impression(2, 3, false), impression(3, 0, true)],
        },
        LogRecord {
            impressions: vec![impression(4, 2, true)],
        },
    ];
    for record in &records {
        empty_segment.extend(encode_record(record));
    }
    write_seed("freq_log_decoder", "three-records", &empty_segment);
    let mut torn = empty_segment.clone();
    torn.truncate(torn.len() - 5);
    write_seed("freq_log_decoder", "torn-tail", &torn);
}
