//! `loadtest gen`: a seeded synthetic data set shaped like real audiences.
//!
//! Real segment sizes are very uneven: a few broad pools ("all site visitors",
//! "viewed any product") hold 20–30 % of users, and a long tail of narrow ones
//! ("abandoned cart, brand X, last week") holds a hundredth of a percent. Sizes
//! here are log-interpolated between those two ends and the curve's bend is
//! solved so that the mean number of segments per user is the one asked for.
//!
//! Members of a segment are drawn by geometric skipping over the user range, so
//! the cost is per membership written, not per (user, segment) pair: 10M users x
//! 20 segments each is 200M lines and is bound by formatting and disk. Users are
//! drawn in blocks and each block is written user-major.
//! This module only writes files; it never talks to a server.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cli::GenArgs;

/// Largest segment, as a share of users.
const LARGEST_SEGMENT_SHARE: f64 = 0.30;
/// Smallest segment, as a share of users (0.01 %).
const SMALLEST_SEGMENT_SHARE: f64 = 0.0001;
/// Last-seen times spread over this many seconds before the build time.
const HISTORY_SECONDS: f64 = 90.0 * 86_400.0;
const DAY_SECONDS: u32 = 86_400;

/// One synthetic segment: what segments.tsv says about it plus its drawn size.
struct SyntheticSegment {
    segment_id: u32,
    name: String,
    kind: &'static str,
    /// 0 = no TTL.
    ttl_seconds: u32,
    /// Probability that a given user is a member.
    member_share: f64,
}

pub fn run(args: &GenArgs) -> Result<()> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if args.segments == 0 {
        bail!("--segments must be at least 1");
    }
    if !args.avg_segments_per_user.is_finite() || args.avg_segments_per_user <= 0.0 {
        bail!("--avg-segments-per-user must be positive");
    }
    if !(0.0..=1.0).contains(&args.member_query_share) {
        bail!("--member-query-share must be between 0 and 1");
    }
    if args
        .first_segment_id
        .checked_add(args.segments - 1)
        .is_none()
    {
        bail!("--first-segment-id + --segments overflows a u32 segment id");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating --out directory {}", args.out.display()))?;
    let built_at = args.built_at.unwrap_or_else(segd::unix_now_seconds);
    let mut rng = SmallRng::seed_from_u64(args.seed);

    let segments = synthetic_segments(args, &mut rng);
    let expected_memberships: f64 = segments
        .iter()
        .map(|segment| segment.member_share * args.users as f64)
        .sum();
    eprintln!(
        "gen: {} users, {} segments, largest {:.2} %, smallest {:.4} %, ~{:.0} memberships expected",
        args.users,
        args.segments,
        segments.iter().map(|s| s.member_share).fold(0.0, f64::max) * 100.0,
        segments.iter().map(|s| s.member_share).fold(1.0, f64::min) * 100.0,
        expected_memberships,
    );
    write_segments(&args.out.join("segments.tsv"), &segments)?;
    let started = Instant::now();
    let (memberships, member_bits) = write_memberships(
        &args.out.join("memberships.tsv"),
        args.users,
        &segments,
        built_at,
        &mut rng,
        expected_memberships,
    )?;
    let elapsed_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "gen: wrote {memberships} memberships in {elapsed_seconds:.1} s ({:.1} M lines/s)",
        memberships as f64 / elapsed_seconds.max(1e-9) / 1e6
    );
    let queries_written =
        write_queries(&args.out.join("queries.txt"), args, &member_bits, &mut rng)?;
    let manifest = serde_json::json!({
        "users": args.users,
        "segments": args.segments,
        "first_segment_id": args.first_segment_id,
        "avg_segments_per_user_requested": args.avg_segments_per_user,
        "avg_segments_per_user_written": memberships as f64 / args.users as f64,
        "memberships": memberships,
        "built_at_unix_seconds": built_at,
        "seed": args.seed,
        "queries": queries_written,
    });
    let manifest_path = args.out.join("dataset.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    eprintln!(
        "gen: done; build a pack with:\n  segctl build --pack synth --version v1 --built-at {built_at} \
         --input {dir}/memberships.tsv --segments {dir}/segments.tsv --output {dir}/v1.segpack",
        dir = args.out.display()
    );
    Ok(())
}

