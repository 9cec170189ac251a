//! Sends one generated request to a target and says how it went.
//!
//! The driver only sees `Executor::execute`; the targets (`grpc_target`,
//! `redis_target`) know nothing of each other or of this dispatch, so the
//! module graph has no cycle.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use crate::grpc_target::{self, GrpcClients};
pub use crate::outcome::{Failure, Outcome};
use crate::redis_target::{self, RedisExecutor};
use crate::workload::Request;

/// Cheap to clone: clones share one HTTP/2 connection (or one Redis connection).
#[derive(Clone)]
pub enum Executor {
    /// Boxed: the two tonic clients are several times larger than the Redis side.
    Grpc(Box<GrpcClients>),
    Redis(RedisExecutor),
}

/// One gRPC connection to segd at each of `addrs` (one per shard, in shard order).
pub async fn connect_grpc(addrs: &[String]) -> Result<Executor> {
    Ok(Executor::Grpc(Box::new(grpc_target::connect(addrs).await?)))
}

/// One Redis connection holding the same data set.
pub async fn connect_redis(
    redis_url: &str,
    ttl_by_segment: Arc<HashMap<u32, u32>>,
) -> Result<Executor> {
    Ok(Executor::Redis(
        redis_target::connect(redis_url, ttl_by_segment).await?,
    ))
}

impl Executor {
    pub async fn execute(&mut self, request: Request) -> Result<Outcome, Failure> {
        match self {
            Executor::Grpc(clients) => clients.execute(request).await,
            Executor::Redis(redis) => redis.execute(request).await,
        }
    }
}
