//! `segd.v1.Segments`: the hot path. Each handler validates, loads the serving
//! state once, calls the domain function and maps the answer.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::limits::RequestLimits;
use crate::api::outcomes::DecideCounters;
use crate::api::wire::generated::segments_server::Segments;
use crate::api::wire::{WireDecideRequest, WireDecideResponse, WireLookupRequest};
use crate::decide::{self, CandidateRef};
use crate::freq::{FreqStore, ImpressionSink, NewImpression};
use crate::line_items::LineItemRegistry;
use crate::proto::{
    BatchLookupRequest, BatchLookupResponse, LookupResponse, RecordImpressionsRequest,
    RecordImpressionsResponse,
};
use crate::ready::Ready;
use crate::shard::Shard;
use crate::store::{ServingState, Store};

pub struct SegmentsService {
    store: Arc<Store>,
    /// Set once the frequency store has replayed its log at start-up.
    counters: Ready<Arc<FreqStore>>,
    line_items: Arc<LineItemRegistry>,
    limits: RequestLimits,
    /// Decide outcomes are counted here; RPC counts come from the metrics layer.
    decisions: Arc<DecideCounters>,
    /// Where RecordImpressions sends a batch (the local log or the fleet's
    /// stream); set once the frequency store is open.
    impression_sink: Ready<Arc<dyn ImpressionSink>>,
    /// A recording call's deadline when the client sets none.
    record_timeout: Duration,
    /// This replica's audience shard: users of other shards are refused.
    shard: Shard,
}

impl SegmentsService {
    pub fn new(
        store: Arc<Store>,
        counters: Ready<Arc<FreqStore>>,
        line_items: Arc<LineItemRegistry>,
        limits: RequestLimits,
        decisions: Arc<DecideCounters>,
    ) -> Self {
        Self {
            store,
            counters,
            line_items,
            limits,
            decisions,
            impression_sink: Ready::default(),
            record_timeout: Duration::from_secs(5),
            shard: Shard::UNSHARDED,
        }
    }

    /// Serves only users of `shard` (`--shard I/N`).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// `FAILED_PRECONDITION` naming the user's shard when the user belongs to
    /// another: a misrouted query must be loud, never a silent non-member.
    fn check_shard(&self, field: impl Display, user_id: &str) -> Result<(), Status> {
        if !self.shard.is_sharded() || self.shard.owns(crate::user_fingerprint(user_id)) {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "{field}: {}",
            crate::shard::misrouted_message(user_id, self.shard)
        )))
    }

    /// Records through `sink` (set when the frequency store is open), with
    /// `record_timeout` as the deadline unless the client's is sooner.
    pub fn with_impression_sink(
        mut self,
        sink: Ready<Arc<dyn ImpressionSink>>,
        record_timeout: Duration,
    ) -> Self {
        self.impression_sink = sink;
        self.record_timeout = record_timeout;
        self
    }

    fn counters(&self) -> Result<&Arc<FreqStore>, Status> {
        self.counters.or_unavailable("replaying the frequency log")
    }

    /// `prefix` is formatted only into an error message (never on the happy
    /// path: a `BatchLookup` checks 1,000 of these).
    fn check_lookup(
        &self,
        prefix: impl Display,
        user_id: &str,
        segment_ids: &[u32],
    ) -> Result<(), Status> {
        self.limits
            .check_user_id(format_args!("{prefix}user_id"), user_id)?;
        self.check_shard(format_args!("{prefix}user_id"), user_id)?;
        self.limits.check_count(
            format_args!("{prefix}segment_ids"),
            segment_ids.len(),
            self.limits.max_segment_ids,
        )
    }
}

/// Generation 0 is the empty state before the data directory is loaded:
/// answering from it would report every segment unknown.
fn check_loaded(state: &ServingState) -> Result<(), Status> {
    if state.generation == 0 {
        return Err(Status::unavailable(
            "loading the data directory, not serving yet",
        ));
    }
    Ok(())
}

/// `at_unix_seconds` 0 means the server clock.
fn resolve_at(at_unix_seconds: i64) -> i64 {
    if at_unix_seconds == 0 {
        crate::unix_now_seconds()
    } else {
        at_unix_seconds
    }
}

