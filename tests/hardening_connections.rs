//! Hardening: idle connections cannot exhaust file descriptors.
//!
//! Seen before the fix, with `ulimit -n 1024`: one client holding 1,100 idle
//! TCP connections shut every new client out (`DEADLINE_EXCEEDED`) while the
//! server spun more than a core in its accept loop, logging nothing. Here the
//! real binary runs under `prlimit --nofile=256` and a flood of 400 idle
//! connections is held while a new client must be served.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::SegdProcess;
use segd::proto::LookupRequest;

const OPEN_FILES: u64 = 256;
const FLOOD: usize = 400;

/// CPU seconds (user + system) process `pid` used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Idle TCP connections to `address` that never send a byte.
fn flood(address: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(address).expect("connect"))
        .collect()
}

/// How long a brand-new client takes to get a `Lookup` answered (at most 10 s).
async fn new_client_latency(segd: &SegdProcess) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", segd.query_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|error| format!("connect: {error}"))?;
        segd::proto::segments_client::SegmentsClient::new(channel)
            .lookup(LookupRequest {
                user_id: "ck:1".into(),
                ..Default::default()
            })
            .await
            .map_err(|status| format!("lookup: {status:?}"))
    })
    .await;
    match answer {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

async fn metric(segd: &SegdProcess, name: &str) -> f64 {
    let (_, body) = common::http_get(segd.metrics_addr.parse().unwrap(), "/metrics").await;
    common::metric_value(&body, name, "").unwrap_or_else(|| panic!("{name} in {body}"))
}

async fn flood_is_held_while_a_new_client_is_served(
    extra: &[&str],
    log_path: &Path,
) -> SegdProcess {
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start_with_open_files(data.path(), extra, OPEN_FILES, log_path).await;
    let held = flood(&segd.query_addr, FLOOD);
    let cpu_before = cpu_seconds(segd.pid());
    let latency = new_client_latency(&segd).await;
    let latency =
        latency.unwrap_or_else(|error| panic!("{extra:?}: a new client was shut out: {error}"));
    eprintln!(
        "{extra:?}: new client served in {latency:?} while {FLOOD} idle connections are held"
    );
    assert!(latency < Duration::from_secs(3), "{extra:?}: {latency:?}");
    // Holding the flood costs no CPU: nothing spins.
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(segd.pid()) - cpu_before;
    let wall = window.elapsed().as_secs_f64() + latency.as_secs_f64();
    eprintln!("{extra:?}: {cpu:.2} CPU seconds in {wall:.2} s while the flood is held");
    assert!(cpu < 0.5 * wall, "{extra:?}: {cpu} CPU seconds in {wall} s");
    drop(held);
    segd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_bound_the_longest_idle_makes_room() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let segd = flood_is_held_while_a_new_client_is_served(&[], log.path()).await;
    let max = metric(&segd, "segd_connections_max").await;
    assert_eq!(max, 192.0, "256 open files minus 64 kept for files");
    assert!(metric(&segd, "segd_connections_closed_to_make_room_total").await > 0.0);
    assert!(metric(&segd, "segd_connections_open").await <= max);
    segd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_warns_rarely() {
    let log = tempfile::NamedTempFile::new().unwrap();
    // A bound above the open-files limit: accept itself runs out.
    let segd =
        flood_is_held_while_a_new_client_is_served(&["--max-connections", "5000"], log.path())
            .await;
    assert!(metric(&segd, "segd_accept_out_of_descriptors_total").await > 0.0);
    segd.terminate();
    let log = std::fs::read_to_string(log.path()).unwrap();
    let warnings = log.matches("out of file descriptors").count();
    assert!((1..=3).contains(&warnings), "{warnings} warnings: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_open_streams_are_not() {
    let data = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let segd = SegdProcess::start_with_open_files(
        data.path(),
        &["--idle-connection-timeout-seconds", "1"],
        OPEN_FILES,
        log.path(),
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", segd.query_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the current status");

    let mut idle = flood(&segd.query_addr, 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    for connection in &mut idle {
        connection
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let mut byte = [0u8; 1];
        // Whatever the server sends first (its HTTP/2 settings), it then
        // closes: the read ends with 0 bytes, not a timeout.
        loop {
            match connection.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(error) => panic!("an idle connection stayed open: {error}"),
            }
        }
    }
    // The connection with an open stream is still served, well past the timeout.
    let still_open = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(
        still_open.is_err(),
        "the Watch stream ended: {still_open:?}"
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the connection with a stream open still answers");
    assert!(metric(&segd, "segd_connections_closed_idle_total").await >= 5.0);
    segd.terminate();
}
