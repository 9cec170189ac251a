//! The Prometheus endpoint of a real server: after lookups, decides,
//! impressions, pushes and refusals, `GET /metrics` (plain TCP, no HTTP client)
//! shows the counters moved: RPC counts by code and latency histograms,
//! per-segment and per-kind matches, decide reasons, pack gauges, the
//! generation, frequency-store figures and push/rollback outcomes.

mod common;

use common::{SimpleSegment, TestServer, config, http_get, metric_value, push, simple_pack};
use segd::proto::{
    BatchLookupRequest, Candidate, DecideRequest, FrequencyCap, Impression, LookupRequest,
    RecordImpressionsRequest, RollbackRequest, SegmentRef, StatusRequest,
};
use segd::settings::MetricsListen;
use tonic::Code;

fn shop_pack(version: &str, built_at: i64) -> Vec<u8> {
    simple_pack(
        "shop",
        version,
        built_at,
        &[
            SimpleSegment {
                id: 1,
                kind: "retargeting",
                members: &["alice", "carol"],
            },
            SimpleSegment {
                id: 2,
                kind: "prospecting",
                members: &["bob"],
            },
            SimpleSegment {
                id: 3,
                kind: "exclusion",
                members: &["alice"],
            },
            SimpleSegment {
                id: 4,
                kind: "",
                members: &["carol"],
            },
        ],
    )
}

fn segment_ref(segment_id: u32) -> SegmentRef {
    SegmentRef {
        segment_id,
        max_age_seconds: 0,
    }
}

