//! Hardening: pack names, versions, segment names and kinds follow one rule
//! (`segd::pack::names`) on build and on push, and nothing from a client
//! reaches the log unescaped.
//!
//! Seen before the fix: a pack whose version was `"v1\n\x1b[31mred"`
//! (checksums recomputed) was accepted, and stderr showed a forged line plus a
//! raw terminal escape; `segctl build` accepted pack names (65 bytes,
//! `x.previous`) that every push then refused.

mod common;

use std::process::Command;

use common::process::SegdProcess;
use common::{SimpleSegment, admin_client, forge, simple_pack};
use segd::proto::StatusRequest;

const FORGED_VERSION: &str = "v1\n\u{1b}[31mred";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_control_characters_is_refused_and_logged_escaped() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("segd.log");
    let segd = SegdProcess::start_logging_to(&data.path().join("data"), &[], &log_path).await;
    let placeholder = "v1_xxxxxxxx";
    let honest = simple_pack(
        "crm",
        placeholder,
        segd::unix_now_seconds(),
        &[SimpleSegment {
            id: 1,
            kind: "retargeting",
            members: &["ck:1"],
        }],
    );
    let forged = forge::with_header_string(&honest, placeholder, FORGED_VERSION);
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    let refused = common::push(&mut admin, &forged, false)
        .await
        .expect_err("a control character in the version is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("control character"),
        "{refused:?}"
    );
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.packs.is_empty(), "{status:?}");
    segd.terminate();

    let log = std::fs::read(&log_path).unwrap();
    assert!(!log.contains(&0x1b), "a raw escape reached the log");
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.lines()
            .any(|line| line.starts_with("\u{1b}[31mred") || line.starts_with("[31mred")),
        "a forged line in the log: {log}"
    );
    assert!(log.contains("pack refused"), "the refusal is logged: {log}");
}

/// Runs `segctl build` over a one-line input and `segments` definitions.
fn segctl_build(pack: &str, version: &str, segments: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.tsv"), "ck:1\t1\n").unwrap();
    std::fs::write(dir.path().join("segments.tsv"), segments).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["build", "--pack", pack, "--version", version])
        .arg("--input")
        .arg(dir.path().join("input.tsv"))
        .arg("--segments")
        .arg(dir.path().join("segments.tsv"))
        .arg("--output")
        .arg(dir.path().join("out.segpack"))
        .output()
        .expect("run segctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn segctl_build_refuses_what_a_push_would_refuse() {
    let (built, stderr) = segctl_build("crm", "v1", "1\tcart\tretargeting\n");
    assert!(built, "{stderr}");
    for (pack, version, segments, expected) in [
        ("crm", FORGED_VERSION, "1\tcart\n", "control character"),
        ("crm", "v1", "1\tca\u{1b}rt\n", "control character"),
        (
            "crm",
            "v1",
            "1\tcart\tretarget\u{7}ing\n",
            "control character",
        ),
        (&"x".repeat(65), "v1", "1\tcart\n", "invalid pack name"),
        ("crm.previous", "v1", "1\tcart\n", "invalid pack name"),
        ("crm.rollback", "v1", "1\tcart\n", "invalid pack name"),
    ] {
        let (built, stderr) = segctl_build(pack, version, segments);
        assert!(!built, "{pack:?} {version:?} {segments:?} was built");
        assert!(
            stderr.contains(expected),
            "{pack:?} {version:?} {segments:?}: {stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "a raw escape in the error: {stderr}"
        );
    }
}
