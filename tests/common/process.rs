//! The real `segd` binary as a child process, for crash and signal tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tokio_stream::StreamExt;
use tonic::transport::Channel;

use segd::proto::segments_client::SegmentsClient;

pub struct SegdProcess {
    pub child: Child,
    pub query_addr: String,
    pub admin_addr: String,
}

impl SegdProcess {
    /// Starts `segd serve` on ephemeral ports over `data_dir` with `extra`
    /// flags and waits until health reports SERVING.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> SegdProcess {
        Self::start_with_stderr(data_dir, extra, Stdio::inherit()).await
    }

    /// Like [`SegdProcess::start`], with stderr (the log, at `warn`) appended
    /// to `log_path`.
    pub async fn start_logging_to(data_dir: &Path, extra: &[&str], log_path: &Path) -> SegdProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the log file");
        Self::start_with_stderr(data_dir, extra, Stdio::from(log)).await
    }

    async fn start_with_stderr(data_dir: &Path, extra: &[&str], stderr: Stdio) -> SegdProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_segd"))
            .args([
                "serve",
                "--metrics-listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("SEGD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn segd");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines
                .next()
                .expect("segd prints its addresses")
                .expect("read segd stdout");
            // Keep draining stdout so segd never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            line
        })
        .await
        .unwrap();
        // "segd listening: query ADDR admin ADDR"
        let words: Vec<&str> = line.split_whitespace().collect();
        let query_addr = words[3].to_owned();
        let admin_addr = words[5].to_owned();
        let process = SegdProcess {
            child,
            query_addr,
            admin_addr,
        };
        process.wait_serving().await;
        process
    }

    async fn wait_serving(&self) {
        let channel = Channel::from_shared(format!("http://{}", self.query_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to segd");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut updates = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(update) = updates.next().await {
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if update.expect("health update").status == serving {
                return;
            }
        }
        panic!("health stream ended before SERVING");
    }

    pub async fn segments(&self) -> SegmentsClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.query_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        SegmentsClient::new(channel)
    }

    /// The process id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no checkpoint, no goodbye.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL segd");
        self.child.wait().expect("reap segd");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("reap segd")
    }
}

impl Drop for SegdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
