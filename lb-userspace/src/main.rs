//! `lb`: the load balancer's agent and command-line interface.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{
    cli::{self, DisableArgs, ReloadArgs},
    config::{self, Config},
    daemon,
};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP L4 load balancer")]
struct Cli {
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// The agent's API socket (the config's api_socket).
    #[arg(long, global = true, env = "LB_SOCKET", default_value = "/run/lb/lb.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the XDP program, serve the config.
    Agent {
        /// The config file (TOML; README, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
        /// Log the datapath's rare events (resets sent for terminated
        /// flows, flow slots lost to another CPU): off, error, warn, info,
        /// debug or trace. Off costs the packet path nothing.
        #[arg(long, default_value = "off")]
        datapath_log: lb_userspace::datapath::ebpf_log::DatapathLog,
        /// Only validate the config, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Take servers out of service, or put them back.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Show pools and their servers.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// What happened to servers: drains begun and ended, deadlines, enables.
    Events {
        /// Only this pool's events (its servers', its services', its own).
        pool: Option<String>,
        /// Only this server's events, of the pool given.
        server: Option<String>,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's nodes: up or gone, when each last synced, its revision,
    /// its flows, its config hash, its clock's offset.
    Nodes {
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Take a balancer node out of service (its VIPs withdrawn from its
    /// routers; the other nodes continue its flows), or put it back.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Packets by outcome: forwarded, passed, dropped, and why.
    Stats {
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the agent's config file and apply the difference: servers and
    /// services added, changed, removed (removed ones are taken out by their
    /// pool's graceful_disable_timeout), `enabled` lines that changed.
    /// Nothing is applied if the config has a problem. SIGHUP does the same.
    Reload {
        /// Even if it leaves a pool with no enabled server.
        #[arg(long)]
        force: bool,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// The agent's config file: its agent is found from it (its
        /// `api_socket`), instead of --socket. For systemd's ExecReload.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// In a cluster: only this node re-reads its file (as SIGHUP does),
        /// not every node.
        #[arg(long)]
        this_node: bool,
    },
    /// Stop forwarding for good: detach XDP and remove the instance's pinned
    /// links and maps (its agent must be stopped; stopping the agent alone
    /// leaves XDP forwarding, so that a restart misses no packet). In a
    /// cluster, the node leaves it: the other nodes no longer show it.
    Cleanup {
        /// The config the agent ran with (its `instance` names the pins).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Disable servers: at once (their sessions are reset), or gracefully
    /// (no new sessions; existing ones may finish, until a timeout if given).
    Disable {
        /// The pool, as named in the config (`lb pool list`).
        pool: String,
        /// One or more of its servers, by name (`lb pool show POOL`).
        #[arg(required = true)]
        servers: Vec<String>,
        /// No new sessions; existing ones go on (until drained, or --timeout).
        #[arg(long)]
        graceful: bool,
        /// With --graceful: terminate the sessions left after this long (90s, 5m, 2h).
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        timeout: Option<String>,
        /// With --graceful: no deadline; disabled when the last session ends.
        #[arg(long)]
        until_drained: bool,
        /// Even if it leaves the pool with no enabled server.
        #[arg(long)]
        force: bool,
        /// Follow the drain until the servers are disabled.
        #[arg(long)]
        wait: bool,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put servers back into service.
    Enable {
        /// The pool, as named in the config (`lb pool list`).
        pool: String,
        /// One or more of its servers, by name (`lb pool show POOL`).
        #[arg(required = true)]
        servers: Vec<String>,
        /// Even a server whose health monitor says it is in maintenance.
        #[arg(long)]
        force: bool,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Withdraw a node: at once, or gracefully (its flows' copies pushed to
    /// the other nodes first; disabled once none reaches it, or at --timeout).
    Disable {
        /// The node, by its `[cluster]` name (`lb nodes`).
        node: String,
        /// Push its flows to the other nodes first, then withdraw; it forwards
        /// what still reaches it until drained (or --timeout).
        #[arg(long)]
        graceful: bool,
        /// With --graceful: disabled after this long even if flows still reach it.
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        timeout: Option<String>,
        /// With --graceful: no deadline; disabled once no flow reaches it.
        #[arg(long)]
        until_drained: bool,
        /// Even if no other node in service announces its VIPs.
        #[arg(long)]
        force: bool,
        /// Follow the drain until the node is disabled.
        #[arg(long)]
        wait: bool,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put a node back into service: its VIPs announced again.
    Enable {
        /// The node, by its `[cluster]` name (`lb nodes`).
        node: String,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The nodes, their announcements and states (as `lb nodes`).
    List {
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Per pool: its servers by state, its services, its live flows.
    List {
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Per server: address, weight, state and why, live flows, deadline left.
    Show {
        /// The pool, as named in the config (`lb pool list`).
        pool: String,
        /// Print the API's answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new().parse_filters(&cli.log_level).parse_env("RUST_LOG").format_target(false).init();
    match run(cli.command, &cli.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, socket: &std::path::Path) -> anyhow::Result<()> {
    match command {
        Command::Agent { config: path, check, datapath_log } => {
            let mut startup = daemon::startup::StartupClock::begin();
            let config = Config::load(&path)?;
            startup.mark("config");
            if check {
                println!("config is valid: {} service(s), {} pool(s)", config.services.len(), config.pools.len());
                return Ok(());
            }
            // Re-read on `lb reload` and SIGHUP.
            let path = std::path::absolute(&path).unwrap_or(path);
            daemon::run(config, path, datapath_log, startup)
        }
        Command::Server {
            command: ServerCommand::Disable { pool, servers, graceful, timeout, until_drained, force, wait, json },
        } => {
            let args = DisableArgs { graceful, timeout, until_drained, force, wait };
            cli::disable(socket, &pool, &servers, &args, json)
        }
        Command::Server { command: ServerCommand::Enable { pool, servers, force, json } } => {
            cli::enable(socket, &pool, &servers, force, json)
        }
        Command::Pool { command: PoolCommand::List { json } } => cli::pool_list(socket, json),
        Command::Pool { command: PoolCommand::Show { pool, json } } => cli::pool_show(socket, &pool, json),
        Command::Events { pool, server, json } => cli::events(socket, pool.as_deref(), server.as_deref(), json),
        Command::Stats { json } => cli::stats(socket, json),
        Command::Nodes { json } | Command::Node { command: NodeCommand::List { json } } => cli::nodes(socket, json),
        Command::Node {
            command: NodeCommand::Disable { node, graceful, timeout, until_drained, force, wait, json },
        } => {
            let args = DisableArgs { graceful, timeout, until_drained, force, wait };
            cli::node_disable(socket, &node, &args, json)
        }
        Command::Node { command: NodeCommand::Enable { node, json } } => cli::node_enable(socket, &node, json),
        Command::Reload { force, dry_run, json, config, this_node } => {
            let socket = match config {
                Some(path) => config::api_socket_of(&path)?,
                None => socket.to_owned(),
            };
            cli::reload(&socket, &ReloadArgs { force, dry_run, this_node }, json)
        }
        Command::Cleanup { config } => daemon::cleanup(&Config::load(&config)?),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};
    use proptest::{
        prelude::*,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `--help` is where an operator reads what a word means: no command,
    /// argument or option goes without a line there.
    #[test]
    fn every_command_argument_and_option_says_what_it_is() {
        fn unsaid(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name()).trim_start().to_string();
            for arg in command.get_arguments().filter(|a| a.get_help().is_none()) {
                found.push(format!("{path}: {}", arg.get_id()));
            }
            for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
                if sub.get_about().is_none() {
                    found.push(format!("{path} {}", sub.get_name()));
                }
                unsaid(sub, &path, found);
            }
        }
        let mut found = Vec::new();
        unsaid(&Cli::command().disable_help_flag(true).disable_version_flag(true), "", &mut found);
        assert!(found.is_empty(), "without a help line: {found:#?}");
    }

    #[test]
    fn any_arguments_parse_or_are_refused_never_a_panic() {
        let words = vec![
            "agent",
            "server",
            "disable",
            "enable",
            "pool",
            "list",
            "show",
            "events",
            "p7",
            "s1",
            "stats",
            "cleanup",
            "--config",
            "-c",
            "--graceful",
            "--timeout",
            "--until-drained",
            "--force",
            "--wait",
            "--json",
            "--socket",
            "--log-level",
            "--datapath-log",
            "debug",
            "web",
            "web-1",
            "5m",
            "-5m",
            "",
            "--",
            "-",
            "x".repeat(300).leak(),
        ];
        let config = Config { cases: 5000, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]));
        runner
            .run(&proptest::collection::vec(prop::sample::select(words), 0..8), |args| {
                let _ = Cli::try_parse_from(std::iter::once("lb").chain(args.iter().copied()));
                Ok(())
            })
            .unwrap();
    }
}
