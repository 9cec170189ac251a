//! `segd.v1.Admin`: pushes, status, rollback, drop, real-time updates and
//! forgets. Every call has passed the
//! bearer-token interceptor (`auth`). Catalog work runs on blocking threads.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status, Streaming};

use crate::api::RequestLimits;
use crate::api::outcomes::{PackChange, PackChanges, Refusal};
use crate::api::push::{self, PushGate, PushLimits};
use crate::fleet::pack_sync::PackSync;
use crate::line_items::LineItemRegistry;
use crate::proto::admin_server::Admin;
use crate::proto::{
    DropPackRequest, DropPackResponse, ListSegmentsRequest, ListSegmentsResponse, PackStatus,
    PushSnapshotResponse, RollbackRequest, RollbackResponse, SegmentInfo, SnapshotChunk,
    StatusRequest, StatusResponse,
};
use crate::proto::{
    ForgetUsersRequest, ForgetUsersResponse, UpdateMembersRequest, UpdateMembersResponse,
};
use crate::proto::{PutLineItemsRequest, PutLineItemsResponse};
use crate::ready::Ready;
use crate::realtime::RealtimeWrites;
use crate::store::catalog::Catalog;

pub struct AdminService {
    catalog: Arc<Catalog>,
    line_items: Arc<LineItemRegistry>,
    limits: RequestLimits,
    push_limits: PushLimits,
    /// One push at a time (see `push`).
    push_gate: PushGate,
    started_at_unix_seconds: i64,
    status_extras: Arc<dyn StatusExtras>,
    /// Push, rollback and drop outcomes are counted here.
    changes: Arc<PackChanges>,
    /// This replica's audience shard, reported in `Status`.
    shard: crate::shard::Shard,
    /// Fleet mode: pack and line-item changes go through the fleet (set
    /// once joined); `None` on a single node.
    fleet_changes: Option<Arc<OnceLock<Arc<PackSync>>>>,
    /// Set once the real-time journal is replayed; unset = not offered.
    realtime: Ready<Arc<dyn RealtimeWrites>>,
    max_updates_per_request: usize,
}

/// Parts of `Status` owned by other components (the frequency store).
/// Called on a blocking thread.
pub trait StatusExtras: Send + Sync + 'static {
    fn frequency(&self) -> Option<crate::proto::FrequencyStatus>;
    /// The real-time overlay and forgotten users.
    fn realtime(&self) -> Option<crate::proto::RealtimeStatus> {
        None
    }

    /// The fleet block; `None` on a single node.
    fn fleet(&self) -> Option<crate::proto::FleetStatus> {
        None
    }
}

impl AdminService {
    pub fn new(
        catalog: Arc<Catalog>,
        line_items: Arc<LineItemRegistry>,
        limits: RequestLimits,
        push_limits: PushLimits,
        status_extras: Arc<dyn StatusExtras>,
        changes: Arc<PackChanges>,
    ) -> Self {
        Self {
            catalog,
            line_items,
            limits,
            push_limits,
            push_gate: PushGate::default(),
            started_at_unix_seconds: crate::unix_now_seconds(),
            status_extras,
            changes,
            shard: crate::shard::Shard::UNSHARDED,
            fleet_changes: None,
            realtime: Ready::default(),
            max_updates_per_request: 0,
        }
    }

    /// Fleet mode: pushes, rollbacks, drops and line items reach every
    /// replica through `fleet_changes` once it is set.
    pub fn with_fleet_changes(mut self, fleet_changes: Arc<OnceLock<Arc<PackSync>>>) -> Self {
        self.fleet_changes = Some(fleet_changes);
        self
    }

    /// The fleet to change through; `None` on a single node.
    fn fleet(&self) -> Result<Option<Arc<PackSync>>, Status> {
        match &self.fleet_changes {
            None => Ok(None),
            Some(joined) => joined
                .get()
                .cloned()
                .map(Some)
                .ok_or_else(|| Status::unavailable("joining the fleet, changes not taken yet")),
        }
    }

