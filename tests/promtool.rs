//! `promtool check metrics` (Prometheus' own linter) on a scrape of a real
//! server that has served every RPC of both services, with a watched
//! directory, a stale pack and frequency figures, so every metric family
//! segd exports is in the text it checks.
//!
//! Needs `promtool` on PATH (Debian: `apt-get install prometheus`; `.ci/run`
//! installs it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{SimpleSegment, TestServer, config, push, simple_pack};
use segd::proto::{
    BatchLookupRequest, Candidate, DecideRequest, DropPackRequest, Impression, ListSegmentsRequest,
    LookupRequest, PutLineItemsRequest, RecordImpressionsRequest, RollbackRequest, SegmentRef,
    StatusRequest,
};
use segd::settings::PackMaxAge;

fn pack(name: &str, version: &str, id: u32, built_at: i64) -> Vec<u8> {
    simple_pack(
        name,
        version,
        built_at,
        &[SimpleSegment {
            id,
            kind: "retargeting",
            members: &["alice"],
        }],
    )
}

/// Calls every RPC of `segd.v1.Segments` and `segd.v1.Admin` at least once.
async fn serve_every_rpc(server: &TestServer) {
    let now = segd::unix_now_seconds();
    let mut admin = server.admin().await;
    push(&mut admin, &pack("shop", "v1", 1, now), false)
        .await
        .unwrap();
    push(&mut admin, &pack("shop", "v2", 1, now), false)
        .await
        .unwrap();
    // Refused: segment 1 belongs to shop (a refusal reason label).
    push(&mut admin, &pack("thief", "v1", 1, now), false)
        .await
        .unwrap_err();
    // Older than its 60 s bound: stale.
    push(&mut admin, &pack("old", "v1", 7, now - 3600), false)
        .await
        .unwrap();
    push(&mut admin, &pack("gone", "v1", 9, now), false)
        .await
        .unwrap();
    admin
        .rollback(RollbackRequest {
            pack: "shop".into(),
        })
        .await
        .unwrap();
    admin
        .drop_pack(DropPackRequest {
            pack: "gone".into(),
        })
        .await
        .unwrap();
    admin.status(StatusRequest {}).await.unwrap();
    common::realtime::update(&mut admin, vec![common::realtime::add("bob", 1, 0, 0)])
        .await
        .unwrap();
    common::realtime::forget(&mut admin, &["carol"])
        .await
        .unwrap();
    admin
        .list_segments(ListSegmentsRequest::default())
        .await
        .unwrap();
    let candidate = Candidate {
        id: "li-1".into(),
        all_of: vec![SegmentRef {
            segment_id: 1,
            max_age_seconds: 0,
        }],
        ..Default::default()
    };
    admin
        .put_line_items(PutLineItemsRequest {
            version: "1".into(),
            line_items: vec![candidate.clone()],
        })
        .await
        .unwrap();

    let mut client = server.segments().await;
    let lookup = LookupRequest {
        user_id: "alice".into(),
        ..Default::default()
    };
    client.lookup(lookup.clone()).await.unwrap();
    client.lookup(LookupRequest::default()).await.unwrap_err();
    client
        .batch_lookup(BatchLookupRequest {
            requests: vec![lookup],
        })
        .await
        .unwrap();
    client
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![Impression {
                user_id: "alice".into(),
                cap_keys: vec!["li-1".into()],
                at_unix_seconds: 0,
                impression_id: "imp-1".into(),
            }],
        })
        .await
        .unwrap();
    client
        .decide(DecideRequest {
            user_id: "alice".into(),
            candidates: vec![candidate],
            at_unix_seconds: 0,
            line_item_ids: vec!["li-1".into()],
        })
        .await
        .unwrap();
}

/// (service, method) of every `segd_rpc_requests_total` series whose
/// requests, summed over codes, are still 0.
fn uncalled_methods(text: &str) -> Vec<String> {
    let mut totals: std::collections::BTreeMap<String, f64> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("segd_rpc_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("a sample");
        let method = labels.rsplit_once(",code=").expect("a code label").0;
        *totals.entry(method.to_owned()).or_default() += value.parse::<f64>().unwrap();
    }
    assert!(totals.len() >= 10, "too few methods listed:\n{text}");
    totals
        .into_iter()
        .filter(|(_, total)| *total == 0.0)
        .map(|(method, _)| method)
        .collect()
}

fn promtool_check(text: &str) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_to_lint_after_every_rpc() {
    let data_dir = tempfile::tempdir().unwrap();
    let watch_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.watch.watch_dir = Some(watch_dir.path().to_path_buf());
    settings.freshness.max_pack_age = vec!["old=60".parse::<PackMaxAge>().unwrap()];
    let server = TestServer::start(settings).await;
    serve_every_rpc(&server).await;
    let text = server.scrape_metrics().await;
    server.stop().await;

    assert_eq!(uncalled_methods(&text), Vec::<String>::new());
    for family in [
        "segd_freq_events",
        "segd_overlay_entries 1",
        "segd_forgotten_users 1",
        "segd_watch_loaded_total",
        "segd_overload_shed_requests_total",
        "segd_decide_decisions_total",
        "segd_pack_stale{pack=\"old\"} 1",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let output = promtool_check(&text);
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}):\n{findings}",
        output.status
    );
}

#[test]
fn promtool_flags_what_it_should() {
    // The check is real: the old name of the counter-memory gauge fails it.
    let text = "# HELP segd_freq_counter_bytes Estimated memory.\n\
                # TYPE segd_freq_counter_bytes gauge\n\
                segd_freq_counter_bytes 1\n";
    let output = promtool_check(text);
    assert!(!output.status.success());
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(findings.contains("should not include type"), "{findings}");
}
