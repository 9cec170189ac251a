//! segd over gRPC: one HTTP/2 connection per executor and shard, and each
//! request sent on the connection of its user's shard (`--shard-addrs`,
//! routed by `segd::shard::shard_of_user`, the function the servers check).
//! Replies are checked just enough to catch a server answering the wrong
//! shape: `Lookup` and `Decide` go through the generator's own codec
//! ([`crate::grpc_wire`]), which sends pre-built bytes and reads only that shape.

use std::time::Duration;

use anyhow::{Context, Result};
use prost::Message;
use prost::bytes::Bytes;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{BatchLookupRequest, RecordImpressionsRequest};
use tokio::task::JoinSet;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::grpc_wire::{RawCodec, ReplyShape};
use crate::outcome::{Failure, Outcome, bad_reply};
use crate::workload::Request;

const LOOKUP: &str = "/segd.v1.Segments/Lookup";
const DECIDE: &str = "/segd.v1.Segments/Decide";

/// One segments client per shard (index = shard), and a raw client on the same
/// connection for the calls sent as bytes; health asks shard 0.
#[derive(Clone)]
pub struct GrpcClients {
    shards: Vec<SegmentsClient<Channel>>,
    raw: Vec<Grpc<Channel>>,
    health: HealthClient<Channel>,
}

/// Opens one HTTP/2 connection per address: each call makes separate
/// channels, so `--connections C` really is C TCP connections per shard.
pub async fn connect(addrs: &[String]) -> Result<GrpcClients> {
    let mut shards = Vec::with_capacity(addrs.len());
    let mut raw = Vec::with_capacity(addrs.len());
    let mut health = None;
    for addr in addrs {
        let channel = connect_one(addr).await?;
        health.get_or_insert_with(|| HealthClient::new(channel.clone()));
        raw.push(Grpc::new(channel.clone()).max_decoding_message_size(256 << 20));
        shards.push(
            SegmentsClient::new(channel)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        );
    }
    let health = health.context("no segd address given")?;
    Ok(GrpcClients {
        shards,
        raw,
        health,
    })
}

async fn connect_one(addr: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("address {addr} is not a valid URL"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // Larger windows: batch replies are big and must not stall on flow control.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20));
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

impl GrpcClients {
    fn shard_of(&self, user_id: &str) -> usize {
        segd::shard::shard_of_user(user_id, self.shards.len() as u32) as usize
    }

    pub async fn execute(&mut self, request: Request) -> Result<Outcome, Failure> {
        match request {
            Request::Lookup(lookup) => {
                let shard = self.shard_of(&lookup.user_id);
                let body = Bytes::from(lookup.encode_to_vec());
                let reply = self.call(shard, LOOKUP, body, RawCodec::LOOKUP).await?;
                Ok(Outcome {
                    generation: Some(reply.generation),
                })
            }
            Request::Batch(batch) => self.batch(batch).await,
            Request::Decide(decide) => {
                let asked = decide.asked();
                let shard = self.shard_of(&decide.user_id);
                let reply = self
                    .call(shard, DECIDE, decide.encode(), RawCodec::DECIDE)
                    .await?;
                if reply.items as usize != asked {
                    return Err(bad_reply(format!(
                        "{asked} candidates answered with {} decisions",
                        reply.items
                    )));
                }
                Ok(Outcome {
                    generation: Some(reply.generation),
                })
            }
            Request::Record(record) => self.record(record).await,
            Request::Health => {
                let reply = self
                    .health
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

    /// A unary call of `path` with an encoded request, as the generated client
    /// makes it, on shard `shard`'s connection.
    async fn call(
        &mut self,
        shard: usize,
        path: &'static str,
        body: Bytes,
        codec: RawCodec,
    ) -> Result<ReplyShape, Failure> {
        let client = &mut self.raw[shard];
        client
            .ready()
            .await
            // As the generated clients report it.
            .map_err(|error| tonic::Status::unknown(format!("Service was not ready: {error}")))?;
        let reply = client
            .unary(
                tonic::Request::new(body),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(reply.into_inner())
    }

    /// One BatchLookup per shard with users in the batch, sent at once.
    async fn batch(&mut self, batch: BatchLookupRequest) -> Result<Outcome, Failure> {
        let mut parts = vec![Vec::new(); self.shards.len()];
        for lookup in batch.requests {
            parts[self.shard_of(&lookup.user_id)].push(lookup);
        }
        let mut calls = JoinSet::new();
        for (shard, requests) in parts.into_iter().enumerate() {
            if requests.is_empty() {
                continue;
            }
            let mut client = self.shards[shard].clone();
            calls.spawn(async move {
                let asked = requests.len();
                let reply = client
                    .batch_lookup(BatchLookupRequest { requests })
                    .await?
                    .into_inner();
                if reply.responses.len() != asked {
                    return Err(bad_reply(format!(
                        "batch of {asked} answered with {} responses",
                        reply.responses.len()
                    )));
                }
                Ok(reply.generation)
            });
        }
        let mut generation = None;
        while let Some(joined) = calls.join_next().await {
            generation = Some(joined.map_err(|error| bad_reply(error.to_string()))??);
        }
        Ok(Outcome { generation })
    }

    /// One RecordImpressions per shard with users in the batch, sent at once.
    async fn record(&mut self, record: RecordImpressionsRequest) -> Result<Outcome, Failure> {
        let mut parts = vec![Vec::new(); self.shards.len()];
        for impression in record.impressions {
            parts[self.shard_of(&impression.user_id)].push(impression);
        }
        let mut calls = JoinSet::new();
        for (shard, impressions) in parts.into_iter().enumerate() {
            if impressions.is_empty() {
                continue;
            }
            let mut client = self.shards[shard].clone();
            calls.spawn(async move {
                let asked = impressions.len() as u32;
                let reply = client
                    .record_impressions(RecordImpressionsRequest { impressions })
                    .await?
                    .into_inner();
                if reply.recorded + reply.duplicates != asked {
                    return Err(bad_reply(format!(
                        "{asked} impressions answered recorded {} duplicates {}",
                        reply.recorded, reply.duplicates
                    )));
                }
                Ok(())
            });
        }
        while let Some(joined) = calls.join_next().await {
            joined.map_err(|error| bad_reply(error.to_string()))??;
        }
        Ok(Outcome::default())
    }
}
