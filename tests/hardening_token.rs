//! Hardening: one rule for the admin token, from the command line, the
//! environment or a file. A whitespace-only `--admin-token '   '` was accepted
//! and then authenticated `Bearer    `; the file path already refused it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, config};
use segd::proto::StatusRequest;

/// Runs `segd serve` with `extra` flags and `env` on ephemeral ports and
/// returns (exit success, stderr) once it exits; a server still running after
/// 20 s accepted the flags and fails the test.
fn serve_until_exit(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_segd"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "off", "--data-dir"])
        .arg(data_dir.path())
        .args(extra)
        .env_remove("SEGD_ADMIN_TOKEN")
        .env_remove("SEGD_ADMIN_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn segd");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("poll segd") {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.success(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("segd kept running with {extra:?} {env:?}: the token was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_whitespace_only_token_is_refused_on_the_command_line_in_the_env_and_in_a_file() {
    for token in ["   ", "\t", " \t "] {
        let (success, stderr) = serve_until_exit(&["--admin-token", token], &[]);
        assert!(!success, "{token:?}: {stderr}");
        assert!(
            stderr.contains("--admin-token") && stderr.contains("only whitespace"),
            "{token:?}: {stderr}"
        );
        let (success, stderr) = serve_until_exit(&[], &[("SEGD_ADMIN_TOKEN", token)]);
        assert!(!success, "env {token:?}: {stderr}");
        assert!(
            stderr.contains("only whitespace"),
            "env {token:?}: {stderr}"
        );

        let token_dir = tempfile::tempdir().unwrap();
        let token_path = token_dir.path().join("token");
        std::fs::write(&token_path, format!("{token}\n")).unwrap();
        let (success, stderr) =
            serve_until_exit(&["--admin-token-file", token_path.to_str().unwrap()], &[]);
        assert!(!success, "file {token:?}: {stderr}");
        assert!(
            stderr.contains("only whitespace"),
            "file {token:?}: {stderr}"
        );
    }
    let (success, stderr) = serve_until_exit(&["--admin-token", "a\u{1b}[31m"], &[]);
    assert!(!success, "{stderr}");
    assert!(stderr.contains("printable ASCII"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_token_is_trimmed_like_a_file_token() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.network.admin_token = Some("  s3cret \n".into());
    let server = TestServer::start(settings).await;
    let mut right = server.admin_with_token(Some("s3cret")).await;
    right
        .status(StatusRequest {})
        .await
        .expect("the trimmed token works");
    let mut spaces = server.admin_with_token(Some("   ")).await;
    assert_eq!(
        spaces.status(StatusRequest {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    server.stop().await;
}
