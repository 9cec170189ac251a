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
    /// Split the users into N shards by `floor(xxh3_64(user_id) × N / 2^64)`:
    /// writes NAME.shard-I-of-N.segpack for I in 0..N (NAME = --pack) in the
    /// directory of --output instead of --output itself, each with its shard
    /// in the header, in one pass over the input. Format 2 only.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=segd::shard::MAX_SHARD_COUNT as i64))]
    shards: Option<u32>,
    /// Pack file format: 2 (served in place, memory-mapped) or 1 (round-1
    /// servers read only this).
    #[arg(long, default_value_t = segd::pack::FORMAT_VERSION, value_parser = clap::value_parser!(u32).range(1..=2))]
    format: u32,
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
    if let Some(shard_count) = args.shards {
        return write_shards(builder, &args, shard_count, lines, started);
    }
    let pack = builder.finish()?;
    let bytes = if args.format == segd::pack::FORMAT_VERSION_V1 {
        segd::pack::write_pack_v1(&pack)?
    } else {
        segd::pack::write_pack_v2(&pack)?
    };
    segd::pack::write_pack_file_atomic(&bytes, &args.output)
        .with_context(|| format!("write {}", args.output.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "built pack {} version {} (format {}): {} input lines, {} users, {} segments, {} memberships, {} bytes -> {} in {:.2} s ({:.1} M lines/s)",
        pack.name,
        pack.version,
        args.format,
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

/// `--shards N`: one pack per shard from the one pass already made over the
/// input, each written (with its shard in the header) before the next is built.
fn write_shards(
    builder: PackBuilder,
    args: &BuildArgs,
    shard_count: u32,
    lines: u64,
    started: Instant,
) -> anyhow::Result<()> {
    if args.format == segd::pack::FORMAT_VERSION_V1 {
        anyhow::bail!("--shards needs --format 2: format 1 has no shard in its header");
    }
    let dir = match args.output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for (index, pack) in builder.finish_shards(shard_count).enumerate() {
        let pack = pack?;
        let shard = segd::pack::ShardSpec {
            index: index as u32,
            count: shard_count,
        };
        let bytes = segd::pack::write_pack_v2_shard(&pack, shard)?;
        let path = dir.join(format!(
            "{}.shard-{index}-of-{shard_count}{}",
            args.pack,
            segd::pack::FILE_SUFFIX
        ));
        segd::pack::write_pack_file_atomic(&bytes, &path)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!(
            "shard {index} of {shard_count}: {} users, {} memberships, {} bytes -> {}",
            pack.user_fingerprints.len(),
            pack.memberships(),
            bytes.len(),
            path.display()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "built pack {} version {} in {shard_count} shards: {lines} input lines in {seconds:.2} s ({:.1} M lines/s)",
        args.pack,
        args.version,
        lines as f64 / seconds.max(1e-9) / 1e6
    );
    Ok(())
}

pub fn inspect(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let header = segd::pack::read_header(&bytes).with_context(|| format!("{}", file.display()))?;
    let pack = segd::pack::read_pack(&bytes).with_context(|| format!("{}", file.display()))?;
    out!(
        "file:        {} ({} bytes, checksums ok)",
        file.display(),
        bytes.len()
    );
    out!("format:      {}", header.format_version);
    if let Some(layout) = segd::pack::entry_layout_of(&bytes)? {
        out!(
            "entries:     {} bytes each (slot {} bits, hours_ago {} bits), {} bytes in all",
            layout.bytes(),
            layout.slot_bits(),
            layout.hours_bits(),
            layout.bytes() as u64 * header.membership_count
        );
    }
    if header.shard_count > 1 {
        out!(
            "shard:       {} of {}",
            header.shard_index,
            header.shard_count
        );
    } else {
        out!("shard:       unsharded (0 of 1)");
    }
    out!("pack:        {}", pack.name);
    out!("version:     {}", pack.version);
    out!("built at:    {} (unix seconds)", pack.built_at_unix_seconds);
    out!("users:       {}", pack.user_fingerprints.len());
    out!("segments:    {}", pack.segments.len());
    out!("memberships: {}", pack.memberships());
    out!();
    out!(
        "{:>10} {:<32} {:<12} {:>10} {:>12} {:<8}",
        "ID",
        "NAME",
        "KIND",
        "TTL_S",
        "MEMBERS",
        "RECENCY"
    );
    for segment in &pack.segments {
        out!(
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