/// Member shares log-interpolated from the largest to the smallest segment.
///
/// Rank `r` of `n` gets `largest * (smallest/largest)^((r/(n-1))^bend)`; a small
/// bend puts most segments near the small end, a large one near the large end.
/// The bend is bisected so the shares sum to the requested mean.
fn segment_shares(segment_count: u32, mean_segments_per_user: f64) -> Vec<f64> {
    let count = segment_count as usize;
    if count == 1 || mean_segments_per_user >= LARGEST_SEGMENT_SHARE * count as f64 {
        // Too few segments for a skewed spread to reach the mean: make them equal.
        let share = (mean_segments_per_user / count as f64).min(1.0);
        return vec![share; count];
    }
    let shares_for = |bend: f64| -> Vec<f64> {
        let ratio_ln = (SMALLEST_SEGMENT_SHARE / LARGEST_SEGMENT_SHARE).ln();
        (0..count)
            .map(|rank| {
                let position = rank as f64 / (count - 1) as f64;
                LARGEST_SEGMENT_SHARE * (ratio_ln * position.powf(bend)).exp()
            })
            .collect()
    };
    let (mut low_bend, mut high_bend) = (1e-4_f64, 1e4_f64);
    for _ in 0..200 {
        // Geometric midpoint: the bend spans several orders of magnitude.
        let bend = (low_bend * high_bend).sqrt();
        let total: f64 = shares_for(bend).iter().sum();
        if total < mean_segments_per_user {
            low_bend = bend;
        } else {
            high_bend = bend;
        }
    }
    shares_for((low_bend * high_bend).sqrt())
}

fn synthetic_segments(args: &GenArgs, rng: &mut SmallRng) -> Vec<SyntheticSegment> {
    let mut shares = segment_shares(args.segments, args.avg_segments_per_user);
    // Sizes are not ordered by id in real catalogues.
    shares.shuffle(rng);
    shares
        .into_iter()
        .enumerate()
        .map(|(index, member_share)| {
            let segment_id = args.first_segment_id + index as u32;
            let roll: f64 = rng.random();
            // Mostly retargeting pools; exclusions (converters, customers) and
            // prospecting (lookalikes, interests) alongside, as in a DSP catalogue.
            let (kind, name_stem, ttl_choices): (&str, &str, &[u32]) = if roll < 0.7 {
                (
                    "retargeting",
                    "rt-visitors",
                    &[7 * DAY_SECONDS, 30 * DAY_SECONDS, 60 * DAY_SECONDS, 0],
                )
            } else if roll < 0.8 {
                ("exclusion", "ex-converters", &[0, 90 * DAY_SECONDS])
            } else {
                ("prospecting", "pr-lookalike", &[0, 30 * DAY_SECONDS])
            };
            let ttl_seconds = ttl_choices[rng.random_range(0..ttl_choices.len())];
            SyntheticSegment {
                segment_id,
                name: format!("{name_stem}-{segment_id}"),
                kind,
                ttl_seconds,
                member_share,
            }
        })
        .collect()
}

