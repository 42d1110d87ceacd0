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
    tls: Option<Tls>,
}

/// The files of a store that requires TLS client certificates: a CA, the
/// members' certificate (for their three addresses) and a client's.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub member_cert: PathBuf,
    pub member_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn member_addr(i: usize) -> String {
    format!("10.201.0.{}", i + 1)
}

impl Store {
    /// Three members, started and healthy.
    pub fn start() -> Store {
        Store::started(false)
    }

    /// Three members that speak TLS to clients and require a client
    /// certificate signed by the test's CA.
    pub fn start_tls() -> Store {
        Store::started(true)
    }

    fn started(tls: bool) -> Store {
        let prefix = unique_prefix();
        let ns = NetNs::create(&format!("{prefix}-etcd"));
        for i in 0..MEMBERS {
            ns.ip(&["addr", "add", &format!("{}/32", member_addr(i)), "dev", "lo"]);
        }
        let dir = std::env::temp_dir().join(format!("{prefix}-etcd"));
        std::fs::create_dir_all(&dir).expect("store directory");
        let tls = tls.then(|| Tls::generate(&dir));
        let mut store = Store { ns, dir, members: (0..MEMBERS).map(|_| None).collect(), links: 0, tls };
        for i in 0..MEMBERS {
            store.start_member(i);
        }
        store.wait_healthy(Duration::from_secs(30));
        store
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| self.client_url(i)).collect()
    }

    fn client_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", member_addr(i))
    }

    /// The TLS files, for a store started with [`Store::start_tls`].
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
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
        let client_url = self.client_url(i);
        let mut etcd = self.ns.command("etcd");
        if let Some(tls) = &self.tls {
            etcd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.member_cert)
                .arg("--key-file")
                .arg(&tls.member_key);
        }
        let child = etcd
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{addr}:2380")])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "lbtest"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (installed by cargo xtask setup)");
        self.members[i] = Some(child);
    }

    /// A member that is not running, if any.
    pub fn down_member(&self) -> Option<usize> {
        (0..MEMBERS).find(|i| self.members[*i].is_none())
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
        let mut cmd = self.etcdctl_without_certificate(args);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        }
        cmd
    }

    /// `etcdctl` with the CA but no client certificate (a TLS store refuses it).
    pub fn etcdctl_without_certificate(&self, args: &[&str]) -> Command {
        let running: Vec<String> =
            (0..MEMBERS).filter(|i| self.members[*i].is_some()).map(|i| self.client_url(i)).collect();
        let mut cmd = self.ns.command("etcdctl");
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca);
        }
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

impl Tls {
    /// A CA, a member certificate for the members' addresses, a client
    /// certificate: P-256 keys, made with openssl in `dir`.
    fn generate(dir: &std::path::Path) -> Tls {
        let file = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.current_dir(dir).args(args);
            must(&mut cmd);
        };
        let key =
            |name: &str| openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name]);
        key("ca.key");
        openssl(&["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=lb test CA", "-days", "2", "-out", "ca.crt"]);
        let ips: Vec<String> = (0..MEMBERS).map(|i| format!("IP:{}", member_addr(i))).collect();
        let sign = |name: &str, cn: &str, ext: String| {
            key(&format!("{name}.key"));
            let csr = format!("{name}.csr");
            openssl(&["req", "-new", "-key", &format!("{name}.key"), "-subj", &format!("/CN={cn}"), "-out", &csr]);
            std::fs::write(file(&format!("{name}.ext")), ext).expect("extensions file");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        };
        let member_ext = format!("subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n", ips.join(","));
        sign("member", "etcd member", member_ext);
        sign("client", "lb node", "extendedKeyUsage=clientAuth\n".to_owned());
        Tls {
            ca: file("ca.crt"),
            member_cert: file("member.crt"),
            member_key: file("member.key"),
            client_cert: file("client.crt"),
            client_key: file("client.key"),
        }
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
