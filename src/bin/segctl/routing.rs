//! Where a query goes: one server (`--addr`), or the shard of the user among
//! `--shard-addrs` (index = shard), routed by [`segd::shard::shard_of_user`],
//! the function every segd replica checks.

use clap::Args;

/// The query port(s) a user's request goes to.
#[derive(Args, Clone)]
pub struct QueryTarget {
    /// Query address of the server.
    #[arg(long, env = "SEGD_ADDR", default_value = "http://127.0.0.1:7400")]
    addr: String,
    /// Query addresses of every shard, comma-separated, in shard order
    /// (index = shard): each user goes to its shard's address. Replaces --addr.
    #[arg(
        long,
        env = "SEGD_SHARD_ADDRS",
        value_delimiter = ',',
        value_name = "ADDR,ADDR,.."
    )]
    shard_addrs: Vec<String>,
}

impl QueryTarget {
    /// The address serving `user_id`, and its shard when routed.
    pub fn route(&self, user_id: &str) -> (&str, Option<segd::shard::Shard>) {
        route(&self.addr, &self.shard_addrs, user_id)
    }
}

/// `shard_addrs[shard_of_user(user_id, len)]`, or `addr` when unsharded.
pub fn route<'a>(
    addr: &'a str,
    shard_addrs: &'a [String],
    user_id: &str,
) -> (&'a str, Option<segd::shard::Shard>) {
    if shard_addrs.is_empty() {
        return (addr, None);
    }
    let count = shard_addrs.len() as u32;
    let index = segd::shard::shard_of_user(user_id, count);
    (
        &shard_addrs[index as usize],
        Some(segd::shard::Shard { index, count }),
    )
}

/// One line on stderr saying where a routed request went (stdout stays the answer).
pub fn report_route(user_id: &str, addr: &str, shard: Option<segd::shard::Shard>) {
    if let Some(shard) = shard {
        eprintln!("user {user_id}: shard {shard}, {addr}");
    }
}
