//! Hardening: a push is streamed to disk, checked as it arrives, and pushes
//! run one at a time.
//!
//! Seen before the fix: a valid 120-byte header followed by 1 GiB of zeros
//! was held in memory whole before being refused (VmHWM 1.12 GB), four at
//! once reached 4.29 GB. Here the real binary's VmHWM must not grow with the
//! bytes of a refused push, a stream that is no pack is refused after its
//! first chunk, and a second concurrent push is refused at once.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::process::SegdProcess;
use common::{SimpleSegment, admin_client, forge, simple_pack};
use segd::proto::SnapshotChunk;

const MIB: usize = 1 << 20;

/// Peak resident memory of process `pid`, in bytes.
fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn small_pack(version: &str) -> Vec<u8> {
    simple_pack(
        "crm",
        version,
        segd::unix_now_seconds() - 60,
        &[SimpleSegment {
            id: 1,
            kind: "retargeting",
            members: &["ck:1", "ck:2"],
        }],
    )
}

/// `first`, then `filler_chunks` chunks of 1 MiB zeros made as they are sent;
/// counts the chunks the server pulled.
fn stream_of(
    first: Vec<u8>,
    filler_chunks: u64,
    pulled: Arc<AtomicU64>,
) -> impl tokio_stream::Stream<Item = SnapshotChunk> {
    let first = tokio_stream::once(SnapshotChunk {
        data: first.into(),
        allow_older_version: false,
    });
    let zeros = tokio_stream::iter(0..filler_chunks).map(move |_| {
        pulled.fetch_add(1, Ordering::Relaxed);
        SnapshotChunk {
            data: vec![0; MIB].into(),
            allow_older_version: false,
        }
    });
    tokio_stream::StreamExt::chain(first, zeros)
}

fn uploads_in(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("packs"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_refused_push_does_not_grow_peak_memory() {
    const FILLER_MIB: u64 = 256;
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    common::push(&mut admin, &small_pack("v1"), false)
        .await
        .unwrap();
    let before = vm_hwm_bytes(segd.pid());

    let header = forge::valid_header(&small_pack("v2"));
    let pulled = Arc::new(AtomicU64::new(0));
    let refused = admin
        .push_snapshot(stream_of(header, FILLER_MIB, pulled.clone()))
        .await
        .expect_err("zeros after a header are no pack");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        pulled.load(Ordering::Relaxed),
        FILLER_MIB,
        "the whole stream was sent"
    );

    let rise = vm_hwm_bytes(segd.pid()).saturating_sub(before);
    eprintln!(
        "VmHWM rise for a refused push of {FILLER_MIB} MiB: {:.1} MiB",
        rise as f64 / MIB as f64
    );
    assert!(
        rise < 48 * MIB as u64,
        "VmHWM rose {rise} bytes for a refused push of {FILLER_MIB} MiB"
    );
    assert!(refused.message().contains("footer"), "{refused:?}");
    let left = uploads_in(data.path());
    assert!(left.is_empty(), "the refused upload stayed: {left:?}");
    segd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_no_pack_is_refused_after_its_first_bytes() {
    const FILLER_MIB: u64 = 1_024;
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    for (what, first) in [
        ("bad magic", b"NOTAPACK and then some".to_vec()),
        ("bad header checksum", {
            let mut header = forge::valid_header(&small_pack("v2"));
            let last = header.len() - 1;
            header[last] ^= 1;
            header
        }),
    ] {
        let pulled = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let refused = admin
            .push_snapshot(stream_of(first, FILLER_MIB, pulled.clone()))
            .await
            .expect_err("no pack");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{what}: {refused:?}"
        );
        let pulled = pulled.load(Ordering::Relaxed);
        assert!(
            pulled < 64,
            "{what}: refused only after {pulled} MiB ({:?})",
            started.elapsed()
        );
    }
    segd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_run_one_at_a_time() {
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    let admin_url = format!("http://{}", segd.admin_addr);
    let held = small_pack("v1");
    let (chunks, chunks_received) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
    let chunk = |data: &[u8]| SnapshotChunk {
        data: data.to_vec().into(),
        allow_older_version: false,
    };
    // Less than the header: the server can judge nothing yet.
    chunks.send(chunk(&held[..40])).await.unwrap();
    let slow_push = {
        let admin_url = admin_url.clone();
        tokio::spawn(async move {
            let mut admin = admin_client(&admin_url, None).await;
            let stream = tokio_stream::wrappers::ReceiverStream::new(chunks_received);
            admin
                .push_snapshot(stream)
                .await
                .map(|reply| reply.into_inner())
        })
    };
    // The first push holds the gate once its upload file exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    while uploads_in(data.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first push never started its upload"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut admin = admin_client(&admin_url, None).await;
    let busy = common::push(&mut admin, &small_pack("v2"), false)
        .await
        .expect_err("a second push while one is received");
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("one push at a time"), "{busy:?}");

    chunks.send(chunk(&held[40..])).await.unwrap();
    drop(chunks);
    let first = slow_push.await.unwrap().expect("the held push completes");
    assert_eq!(first.version, "v1");
    let second = common::push(&mut admin, &small_pack("v2"), false)
        .await
        .expect("the retry after it is served");
    assert_eq!(second.version, "v2");
    segd.terminate();
}

/// A pushed file is verified from its staged copy; one whose checksums hold
/// but whose content does not is bad input (`INVALID_ARGUMENT`), not damage
/// of the server's own files (`DATA_LOSS`), and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_pack_that_does_not_verify_is_invalid_argument() {
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    common::push(&mut admin, &small_pack("v1"), false)
        .await
        .unwrap();
    let lying = forge::with_membership_count(&small_pack("v2"), 7);
    let refused = common::push(&mut admin, &lying, false)
        .await
        .expect_err("the segment table does not add up");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("malformed"), "{refused:?}");
    let status = admin
        .status(segd::proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.packs[0].version, "v1");
    assert!(uploads_in(data.path()).is_empty());
    segd.terminate();
}

