//! The real agent (`lb agent`), run as a process in the balancer's namespace.
//! The guard stops it and removes its pins and files, even if the test fails.

use lb_userspace::{
    api::client,
    model::{Event, PoolSummary, PoolView, Request, Stats},
};
use std::{
    fmt::Display,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::topology::Topology;

/// Path of the `lb` binary, set by `cargo xtask test`.
pub fn lb_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("LB_BIN").expect(
        "LB_BIN is not set: run the tests with `cargo xtask test` (it builds the lb binary and points LB_BIN at it)",
    ))
}

/// Where an agent runs: its files' directory (removed with the agent), its
/// instance (pins), the interfaces it attaches to, its namespace's name.
pub struct Place {
    pub dir: PathBuf,
    pub instance: String,
    pub interfaces: Vec<String>,
    pub netns: String,
}

pub struct Agent {
    lb: PathBuf,
    child: Option<Child>,
    pub instance: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    interfaces: Vec<String>,
    netns: PathBuf,
    starts: u32,
    /// More arguments for `lb agent` (e.g. --datapath-log debug).
    agent_args: Vec<String>,
    /// A fault the agent is made to have (`LB_FAIL`, debug builds only).
    fault: Option<String>,
}

impl Agent {
    /// Starts the agent (`$LB_BIN`) on `config` and waits until it is attached.
    pub fn start(topology: &Topology, config: impl Display) -> Agent {
        Agent::start_with(lb_bin(), topology, config)
    }

    /// Starts the agent binary `lb` on `config` and waits until it is attached.
    pub fn start_with(lb: PathBuf, topology: &Topology, config: impl Display) -> Agent {
        Agent::start_full(lb, topology, config, &[], None)
    }

    /// Starts the agent with more `lb agent` arguments.
    pub fn start_with_args(topology: &Topology, config: impl Display, agent_args: &[&str]) -> Agent {
        Agent::start_full(lb_bin(), topology, config, agent_args, None)
    }

    /// Starts the agent with a fault it will have: `part` panics (the
    /// owner: at its first command). Debug builds of the agent only.
    pub fn start_faulty(topology: &Topology, config: impl Display, part: &str) -> Agent {
        Agent::start_full(lb_bin(), topology, config, &[], Some(part))
    }

    /// Starts the agent in a namespace of another test bed than
    /// [`Topology`]'s (an ECMP bed's node, say).
    pub fn start_at(place: Place, config: impl Display) -> Agent {
        Agent::start_placed(lb_bin(), place, config, &[], None)
    }

    /// `config`: a [`ConfigFile`](crate::config_file::ConfigFile), or a
    /// file's text as it is (a malformed one, say).
    fn start_full(
        lb: PathBuf,
        topology: &Topology,
        config: impl Display,
        agent_args: &[&str],
        fault: Option<&str>,
    ) -> Agent {
        let place = Place {
            dir: topology.dir(),
            instance: topology.instance().to_owned(),
            interfaces: topology.lb_interfaces(),
            netns: topology.lb.name.clone(),
        };
        Agent::start_placed(lb, place, config, agent_args, fault)
    }

    fn start_placed(
        lb: PathBuf,
        place: Place,
        config: impl Display,
        agent_args: &[&str],
        fault: Option<&str>,
    ) -> Agent {
        let Place { dir, instance, interfaces, netns } = place;
        std::fs::create_dir_all(&dir).expect("agent temp dir");
        let config_path = dir.join("lb.toml");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let mut agent = Agent {
            lb,
            child: None,
            instance,
            dir,
            config_path,
            interfaces,
            netns: PathBuf::from(format!("/run/netns/{netns}")),
            starts: 0,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            fault: fault.map(str::to_owned),
        };
        agent.launch();
        agent
    }

