//! `loadtest`: the load tester of segd.
//!
//! # Layout
//!
//! - [`cli`]: the flags of every subcommand.
//! - [`r#gen`] (`gen.rs`; `gen` is a reserved word in edition 2024): the synthetic data set (`loadtest gen`).
//! - [`workload`]: the request generator shared by every target.
//! - [`run`]: the open/closed-loop driver, progress line and swap pushes (`loadtest run`).
//! - [`report`]: histograms, the final report and its JSON form.
//! - [`chart`]: the SVG chart, built by hand.
//! - [`redis_target`]: the Redis baseline: `loadtest redis-load` and the Redis executor.

#![forbid(unsafe_code)]

mod cli;
mod r#gen;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Gen(args) => r#gen::run(&args),
        cli::Command::Run(_args) => todo!(),
        cli::Command::RedisLoad(_args) => todo!(),
    }
}
