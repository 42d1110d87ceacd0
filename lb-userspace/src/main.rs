//! `lb`: the load balancer's agent and command-line interface.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{agent, config::Config};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP L4 load balancer")]
struct Cli {
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the XDP program, serve the config.
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the config, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Remove an instance's pinned maps (its agent must be stopped).
    Cleanup {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent { config, check } => {
            let config = Config::load(&config)?;
            if check {
                println!(
                    "config is valid: {} service(s), {} pool(s)",
                    config.services.len(),
                    config.pools.len()
                );
                return Ok(());
            }
            agent::run(config)
        }
        Command::Cleanup { config } => {
            let config = Config::load(&config)?;
            let dir = agent::pin_dir(&config.instance);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
                println!("removed {}", dir.display());
            }
            Ok(())
        }
    }
}
