//! One push that reaches every replica: packs and line items shared by the
//! fleet through JetStream.
//!
//! - Pack files live in an object-store bucket (`--fleet-packs-bucket`,
//!   default `segd-packs`), one object per pack, shard and version
//!   (`NAME/shard-I-of-N/VERSION`).
//! - What the fleet should serve lives in a key-value bucket
//!   (`--fleet-kv-bucket`, default `segd-fleet`): key `pack.NAME.I-of-N`
//!   holds an [`Intent`] (serve VERSION, or dropped); key `line-items` the
//!   registered line items (an encoded `PutLineItemsRequest`).
//! - A change on any replica (push, rollback, drop, put line items) is
//!   verified, published, then applied locally; the reply comes once this
//!   replica serves it. Every replica watches the keys of its own shard
//!   (with history: a replica started later gets the latest of each) and
//!   reconciles: fetch, verify and serve the intended version through the
//!   catalog, which refuses what it would refuse from a push. A reconcile
//!   that fails (object missing, NATS down) is retried every second.
//!
//! Must never serve a pack the catalog did not verify, nor let a replica
//! answer a change before its own catalog applied it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use parking_lot::Mutex;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::line_items::LineItemRegistry;
use crate::pack::file_blocks::FILE_BLOCK_BYTES;
use crate::proto::PutLineItemsRequest;
use crate::shard::Shard;
use crate::store::catalog::{Catalog, CatalogError, PushOutcome, RollbackOutcome};
use crate::store::catalog::{StagedFile, UploadWriter};

/// Key of the registered line items in the key-value bucket.
pub const LINE_ITEMS_KEY: &str = "line-items";
/// How often intents are reconciled besides on every change.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

mod intent;
use intent::pack_of_key;
pub use intent::{Intent, intent_key, object_name};

/// Why a fleet-wide change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetChangeError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    LineItems(#[from] crate::line_items::LineItemError),
    /// NATS or JetStream did not take the change: nothing was changed.
    #[error("the fleet did not take the change, nothing changed: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Precondition(String),
}

/// The buckets, this replica's shard and the parts a change goes through.
pub struct PackSync {
    objects: object_store::ObjectStore,
    intents: kv::Store,
    shard: Shard,
    catalog: Arc<Catalog>,
    line_items: Arc<LineItemRegistry>,
    /// Pack name → what the fleet intends for this shard (for Status).
    intended: Mutex<BTreeMap<String, Intent>>,
    intended_line_items: Mutex<Option<PutLineItemsRequest>>,
    /// One change at a time on this replica: publish and local apply, or a
    /// reconcile, never interleaved.
    change_lock: tokio::sync::Mutex<()>,
}

/// How the buckets are named and replicated.
pub struct PackSyncStart<'a> {
    pub context: &'a jetstream::Context,
    pub packs_bucket: &'a str,
    pub kv_bucket: &'a str,
    pub replicas: usize,
    pub shard: Shard,
    pub catalog: Arc<Catalog>,
    pub line_items: Arc<LineItemRegistry>,
}

/// Opens the buckets over a joined fleet's connection, sets `joined` (from
/// then on admin changes go through the fleet) and starts watching until
/// `stop`. Returns the watcher task.
pub async fn join(
    fleet: &super::Fleet,
    settings: &super::FleetSettings,
    shard: Shard,
    catalog: Arc<Catalog>,
    line_items: Arc<LineItemRegistry>,
    joined: &std::sync::OnceLock<Arc<PackSync>>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let context = fleet.jetstream();
    let sync = PackSync::open(PackSyncStart {
        context: &context,
        packs_bucket: &settings.fleet_packs_bucket,
        kv_bucket: &settings.fleet_kv_bucket,
        replicas: usize::from(settings.fleet_replicas),
        shard,
        catalog,
        line_items,
    })
    .await?;
    let _ = joined.set(sync.clone());
    info!(packs_bucket = %settings.fleet_packs_bucket, kv_bucket = %settings.fleet_kv_bucket, shard = %shard, "sharing packs and line items with the fleet");
    Ok(tokio::spawn(sync.run(stop)))
}

