//! The Redis baseline: loading the data set, and running the same requests there.
//!
//! Data layout (see README): per user a sorted set `m:{user}` whose members are
//! segment ids scored by last-seen time; per (user, cap key) a sorted set
//! `f:{user}:{key}` whose members are impression ids scored by impression time.
//! Recency and TTLs are compared client-side, after one round trip, so Redis does
//! the same lookups segd does and the client does the (cheap) arithmetic.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use segd::proto::{Calendar, LookupRequest};

use crate::cli::RedisLoadArgs;
use crate::outcome::{Failure, Outcome};
use crate::workload::{DecideDraw, Request};

const DAY_SECONDS: i64 = 86_400;

impl From<redis::RedisError> for Failure {
    fn from(error: redis::RedisError) -> Failure {
        Failure {
            code: format!("redis:{:?}", error.kind()),
            message: error.to_string(),
        }
    }
}

/// Opens one multiplexed connection; clones pipeline over it.
pub async fn connect(
    redis_url: &str,
    ttl_by_segment: Arc<HashMap<u32, u32>>,
) -> Result<RedisExecutor> {
    let connection = open(redis_url).await?;
    Ok(RedisExecutor {
        connection,
        ttl_by_segment,
    })
}

async fn open(redis_url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(redis_url)
        .with_context(|| format!("--redis-url {redis_url} is not a valid Redis URL"))?;
    // No response timeout (redis-rs defaults to 500 ms): a slow reply is a
    // latency to measure, not an error, and FLUSHDB of millions of keys is slow.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to --redis-url {redis_url}"))
}

/// `INFO memory` `used_memory`, in bytes.
pub async fn used_memory_bytes(redis_url: &str) -> Result<u64> {
    let mut connection = open(redis_url).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .context("redis INFO memory")?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .context("redis INFO memory has no used_memory line")
}

#[derive(Clone)]
pub struct RedisExecutor {
    connection: MultiplexedConnection,
    /// Segment TTLs, applied client-side as segd applies them server-side.
    ttl_by_segment: Arc<HashMap<u32, u32>>,
}

/// Whether a member last seen at `last_seen` counts at `at`: the same rule as segd
/// (a future last-seen is age 0; the segment TTL and the lookback both bound age).
fn counts(at: i64, last_seen: f64, max_age_seconds: u32, ttl_seconds: u32) -> bool {
    let age_seconds = (at - last_seen as i64).max(0);
    (max_age_seconds == 0 || age_seconds <= i64::from(max_age_seconds))
        && (ttl_seconds == 0 || age_seconds <= i64::from(ttl_seconds))
}

fn membership_key(user_id: &str) -> String {
    format!("m:{user_id}")
}

fn frequency_key(user_id: &str, cap_key: &str) -> String {
    format!("f:{user_id}:{cap_key}")
}

impl RedisExecutor {
    fn ttl(&self, segment_id: u32) -> u32 {
        self.ttl_by_segment.get(&segment_id).copied().unwrap_or(0)
    }

    pub async fn execute(&mut self, request: Request) -> Result<Outcome, Failure> {
        let at = segd::unix_now_seconds();
        match request {
            Request::Lookup(lookup) if lookup.segment_ids.is_empty() => {
                self.lookup_all(&lookup, at).await
            }
            Request::Lookup(lookup) => {
                let scores: Vec<Option<f64>> =
                    zmscore(&lookup).query_async(&mut self.connection).await?;
                let _matches = self.matches(&lookup, &scores, at);
                Ok(Outcome::default())
            }
            Request::Batch(batch) => {
                let mut pipeline = redis::pipe();
                for lookup in &batch.requests {
                    pipeline.add_command(zmscore(lookup));
                }
                let replies: Vec<Vec<Option<f64>>> =
                    pipeline.query_async(&mut self.connection).await?;
                for (lookup, scores) in batch.requests.iter().zip(&replies) {
                    let _matches = self.matches(lookup, scores, at);
                }
                Ok(Outcome::default())
            }
            Request::Decide(decide) => self.decide(&decide, at).await,
            Request::Record(record) => {
                let mut pipeline = redis::pipe();
                for impression in &record.impressions {
                    let impression_at = if impression.at_unix_seconds == 0 {
                        at
                    } else {
                        impression.at_unix_seconds
                    };
                    for cap_key in &impression.cap_keys {
                        pipeline
                            .cmd("ZADD")
                            .arg(frequency_key(&impression.user_id, cap_key))
                            .arg(impression_at)
                            .arg(&impression.impression_id)
                            .ignore();
                    }
                }
                pipeline.query_async::<()>(&mut self.connection).await?;
                Ok(Outcome::default())
            }
            Request::Health => {
                redis::cmd("PING")
                    .query_async::<String>(&mut self.connection)
                    .await?;
                Ok(Outcome::default())
            }
        }
    }

