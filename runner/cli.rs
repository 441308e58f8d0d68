//! The command line.

use crate::scenario::BackendKind;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Runs YAML block-layer fault-injection scenarios and compares their output with golden files.
#[derive(Debug, Parser)]
#[command(name = "blockfault", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files or folders (searched recursively for *.yaml) [default: scenarios]
    pub paths: Vec<PathBuf>,
    /// Only scenarios whose name contains PATTERN, or matches it as a glob (`*`, `?`, `[..]`); repeatable
    #[arg(short = 'k', long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Parallel jobs [default: available cores]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// Which engine runs the steps
    #[arg(long, value_enum, default_value = "builtin")]
    pub backend: BackendKind,
    /// Write the actual output as the golden file of each scenario run
    #[arg(long)]
    pub bless: bool,
    /// Folder of golden files [default: golden/ beside the scenarios/ folder]
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
    /// List the selected scenarios instead of running them
    #[arg(long)]
    pub list: bool,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Run only shard K of N (1-based), e.g. 2/4
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Keep each scenario's scratch directory and print its path
    #[arg(long)]
    pub keep: bool,
    /// Replay one point of a sweep (an id from its golden, e.g. `pwritev#3/errno=5/once` or
    /// `crash@12-3`) with everything it printed; with --keep its files stay in
    /// SCRATCH/sweep-point/. Takes one sweep scenario; compares no golden.
    #[arg(long, value_name = "ID")]
    pub point: Option<String>,
    /// The most cases one scenario's matrix may make
    #[arg(long, value_name = "N", default_value_t = crate::matrix::DEFAULT_MAX_CASES)]
    pub max_cases: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run qemu-io with blockfault's engine (arguments as qemu-io takes them). A first argument
    /// `--trace-blkdebug` (blockfault's, before qemu-io's own) prints on stderr each blkdebug
    /// event raised and each request reaching a blkdebug node, with what the rules did.
    #[command(disable_help_flag = true)]
    Io {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run qemu-img with blockfault's engine (arguments as qemu-img takes them)
    #[command(disable_help_flag = true)]
    Img {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print the JSON Schema (draft-07) of the scenario format
    Schema,
    /// Write a commented starter scenario, scenarios/FOLDER/NAME.yaml (never overwriting one)
    New {
        /// FOLDER/NAME, e.g. blkdebug/fail-second-write
        name: String,
    },
    /// List blkdebug's events: when each fires, on which node, and which qemu-io commands raise
    /// it (found by running each command on the builtin engine with the blkdebug trace)
    Events {
        /// Only the commands of this image format
        #[arg(long, value_enum)]
        format: Option<crate::events::Format>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}