impl PackSync {
    /// Opens (creating when missing) both buckets.
    pub async fn open(start: PackSyncStart<'_>) -> anyhow::Result<Arc<PackSync>> {
        let context = start.context;
        let objects = match context.get_object_store(start.packs_bucket).await {
            Ok(objects) => objects,
            Err(_) => context
                .create_object_store(object_store::Config {
                    bucket: start.packs_bucket.to_owned(),
                    description: Some("segd pack files, NAME/shard-I-of-N/VERSION".to_owned()),
                    num_replicas: start.replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("create object store {}", start.packs_bucket))?,
        };
        let intents = match context.get_key_value(start.kv_bucket).await {
            Ok(intents) => intents,
            Err(_) => context
                .create_key_value(kv::Config {
                    bucket: start.kv_bucket.to_owned(),
                    description: "segd fleet intents: pack versions and line items".to_owned(),
                    history: 5,
                    num_replicas: start.replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("create key-value bucket {}", start.kv_bucket))?,
        };
        Ok(Arc::new(PackSync {
            objects,
            intents,
            shard: start.shard,
            catalog: start.catalog,
            line_items: start.line_items,
            intended: Mutex::new(BTreeMap::new()),
            intended_line_items: Mutex::new(None),
            change_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// What the fleet intends for this shard, per pack name.
    pub fn intended(&self) -> BTreeMap<String, Intent> {
        self.intended.lock().clone()
    }

    pub fn intended_line_items_version(&self) -> Option<String> {
        self.intended_line_items
            .lock()
            .as_ref()
            .map(|request| request.version.clone())
    }

    /// Verifies the staged upload (whole, and of this replica's shard),
    /// stores the file and the intent, then serves it here from the upload.
    pub async fn push(
        &self,
        staged: StagedFile,
        allow_older_version: bool,
    ) -> Result<PushOutcome, FleetChangeError> {
        let _change = self.change_lock.lock().await;
        let (staged, header) = {
            let catalog = self.catalog.clone();
            blocking(move || {
                let header = catalog.check_push_file(staged.path(), allow_older_version)?;
                Ok((staged, header))
            })
            .await?
        };
        let object = object_name(&header.name, self.shard, &header.version);
        self.put_file(&object, staged.path()).await?;
        self.publish_intent(&header.name, &Intent::serve(header.version.clone()))
            .await?;
        let catalog = self.catalog.clone();
        let outcome = blocking(move || {
            Ok(catalog.push_staged(staged, allow_older_version, crate::unix_now_seconds())?)
        })
        .await?;
        info!(pack = ?outcome.pack, version = ?outcome.version, shard = %self.shard, "pack pushed to the fleet");
        Ok(outcome)
    }

    /// Serves the previous version of `pack` on every replica of this shard:
    /// the one this replica keeps (stored in the bucket first when it is not
    /// there, as after a push made before fleet mode), or, when it keeps
    /// none (it joined after that push), the one the fleet served before.
    pub async fn rollback(&self, pack: String) -> Result<RollbackOutcome, FleetChangeError> {
        check_name(&pack)?;
        let _change = self.change_lock.lock().await;
        if let Some(previous) = self.catalog.previous_version(&pack) {
            self.share_kept_version(&pack, &previous).await?;
            self.publish_intent(&pack, &Intent::serve(previous)).await?;
            let catalog = self.catalog.clone();
            return blocking(move || Ok(catalog.rollback(&pack, crate::unix_now_seconds())?)).await;
        }
        let current = self
            .served_version(&pack)
            .or_else(|| self.intended_version(&pack))
            .ok_or_else(|| CatalogError::NoSuchPack(pack.clone()))?;
        let key = intent_key(&pack, self.shard);
        let previous = intent::previous_in_history(&self.intents, &key, &current)
            .await
            .map_err(FleetChangeError::Unavailable)?
            .ok_or_else(|| CatalogError::NoPreviousVersion(pack.clone()))?;
        let object = object_name(&pack, self.shard, &previous);
        if self.objects.info(&object).await.is_err() {
            return Err(FleetChangeError::Precondition(format!(
                "this replica keeps no previous version of pack {pack:?}, and the fleet's previous one, {previous:?}, is not in its pack bucket: push it again"
            )));
        }
        self.publish_intent(&pack, &Intent::serve(previous.clone()))
            .await?;
        let outcome = self.serve_from_bucket(&pack, &previous).await?;
        Ok(RollbackOutcome {
            pack: outcome.pack,
            version: outcome.version,
            generation: outcome.generation,
        })
    }

    /// Makes sure the bucket holds `version` of `pack`, the version this
    /// replica keeps for rollback: verified like a push, then stored.
    async fn share_kept_version(&self, pack: &str, version: &str) -> Result<(), FleetChangeError> {
        let object = object_name(pack, self.shard, version);
        if self.objects.info(&object).await.is_ok() {
            return Ok(());
        }
        let path = self.catalog.previous_path(pack);
        let (catalog, checked) = (self.catalog.clone(), path.clone());
        let header = deprioritised(move || Ok(catalog.check_push_file(&checked, true)?)).await?;
        if header.version != version {
            return Err(FleetChangeError::Precondition(format!(
                "the previous version of pack {pack:?} changed during the rollback ({version:?}, now {:?}): try again",
                header.version
            )));
        }
        self.put_file(&object, &path).await?;
        info!(pack = %pack, version = %version, "kept version stored in the fleet's bucket for a rollback");
        Ok(())
    }

    /// Stops serving `pack` on every replica of this shard, whatever version
    /// each serves (one that lags behind the fleet drops its older version).
    /// Accepted on a replica that does not serve the pack (yet) as long as
    /// the fleet intends to serve it.
    pub async fn drop_pack(&self, pack: String) -> Result<u64, FleetChangeError> {
        check_name(&pack)?;
        let _change = self.change_lock.lock().await;
        let served = self.served_version(&pack);
        let version = self
            .intended_version(&pack)
            .or_else(|| served.clone())
            .ok_or_else(|| CatalogError::NoSuchPack(pack.clone()))?;
        let intent = Intent {
            version,
            dropped: true,
        };
        self.publish_intent(&pack, &intent).await?;
        if served.is_none() {
            return Ok(self.catalog.store().load_full().generation);
        }
        let catalog = self.catalog.clone();
        blocking(move || Ok(catalog.drop_pack(&pack)?)).await
    }

    /// The version of `pack` this replica serves.
    fn served_version(&self, pack: &str) -> Option<String> {
        self.catalog
            .store()
            .load_full()
            .pack(pack)
            .map(|loaded| loaded.version.clone())
    }

    /// The version of `pack` the fleet intends this shard to serve (none
    /// when dropped or never pushed in fleet mode).
    fn intended_version(&self, pack: &str) -> Option<String> {
        self.intended
            .lock()
            .get(pack)
            .filter(|intent| !intent.dropped)
            .map(|intent| intent.version.clone())
    }

    /// Registers line items on every replica (of every shard).
    pub async fn put_line_items(
        &self,
        request: PutLineItemsRequest,
    ) -> Result<crate::line_items::PutOutcome, FleetChangeError> {
        let _change = self.change_lock.lock().await;
        crate::line_items::LineItemRegistry::check(&request)?;
        self.intents
            .put(LINE_ITEMS_KEY, request.encode_to_vec().into())
            .await
            .map_err(|error| unavailable("store the line items", error))?;
        *self.intended_line_items.lock() = Some(request.clone());
        let registry = self.line_items.clone();
        blocking(move || Ok(registry.put(request)?)).await
    }

    async fn publish_intent(&self, pack: &str, intent: &Intent) -> Result<(), FleetChangeError> {
        let key = intent_key(pack, self.shard);
        self.intents
            .put(&key, intent.encode().into())
            .await
            .map_err(|error| unavailable(&format!("store intent {key}"), error))?;
        self.intended.lock().insert(pack.to_owned(), intent.clone());
        Ok(())
    }

    /// Watches this shard's intents and the line items until `stop`,
    /// reconciling after every change and every second.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(RECONCILE_EVERY);
        let shard_keys = format!("pack.*.{}-of-{}", self.shard.index, self.shard.count);
        loop {
            let watched = self
                .intents
                .watch_many_with_history([shard_keys.as_str(), LINE_ITEMS_KEY])
                .await;
            let mut entries = match watched {
                Ok(entries) => entries,
                Err(error) => {
                    warn!(error = %error, "cannot watch the fleet's intents yet; retrying");
                    tokio::select! {
                        _ = ticker.tick() => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            loop {
                tokio::select! {
                    entry = entries.next() => match entry {
                        Some(Ok(entry)) => {
                            self.note(&entry);
                            self.reconcile().await;
                        }
                        Some(Err(error)) => {
                            warn!(error = %error, "fleet intent watch failed; watching again");
                            break;
                        }
                        None => break,
                    },
                    _ = ticker.tick() => self.reconcile().await,
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    /// Records a watched entry as the intended state.
    fn note(&self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        if entry.key == LINE_ITEMS_KEY {
            match PutLineItemsRequest::decode(entry.value.as_ref()) {
                Ok(request) => *self.intended_line_items.lock() = Some(request),
                Err(error) => {
                    warn!(error = %error, "undecodable line items in the fleet bucket, ignored")
                }
            }
            return;
        }
        let Some(pack) = pack_of_key(&entry.key, self.shard) else {
            return;
        };
        match Intent::decode(&entry.value) {
            Some(intent) => {
                self.intended.lock().insert(pack.to_owned(), intent);
            }
            None => warn!(key = %entry.key, "undecodable fleet intent, ignored"),
        }
    }

    /// Brings this replica to the intended state; failures are logged and
    /// retried on the next tick.
    async fn reconcile(&self) {
        let _change = self.change_lock.lock().await;
        let intended = self.intended();
        for (pack, intent) in intended {
            if let Err(error) = self.reconcile_pack(&pack, &intent).await {
                warn!(pack = %pack, version = %intent.version, error = %error, "cannot serve the fleet's version yet; retrying");
            }
        }
        let line_items = self.intended_line_items.lock().clone();
        if let Some(request) = line_items
            && request.version != self.line_items.load().version
        {
            let registry = self.line_items.clone();
            let version = request.version.clone();
            match blocking(move || Ok(registry.put(request)?)).await {
                Ok(_) => info!(version = %version, "line items of the fleet registered"),
                Err(error) => {
                    warn!(version = %version, error = %error, "cannot register the fleet's line items")
                }
            }
        }
    }

    async fn reconcile_pack(&self, pack: &str, intent: &Intent) -> Result<(), FleetChangeError> {
        let served = self.served_version(pack);
        if intent.dropped {
            if served.is_some() {
                let (catalog, name) = (self.catalog.clone(), pack.to_owned());
                blocking(move || Ok(catalog.drop_pack(&name)?)).await?;
                info!(pack = %pack, served = ?served, "pack dropped by the fleet");
            }
            return Ok(());
        }
        if served.as_deref() == Some(intent.version.as_str()) {
            return Ok(());
        }
        if self.catalog.previous_version(pack).as_deref() == Some(intent.version.as_str()) {
            // A fleet rollback to the version kept here: no download.
            let (catalog, name) = (self.catalog.clone(), pack.to_owned());
            match blocking(move || Ok(catalog.rollback(&name, crate::unix_now_seconds())?)).await {
                Ok(outcome) => {
                    info!(pack = %pack, version = %outcome.version, generation = outcome.generation, "pack rolled back by the fleet");
                    return Ok(());
                }
                Err(error) => {
                    warn!(pack = %pack, error = %error, "cannot serve the kept version; fetching it from the fleet")
                }
            }
        }
        let outcome = self.serve_from_bucket(pack, &intent.version).await?;
        info!(pack = %outcome.pack, version = %outcome.version, generation = outcome.generation, "pack of the fleet served");
        Ok(())
    }

    /// Fetches `version` of `pack` from the bucket and serves it (the
    /// catalog verifies it as a push, older versions allowed).
    async fn serve_from_bucket(
        &self,
        pack: &str,
        version: &str,
    ) -> Result<PushOutcome, FleetChangeError> {
        let object = object_name(pack, self.shard, version);
        let mut reader = self
            .objects
            .get(&object)
            .await
            .map_err(|error| unavailable(&format!("fetch {object}"), error))?;
        let catalog = self.catalog.clone();
        let mut staged = blocking(move || Ok(catalog.stage_upload()?)).await?;
        let file = staged.take_writer().expect("a new upload has its writer");
        // Streamed to the staged file: a shard of tens of GB never sits in memory.
        copy_in_blocks(&mut reader, file)
            .await
            .map_err(|error| unavailable(&format!("fetch {object} into an upload"), error))?;
        let catalog = self.catalog.clone();
        deprioritised(move || Ok(catalog.push_staged(staged, true, crate::unix_now_seconds())?))
            .await
    }

    /// Stores the pack file at `path` as `object`, streamed from the file.
    async fn put_file(&self, object: &str, path: &Path) -> Result<(), FleetChangeError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|error| unavailable(&format!("open {}", path.display()), error))?;
        self.objects
            .put(object, &mut file)
            .await
            .map_err(|error| unavailable(&format!("store {object}"), error))?;
        Ok(())
    }
}

/// Copies `reader` to `file` in whole 2 MiB blocks, each written on the
/// blocking pool, so the page cache holds the file in 2 MiB folios
/// (`pack::file_blocks`); the object store's reads come in whatever sizes.
async fn copy_in_blocks(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    mut file: UploadWriter,
) -> std::io::Result<()> {
    let mut block = vec![0u8; FILE_BLOCK_BYTES];
    loop {
        let filled = fill(reader, &mut block).await?;
        (file, block) = tokio::task::spawn_blocking(move || {
            file.write_all(&block[..filled]).map(|()| (file, block))
        })
        .await
        .map_err(std::io::Error::other)??;
        if filled < FILE_BLOCK_BYTES {
            return tokio::task::spawn_blocking(move || file.finish().map(drop))
                .await
                .map_err(std::io::Error::other)?;
        }
    }
}

/// Reads until `block` is full or the reader ends; how much it holds.
async fn fill(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    block: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt as _;
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..]).await? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

fn check_name(pack: &str) -> Result<(), FleetChangeError> {
    if crate::store::catalog::valid_pack_name(pack) {
        Ok(())
    } else {
        Err(CatalogError::InvalidPackName(pack.to_owned()).into())
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> FleetChangeError {
    FleetChangeError::Unavailable(format!("{what}: {error}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FleetChangeError> + Send + 'static,
) -> Result<T, FleetChangeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| FleetChangeError::Unavailable(format!("fleet task failed: {error}")))?
}

/// Verifying and mapping a pack is seconds of CPU for a big one: it yields
/// to the query path (`crate::background`).
async fn deprioritised<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FleetChangeError> + Send + 'static,
) -> Result<T, FleetChangeError> {
    crate::background::run_deprioritised("segd-fleet-pack", work)
        .await
        .map_err(|error| FleetChangeError::Unavailable(format!("fleet task failed: {error}")))?
}
