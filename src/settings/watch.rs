//! `--watch-dir`: the directory a sidecar syncs packs into.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Watched directory")]
pub struct WatchSettings {
    /// Directory to watch for pack files (`*.segpack`) a sidecar syncs in:
    /// each new or changed file, once unchanged across two polls, is verified
    /// and served like a push (never an older version). Dotfiles and `*.tmp`
    /// are ignored; refused files are logged and skipped. Created if missing;
    /// must not be DATA_DIR/packs.
    #[arg(long, env = "SEGD_WATCH_DIR")]
    pub watch_dir: Option<PathBuf>,

    /// How often --watch-dir is scanned, in milliseconds.
    #[arg(long, env = "SEGD_WATCH_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    pub watch_poll_ms: u64,
}
