//! `bit`: the command-line face of big-transfer-rs.

use std::path::PathBuf;
use std::process::ExitCode;

use bit_model::NpzCheckpoint;
use clap::{Parser, Subcommand};

/// Big Transfer (BiT) in pure Rust.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the architecture stored in a BiT `.npz` checkpoint (read from its keys and shapes).
    Inspect {
        /// The checkpoint, e.g. `BiT-M-R50x1.npz`.
        checkpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Inspect { checkpoint } => inspect(&checkpoint),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: &std::path::Path) -> Result<(), bit_model::Error> {
    let ckpt = NpzCheckpoint::open(path)?;
    let arch = ckpt
        .architecture()
        .map_or_else(|| "custom".to_string(), |a| a.to_string());
    println!("checkpoint:    {}", ckpt.path().display());
    println!(
        "architecture:  {arch} (block units {:?}, width factor {})",
        ckpt.block_units(),
        ckpt.width_factor()
    );
    println!(
        "input:         {} channels, NCHW in [-1, 1]",
        ckpt.in_channels()
    );
    println!("features:      {}", 2048 * ckpt.width_factor());
    match ckpt.head_size() {
        Some(n) => println!("head:          {n} classes"),
        None => println!("head:          none (load with a new head)"),
    }
    println!("arrays:        {}", ckpt.array_names().count());
    Ok(())
}