    /// The agent's API socket (as `Topology::config` sets it).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Runs `lb --socket <this agent's socket> args...`; returns (success, stdout, stderr).
    /// Runs the CLI on a pseudo-terminal (util-linux `script`), as a person
    /// at a terminal would: what it drew, both streams together. `args` are
    /// plain words (no quoting).
    pub fn lb_in_terminal(&self, args: &[&str]) -> (bool, String) {
        let line = format!("{} --socket {} {}", self.lb.display(), self.socket().display(), args.join(" "));
        let out = Command::new("script").args(["-qfec", &line, "/dev/null"]).output().expect("run script");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn lb(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.lb).arg("--socket").arg(self.socket()).args(args).output().expect("run lb");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `lb ... --json`, read as the model's type the command prints (a
    /// `PoolView`, a `Vec<Change>`...); panics on failure.
    pub fn lb_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut args = args.to_vec();
        args.push("--json");
        let (ok, stdout, stderr) = self.lb(&args);
        assert!(ok, "lb {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("lb {args:?}: bad JSON ({e}): {stdout}"))
    }

    /// A request through the API socket, its answer typed; panics on a refusal.
    pub fn ask<T: serde::de::DeserializeOwned>(&self, request: &Request) -> T {
        client::ask(&self.socket(), request)
            .unwrap_or_else(|e| panic!("{request:?}: {e}\n--- agent log ---\n{}", self.log()))
    }

    pub fn pool(&self, pool: &str) -> PoolView {
        self.ask(&Request::PoolShow { pool: pool.to_owned() })
    }

    pub fn pools(&self) -> Vec<PoolSummary> {
        self.ask(&Request::PoolList)
    }

    pub fn events(&self) -> Vec<Event> {
        self.ask(&Request::Events { since: None })
    }

    pub fn stats(&self) -> Stats {
        self.ask(&Request::Stats)
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.instance)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// A command running `lb` in the balancer's namespace.
    pub fn lb_command(&self) -> Command {
        let netns = std::fs::File::open(&self.netns).expect("open lb netns");
        let mut cmd = Command::new(&self.lb);
        // SAFETY: setns is async-signal-safe; the file stays open until exec.
        unsafe {
            use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the agent again (after `kill` or `stop`) without waiting for
    /// it: the caller times it, then calls [`Agent::wait_ready`].
    pub fn restart_unwaited(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("agent log");
        let mut command = self.lb_command();
        if let Some(part) = &self.fault {
            command.env("LB_FAIL", part);
        }
        let child = command
            .args(["--log-level", "debug", "agent", "--config"])
            .arg(&self.config_path)
            .args(&self.agent_args)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start lb agent");
        self.child = Some(child);
    }

    /// Ready when every interface's link pin exists (pinned after attach)
    /// and the log says so for this start.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited during start-up ({status}):\n{}", self.log());
            }
            let attached = self.log().matches("attached to").count() as u32 >= self.starts;
            if attached && self.interfaces.iter().all(|i| self.pin_dir().join(format!("link_{i}")).exists()) {
                return;
            }
            if Instant::now() > deadline {
                panic!("agent not ready after 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The agent's process id (it must be running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Number of flows in the agent's pinned flow table.
    pub fn flow_count(&self) -> usize {
        let flows =
            lb_userspace::datapath::flow_table::FlowTable::from_pins(&self.pin_dir()).expect("pinned flow table");
        flows.len().expect("read the flow table")
    }

    /// SIGKILL: the agent gets no chance to clean up (pins and XDP stay).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Starts another build of the agent on the same config (after `kill`
    /// or `stop`), as an upgrade does.
    pub fn upgrade(&mut self, lb: PathBuf) {
        self.lb = lb;
        self.restart();
    }

    /// Starts the agent again on the same config (after `kill` or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.launch();
    }

    /// Starts again (after it stopped) without the fault it was given.
    pub fn restart_without_fault(&mut self) {
        self.fault = None;
        self.restart();
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("agent status") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent still runs after {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- agent log ({}) ---\n{}", self.instance, self.log());
        }
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
