//! A cluster store for tests: three etcd members (Debian's etcd 3.4) on
//! addresses of their own namespace, reached from each balancer namespace
//! through a veth pair. Members are the test's own processes, stopped by
//! their id; their data directories and the namespace go on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{NetNs, must, unique_prefix};

/// The store's members, by index 0..3.
pub const MEMBERS: usize = 3;

pub struct Store {
    pub ns: NetNs,
    dir: PathBuf,
    members: Vec<Option<Child>>,
    links: usize,
}

fn member_addr(i: usize) -> String {
    format!("10.201.0.{}", i + 1)
}

impl Store {
    /// Three members, started and healthy.
    pub fn start() -> Store {
        let prefix = unique_prefix();
        let ns = NetNs::create(&format!("{prefix}-etcd"));
        for i in 0..MEMBERS {
            ns.ip(&["addr", "add", &format!("{}/32", member_addr(i)), "dev", "lo"]);
        }
        let dir = std::env::temp_dir().join(format!("{prefix}-etcd"));
        std::fs::create_dir_all(&dir).expect("store directory");
        let mut store = Store { ns, dir, members: (0..MEMBERS).map(|_| None).collect(), links: 0 };
        for i in 0..MEMBERS {
            store.start_member(i);
        }
        store.wait_healthy(Duration::from_secs(30));
        store
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| format!("http://{}:2379", member_addr(i))).collect()
    }

    /// Makes the store reachable from `lb` (a balancer's namespace).
    pub fn link(&mut self, lb: &NetNs) {
        self.links += 1;
        let k = self.links;
        let (here, there) = (format!("st{k}"), "store");
        self.ns.ip(&["link", "add", &here, "type", "veth", "peer", "name", there, "netns", &lb.name]);
        self.ns.ip(&["addr", "add", &format!("10.202.{k}.1/30"), "dev", &here]);
        lb.ip(&["addr", "add", &format!("10.202.{k}.2/30"), "dev", there]);
        self.ns.ip(&["link", "set", &here, "up"]);
        lb.ip(&["link", "set", there, "up"]);
        lb.ip(&["route", "add", "10.201.0.0/24", "via", &format!("10.202.{k}.1")]);
    }

    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} runs already");
        let cluster: Vec<String> = (0..MEMBERS).map(|j| format!("e{j}=http://{}:2380", member_addr(j))).collect();
        let addr = member_addr(i);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("e{i}.log")))
            .expect("member log");
        let child = self
            .ns
            .command("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{addr}:2380")])
            .args(["--listen-client-urls", &format!("http://{addr}:2379")])
            .args(["--advertise-client-urls", &format!("http://{addr}:2379")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "lbtest"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (installed by cargo xtask setup)");
        self.members[i] = Some(child);
    }

    /// SIGKILL to member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `etcdctl` against the running members.
    pub fn etcdctl(&self, args: &[&str]) -> Command {
        let running: Vec<String> = (0..MEMBERS)
            .filter(|i| self.members[*i].is_some())
            .map(|i| format!("http://{}:2379", member_addr(i)))
            .collect();
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", running.join(",")))
            .arg("--command-timeout=2s")
            .args(args);
        cmd
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let healthy = self.etcdctl(&["endpoint", "health"]).output().is_ok_and(|o| o.status.success());
            if healthy {
                return;
            }
            assert!(start.elapsed() < timeout, "the store is not healthy after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> usize {
        let out = must(&mut self.etcdctl(&["endpoint", "status", "-w", "json"]));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl's JSON");
        let leader = status
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
            .and_then(|e| e["Endpoint"].as_str())
            .expect("a leader")
            .to_owned();
        (0..MEMBERS).find(|i| leader.contains(&member_addr(*i))).expect("a member's endpoint")
    }

    /// The value of `key`, as etcdctl prints it.
    pub fn get(&self, key: &str) -> String {
        let out = must(&mut self.etcdctl(&["get", "--print-value-only", key]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for i in 0..MEMBERS {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
