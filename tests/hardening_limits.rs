//! Hardening: numeric request limits compare without overflow. A cap whose
//! `utc_offset_minutes` is `i32::MIN` once passed the ±1080 check (`abs`
//! wraps in release, panics in debug) in `Decide` and `PutLineItems`, and was
//! persisted as a line item.

mod common;

use common::{TestServer, config};
use segd::proto::{
    Calendar, Candidate, DecideRequest, FrequencyCap, PutLineItemsRequest, StatusRequest,
};

fn calendar_cap(utc_offset_minutes: i32) -> FrequencyCap {
    FrequencyCap {
        key: "li:tz".into(),
        limit: 3,
        window_seconds: 0,
        calendar: Calendar::Day as i32,
        utc_offset_minutes,
    }
}

fn candidate(utc_offset_minutes: i32) -> Candidate {
    Candidate {
        id: "li-tz".into(),
        caps: vec![calendar_cap(utc_offset_minutes)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_utc_offsets_are_refused_in_decide_and_put_line_items() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let mut segments = server.segments().await;
    let mut admin = server.admin().await;

    for offset in [i32::MIN, i32::MIN + 1, -1081, 1081, i32::MAX] {
        let refused = segments
            .decide(DecideRequest {
                user_id: "ck:1".into(),
                candidates: vec![candidate(offset)],
                ..Default::default()
            })
            .await
            .expect_err("an offset beyond ±1080 is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("candidates[0].caps[0].utc_offset_minutes"),
            "{refused:?}"
        );

        let refused = admin
            .put_line_items(PutLineItemsRequest {
                version: format!("offset-{offset}"),
                line_items: vec![candidate(offset)],
            })
            .await
            .expect_err("an offset beyond ±1080 is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("line_items[0].caps[0].utc_offset_minutes"),
            "{refused:?}"
        );
    }
    // Nothing was persisted.
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.line_items, status.line_items_version.as_str()),
        (0, "")
    );

    // The bounds themselves are accepted.
    for offset in [-1080, 0, 1080] {
        let decided = segments
            .decide(DecideRequest {
                user_id: "ck:1".into(),
                candidates: vec![candidate(offset)],
                ..Default::default()
            })
            .await
            .expect("an offset within ±1080 is accepted")
            .into_inner();
        assert!(decided.decisions[0].eligible, "{decided:?}");
    }
    server.stop().await;
}

/// The admin port's message limit is a flag, refused like the query port's:
/// `RESOURCE_EXHAUSTED` naming the flag (it was a hidden 16 MiB answering
/// `OUT_OF_RANGE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_message_over_the_flag_is_resource_exhausted() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.admin_max_message_bytes = 64 << 10;
    let server = TestServer::start(settings).await;
    let mut admin = server.admin().await;
    let line_items: Vec<Candidate> = (0..4_000)
        .map(|number| Candidate {
            id: format!("line-item-{number:06}"),
            caps: vec![calendar_cap(0)],
            ..Default::default()
        })
        .collect();
    let refused = admin
        .put_line_items(PutLineItemsRequest {
            version: "big".into(),
            line_items: line_items.clone(),
        })
        .await
        .expect_err("over --admin-max-message-bytes");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("--admin-max-message-bytes"),
        "{refused:?}"
    );
    // Under the limit the same port still answers.
    admin
        .put_line_items(PutLineItemsRequest {
            version: "small".into(),
            line_items: line_items[..10].to_vec(),
        })
        .await
        .expect("under the limit");
    server.stop().await;
}