    /// Reports `shard` (`--shard I/N`) in `Status`.
    pub fn with_shard(mut self, shard: crate::shard::Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Serves UpdateMembers and ForgetUsers through `realtime` once it is set.
    pub fn with_realtime(
        mut self,
        realtime: Ready<Arc<dyn RealtimeWrites>>,
        max_updates_per_request: usize,
    ) -> Self {
        self.realtime = realtime;
        self.max_updates_per_request = max_updates_per_request;
        self
    }

    fn realtime(&self) -> Result<Arc<dyn RealtimeWrites>, Status> {
        self.realtime
            .or_unavailable("loading the data directory")
            .cloned()
    }
}

impl AdminService {
    /// What the fleet intends this replica's shard to serve, per pack.
    fn fleet_intents(&self) -> Vec<crate::proto::FleetPackIntent> {
        let Some(fleet) = self.fleet_changes.as_ref().and_then(|joined| joined.get()) else {
            return Vec::new();
        };
        fleet
            .intended()
            .into_iter()
            .map(|(pack, intent)| crate::proto::FleetPackIntent {
                pack,
                version: intent.version,
                dropped: intent.dropped,
            })
            .collect()
    }
}

fn push_reply(outcome: crate::store::catalog::PushOutcome) -> PushSnapshotResponse {
    PushSnapshotResponse {
        pack: outcome.pack,
        version: outcome.version,
        segments: outcome.segments,
        users: outcome.users,
        memberships: outcome.memberships,
        generation: outcome.generation,
        unchanged: outcome.unchanged,
    }
}

/// Runs catalog work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| Status::internal(format!("admin task failed: {join_error}")))?
}

