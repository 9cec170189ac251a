//! `segctl update` and `segctl forget`: real-time membership updates and
//! opt-outs from TSV files or the command line, sent in batches.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use segd::proto::{ForgetUsersRequest, MemberUpdate, UpdateMembersRequest, member_update};

use crate::AdminArgs;
use crate::client::{admin_client, status_error};

/// Progress is printed every this many lines (on a terminal, or with --progress).
const PROGRESS_EVERY: u64 = 100_000;

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Updates per UpdateMembers request.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Print progress to stderr even when it is not a terminal.
    #[arg(long)]
    progress: bool,
    /// TSV lines `user_id<TAB>segment_id<TAB>add|remove[<TAB>last_seen[<TAB>expires_at]]`
    /// (unix seconds, 0 or absent = now / no expiry); `-` reads stdin. `#` and
    /// blank lines are skipped.
    file: String,
}

#[derive(Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A file of user ids, one a line (`#` and blank lines skipped); `-` reads stdin.
    #[arg(long, conflicts_with = "user_ids")]
    file: Option<String>,
    /// Users per ForgetUsers request.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// The user ids to forget.
    #[arg(required_unless_present = "file")]
    user_ids: Vec<String>,
}

fn open_input(file: &str) -> anyhow::Result<Box<dyn BufRead>> {
    if file == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let handle =
        std::fs::File::open(PathBuf::from(file)).with_context(|| format!("open {file}"))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, handle)))
}

/// Parses one TSV line; `None` for a comment or blank line.
pub fn parse_update_line(line: &str) -> Result<Option<MemberUpdate>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split('\t').collect();
    if !(3..=5).contains(&fields.len()) {
        return Err(format!(
            "expected 3 to 5 tab-separated fields (user_id, segment_id, add|remove, [last_seen, [expires_at]]), found {}",
            fields.len()
        ));
    }
    if fields[0].is_empty() {
        return Err("empty user_id".to_owned());
    }
    let segment_id: u32 = fields[1]
        .parse()
        .map_err(|error| format!("segment_id {:?}: {error}", fields[1]))?;
    let op = match fields[2].to_ascii_lowercase().as_str() {
        "add" => member_update::Op::Add,
        "remove" => member_update::Op::Remove,
        other => return Err(format!("op {other:?}: expected add or remove")),
    };
    let time = |index: usize, name: &str| -> Result<i64, String> {
        match fields.get(index) {
            None => Ok(0),
            Some(&"") => Ok(0),
            Some(text) => text
                .parse::<i64>()
                .map_err(|error| format!("{name} {text:?}: {error}"))
                .and_then(|value| {
                    if value < 0 {
                        Err(format!("{name} {value}: negative"))
                    } else {
                        Ok(value)
                    }
                }),
        }
    };
    Ok(Some(MemberUpdate {
        user_id: fields[0].to_owned(),
        segment_id,
        op: op as i32,
        last_seen_unix_seconds: time(3, "last_seen")?,
        expires_at_unix_seconds: time(4, "expires_at")?,
    }))
}

pub async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut client = admin_client(&args.admin).await?;
    let input = open_input(&args.file)?;
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut applied, mut line_number) = (0u64, 0u64);
    let mut batch: Vec<MemberUpdate> = Vec::with_capacity(args.batch);
    let mut lines = input.lines();
    loop {
        let line = lines.next();
        if let Some(line) = &line {
            line_number += 1;
            let line = line
                .as_ref()
                .map_err(|error| anyhow::anyhow!("read {}: {error}", args.file))?;
            let parsed = parse_update_line(line).map_err(|problem| {
                anyhow::anyhow!("{} line {line_number}: {problem}", args.file)
            })?;
            batch.extend(parsed);
            if show_progress && line_number % PROGRESS_EVERY == 0 {
                eprintln!(
                    "segctl update: {line_number} lines read, {applied} applied, {:.0} updates/s",
                    applied as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
        if batch.len() >= args.batch || (line.is_none() && !batch.is_empty()) {
            let updates = std::mem::take(&mut batch);
            let reply = client
                .update_members(UpdateMembersRequest { updates })
                .await
                .map_err(|status| {
                    status_error("update")(status).context(format!(
                        "{applied} updates were applied before this batch (lines up to {line_number})"
                    ))
                })?
                .into_inner();
            applied += u64::from(reply.applied);
        }
        if line.is_none() {
            break;
        }
    }
    println!(
        "applied {applied} updates in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn forget(args: ForgetArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let user_ids: Vec<String> = match &args.file {
        Some(file) => {
            let mut text = String::new();
            open_input(file)?
                .read_to_string(&mut text)
                .with_context(|| format!("read {file}"))?;
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect()
        }
        None => args.user_ids.clone(),
    };
    let mut client = admin_client(&args.admin).await?;
    let mut forgotten = 0u64;
    for chunk in user_ids.chunks(args.batch) {
        let reply = client
            .forget_users(ForgetUsersRequest {
                user_ids: chunk.to_vec(),
            })
            .await
            .map_err(|status| {
                status_error("forget")(status).context(format!(
                    "{forgotten} users were forgotten before this batch"
                ))
            })?
            .into_inner();
        forgotten += u64::from(reply.forgotten);
    }
    println!("forgot {forgotten} users");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_or_name_their_problem() {
        let update = parse_update_line("u1\t7\tadd\t100\t200\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                update.segment_id,
                update.op,
                update.last_seen_unix_seconds,
                update.expires_at_unix_seconds
            ),
            (7, 0, 100, 200)
        );
        let remove = parse_update_line("u1\t7\tREMOVE").unwrap().unwrap();
        assert_eq!(remove.op, 1);
        assert_eq!(parse_update_line("# comment").unwrap(), None);
        assert_eq!(parse_update_line("").unwrap(), None);
        assert!(parse_update_line("u1\t7").unwrap_err().contains("3 to 5"));
        assert!(
            parse_update_line("u1\tx\tadd")
                .unwrap_err()
                .contains("segment_id")
        );
        assert!(
            parse_update_line("u1\t7\tkeep")
                .unwrap_err()
                .contains("add or remove")
        );
        assert!(
            parse_update_line("u1\t7\tadd\t-1")
                .unwrap_err()
                .contains("negative")
        );
    }
}
