//! `cargo xtask`: set up, build, run and test the load balancer.

mod install;
mod setup;

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the agent (`lb`) and the demo.
    Build,
    /// Run the load balancer: the demo topology, or the agent on this host
    /// with `--config FILE` (also `cargo xtask run -- --config FILE`).
    Run {
        /// Run the agent on the host's own interfaces with this config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Arguments for `lb agent` (after `--`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Run the benchmarks: one table, and the same figures as JSON in
    /// target/bench/latest.json.
    Bench {
        /// A smaller, faster run.
        #[arg(long)]
        quick: bool,
        /// Only these sections: datapath, pps, e2e, control, start, cluster,
        /// ecmp, drains.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Install the agent on this host: /usr/local/bin/lb and the systemd unit
    /// lb@.service (run an instance with `systemctl enable --now lb@NAME`,
    /// on /etc/lb/NAME.toml).
    Install,
    /// Fuzz the datapath longer than the tests do (BPF_PROG_TEST_RUN with
    /// generated packets; see tests/tests/fuzz.rs).
    Fuzz {
        /// Packets to try.
        #[arg(long, default_value_t = 2_000_000)]
        cases: u32,
        /// Another seed than the tests' (0-255).
        #[arg(long, default_value_t = 1)]
        seed: u8,
    },
    /// The chaos soak: traffic through the real agent while servers are
    /// disabled, enabled, drained and stopped and the agent is restarted.
    Soak {
        /// How long (10m, 1h).
        #[arg(long, default_value = "10m")]
        duration: String,
        /// The chaos's seed.
        #[arg(long, default_value_t = 24301)]
        seed: u64,
        /// Three nodes sharing a three-member etcd, with nodes and store
        /// members killed at random.
        #[arg(long)]
        cluster: bool,
    },
    /// Run every test (unit, datapath fixtures, namespace end-to-end).
    Test {
        /// Passed to the test binaries (a filter, --nocapture, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    // Every task needs what `setup` installs (idempotent: seconds when all
    // is there).
    setup::setup()?;
    match task {
        Task::Setup => Ok(()),
        Task::Build => build(false).map(drop),
        Task::Run { config, agent_args } => exec(&mut agent_or_demo(&build(false)?, config, agent_args)),
        Task::Install => install::install(&build(true)?.lb),
        Task::Bench { quick, only } => {
            setup::bench_setup()?;
            let bins = build(true)?;
            let json = target_dir()?.join("bench").join("latest.json");
            let mut cmd = Command::new(&bins.bench);
            cmd.arg("--lb").arg(&bins.lb).arg("--json").arg(&json);
            if quick {
                cmd.arg("--quick");
            }
            for section in only {
                cmd.arg("--only").arg(section);
            }
            exec(&mut cmd)
        }
        Task::Fuzz { cases, seed } => {
            let bins = build(false)?;
            eprintln!("fuzz: {cases} packets through the datapath, seed {seed}");
            let mut cmd = cargo();
            cmd.args(["test", "-p", "tests", "--test", "fuzz", "--", "--nocapture"])
                .env("LB_BIN", &bins.lb)
                .env("LB_FUZZ_CASES", cases.to_string())
                .env("LB_FUZZ_SEED", seed.to_string());
            exec(&mut cmd)
        }
        Task::Soak { duration, seed, cluster } => {
            let bins = build(false)?;
            let mut cmd = Command::new(&bins.soak);
            cmd.arg("--lb").arg(&bins.lb).args(["--duration", &duration, "--seed", &seed.to_string()]);
            if cluster {
                cmd.arg("--cluster");
            }
            exec(&mut cmd)
        }
        Task::Test { args } => {
            let bins = build(false)?;
            eprintln!("test: running every test (unit, datapath fixtures, namespace end-to-end)");
            let mut cmd = cargo();
            cmd.args(["test", "--workspace"]).env("LB_BIN", &bins.lb);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            exec(&mut cmd)
        }
    }
}

/// `cargo xtask run`: the agent with the given config or arguments, or
/// the demo topology when given neither.
fn agent_or_demo(bins: &Binaries, config: Option<PathBuf>, agent_args: Vec<String>) -> Command {
    if config.is_none() && agent_args.is_empty() {
        let mut cmd = Command::new(&bins.demo);
        cmd.arg("--lb").arg(&bins.lb);
        return cmd;
    }
    let mut cmd = Command::new(&bins.lb);
    cmd.arg("agent");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(agent_args);
    cmd
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

struct Binaries {
    lb: PathBuf,
    demo: PathBuf,
    bench: PathBuf,
    soak: PathBuf,
}

/// Where cargo builds, as it reports it.
fn target_dir() -> anyhow::Result<PathBuf> {
    let out = cargo().args(["metadata", "--format-version=1", "--no-deps"]).output().context("cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    Ok(PathBuf::from(meta["target_directory"].as_str().context("no target_directory")?))
}

/// Builds the agent, the demo and the benchmark (optimised when `release`);
/// returns their paths as cargo reports them.
fn build(release: bool) -> anyhow::Result<Binaries> {
    eprintln!("build: lb (agent and CLI, with the XDP program), lb-demo, lb-bench, lb-soak");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "lb-userspace", "--package", "tests", "--bins", "--message-format=json"]);
    if release {
        cmd.arg("--release");
    }
    let output = cmd.stderr(Stdio::inherit()).output().context("cannot run cargo build")?;
    if !output.status.success() {
        bail!("build failed");
    }
    let mut lb = None;
    let mut demo = None;
    let mut bench = None;
    let mut soak = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        match message["target"]["name"].as_str() {
            Some("lb") => lb = Some(PathBuf::from(executable)),
            Some("lb-demo") => demo = Some(PathBuf::from(executable)),
            Some("lb-bench") => bench = Some(PathBuf::from(executable)),
            Some("lb-soak") => soak = Some(PathBuf::from(executable)),
            _ => {}
        }
    }
    Ok(Binaries {
        lb: lb.context("cargo did not report the lb binary")?,
        demo: demo.context("cargo did not report the lb-demo binary")?,
        bench: bench.context("cargo did not report the lb-bench binary")?,
        soak: soak.context("cargo did not report the lb-soak binary")?,
    })
}

/// Runs a child to completion. Ctrl-C reaches the child (same process
/// group); xtask ignores it so that it waits while the child cleans up.
fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    // SAFETY: setting a signal disposition has no preconditions; in the
    // child (between fork and exec) it is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        // An ignored signal stays ignored across exec: give the child the default.
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{} exited with {status}", cmd.get_program().to_string_lossy());
    }
    Ok(())
}