fn value(exposition: &str, name: &str, labels: &str) -> f64 {
    metric_value(exposition, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{exposition}"))
}

const LOOKUP: &str = "service=\"segd.v1.Segments\",method=\"Lookup\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let now = segd::unix_now_seconds();
    let mut admin = server.admin().await;
    push(&mut admin, &shop_pack("v1", now), false)
        .await
        .unwrap();
    // A re-push of the served version is a no-op success.
    let unchanged = push(&mut admin, &shop_pack("v1", now), false)
        .await
        .unwrap();
    assert!(unchanged.unchanged);
    // Segment 1 belongs to shop: refused for another pack.
    let thief = simple_pack(
        "thief",
        "v1",
        now,
        &[SimpleSegment {
            id: 1,
            kind: "retargeting",
            members: &["mallory"],
        }],
    );
    let refused = push(&mut admin, &thief, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let no_previous = admin
        .rollback(RollbackRequest {
            pack: "shop".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_previous.code(), Code::FailedPrecondition);

    let mut client = server.segments().await;
    const LOOKUPS: usize = 7;
    for _ in 0..LOOKUPS {
        let reply = client
            .lookup(LookupRequest {
                user_id: "alice".into(),
                segment_ids: vec![1, 2, 3],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.segment_ids, vec![1, 3]);
    }
    let bad = client.lookup(LookupRequest::default()).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let batch = client
        .batch_lookup(BatchLookupRequest {
            requests: vec![
                LookupRequest {
                    user_id: "bob".into(),
                    ..Default::default()
                },
                LookupRequest {
                    user_id: "carol".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.responses[0].segment_ids, vec![2]);
    assert_eq!(batch.responses[1].segment_ids, vec![1, 4]);

    client
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![Impression {
                user_id: "alice".into(),
                cap_keys: vec!["li:capped".into()],
                at_unix_seconds: 0,
                impression_id: "imp-1".into(),
            }],
        })
        .await
        .unwrap();
    let cap = FrequencyCap {
        key: "li:capped".into(),
        limit: 1,
        window_seconds: 3600,
        calendar: 0,
        utc_offset_minutes: 0,
    };
    let decisions = client
        .decide(DecideRequest {
            user_id: "alice".into(),
            candidates: vec![
                Candidate {
                    id: "eligible".into(),
                    all_of: vec![segment_ref(1)],
                    ..Default::default()
                },
                Candidate {
                    id: "excluded".into(),
                    all_of: vec![segment_ref(1)],
                    none_of: vec![segment_ref(3)],
                    ..Default::default()
                },
                Candidate {
                    id: "prospect".into(),
                    all_of: vec![segment_ref(2)],
                    ..Default::default()
                },
                Candidate {
                    id: "capped".into(),
                    all_of: vec![segment_ref(1)],
                    caps: vec![cap],
                    ..Default::default()
                },
            ],
            at_unix_seconds: 0,
            line_item_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<i32> = decisions.decisions.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, vec![1, 3, 2, 4]);
    let generation = decisions.generation;

    let text = server.scrape_metrics().await;

    // RPC counts by code, and latency histograms that saw every request.
    let lookup_ok = value(
        &text,
        "segd_rpc_requests_total",
        &format!("{LOOKUP},code=\"OK\""),
    );
    assert!(lookup_ok >= LOOKUPS as f64, "lookup OK {lookup_ok}");
    assert_eq!(
        value(
            &text,
            "segd_rpc_requests_total",
            &format!("{LOOKUP},code=\"INVALID_ARGUMENT\"")
        ),
        1.0
    );
    assert_eq!(
        value(&text, "segd_rpc_duration_seconds_count", LOOKUP),
        LOOKUPS as f64 + 1.0
    );
    assert_eq!(
        value(
            &text,
            "segd_rpc_duration_seconds_bucket",
            &format!("{LOOKUP},le=\"+Inf\"")
        ),
        LOOKUPS as f64 + 1.0
    );
    assert!(value(&text, "segd_rpc_duration_seconds_sum", LOOKUP) > 0.0);
    for (method, code, expected) in [
        ("BatchLookup", "OK", 1.0),
        ("Decide", "OK", 1.0),
        ("RecordImpressions", "OK", 1.0),
    ] {
        assert_eq!(
            value(
                &text,
                "segd_rpc_requests_total",
                &format!("service=\"segd.v1.Segments\",method=\"{method}\",code=\"{code}\"")
            ),
            expected,
            "{method} {code}"
        );
    }
    let admin_push = "service=\"segd.v1.Admin\",method=\"PushSnapshot\"";
    assert_eq!(
        value(
            &text,
            "segd_rpc_requests_total",
            &format!("{admin_push},code=\"OK\"")
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "segd_rpc_requests_total",
            &format!("{admin_push},code=\"FAILED_PRECONDITION\"")
        ),
        1.0
    );

    // Matches per segment, labelled with pack and kind, and per kind.
    // Segment 1 matched: 7 lookups + carol's batch entry + 2 decide checks
    // (the excluded candidate stops at its none_of).
    let segment_one = "segment_id=\"1\",pack=\"shop\",kind=\"retargeting\"";
    assert_eq!(
        value(&text, "segd_segment_matches_total", segment_one),
        LOOKUPS as f64 + 1.0 + 2.0
    );
    assert_eq!(
        value(
            &text,
            "segd_segment_matches_total",
            "segment_id=\"2\",pack=\"shop\",kind=\"prospecting\""
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "segd_segment_matches_total",
            "segment_id=\"4\",pack=\"shop\",kind=\"other\""
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "segd_segment_kind_matches_total",
            "kind=\"retargeting\""
        ),
        LOOKUPS as f64 + 3.0
    );
    // Segment 3 (exclusion): 7 lookups + the none_of check.
    assert_eq!(
        value(
            &text,
            "segd_segment_kind_matches_total",
            "kind=\"exclusion\""
        ),
        LOOKUPS as f64 + 1.0
    );
    assert_eq!(
        value(
            &text,
            "segd_segment_kind_matches_total",
            "kind=\"prospecting\""
        ),
        1.0
    );

    // Decide outcomes by reason.
    for reason in [
        "ELIGIBLE",
        "NOT_IN_AUDIENCE",
        "EXCLUDED",
        "FREQUENCY_CAPPED",
    ] {
        assert_eq!(
            value(
                &text,
                "segd_decide_decisions_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}"
        );
    }

    // Serving state and pack gauges.
    assert_eq!(value(&text, "segd_generation", ""), generation as f64);
    assert_eq!(
        value(&text, "segd_pack_info", "pack=\"shop\",version=\"v1\""),
        1.0
    );
    assert_eq!(value(&text, "segd_pack_users", "pack=\"shop\""), 3.0);
    assert_eq!(value(&text, "segd_pack_memberships", "pack=\"shop\""), 5.0);
    assert_eq!(value(&text, "segd_pack_stale", "pack=\"shop\""), 0.0);
    assert!(value(&text, "segd_pack_bytes", "pack=\"shop\"") > 0.0);
    assert!(value(&text, "segd_pack_age_seconds", "pack=\"shop\"") >= 0.0);

    // Frequency store.
    assert_eq!(value(&text, "segd_freq_events", ""), 1.0);
    assert_eq!(value(&text, "segd_freq_entries", ""), 1.0);
    assert_eq!(
        value(&text, "segd_freq_recorded_impressions_total", ""),
        1.0
    );
    assert!(metric_value(&text, "segd_freq_fsyncs_total", "").is_some());
    assert!(metric_value(&text, "segd_freq_fsync_seconds_total", "").is_some());
    assert!(metric_value(&text, "segd_freq_log_bytes", "").is_some());

    // Push and rollback outcomes.
    let change = |operation: &str, result: &str, reason: &str| {
        value(
            &text,
            "segd_pack_changes_total",
            &format!("operation=\"{operation}\",result=\"{result}\",reason=\"{reason}\""),
        )
    };
    assert_eq!(change("push", "ok", ""), 1.0);
    assert_eq!(change("push", "unchanged", ""), 1.0);
    assert_eq!(change("push", "refused", "ownership"), 1.0);
    assert_eq!(change("rollback", "refused", "no_previous_version"), 1.0);

    // A new version of the pack carries the match counters on.
    push(&mut admin, &shop_pack("v2", now), false)
        .await
        .unwrap();
    let text = server.scrape_metrics().await;
    assert_eq!(
        value(&text, "segd_segment_matches_total", segment_one),
        LOOKUPS as f64 + 3.0
    );
    assert_eq!(
        value(&text, "segd_pack_info", "pack=\"shop\",version=\"v2\""),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "segd_pack_changes_total",
            "operation=\"push\",result=\"ok\",reason=\"\""
        ),
        Some(2.0)
    );

    // Every sample line is `name{labels} value` or `name value`, after HELP/TYPE.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (_, sample) = line.rsplit_once(' ').expect("a sample value");
        assert!(sample.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_metrics_is_served_and_metrics_can_be_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let address = server.metrics_addr.unwrap();
    let (status, body) = http_get(address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE segd_rpc_requests_total counter"));
    assert!(body.contains("segd_generation 1"));
    assert_eq!(http_get(address, "/nothing").await.0, 404);
    server.stop().await;

    // A call refused by the admin token check is counted too.
    let data_dir = tempfile::tempdir().unwrap();
    let mut guarded = config(data_dir.path());
    guarded.network.admin_token = Some("s3cret".into());
    let server = TestServer::start(guarded).await;
    let mut stranger = server.admin_with_token(None).await;
    let refused = stranger.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let text = server.scrape_metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "segd_rpc_requests_total",
            "service=\"segd.v1.Admin\",method=\"Status\",code=\"UNAUTHENTICATED\""
        ),
        Some(1.0)
    );
    server.stop().await;

    let data_dir = tempfile::tempdir().unwrap();
    let mut off = config(data_dir.path());
    off.network.metrics_listen = "off".parse::<MetricsListen>().unwrap();
    assert_eq!(off.network.metrics_listen, MetricsListen(None));
    let server = TestServer::start(off).await;
    assert!(server.metrics_addr.is_none());
    server.stop().await;
}