    fn matches(&self, lookup: &LookupRequest, scores: &[Option<f64>], at: i64) -> usize {
        lookup
            .segment_ids
            .iter()
            .zip(scores)
            .filter(|(segment_id, score)| {
                score.is_some_and(|last_seen| {
                    counts(
                        at,
                        last_seen,
                        lookup.max_age_seconds,
                        self.ttl(**segment_id),
                    )
                })
            })
            .count()
    }

    /// Every segment of the user: the whole sorted set, filtered client-side.
    async fn lookup_all(&mut self, lookup: &LookupRequest, at: i64) -> Result<Outcome, Failure> {
        let members: Vec<(u32, f64)> = redis::cmd("ZRANGE")
            .arg(membership_key(&lookup.user_id))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.connection)
            .await?;
        let _matches = members
            .iter()
            .filter(|(segment_id, last_seen)| {
                counts(
                    at,
                    *last_seen,
                    lookup.max_age_seconds,
                    self.ttl(*segment_id),
                )
            })
            .count();
        Ok(Outcome::default())
    }

    /// One ZMSCORE of every referenced segment plus a ZCOUNT per distinct cap key,
    /// in one pipeline (one round trip), then segd's decision rules client-side.
    async fn decide(&mut self, decide: &DecideDraw, at: i64) -> Result<Outcome, Failure> {
        let mut segment_ids: Vec<u32> = decide
            .candidates()
            .flat_map(|candidate| {
                candidate
                    .all_of
                    .iter()
                    .chain(&candidate.any_of)
                    .chain(&candidate.none_of)
            })
            .map(|segment_ref| segment_ref.segment_id)
            .collect();
        segment_ids.sort_unstable();
        segment_ids.dedup();
        let mut cap_windows: Vec<(&str, String)> = Vec::new();
        for cap in decide.candidates().flat_map(|candidate| &candidate.caps) {
            if cap_windows.iter().any(|(key, _)| *key == cap.key) {
                continue;
            }
            let day_start =
                at - (at + i64::from(cap.utc_offset_minutes) * 60).rem_euclid(DAY_SECONDS);
            // Rolling windows exclude their start (`at - window < t`), calendar ones include it.
            let minimum = match Calendar::try_from(cap.calendar) {
                Ok(Calendar::Day) => day_start.to_string(),
                Ok(Calendar::Rolling) if cap.window_seconds > 0 => {
                    format!("({}", at - i64::from(cap.window_seconds))
                }
                // Weeks and months are not generated; count everything retained.
                _ => "-inf".to_owned(),
            };
            cap_windows.push((cap.key.as_str(), minimum));
        }
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("ZMSCORE")
            .arg(membership_key(&decide.user_id))
            .arg(&segment_ids);
        for (key, minimum) in &cap_windows {
            pipeline
                .cmd("ZCOUNT")
                .arg(frequency_key(&decide.user_id, key))
                .arg(minimum)
                .arg("+inf");
        }
        let replies: Vec<redis::Value> = pipeline.query_async(&mut self.connection).await?;
        let mut replies = replies.into_iter();
        let scores: Vec<Option<f64>> = match replies.next() {
            Some(value) => redis::from_redis_value(value).map_err(|error| Failure {
                code: "redis:BadReply".to_owned(),
                message: error.to_string(),
            })?,
            None => Vec::new(),
        };
        let last_seen_by_segment: HashMap<u32, f64> = segment_ids
            .iter()
            .zip(&scores)
            .filter_map(|(segment_id, score)| score.map(|last_seen| (*segment_id, last_seen)))
            .collect();
        let mut counts_by_key: HashMap<&str, u64> = HashMap::new();
        for ((key, _), value) in cap_windows.iter().zip(replies) {
            let count: u64 = redis::from_redis_value(value).map_err(|error| Failure {
                code: "redis:BadReply".to_owned(),
                message: error.to_string(),
            })?;
            counts_by_key.insert(key, count);
        }
        let is_member = |segment_ref: &segd::proto::SegmentRef| {
            last_seen_by_segment
                .get(&segment_ref.segment_id)
                .is_some_and(|last_seen| {
                    counts(
                        at,
                        *last_seen,
                        segment_ref.max_age_seconds,
                        self.ttl(segment_ref.segment_id),
                    )
                })
        };
        let _eligible = decide
            .candidates()
            .filter(|candidate| {
                !candidate.none_of.iter().any(is_member)
                    && candidate.all_of.iter().all(is_member)
                    && (candidate.any_of.is_empty() || candidate.any_of.iter().any(is_member))
                    && candidate.caps.iter().all(|cap| {
                        counts_by_key.get(cap.key.as_str()).copied().unwrap_or(0)
                            < u64::from(cap.limit)
                    })
            })
            .count();
        Ok(Outcome::default())
    }
}

fn zmscore(lookup: &LookupRequest) -> redis::Cmd {
    let mut command = redis::cmd("ZMSCORE");
    command
        .arg(membership_key(&lookup.user_id))
        .arg(&lookup.segment_ids);
    command
}

const PIPELINES_IN_FLIGHT: usize = 4;

