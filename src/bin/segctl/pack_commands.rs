//! `segctl build` and `segctl inspect`: pack files on the local disk.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct BuildArgs {
    /// Pack name (e.g. crm); one pack of each name is served.
    #[arg(long)]
    pack: String,
    /// Version string; versions compare naturally (v9 < v10).
    #[arg(long)]
    version: String,
    /// Membership TSV: user_id<TAB>segment_id[<TAB>last_seen_unix]; `-` reads stdin.
    #[arg(long)]
    input: String,
    /// Segment TSV: segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]].
    #[arg(long)]
    segments: Option<PathBuf>,
    /// Build time (default: now); members without a time were last seen then.
    #[arg(long)]
    built_at: Option<i64>,
    /// Where to write the pack file (conventionally NAME.segpack).
    #[arg(long)]
    output: PathBuf,
}

pub fn build(_args: BuildArgs) -> anyhow::Result<()> {
    anyhow::bail!("segctl build lands with the pack builder")
}

pub fn inspect(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let pack = segd::pack::read_pack(&bytes).with_context(|| format!("{}", file.display()))?;
    println!(
        "file:        {} ({} bytes, checksums ok)",
        file.display(),
        bytes.len()
    );
    println!("pack:        {}", pack.name);
    println!("version:     {}", pack.version);
    println!("built at:    {} (unix seconds)", pack.built_at_unix_seconds);
    println!("users:       {}", pack.user_fingerprints.len());
    println!("segments:    {}", pack.segments.len());
    println!("memberships: {}", pack.memberships());
    println!();
    println!(
        "{:>10} {:<32} {:<12} {:>10} {:>12} {:<8}",
        "ID", "NAME", "KIND", "TTL_S", "MEMBERS", "RECENCY"
    );
    for segment in &pack.segments {
        println!(
            "{:>10} {:<32} {:<12} {:>10} {:>12} {:<8}",
            segment.id,
            segment.name,
            if segment.kind.is_empty() {
                "-"
            } else {
                &segment.kind
            },
            segment.ttl_seconds,
            segment.members.len(),
            if segment.last_seen_hours_ago.is_some() {
                "yes"
            } else {
                "no"
            },
        );
    }
    Ok(())
}