fn write_segments(path: &Path, segments: &[SyntheticSegment]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    writeln!(out, "# segment_id\tname\tkind\tttl_seconds")?;
    for segment in segments {
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            segment.segment_id, segment.name, segment.kind, segment.ttl_seconds
        )?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Users drawn per block: the block's memberships are drawn segment by segment,
/// then counting-sorted by user, so the file is user-major (all of a user's
/// segments on adjacent lines, as a batch job's export usually is) while the draw
/// stays per membership. 64k users x 20 segments is ~16 MB of entries.
const USERS_PER_BLOCK: u64 = 1 << 16;

/// One drawn membership inside a block.
#[derive(Clone, Copy, Default)]
struct BlockEntry {
    user_in_block: u32,
    segment_index: u32,
    age_seconds: u32,
}

/// Streams `u:{user}\t{segment}\t{last_seen}` lines, user by user.
///
/// Returns the line count and a bitset of users in at least one segment (for
/// choosing member queries). Formatting goes through `itoa` into one reused
/// buffer: `write!` per line would cost more than drawing the line.
fn write_memberships(
    path: &Path,
    user_count: u64,
    segments: &[SyntheticSegment],
    built_at: i64,
    rng: &mut SmallRng,
    expected_memberships: f64,
) -> Result<(u64, Vec<u64>)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    let mut member_bits = vec![0u64; user_count.div_ceil(64) as usize];
    // Each segment's "\t{id}\t" formatted once.
    let segment_fields: Vec<Vec<u8>> = segments
        .iter()
        .map(|segment| format!("\t{}\t", segment.segment_id).into_bytes())
        .collect();
    // ln(1 - p) once per segment: the gap to the next member is geometric.
    let log_miss: Vec<f64> = segments
        .iter()
        .map(|segment| (1.0 - segment.member_share).ln())
        .collect();
    let mut drawn: Vec<BlockEntry> = Vec::new();
    let mut sorted: Vec<BlockEntry> = Vec::new();
    let mut user_starts: Vec<u32> = Vec::new();
    let mut line = Vec::with_capacity(64);
    let mut number_buffer = itoa::Buffer::new();
    let mut written: u64 = 0;
    let mut next_progress: u64 = 10_000_000;
    let started = Instant::now();
    let mut block_start: u64 = 0;
    while block_start < user_count {
        let block_users = USERS_PER_BLOCK.min(user_count - block_start);
        draw_block(segments, &log_miss, block_users, rng, &mut drawn);
        sort_by_user(&drawn, block_users, &mut user_starts, &mut sorted);
        let mut current_user = u64::MAX;
        let mut user_prefix_length = 0;
        for entry in &sorted {
            let user = block_start + u64::from(entry.user_in_block);
            if user != current_user {
                current_user = user;
                line.clear();
                line.extend_from_slice(b"u:");
                line.extend_from_slice(number_buffer.format(user).as_bytes());
                user_prefix_length = line.len();
                member_bits[(user / 64) as usize] |= 1 << (user % 64);
            }
            line.truncate(user_prefix_length);
            line.extend_from_slice(&segment_fields[entry.segment_index as usize]);
            line.extend_from_slice(
                number_buffer
                    .format(built_at - i64::from(entry.age_seconds))
                    .as_bytes(),
            );
            line.push(b'\n');
            out.write_all(&line)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        written += sorted.len() as u64;
        if written >= next_progress {
            next_progress = written + 10_000_000;
            eprintln!(
                "gen: {:.0} M lines ({:.0} % of expected), {:.1} M lines/s",
                written as f64 / 1e6,
                written as f64 / expected_memberships.max(1.0) * 100.0,
                written as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6,
            );
        }
        block_start += block_users;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((written, member_bits))
}

/// Draws the memberships of one block of `block_users` users into `drawn`,
/// segment by segment: each segment's members come from a geometric process
/// over the users (the gap to the next member), each with a recency.
fn draw_block(
    segments: &[SyntheticSegment],
    log_miss: &[f64],
    block_users: u64,
    rng: &mut SmallRng,
    drawn: &mut Vec<BlockEntry>,
) {
    drawn.clear();
    for (segment_index, segment) in segments.iter().enumerate() {
        // The geometric process is memoryless: restarting it at each block
        // boundary draws the same distribution.
        let mut user_in_block: u64 = 0;
        loop {
            if segment.member_share < 1.0 {
                let uniform: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                let gap = (uniform.ln() / log_miss[segment_index]).floor();
                if !gap.is_finite() || gap >= (block_users - user_in_block) as f64 {
                    break;
                }
                user_in_block += gap as u64;
            }
            if user_in_block >= block_users {
                break;
            }
            // Recent activity is more common than old: square a uniform draw.
            let recency: f64 = rng.random();
            drawn.push(BlockEntry {
                user_in_block: user_in_block as u32,
                segment_index: segment_index as u32,
                age_seconds: (recency * recency * HISTORY_SECONDS) as u32,
            });
            user_in_block += 1;
        }
    }
}

/// Orders one block's memberships by user into `sorted` (`user_starts` is
/// scratch space).
fn sort_by_user(
    drawn: &[BlockEntry],
    block_users: u64,
    user_starts: &mut Vec<u32>,
    sorted: &mut Vec<BlockEntry>,
) {
    // Counting sort by user; stable, so a user's segments stay in id order.
    user_starts.clear();
    user_starts.resize(block_users as usize + 1, 0);
    for entry in drawn {
        user_starts[entry.user_in_block as usize + 1] += 1;
    }
    for index in 1..user_starts.len() {
        user_starts[index] += user_starts[index - 1];
    }
    sorted.clear();
    sorted.resize(drawn.len(), BlockEntry::default());
    let mut next_position = user_starts.clone();
    for entry in drawn {
        let position = &mut next_position[entry.user_in_block as usize];
        sorted[*position as usize] = *entry;
        *position += 1;
    }
}

/// Members drawn uniformly from users in at least one segment; non-members are
/// ids past the user range, which no pack holds.
fn write_queries(
    path: &Path,
    args: &GenArgs,
    member_bits: &[u64],
    rng: &mut SmallRng,
) -> Result<u64> {
    let any_member = member_bits.iter().any(|word| *word != 0);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut number_buffer = itoa::Buffer::new();
    for _ in 0..args.queries {
        let user = if any_member && rng.random_bool(args.member_query_share) {
            loop {
                let candidate = rng.random_range(0..args.users);
                if member_bits[(candidate / 64) as usize] & (1 << (candidate % 64)) != 0 {
                    break candidate;
                }
            }
        } else {
            args.users + rng.random_range(0..args.users.max(1_000_000))
        };
        out.write_all(b"u:")?;
        out.write_all(number_buffer.format(user).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(args.queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_hit_the_requested_mean_and_span_the_range() {
        let shares = segment_shares(1_000, 20.0);
        let total: f64 = shares.iter().sum();
        assert!((total - 20.0).abs() < 0.01, "total {total}");
        let largest = shares.iter().cloned().fold(0.0, f64::max);
        let smallest = shares.iter().cloned().fold(1.0, f64::min);
        assert!((largest - LARGEST_SEGMENT_SHARE).abs() < 1e-9);
        assert!((smallest - SMALLEST_SEGMENT_SHARE).abs() < 1e-9);
    }

    #[test]
    fn few_segments_fall_back_to_equal_shares() {
        let shares = segment_shares(20, 20.0);
        assert!(shares.iter().all(|share| (*share - 1.0).abs() < 1e-12));
    }
}
