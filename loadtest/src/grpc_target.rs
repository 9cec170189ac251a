//! segd over gRPC: one HTTP/2 connection per executor, and each request sent
//! on it. Replies are checked just enough to catch a server answering the
//! wrong shape.

use std::time::Duration;

use anyhow::{Context, Result};
use segd::proto::segments_client::SegmentsClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::outcome::{Failure, Outcome, bad_reply};
use crate::workload::Request;

/// Both clients share one channel, i.e. one HTTP/2 connection.
#[derive(Clone)]
pub struct GrpcClients {
    segments: SegmentsClient<Channel>,
    health: HealthClient<Channel>,
}

/// Opens one HTTP/2 connection: each call makes a separate channel, so
/// `--connections C` really is C TCP connections.
pub async fn connect(addr: &str) -> Result<GrpcClients> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("--addr {addr} is not a valid URL"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // Larger windows: batch replies are big and must not stall on flow control.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to --addr {addr}"))?;
    Ok(GrpcClients {
        segments: SegmentsClient::new(channel.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
        health: HealthClient::new(channel),
    })
}

impl GrpcClients {
    pub async fn execute(&mut self, request: Request) -> Result<Outcome, Failure> {
        let segments = &mut self.segments;
        let health = &mut self.health;
        match request {
            Request::Lookup(lookup) => {
                let reply = segments.lookup(lookup).await?.into_inner();
                Ok(Outcome {
                    generation: Some(reply.generation),
                })
            }
            Request::Batch(batch) => {
                let asked = batch.requests.len();
                let reply = segments.batch_lookup(batch).await?.into_inner();
                if reply.responses.len() != asked {
                    return Err(bad_reply(format!(
                        "batch of {asked} answered with {} responses",
                        reply.responses.len()
                    )));
                }
                Ok(Outcome {
                    generation: Some(reply.generation),
                })
            }
            Request::Decide(decide) => {
                let asked = decide.candidates.len() + decide.line_item_ids.len();
                let reply = segments.decide(decide).await?.into_inner();
                if reply.decisions.len() != asked {
                    return Err(bad_reply(format!(
                        "{asked} candidates answered with {} decisions",
                        reply.decisions.len()
                    )));
                }
                Ok(Outcome {
                    generation: Some(reply.generation),
                })
            }
            Request::Record(record) => {
                let asked = record.impressions.len() as u32;
                let reply = segments.record_impressions(record).await?.into_inner();
                if reply.recorded + reply.duplicates != asked {
                    return Err(bad_reply(format!(
                        "{asked} impressions answered recorded {} duplicates {}",
                        reply.recorded, reply.duplicates
                    )));
                }
                Ok(Outcome::default())
            }
            Request::Health => {
                let reply = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?
                    .into_inner();
                if reply.status != ServingStatus::Serving as i32 {
                    return Err(Failure {
                        code: "NotServing".to_owned(),
                        message: format!("health status {}", reply.status),
                    });
                }
                Ok(Outcome::default())
            }
        }
    }
}
