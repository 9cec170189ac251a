//! `segctl build` and `segctl inspect`: pack files on the local disk.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use segd::pack::PackBuilder;

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

/// Input larger than this many lines gets a progress line on stderr.
const PROGRESS_FROM_LINES: u64 = 1_000_000;

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Refused before reading any input, by the rule a push applies.
    segd::pack::names::check_pack_name(&args.pack).context("--pack")?;
    anyhow::ensure!(!args.version.is_empty(), "--version: must not be empty");
    segd::pack::names::check_label("pack version", &args.version).context("--version")?;
    let built_at = args.built_at.unwrap_or_else(segd::unix_now_seconds);
    let mut builder = PackBuilder::new(&args.pack, &args.version, built_at);
    if let Some(segments) = &args.segments {
        let file = File::open(segments).with_context(|| format!("open {}", segments.display()))?;
        builder.add_segment_definitions(BufReader::new(file), &segments.display().to_string())?;
    }
    let mut show_progress = |lines: u64| {
        if lines >= PROGRESS_FROM_LINES {
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\rread {lines} lines ({:.1} M lines/s)",
                lines as f64 / seconds / 1e6
            );
        }
    };
    let lines = if args.input == "-" {
        let stdin = std::io::stdin();
        builder.add_memberships(
            BufReader::with_capacity(1 << 20, stdin.lock()),
            "-",
            &mut show_progress,
        )?
    } else {
        let file = File::open(&args.input).with_context(|| format!("open {}", args.input))?;
        builder.add_memberships(
            BufReader::with_capacity(1 << 20, file),
            &args.input,
            &mut show_progress,
        )?
    };
    if lines >= PROGRESS_FROM_LINES {
        eprintln!();
    }
    let pack = builder.finish()?;
    let bytes = segd::pack::write_pack(&pack)?;
    segd::pack::write_pack_file_atomic(&bytes, &args.output)
        .with_context(|| format!("write {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "built pack {} version {}: {} input lines, {} users, {} segments, {} memberships, {} bytes -> {} in {:.2} s ({:.1} M lines/s)",
        pack.name,
        pack.version,
        lines,
        pack.user_fingerprints.len(),
        pack.segments.len(),
        pack.memberships(),
        bytes.len(),
        args.output.display(),
        seconds,
        lines as f64 / seconds.max(1e-9) / 1e6
    );
    Ok(())
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
