//! The parts of `Admin/Status` the admin service does not own: the
//! frequency store's figures and the fsync policy it runs under.

use std::sync::Arc;

use crate::api::admin::StatusExtras;
use crate::freq::FreqStore;
use crate::ready::Ready;
use crate::settings::FsyncMode;

pub struct ServerStatusExtras {
    pub counters: Ready<Arc<FreqStore>>,
    pub fsync: FsyncMode,
    pub retention_days: u32,
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
}