/// The nice value of each thread of `pid` named `name` (field 19 of
/// `/proc/PID/task/TID/stat`, after the parenthesised name).
fn nice_of_threads(pid: u32, name: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?.path();
            let comm = std::fs::read_to_string(task.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            // Fields from the state (3rd) on: nice is the 19th field.
            after_name.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Seen before the fix (BENCHMARKS.md, "Swaps, third session"): the upload of
/// a 1.2 GB push — every write and the checksum — ran on the tokio workers at
/// the readers' priority, and readers queued behind it. Now, while a push is
/// being received, its bytes go to a `segd-upload` thread at nice +10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_written_by_a_thread_below_the_readers_priority() {
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    let admin_url = format!("http://{}", segd.admin_addr);
    let held = small_pack("v1");
    let (chunks, chunks_received) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
    chunks
        .send(SnapshotChunk {
            data: held[..40].to_vec().into(),
            allow_older_version: false,
        })
        .await
        .unwrap();
    let push = tokio::spawn(async move {
        let mut admin = admin_client(&admin_url, None).await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks_received);
        admin
            .push_snapshot(stream)
            .await
            .map(|reply| reply.into_inner())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    // Polled: the thread names itself before it lowers its priority.
    loop {
        let nice = nice_of_threads(segd.pid(), "segd-upload");
        if nice == [10] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "while a push is received, segd-upload threads at nice {nice:?}, want one at 10"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    chunks
        .send(SnapshotChunk {
            data: held[40..].to_vec().into(),
            allow_older_version: false,
        })
        .await
        .unwrap();
    drop(chunks);
    let pushed = push.await.unwrap().expect("the held push completes");
    assert_eq!(pushed.version, "v1");
    segd.terminate();
}

/// Seen before the fix (BENCHMARKS.md, "Ninth session"): receiving a push —
/// socket reads, HTTP/2 framing, the decode copy — ran on the query port's
/// `segd-worker` threads at the readers' priority. Now the admin port has
/// threads of its own at nice `--admin-nice` (default 10), and the query
/// workers keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_runs_below_the_readers_priority() {
    // segd inherits this process's nice value, and only ever raises it.
    let inherited = i64::from(rustix::process::getpriority_process(None).unwrap());
    for (args, nice) in [(&[][..], 10), (&["--admin-nice", "3"][..], 3)] {
        let want = nice.max(inherited);
        let data = tempfile::tempdir().unwrap();
        let segd = SegdProcess::start(data.path(), args).await;
        // A push is served on the admin threads, at their priority.
        let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
        let pushed = admin
            .push_snapshot(stream_of(small_pack("v1"), 0, Arc::default()))
            .await
            .expect("a push over the admin port")
            .into_inner();
        assert_eq!(pushed.version, "v1");
        let admin_threads = nice_of_threads(segd.pid(), "segd-admin");
        assert!(!admin_threads.is_empty(), "no segd-admin threads");
        assert!(
            admin_threads.iter().all(|&thread_nice| thread_nice == want),
            "{args:?}: segd-admin threads at nice {admin_threads:?}, want all at {want}"
        );
        let query_threads = nice_of_threads(segd.pid(), "segd-worker");
        assert!(!query_threads.is_empty(), "no segd-worker threads");
        assert!(
            query_threads
                .iter()
                .all(|&thread_nice| thread_nice == inherited),
            "segd-worker threads at nice {query_threads:?}, want all at {inherited}"
        );
        segd.terminate();
    }
}
