//! A bare tonic server serving only `grpc.health.v1.Health`: the floor any gRPC
//! server on this machine can reach, and a target for trying `loadtest run
//! --workload health` without segd. Usage: `health_server [ADDR]`
//! (default 127.0.0.1:50061).

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50061".to_owned());
    let addr = addr
        .parse()
        .with_context(|| format!("{addr} is not a socket address"))?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // An empty service name is what `loadtest run --workload health` checks.
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eprintln!("health server on {addr}");
    // TCP_NODELAY: without it, replies spanning two segments wait ~40 ms on
    // the client's delayed ACK.
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .serve(addr)
        .await?;
    Ok(())
}
