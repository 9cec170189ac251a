//! Hardening: `segctl` exits quietly when its reader goes away
//! (`segctl segments | head`); it panicked with "failed printing to stdout:
//! Broken pipe".

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::admin_client;
use common::process::SegdProcess;
use common::{SimpleSegment, simple_pack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_segctl_quietly() {
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    // Enough segments that the listing overflows any pipe buffer.
    let ids: Vec<u32> = (1..=5_000).collect();
    let segments: Vec<SimpleSegment<'_>> = ids
        .iter()
        .map(|&id| SimpleSegment {
            id,
            kind: "retargeting",
            members: &["ck:1"],
        })
        .collect();
    let pack = simple_pack("crm", "v1", segd::unix_now_seconds(), &segments);
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    common::push(&mut admin, &pack, false).await.unwrap();

    let admin_url = format!("http://{}", segd.admin_addr);
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_segctl"))
            .args(["segments", "--admin-addr", &admin_url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run segctl");
        // Like `| head -1`: one line, then the reader goes away.
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first_line)
            .unwrap();
        assert!(!first_line.is_empty());
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.is_empty(), "segctl said: {stderr}");
    segd.terminate();
}
