//! The parts of `Admin/Status` the admin service does not own: the
//! frequency store's figures and the fsync policy it runs under, and the
//! real-time overlay's.

use std::sync::Arc;

use crate::api::admin::StatusExtras;
use crate::freq::FreqStore;
use crate::ready::Ready;
use crate::realtime::Realtime;
use crate::settings::FsyncMode;

pub struct ServerStatusExtras {
    pub counters: Ready<Arc<FreqStore>>,
    pub fsync: FsyncMode,
    pub retention_days: u32,
    pub realtime: Ready<Arc<Realtime>>,
    pub fleet: Option<Arc<crate::fleet::FleetMetrics>>,
}

impl StatusExtras for ServerStatusExtras {
    /// Lists the log directory and locks every shard: call it off the runtime.
    fn frequency(&self) -> Option<crate::proto::FrequencyStatus> {
        let stats = self.counters.get()?.stats();
        Some(crate::proto::FrequencyStatus {
            entries: stats.entries,
            events: stats.events,
            log_bytes: stats.log_bytes,
            fsync_policy: format!("{:?}", self.fsync).to_lowercase(),
            retention_days: self.retention_days,
            last_checkpoint_unix_seconds: stats.last_checkpoint_unix_seconds,
        })
    }

    fn fleet(&self) -> Option<crate::proto::FleetStatus> {
        self.fleet.as_deref().map(crate::fleet::status_of)
    }

    fn realtime(&self) -> Option<crate::proto::RealtimeStatus> {
        let realtime = self.realtime.get()?;
        let figures = realtime.figures();
        Some(crate::proto::RealtimeStatus {
            overlay_entries: figures.overlay_entries,
            max_overlay_entries: figures.max_overlay_entries,
            forgotten_users: figures.forgotten_users,
            forgotten_users_in_packs: figures.forgotten_users_in_packs,
            journal_bytes: figures.journal_bytes,
            forget_retention_days: realtime.forget_retention_days(),
        })
    }
}