async fn finish_one(in_flight: &mut tokio::task::JoinSet<redis::RedisResult<()>>) -> Result<()> {
    match in_flight.join_next().await {
        Some(joined) => joined
            .context("redis pipeline task panicked")?
            .context("redis pipeline of ZADD"),
        None => Ok(()),
    }
}

/// One `user_id<TAB>segment_id[<TAB>last_seen]` line of memberships.tsv;
/// `None` for a blank line or a comment. A missing `last_seen` is now.
fn parse_membership_line<'line>(
    line: &'line str,
    path: &std::path::Path,
    line_number: usize,
) -> Result<Option<(&'line str, u32, i64)>> {
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields = line.split('\t');
    let (Some(user_id), Some(segment_id)) = (fields.next(), fields.next()) else {
        bail!(
            "{}:{line_number}: expected user_id<TAB>segment_id[<TAB>last_seen]",
            path.display()
        );
    };
    let segment_id: u32 = segment_id
        .parse()
        .with_context(|| format!("{}:{line_number}: segment id is not a u32", path.display()))?;
    let last_seen: i64 = match fields.next() {
        Some(text) => text.parse().with_context(|| {
            format!(
                "{}:{line_number}: last_seen is not an integer",
                path.display()
            )
        })?,
        None => segd::unix_now_seconds(),
    };
    Ok(Some((user_id, segment_id, last_seen)))
}

/// `loadtest redis-load`: `ZADD m:{user} last_seen segment [last_seen segment ...]`
/// per run of adjacent lines of one user, pipelined, then `INFO memory`.
pub async fn load(args: &RedisLoadArgs) -> Result<()> {
    if args.pipeline == 0 {
        bail!("--pipeline must be at least 1");
    }
    let path = args.data.join("memberships.tsv");
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening {} (from --data)", path.display()))?;
    let mut connection = open(&args.redis_url).await?;
    if args.flush {
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut connection)
            .await
            .context("redis FLUSHDB")?;
    }
    let reader = BufReader::with_capacity(4 << 20, file);
    let started = Instant::now();
    let mut pipeline = redis::pipe();
    let mut queued = 0usize;
    let mut loaded: u64 = 0;
    // A few pipelines in flight: parsing the next batch overlaps Redis applying
    // the previous one, instead of alternating idle client and idle server.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut current_user = String::new();
    let mut current_command: Option<redis::Cmd> = None;
    for (index, line) in reader.lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("reading {}:{line_number}", path.display()))?;
        let Some((user_id, segment_id, last_seen)) =
            parse_membership_line(&line, &path, line_number)?
        else {
            continue;
        };
        // Adjacent lines of one user (gen writes user-major) become one ZADD
        // with several score-member pairs: what a real loader would send.
        if user_id != current_user {
            if let Some(command) = current_command.take() {
                pipeline.add_command(command).ignore();
            }
            current_user.clear();
            current_user.push_str(user_id);
            let mut command = redis::cmd("ZADD");
            command.arg(membership_key(user_id));
            current_command = Some(command);
        }
        if let Some(command) = current_command.as_mut() {
            command.arg(last_seen).arg(segment_id);
        }
        queued += 1;
        loaded += 1;
        if queued >= args.pipeline {
            while in_flight.len() >= PIPELINES_IN_FLIGHT {
                finish_one(&mut in_flight).await?;
            }
            let full = std::mem::replace(&mut pipeline, redis::pipe());
            let mut pipeline_connection = connection.clone();
            in_flight.spawn(async move { full.query_async::<()>(&mut pipeline_connection).await });
            queued = 0;
        }
        if loaded.is_multiple_of(5_000_000) {
            eprintln!(
                "redis-load: {:.0} M memberships, {:.2} M/s",
                loaded as f64 / 1e6,
                loaded as f64 / started.elapsed().as_secs_f64() / 1e6
            );
        }
    }
    if let Some(command) = current_command.take() {
        pipeline.add_command(command).ignore();
    }
    if !pipeline.is_empty() {
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .context("redis pipeline of ZADD")?;
    }
    while !in_flight.is_empty() {
        finish_one(&mut in_flight).await?;
    }
    let elapsed_seconds = started.elapsed().as_secs_f64();
    let used_memory = used_memory_bytes(&args.redis_url).await?;
    println!(
        "redis-load: {loaded} memberships in {elapsed_seconds:.1} s ({:.2} M/s); used_memory {used_memory} bytes ({:.1} MiB)",
        loaded as f64 / elapsed_seconds.max(1e-9) / 1e6,
        used_memory as f64 / (1 << 20) as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn recency_rule_matches_segd() {
        let at = 1_000_000;
        assert!(
            counts(at, (at - 100) as f64, 100, 0),
            "age equal to max_age counts"
        );
        assert!(!counts(at, (at - 101) as f64, 100, 0));
        assert!(
            counts(at, (at + 50) as f64, 1, 0),
            "a future last-seen is age 0"
        );
        assert!(counts(at, 0.0, 0, 0), "0 = any age, no TTL");
        assert!(
            !counts(at, (at - 61) as f64, 0, 60),
            "the TTL bounds age too"
        );
    }
}