/// One lookup's answer; `BatchLookup` passes prost's `LookupRequest`s,
/// the unary `Lookup` its wire request, field by field.
fn answer_lookup(
    state: &ServingState,
    user_id: &str,
    segment_ids: &[u32],
    max_age_seconds: u32,
    at_unix_seconds: i64,
) -> LookupResponse {
    let result = state.lookup(
        crate::user_fingerprint(user_id),
        segment_ids,
        max_age_seconds,
        resolve_at(at_unix_seconds),
    );
    LookupResponse {
        segment_ids: result.segment_ids,
        unknown_segment_ids: result.unknown_segment_ids,
        generation: state.generation,
    }
}

#[tonic::async_trait]
impl Segments for SegmentsService {
    async fn lookup(
        &self,
        request: Request<WireLookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let request = request.into_inner();
        self.check_lookup("", request.user_id(), request.segment_ids())?;
        let state = self.store.load();
        check_loaded(&state)?;
        Ok(Response::new(answer_lookup(
            &state,
            request.user_id(),
            request.segment_ids(),
            request.max_age_seconds(),
            request.at_unix_seconds(),
        )))
    }

    async fn batch_lookup(
        &self,
        request: Request<BatchLookupRequest>,
    ) -> Result<Response<BatchLookupResponse>, Status> {
        let request = request.into_inner();
        self.limits.check_count(
            "requests",
            request.requests.len(),
            self.limits.max_batch_lookups,
        )?;
        for (index, lookup) in request.requests.iter().enumerate() {
            self.check_lookup(
                format_args!("requests[{index}]."),
                &lookup.user_id,
                &lookup.segment_ids,
            )?;
        }
        let state = self.store.load();
        check_loaded(&state)?;
        let responses = request
            .requests
            .iter()
            .map(|lookup| {
                answer_lookup(
                    &state,
                    &lookup.user_id,
                    &lookup.segment_ids,
                    lookup.max_age_seconds,
                    lookup.at_unix_seconds,
                )
            })
            .collect();
        Ok(Response::new(BatchLookupResponse {
            responses,
            generation: state.generation,
        }))
    }

    /// The request arrives decoded by `api::wire` (flat, no allocation per
    /// candidate); the answer is encoded with the request's own ids.
    async fn decide(
        &self,
        request: Request<WireDecideRequest>,
    ) -> Result<Response<WireDecideResponse>, Status> {
        let request = request.into_inner();
        self.limits.check_wire_decide(&request)?;
        self.check_shard("user_id", request.user_id())?;
        let counters = self.counters()?;
        let state = self.store.load();
        check_loaded(&state)?;
        let decisions = {
            let registered = self.line_items.load();
            let candidates: Vec<CandidateRef<'_>> = request
                .candidates()
                .map(CandidateRef::View)
                .chain(request.line_item_ids().map(|id| CandidateRef::Registered {
                    id,
                    line_item: registered.get(id),
                }))
                .collect();
            decide::decide_unnamed(
                &state,
                counters,
                crate::user_fingerprint(request.user_id()),
                &candidates,
                resolve_at(request.at_unix_seconds()),
                self.limits.freq_retention_seconds,
            )
        };
        self.decisions.record(&decisions);
        Ok(Response::new(WireDecideResponse::new(
            request,
            decisions,
            state.generation,
        )))
    }

    async fn record_impressions(
        &self,
        request: Request<RecordImpressionsRequest>,
    ) -> Result<Response<RecordImpressionsResponse>, Status> {
        let deadline = super::record_sink::call_deadline(request.metadata(), self.record_timeout);
        let request = request.into_inner();
        self.limits.check_record(&request)?;
        for (index, impression) in request.impressions.iter().enumerate() {
            self.check_shard(
                format_args!("impressions[{index}].user_id"),
                &impression.user_id,
            )?;
        }
        let sink = self
            .impression_sink
            .or_unavailable("replaying the frequency log")?
            .clone();
        let now = crate::unix_now_seconds();
        let impressions: Vec<NewImpression> = request
            .impressions
            .into_iter()
            .map(|impression| NewImpression {
                user_fingerprint: crate::user_fingerprint(&impression.user_id),
                cap_keys: impression.cap_keys,
                at_unix_seconds: if impression.at_unix_seconds == 0 {
                    now
                } else {
                    impression.at_unix_seconds
                },
                impression_id: impression.impression_id,
            })
            .collect();
        // Durable per the fsync policy (or acknowledged by JetStream and
        // applied here, in a fleet) before it resolves.
        let outcome = sink.record(impressions, deadline).await?;
        Ok(Response::new(RecordImpressionsResponse {
            recorded: outcome.recorded,
            duplicates: outcome.duplicates,
        }))
    }
}