/// Runs heavy catalog work on a thread of its own below the query path's
/// priority.
async fn deprioritised<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    crate::background::run_deprioritised("segd-push", work)
        .await
        .map_err(|error| Status::internal(format!("admin task failed: {error}")))?
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn push_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<PushSnapshotResponse>, Status> {
        let refused = |refusal: Refusal| self.changes.record_refused(PackChange::Push, refusal);
        let _one_at_a_time = self
            .push_gate
            .try_enter()
            .inspect_err(|_| refused(Refusal::Busy))?;
        let catalog = self.catalog.clone();
        let staged = blocking(move || catalog.stage_upload().map_err(Status::from))
            .await
            .inspect_err(|_| refused(Refusal::Storage))?;
        let mut chunks = request.into_inner();
        let served_catalog = self.catalog.clone();
        let is_served =
            |header: &crate::pack::PackHeader| served_catalog.unchanged_header(header).is_some();
        let receive_started = std::time::Instant::now();
        let received = push::receive(&mut chunks, staged, self.push_limits, is_served)
            .await
            .map_err(|refusal| {
                tracing::warn!(reason = refusal.refusal.label(), error = ?refusal.status.message(), "pack refused");
                refused(refusal.refusal);
                refusal.status
            })?;
        let upload = match received {
            push::Received::Upload(upload) => {
                tracing::info!(
                    receive_ms = receive_started.elapsed().as_millis() as u64,
                    "push received, verifying"
                );
                upload
            }
            push::Received::Unchanged(header) => {
                // Still served (a change since is a race with another push:
                // the caller retries).
                let outcome = self
                    .catalog
                    .unchanged_push(&header.name, &header.version)
                    .ok_or_else(|| {
                        Status::aborted(
                            "snapshot: the served version changed during the push; retry",
                        )
                    })?;
                self.changes.record_ok(PackChange::Push, true);
                return Ok(Response::new(push_reply(outcome)));
            }
        };
        if let Some(fleet) = self.fleet()? {
            let outcome = fleet
                .push(upload.staged, upload.allow_older_version)
                .await
                .inspect_err(|error| {
                    tracing::warn!(error = ?error.to_string(), "pack refused");
                    refused(Refusal::from(error));
                })?;
            self.changes.record_ok(PackChange::Push, outcome.unchanged);
            return Ok(Response::new(push_reply(outcome)));
        }
        let catalog = self.catalog.clone();
        let changes = self.changes.clone();
        // Verifying and mapping a big pack is seconds of CPU: it yields to the
        // query path (crate::background).
        let outcome = deprioritised(move || {
            catalog
                .push_staged(
                    upload.staged,
                    upload.allow_older_version,
                    crate::unix_now_seconds(),
                )
                .map_err(|error| {
                    // Debug formatting: the error may quote client bytes.
                    tracing::warn!(error = ?error.to_string(), "pack refused");
                    changes.record_refused(PackChange::Push, Refusal::from(&error));
                    Status::from(error)
                })
        })
        .await?;
        self.changes.record_ok(PackChange::Push, outcome.unchanged);
        Ok(Response::new(push_reply(outcome)))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let state = self.catalog.store().load_full();
        let line_items = self.line_items.load_full();
        let now = crate::unix_now_seconds();
        let catalog = self.catalog.clone();
        let extras = self.status_extras.clone();
        let names: Vec<String> = state.packs().iter().map(|pack| pack.name.clone()).collect();
        // Both touch the disk (pack headers, the log directory) and the
        // frequency store locks every shard: off the async workers.
        let (previous_versions, frequency, realtime) = blocking(move || {
            let previous_versions: Vec<Option<String>> = names
                .iter()
                .map(|name| catalog.previous_version(name))
                .collect();
            Ok((previous_versions, extras.frequency(), extras.realtime()))
        })
        .await?;
        let packs = state
            .packs()
            .iter()
            .zip(previous_versions)
            .map(|(pack, previous_version)| PackStatus {
                name: pack.name.clone(),
                version: pack.version.clone(),
                built_at_unix_seconds: pack.built_at_unix_seconds,
                loaded_at_unix_seconds: pack.loaded_at_unix_seconds,
                segments: pack.segments.len() as u32,
                users: pack.users(),
                memberships: pack.memberships(),
                bytes: pack.file_bytes,
                stale: self.catalog.store().freshness().is_stale(
                    &pack.name,
                    pack.built_at_unix_seconds,
                    now,
                ),
                age_seconds: now - pack.built_at_unix_seconds,
                previous_version: previous_version.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            packs,
            generation: state.generation,
            frequency,
            fleet: self.status_extras.fleet(),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_unix_seconds: self.started_at_unix_seconds,
            line_items_version: line_items.version.clone(),
            line_items: line_items.len() as u32,
            shard: Some(crate::proto::ShardStatus {
                index: self.shard.index,
                count: self.shard.count,
            }),
            realtime,
            fleet_packs: self.fleet_intents(),
            fleet_line_items_version: self
                .fleet_changes
                .as_ref()
                .and_then(|joined| joined.get())
                .and_then(|fleet| fleet.intended_line_items_version())
                .unwrap_or_default(),
        }))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let state = self.catalog.store().load_full();
        // Up to 65,535 segments a pack, sorted: CPU work for a blocking thread.
        let segments = blocking(move || {
            let mut segments: Vec<SegmentInfo> = state
                .packs()
                .iter()
                .flat_map(|pack| {
                    pack.segments.iter().map(|segment| SegmentInfo {
                        id: segment.id,
                        name: segment.name.clone(),
                        kind: segment.kind.clone(),
                        pack: pack.name.clone(),
                        members: segment.members,
                        ttl_seconds: segment.ttl_seconds,
                    })
                })
                .collect();
            segments.sort_by_key(|segment| segment.id);
            Ok(segments)
        })
        .await?;
        Ok(Response::new(ListSegmentsResponse { segments }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        let pack = request.into_inner().pack;
        if let Some(fleet) = self.fleet()? {
            let outcome = fleet.rollback(pack).await.inspect_err(|error| {
                self.changes
                    .record_refused(PackChange::Rollback, Refusal::from(error))
            })?;
            self.changes.record_ok(PackChange::Rollback, false);
            return Ok(Response::new(RollbackResponse {
                pack: outcome.pack,
                version: outcome.version,
                generation: outcome.generation,
            }));
        }
        let catalog = self.catalog.clone();
        let changes = self.changes.clone();
        let outcome = blocking(move || {
            catalog
                .rollback(&pack, crate::unix_now_seconds())
                .map_err(|error| {
                    changes.record_refused(PackChange::Rollback, Refusal::from(&error));
                    Status::from(error)
                })
        })
        .await?;
        self.changes.record_ok(PackChange::Rollback, false);
        Ok(Response::new(RollbackResponse {
            pack: outcome.pack,
            version: outcome.version,
            generation: outcome.generation,
        }))
    }

    async fn put_line_items(
        &self,
        request: Request<PutLineItemsRequest>,
    ) -> Result<Response<PutLineItemsResponse>, Status> {
        let request = request.into_inner();
        for (index, line_item) in request.line_items.iter().enumerate() {
            self.limits
                .check_candidate(format_args!("line_items[{index}]"), line_item)?;
        }
        let outcome = match self.fleet()? {
            Some(fleet) => fleet.put_line_items(request).await?,
            None => {
                let registry = self.line_items.clone();
                blocking(move || registry.put(request).map_err(Status::from)).await?
            }
        };
        Ok(Response::new(PutLineItemsResponse {
            version: outcome.version,
            line_items: outcome.line_items,
            unchanged: outcome.unchanged,
        }))
    }

    async fn update_members(
        &self,
        request: Request<UpdateMembersRequest>,
    ) -> Result<Response<UpdateMembersResponse>, Status> {
        let updates = crate::api::realtime::updates_from_wire(
            &self.limits,
            self.max_updates_per_request,
            self.shard,
            &request.into_inner().updates,
        )?;
        let realtime = self.realtime()?;
        let outcome =
            blocking(move || realtime.update_members(&updates).map_err(Status::from)).await?;
        Ok(Response::new(UpdateMembersResponse {
            applied: outcome.applied,
            generation: outcome.generation,
        }))
    }

    async fn forget_users(
        &self,
        request: Request<ForgetUsersRequest>,
    ) -> Result<Response<ForgetUsersResponse>, Status> {
        let fingerprints = crate::api::realtime::forgets_from_wire(
            &self.limits,
            self.max_updates_per_request,
            self.shard,
            &request.into_inner().user_ids,
        )?;
        let realtime = self.realtime()?;
        let forgotten =
            blocking(move || realtime.forget_users(&fingerprints).map_err(Status::from)).await?;
        Ok(Response::new(ForgetUsersResponse { forgotten }))
    }

    async fn drop_pack(
        &self,
        request: Request<DropPackRequest>,
    ) -> Result<Response<DropPackResponse>, Status> {
        let pack = request.into_inner().pack;
        if let Some(fleet) = self.fleet()? {
            let generation = fleet.drop_pack(pack.clone()).await.inspect_err(|error| {
                self.changes
                    .record_refused(PackChange::Drop, Refusal::from(error))
            })?;
            self.changes.record_ok(PackChange::Drop, false);
            return Ok(Response::new(DropPackResponse { pack, generation }));
        }
        let catalog = self.catalog.clone();
        let pack_name = pack.clone();
        let changes = self.changes.clone();
        let generation = blocking(move || {
            catalog.drop_pack(&pack_name).map_err(|error| {
                changes.record_refused(PackChange::Drop, Refusal::from(&error));
                Status::from(error)
            })
        })
        .await?;
        self.changes.record_ok(PackChange::Drop, false);
        Ok(Response::new(DropPackResponse { pack, generation }))
    }
}
