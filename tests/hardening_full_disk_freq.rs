//! Hardening: a `RecordImpressions` refused for a full disk changes nothing.
//!
//! Seen before the fix, on a real full tmpfs: the request answered
//! `UNAVAILABLE` but its impressions were applied to the in-memory counters
//! anyway (Status events and Decide counts rose), a retry counted again, and a
//! restart changed the counts back. Each failed write also left an empty log
//! segment. Here the real binary runs over a 40 MiB tmpfs filled to the last
//! byte, under every fsync policy.

mod common;

use common::admin_client;
use common::process::SegdProcess;
use common::tmpfs::Tmpfs;
use segd::proto::{
    Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest, StatusRequest,
};

const PROBE_USER: &str = "ck:probe";
const PROBE_KEY: &str = "li:probe";
/// Decide candidates with cap limits 1..=CAP_LIMITS: the number capped is the count.
const CAP_LIMITS: u32 = 10;

/// 1,000 impressions of round `round`, one of them for the probe user.
fn round(round: &str) -> RecordImpressionsRequest {
    let mut impressions: Vec<Impression> = (0..999)
        .map(|index| Impression {
            user_id: format!("ck:{}", index % 50),
            cap_keys: vec!["li:1".into()],
            at_unix_seconds: 0,
            impression_id: format!("{round}-{index}"),
        })
        .collect();
    impressions.push(Impression {
        user_id: PROBE_USER.into(),
        cap_keys: vec![PROBE_KEY.into()],
        at_unix_seconds: 0,
        impression_id: format!("{round}-probe"),
    });
    RecordImpressionsRequest { impressions }
}

/// The probe user's impression count on the probe key, read through Decide.
async fn probe_count(segd: &SegdProcess) -> u32 {
    let candidates = (1..=CAP_LIMITS)
        .map(|limit| Candidate {
            id: format!("limit-{limit}"),
            caps: vec![FrequencyCap {
                key: PROBE_KEY.into(),
                limit,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let decided = segd
        .segments()
        .await
        .decide(DecideRequest {
            user_id: PROBE_USER.into(),
            candidates,
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner();
    decided
        .decisions
        .iter()
        .filter(|decision| !decision.eligible)
        .count() as u32
}

async fn stored_events(segd: &SegdProcess) -> u64 {
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    status.frequency.expect("frequency status").events
}

/// Log segments holding no record (a header or less).
fn empty_log_segments(freq_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(freq_dir)
        .expect("read freq dir")
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".seg"))
        .filter(|entry| entry.metadata().unwrap().len() <= 32)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn refused_impressions_change_nothing(fsync: &str) {
    let Some(disk) = Tmpfs::mount(40) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let flags = ["--fsync", fsync, "--fsync-interval-ms", "5"];
    let segd = SegdProcess::start(&data_dir, &flags).await;
    let mut client = segd.segments().await;
    let first = client
        .record_impressions(round("a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.recorded, first.duplicates), (1000, 0), "{fsync}");
    let events_before = stored_events(&segd).await;
    assert_eq!(probe_count(&segd).await, 1, "{fsync}");

    let filler = disk.fill();
    for attempt in 0..3 {
        let refused = client
            .record_impressions(round("b"))
            .await
            .expect_err("a full disk refuses the request");
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{fsync}: {refused:?}"
        );
        assert!(
            refused.message().contains("frequency storage"),
            "{fsync}: {refused:?}"
        );
        assert_eq!(
            stored_events(&segd).await,
            events_before,
            "{fsync} attempt {attempt}: a refused request changed the counters"
        );
        assert_eq!(probe_count(&segd).await, 1, "{fsync} attempt {attempt}");
        let empty = empty_log_segments(&data_dir.join("freq"));
        assert!(
            empty.is_empty(),
            "{fsync}: empty log segments left: {empty:?}"
        );
    }

    std::fs::remove_file(filler).unwrap();
    let retried = client
        .record_impressions(round("b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retried.recorded, retried.duplicates), (1000, 0), "{fsync}");
    let again = client
        .record_impressions(round("b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.recorded, again.duplicates), (0, 1000), "{fsync}");
    let events_after = stored_events(&segd).await;
    assert_eq!(
        events_after,
        events_before + 1000,
        "{fsync}: the retry counts once"
    );
    assert_eq!(probe_count(&segd).await, 2, "{fsync}");

    // What a restart replays from the log is what was served before it.
    segd.kill_9();
    let segd = SegdProcess::start(&data_dir, &flags).await;
    assert_eq!(
        stored_events(&segd).await,
        events_after,
        "{fsync}: after restart"
    );
    assert_eq!(probe_count(&segd).await, 2, "{fsync}: after restart");
    let empty = empty_log_segments(&data_dir.join("freq"));
    assert!(
        empty.len() <= 1,
        "{fsync}: only the new writer's segment may be empty: {empty:?}"
    );
    segd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_impressions_change_nothing_under_fsync_always() {
    refused_impressions_change_nothing("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_impressions_change_nothing_under_fsync_interval() {
    refused_impressions_change_nothing("interval").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_impressions_change_nothing_under_fsync_never() {
    refused_impressions_change_nothing("never").await;
}
