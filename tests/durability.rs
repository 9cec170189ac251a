//! Acknowledged impressions survive `kill -9` of the real binary: every
//! acknowledged impression is counted exactly once after a restart, under
//! `--fsync always` and (for a process crash) `--fsync interval`. A log
//! corrupted mid-file refuses start-up naming file and offset.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::SegdProcess;
use rand::Rng;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    Calendar, Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest,
};
use tonic::transport::Channel;

const USER: &str = "ifa:durable";

/// One impression per key `k:{n}`, so each can be checked on its own.
fn impression(number: u64) -> Impression {
    Impression {
        user_id: USER.into(),
        cap_keys: vec![format!("k:{number}")],
        at_unix_seconds: 0,
        impression_id: format!("imp-{number}"),
    }
}

/// How many times each key's impression is counted: 0, 1, or 2 meaning "2 or more".
async fn counts(client: &mut SegmentsClient<Channel>, numbers: &[u64]) -> Vec<u32> {
    let mut counts = Vec::with_capacity(numbers.len());
    for chunk in numbers.chunks(200) {
        let cap = |number: u64, limit: u32| FrequencyCap {
            key: format!("k:{number}"),
            limit,
            window_seconds: 0,
            calendar: Calendar::Rolling as i32,
            utc_offset_minutes: 0,
        };
        let candidates: Vec<Candidate> = chunk
            .iter()
            .flat_map(|&number| {
                [1, 2].map(|limit| Candidate {
                    id: format!("{number}/{limit}"),
                    caps: vec![cap(number, limit)],
                    ..Default::default()
                })
            })
            .collect();
        let reply = client
            .decide(DecideRequest {
                user_id: USER.into(),
                candidates,
                at_unix_seconds: 0,
                line_item_ids: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        for pair in reply.decisions.chunks(2) {
            // Capped at limit 1: count >= 1; capped at limit 2: count >= 2.
            counts.push(u32::from(!pair[0].eligible) + u32::from(!pair[1].eligible));
        }
    }
    counts
}

async fn crash_while_recording(fsync: &str, rounds: usize) {
    let data_dir = tempfile::tempdir().unwrap();
    let flags = ["--fsync", fsync];
    let mut acknowledged_total: BTreeSet<u64> = BTreeSet::new();
    let mut sent_total: BTreeSet<u64> = BTreeSet::new();
    for round in 0..rounds {
        let server = SegdProcess::start(data_dir.path(), &flags).await;
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..4u64 {
            let mut client = server.segments().await;
            let acknowledged = acknowledged.clone();
            let sent = sent.clone();
            writers.push(tokio::spawn(async move {
                for sequence in 0.. {
                    let number = round as u64 * 1_000_000 + writer * 100_000 + sequence;
                    sent.lock().unwrap().push(number);
                    match client
                        .record_impressions(RecordImpressionsRequest {
                            impressions: vec![impression(number)],
                        })
                        .await
                    {
                        Ok(reply) => {
                            assert_eq!(reply.into_inner().recorded, 1);
                            acknowledged.lock().unwrap().push(number);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill at a random moment once writing is under way (a loaded
        // machine can take a while to connect the first time).
        while acknowledged.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay_ms = rand::rng().random_range(50..500);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill_9();
        for writer in writers {
            writer.await.unwrap();
        }
        acknowledged_total.extend(acknowledged.lock().unwrap().iter());
        sent_total.extend(sent.lock().unwrap().iter());
        assert!(
            !acknowledged.lock().unwrap().is_empty(),
            "round {round} acknowledged something before the kill"
        );

        let restarted = SegdProcess::start(data_dir.path(), &flags).await;
        let mut client = restarted.segments().await;
        let numbers: Vec<u64> = sent_total.iter().copied().collect();
        let counted = counts(&mut client, &numbers).await;
        for (number, count) in numbers.iter().zip(counted) {
            if acknowledged_total.contains(number) {
                assert_eq!(
                    count, 1,
                    "{fsync}: acknowledged impression {number} counted {count} times after kill -9"
                );
            } else {
                assert!(
                    count <= 1,
                    "{fsync}: unacknowledged impression {number} counted twice"
                );
            }
        }
        // A retry of an acknowledged impression is a duplicate, not a second count.
        let retried = *acknowledged_total.iter().next().unwrap();
        let reply = client
            .record_impressions(RecordImpressionsRequest {
                impressions: vec![impression(retried)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.recorded, reply.duplicates), (0, 1));
        restarted.kill_9();
    }
    assert!(acknowledged_total.len() >= rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_impression_with_fsync_always() {
    crash_while_recording("always", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_impression_with_fsync_interval() {
    crash_while_recording("interval", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_corrupted_mid_file_refuses_start_up_naming_file_and_offset() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &["--fsync", "always"]).await;
    let mut client = server.segments().await;
    for number in 0..20 {
        client
            .record_impressions(RecordImpressionsRequest {
                impressions: vec![impression(number)],
            })
            .await
            .unwrap();
    }
    server.kill_9();
    let freq_dir = data_dir.path().join("freq");
    let log = std::fs::read_dir(&freq_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("log-")
        })
        .expect("a log segment");
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_segd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "segd must refuse a corrupt log");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&log.file_name().unwrap().to_string_lossy().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("offset"), "{stderr}");

    // The explicit recovery flag starts anyway and keeps the records before the damage.
    let recovered = SegdProcess::start(data_dir.path(), &["--recover-corrupt-log"]).await;
    let mut client = recovered.segments().await;
    let counted = counts(&mut client, &[0]).await;
    assert_eq!(counted, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &["--fsync", "interval"]).await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let mut client = server.segments().await;
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for sequence in 0.. {
                let number = writer * 100_000 + sequence;
                match client
                    .record_impressions(RecordImpressionsRequest {
                        impressions: vec![impression(number)],
                    })
                    .await
                {
                    Ok(_) => acknowledged.lock().unwrap().push(number),
                    Err(_) => return,
                }
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "segd exits 0 after SIGTERM: {status:?}");
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: Vec<u64> = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());
    // A checkpoint was written on the way out.
    let checkpoints = std::fs::read_dir(data_dir.path().join("freq"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint")
        })
        .count();
    assert!(checkpoints >= 1, "a checkpoint is written at shutdown");

    let restarted = SegdProcess::start(data_dir.path(), &[]).await;
    let mut client = restarted.segments().await;
    let counted = counts(&mut client, &acknowledged).await;
    assert!(
        counted.iter().all(|&count| count == 1),
        "every acknowledged impression counted once"
    );
}
