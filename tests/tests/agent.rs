//! The agent's life cycle: refusing bad configs, stopping cleanly, surviving
//! a kill, aging flows.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{MAPS_FORMAT, map_name};
use testbed::{
    agent::Agent,
    bed::wait_for,
    servers::{EchoClient, Kind, Server, http_get, udp_exchange},
    topology::{ServiceSpec, Topology, VIP},
};

fn xdp_attached(topology: &Topology, interface: &str) -> bool {
    xdp_program(topology, interface).is_some()
}

/// The id of the XDP program attached to `interface`, if any.
fn xdp_program(topology: &Topology, interface: &str) -> Option<u32> {
    let out = topology.lb.ip(&["-d", "link", "show", "dev", interface]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text.split("prog/xdp id ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// Two line-echo servers behind VIP:7 (pool p7), their agent, and a
/// client's connection through it with the server it reached; the agent
/// then stopped (its pins in place): where a restart or an upgrade starts.
struct Stopped {
    topology: Topology,
    _echo: Vec<Server>,
    agent: Agent,
    client: EchoClient,
    server: String,
}

fn stopped_with_a_connection() -> Stopped {
    let topology = Topology::new(2);
    let _echo: Vec<Server> =
        topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::LineEcho, 7007)).collect();
    let echo = ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1, 1] };
    let mut agent = Agent::start(&topology, topology.config(&[echo]));
    let mut client = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("connect");
    let server = client.exchange("before").expect("exchange");
    agent.stop().expect("agent was running");
    Stopped { topology, _echo, agent, client, server }
}

#[test]
fn an_invalid_config_is_refused_with_every_problem_and_nothing_is_loaded() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let config = topology
        .config(&[])
        .service(VIP, spec.port, spec.protocol, "webb")
        .server("p80", "s1", topology.server("s1").addr, spec.server_port)
        .server_set("p80", "s1", "address", "10.0.1")
        .set("flows.udp_idle_timeout", "abc");
    let lb_bin = testbed::agent::lb_bin();
    let path = std::env::temp_dir().join(format!("{}-bad.toml", topology.prefix));
    std::fs::write(&path, config.text()).unwrap();
    let lb = topology.lb.command(lb_bin).args(["agent", "--config"]).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let lb = lb.unwrap();
    let stderr = String::from_utf8_lossy(&lb.stderr);
    assert!(!lb.status.success(), "agent accepted a bad config: {stderr}");
    for problem in [
        "services[0].pool: unknown pool \"webb\"",
        "pools.p80.servers[0].address: \"10.0.1\" is not an IPv4 or IPv6 address",
        "flows.udp_idle_timeout: duration \"abc\" is not a number followed by a unit",
        "nothing was applied",
    ] {
        assert!(stderr.contains(problem), "missing {problem:?} in:\n{stderr}");
    }
    assert!(!std::path::Path::new("/sys/fs/bpf").join(topology.instance()).exists(), "pins were created");
    assert!(!xdp_attached(&topology, "lbc"), "XDP was attached");
}

#[test]
fn sigterm_leaves_forwarding_running_and_only_cleanup_stops_it() {
    let topology = Topology::new(1);
    let _http = Server::start(&topology.servers[0].ns, "s1", Kind::Http, 8080);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    assert!(xdp_attached(&topology, "lbc") && xdp_attached(&topology, "lbs1"));
    let (ok, _, stderr) = agent.lb(&["cleanup", "--config", agent.config_path.to_str().unwrap()]);
    assert!(!ok && stderr.contains("is running"), "cleanup while the agent runs: {stderr}");

    // What systemctl stop and restart send.
    let status = agent.stop().expect("agent was running");
    assert!(status.success(), "agent exited with {status}:\n{}", agent.log());
    assert!(xdp_attached(&topology, "lbc") && xdp_attached(&topology, "lbs1"), "XDP detached by SIGTERM");
    let answer = topology.client.run(|| http_get(VIP, 80)).expect("a request with no agent running");
    assert_eq!(answer, "s1");
    let pins = || -> Vec<String> {
        std::fs::read_dir(agent.pin_dir())
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    assert!(pins().contains(&"flows".to_owned()) && pins().contains(&"link_lbc".to_owned()), "{:?}", pins());

    // Stopping forwarding for good is said explicitly.
    let (ok, stdout, stderr) = agent.lb(&["cleanup", "--config", agent.config_path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("XDP detached"), "{stdout}");
    assert!(!xdp_attached(&topology, "lbc") && !xdp_attached(&topology, "lbs1"), "XDP still attached");
    assert!(pins().is_empty());
}

/// A part of the agent that stops (here the owner of the state, made to
/// panic by a fault the test provokes) stops the whole agent, non-zero,
/// with the cause in its log, instead of answering from a frozen snapshot;
/// XDP stays attached and forwards, and the agent started again serves.
#[test]
fn an_agent_whose_owner_dies_exits_with_the_cause_and_forwarding_goes_on() {
    let topology = Topology::new(1);
    let _http = Server::start(&topology.servers[0].ns, "s1", Kind::Http, 8080);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start_faulty(&topology, topology.config(&[spec]), "owner");
    assert_eq!(agent.pools().len(), 1, "reads are answered from the snapshot");
    let (ok, _, stderr) = agent.lb(&["reload"]);
    assert!(!ok, "the owner died on this change, which is not answered as done: {stderr}");
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the agent exited with {status}");
    let log = agent.log();
    assert!(log.contains("LB_FAIL=owner") && log.contains("the owner of the state stopped"), "{log}");
    assert!(xdp_attached(&topology, "lbc") && xdp_attached(&topology, "lbs1"), "XDP stays attached");
    let answer = topology.client.run(|| http_get(VIP, 80)).expect("forwarding goes on");
    assert_eq!(answer, "s1");
    agent.restart_without_fault();
    let (ok, _, stderr) = agent.lb(&["reload"]);
    assert!(ok, "started again, it serves changes: {stderr}");
}

#[test]
fn the_agent_refuses_a_bpf_filesystem_private_to_its_mount_namespace() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let config_path = topology.dir().join("lb.toml");
    std::fs::create_dir_all(topology.dir()).unwrap();
    std::fs::write(&config_path, topology.config(&[spec]).text()).unwrap();
    // `ip netns exec` gives the agent a /sys of its own: its pins would die with it.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topology.lb.name])
        .arg(testbed::agent::lb_bin())
        .args(["agent", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent ran on a private BPF filesystem");
    assert!(stderr.contains("private to the agent") && stderr.contains("nsenter --net="), "{stderr}");
    assert!(!xdp_attached(&topology, "lbc"));
    let _ = std::fs::remove_dir_all(topology.dir());
}

/// Writes the format recorded in an instance's pins, as an agent of that
/// format would have.
fn set_pinned_format(pin_dir: &std::path::Path, format: u32) {
    let map = MapData::from_pin(pin_dir.join(map_name::MAPS_FORMAT)).expect("pinned format map");
    let mut map: Array<_, u32> = Array::try_from(Map::Array(map)).expect("an array");
    map.set(0, format, 0).expect("write the format");
}

/// Starts `agent`'s binary on its config once more: whether it refused to
/// start, and what it said. One that attached took the pins; it is stopped
/// (SIGTERM).
fn start_once(agent: &Agent) -> (bool, String) {
    let mut child = agent
        .lb_command()
        .args(["--log-level", "info", "agent", "--config"])
        .arg(&agent.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb agent");
    // Waits for the outcome, however long the load takes on this machine:
    // the process exits (refused), or its log says it attached (taken).
    let mut stderr = String::new();
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let started = lines.by_ref().map_while(Result::ok).any(|line| {
        stderr.push_str(&line);
        stderr.push('\n');
        line.contains("attached to")
    });
    if started {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        lines.map_while(Result::ok).for_each(|line| stderr.push_str(&(line + "\n")));
    }
    let status = child.wait().expect("wait for lb agent");
    (!started && !status.success(), stderr)
}

#[test]
fn pinned_maps_of_another_format_are_refused_and_left_as_they_are() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    agent.stop().expect("agent was running");
    let pins = agent.pin_dir();
    // The stopped agent's program goes on forwarding.
    let attached = xdp_program(&topology, "lbc");
    assert!(attached.is_some());

    // Left by an agent of another format (same shapes, read differently).
    let other = MAPS_FORMAT + 1;
    set_pinned_format(&pins, other);
    let (refused, stderr) = start_once(&agent);
    assert!(refused, "agent took maps of format {other}: {stderr}");
    let why = format!("hold format {other} (this agent reads format {MAPS_FORMAT})");
    assert!(stderr.contains(&why) && stderr.contains("lb cleanup"), "unclear refusal:\n{stderr}");
    assert_eq!(xdp_program(&topology, "lbc"), attached, "the refused agent must leave what is attached");
    let map = MapData::from_pin(pins.join(map_name::MAPS_FORMAT)).unwrap();
    let format: Array<_, u32> = Array::try_from(Map::Array(map)).unwrap();
    assert_eq!(format.get(&0, 0).unwrap(), other, "the pins are left as they are");
    assert!(pins.join(map_name::FLOWS).exists(), "the flow table is left as it is");

    // Left before the format was recorded: format 1.
    std::fs::remove_file(pins.join(map_name::MAPS_FORMAT)).unwrap();
    let (refused, stderr) = start_once(&agent);
    assert!(refused && stderr.contains("hold format 1 "), "maps without a format taken:\n{stderr}");

    // `lb cleanup` clears the way.
    let cleanup = agent.lb_command().args(["cleanup", "--config"]).arg(&agent.config_path).output().unwrap();
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    agent.restart();
    assert!(xdp_attached(&topology, "lbc"));
}

/// A restart whose config names an interface that is not there is refused,
/// and the interfaces the agent before it had stay attached and forwarding:
/// the failed start detached every interface, so a typo in a config cost
/// all forwarding (and systemd's restarts failed alike). One that no
/// longer names an interface detaches from it.
#[test]
fn a_restart_attaches_where_its_config_says_and_a_missing_interface_costs_no_forwarding() {
    let Stopped { topology, _echo, mut agent, mut client, server } = stopped_with_a_connection();

    let good = std::fs::read_to_string(&agent.config_path).unwrap();
    let interfaces = good.lines().find(|l| l.starts_with("interfaces = [")).expect("an interfaces line");
    let typo = interfaces.replacen(']', ", \"nope0\"]", 1);
    std::fs::write(&agent.config_path, good.replacen(interfaces, &typo, 1)).unwrap();
    let (refused, stderr) = start_once(&agent);
    assert!(refused && stderr.contains("nope0"), "a missing interface taken, or refused unclearly:\n{stderr}");
    for interface in ["lbc", "lbs1", "lbs2"] {
        assert!(xdp_attached(&topology, interface), "{interface} detached by the refused start:\n{stderr}");
    }
    assert_eq!(client.exchange("after the refused start").expect("the connection goes on"), server);
    let mut another = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("a new connection");
    another.exchange("new").expect("a new connection is balanced");

    std::fs::write(&agent.config_path, &good).unwrap();
    agent.restart();
    assert_eq!(client.exchange("after the restart").expect("the connection goes on"), server);

    // An interface taken out of the config is left by the next start.
    agent.stop().expect("agent was running");
    let fewer = interfaces.replacen(", \"lbs2\"", "", 1);
    assert_ne!(&fewer, interfaces, "lbs2 in {interfaces}");
    std::fs::write(&agent.config_path, good.replacen(interfaces, &fewer, 1)).unwrap();
    // Not `restart`: it waits for the topology's every interface.
    agent.restart_unwaited();
    let started = |log: &str| log.matches("attached to").count() >= 3;
    wait_for("the start without lbs2", Duration::from_secs(30), || started(&agent.log()));
    assert!(!xdp_attached(&topology, "lbs2"), "lbs2, out of the config, still attached:\n{}", agent.log());
    assert!(agent.log().contains("lbs2: detached: the config no longer names it"), "{}", agent.log());
    assert!(xdp_attached(&topology, "lbc") && xdp_attached(&topology, "lbs1"));
}

/// An instance's first start that cannot attach (an interface that is not
/// there) leaves no pinned maps behind: they held tens of MiB of kernel
/// memory until `lb cleanup`.
#[test]
fn a_first_start_that_cannot_attach_leaves_no_pins() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    agent.stop().expect("agent was running");
    let cleanup = agent.lb_command().args(["cleanup", "--config"]).arg(&agent.config_path).output().unwrap();
    assert!(cleanup.status.success() && !agent.pin_dir().exists(), "{}", String::from_utf8_lossy(&cleanup.stderr));

    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let interfaces = config.lines().find(|l| l.starts_with("interfaces = [")).expect("an interfaces line");
    let typo = interfaces.replacen(']', ", \"nope0\"]", 1);
    std::fs::write(&agent.config_path, config.replacen(interfaces, &typo, 1)).unwrap();
    let (refused, stderr) = start_once(&agent);
    assert!(refused && stderr.contains("nope0"), "{stderr}");
    assert!(!agent.pin_dir().exists(), "pins left by a first start that failed:\n{stderr}");
    assert!(!xdp_attached(&topology, "lbc"), "lbc attached by a start that failed");
}

/// A process of the test's own, stopped (SIGKILL, by its id) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Under systemd (the unit's `Type=notify`), the agent says it is ready
/// once it serves, and that it stops when told to: `systemctl start` waits
/// for the first, and reports a start that fails.
#[test]
fn the_agent_tells_systemd_when_it_serves_and_when_it_stops() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    agent.stop().expect("agent was running");
    let path = agent.dir.join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    // A bound on a start (seconds here), not a measure of it.
    systemd.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut child = agent.lb_command();
    child.args(["agent", "--config"]).arg(&agent.config_path).env("NOTIFY_SOCKET", &path);
    let child = KillOnDrop(child.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start lb agent"));
    let mut said = [0u8; 64];
    let n = systemd.recv(&mut said).expect("told systemd it is ready");
    assert_eq!(String::from_utf8_lossy(&said[..n]), "READY=1");
    let (answered, _, stderr) = agent.lb(&["pool", "list"]);
    assert!(answered && xdp_attached(&topology, "lbc"), "ready, but not serving: {stderr}");

    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let n = systemd.recv(&mut said).expect("told systemd it stops");
    assert_eq!(String::from_utf8_lossy(&said[..n]), "STOPPING=1");
}

/// Removes a directory when dropped, the test passing or not.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An interface another instance's XDP program holds is refused with what
/// frees it, not with the kernel's "Device or resource busy" alone; the
/// other instance's program stays.
#[test]
fn an_interface_held_by_another_instance_is_refused_with_what_frees_it() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    agent.stop().expect("agent was running");
    let held = xdp_program(&topology, "lbc");
    assert!(held.is_some());

    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let instance = agent.pin_dir().file_name().unwrap().to_string_lossy().into_owned();
    let other = format!("{instance}b");
    let _pins = RemoveOnDrop(std::path::PathBuf::from("/sys/fs/bpf").join(&other));
    let config = config
        .replace(&format!("instance = \"{instance}\""), &format!("instance = \"{other}\""))
        .replace("api.sock", "api-b.sock")
        .replace("state.json", "state-b.json");
    let path = agent.config_path.with_file_name("other.toml");
    std::fs::write(&path, config).unwrap();
    let out = agent.lb_command().args(["agent", "--config"]).arg(&path).output().expect("run lb agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second instance took lbc:\n{stderr}");
    let said = "cannot attach XDP to interface lbc: another XDP program is attached there";
    assert!(stderr.contains(said) && stderr.contains("ip link set dev lbc xdp off"), "{stderr}");
    assert_eq!(xdp_program(&topology, "lbc"), held, "the other instance's program stays");
}

/// Pins at `path` a new BPF array of `value_size`-byte elements, as an
/// agent of another version would have left one (aya offers no way to make
/// a map of a shape of our choosing).
fn pin_array(path: &std::path::Path, value_size: u32, max_entries: u32) {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = [0u32; 32];
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, value_size, max_entries]);
    // SAFETY: the syscall reads a bpf_attr from `attr`, zero beyond the
    // fields set (128 bytes: more than it reads for this command).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = [0u64; 16];
    // BPF_OBJ_PIN: pathname (a pointer), then bpf_fd.
    pin[0] = c_path.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; `c_path` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), size_of_val(&pin)) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn an_upgrade_whose_replication_logs_changed_shape_keeps_the_flows() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let mut agent = Agent::start(&topology, topology.config(&[spec]));
    agent.stop().expect("agent was running");
    let pins = agent.pin_dir();
    let flows_id = || aya::maps::MapInfo::from_pin(pins.join(map_name::FLOWS)).expect("flow table pin").id();
    let before = flows_id();
    // An earlier version's logs held whole flows: 72 and 96 bytes a slot.
    for (name, size) in [(map_name::NEW_FLOWS, 72), (map_name::NEW_FLOWS6, 96)] {
        std::fs::remove_file(pins.join(name)).expect("unpin the log");
        pin_array(&pins.join(name), size, 4096);
    }
    agent.restart();
    let log = aya::maps::MapInfo::from_pin(pins.join(map_name::NEW_FLOWS)).expect("log pin");
    assert_eq!(log.value_size(), 8, "the log is made afresh in this version's shape");
    assert_eq!(flows_id(), before, "the flow table, and its flows, are kept");
    assert!(agent.log().contains("made afresh"), "the agent says so:\n{}", agent.log());
}

/// Before 2026-12-08 the Maglev rows and the traffic filter were written
/// one element at a time by the kernel (16-35 ms a Maglev row, which held
/// every change that long); they are now written through a mapping, which
/// needs the arrays made `BPF_F_MMAPABLE`. An agent upgraded over the older
/// arrays makes them afresh, keeps the flows, and balances and changes rows
/// as before.
#[test]
fn an_upgrade_over_rows_and_filter_not_mappable_remakes_them_and_keeps_the_flows() {
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    let Stopped { topology, _echo, mut agent, mut client, server } = stopped_with_a_connection();
    let pins = agent.pin_dir();
    let info = |name: &str| aya::maps::MapInfo::from_pin(pins.join(name)).expect("a pin");
    let mappable = |name: &str| info(name).map_flags() & BPF_F_MMAPABLE != 0;
    let flows_id = || info(map_name::FLOWS).id();
    let before = flows_id();
    // As an earlier version left them: the same shapes, not mappable (and empty).
    for (name, value_size) in [(map_name::MAGLEV, 4), (map_name::FILTER, 1)] {
        assert!(mappable(name), "this version's {name} is mappable");
        let entries = info(name).max_entries();
        std::fs::remove_file(pins.join(name)).expect("unpin");
        pin_array(&pins.join(name), value_size, entries);
        assert!(!mappable(name));
    }

    agent.restart();
    for name in [map_name::MAGLEV, map_name::FILTER] {
        assert!(mappable(name), "{name} is made afresh, mappable");
    }
    assert!(agent.log().contains("made afresh"), "the agent says so:\n{}", agent.log());
    assert_eq!(flows_id(), before, "the flow table, and its flows, are kept");
    assert_eq!(client.exchange("after").expect("exchange after the upgrade"), server);
    // The new rows balance new connections, and a change rewrites them.
    let other = if server == "s1" { "s2" } else { "s1" };
    let (ok, out, err) = agent.lb(&["server", "disable", "p7", &server, "--graceful"]);
    assert!(ok, "disable: {out}{err}");
    for i in 0..6 {
        let mut c = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("connect after the upgrade");
        assert_eq!(c.exchange(&format!("new {i}")).expect("exchange"), other, "{server} takes no new flow");
    }
    assert_eq!(client.exchange("draining").expect("its own flow goes on"), server);
}

#[test]
fn a_killed_agent_leaves_traffic_flowing_and_its_restart_resumes_the_flows() {
    let topology = Topology::new(3);
    let _echo: Vec<Server> =
        topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::LineEcho, 7007)).collect();
    let _http: Vec<Server> = topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::Http, 8080)).collect();
    let echo = ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1, 1, 1] };
    let http = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1, 1, 1] };
    let mut agent = Agent::start(&topology, topology.config(&[echo, http]));

    let mut client = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("connect");
    let server = client.exchange("before").expect("exchange");

    let link_pin = agent.pin_dir().join("link_lbc");
    let pin_inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&link_pin).expect("link pin"));
    let pinned = pin_inode();
    agent.kill();
    assert!(xdp_attached(&topology, "lbc"), "XDP must stay attached when the agent dies");
    assert_eq!(client.exchange("agent dead").expect("exchange with the agent dead"), server);
    topology.client.run(|| http_get(VIP, 80)).expect("new connection with the agent dead");

    agent.restart();
    assert!(agent.log().contains("took over the XDP link"), "{}", agent.log());
    // The link's pin never left its place (unpinned and pinned again, a
    // failed pin would have detached the interface).
    assert_eq!(pin_inode(), pinned, "the taken-over link's pin was made anew");
    for i in 0..5 {
        assert_eq!(client.exchange(&format!("after restart {i}")).expect("exchange after restart"), server);
    }
    topology.client.run(|| http_get(VIP, 80)).expect("new connection after restart");
}

#[test]
fn the_agent_ages_out_idle_and_closed_flows() {
    let topology = Topology::new(1);
    let _udp = Server::start(&topology.servers[0].ns, "s1", Kind::UdpEcho, 5353);
    let _http = Server::start(&topology.servers[0].ns, "s1", Kind::Http, 8080);
    let udp = ServiceSpec { port: 53, protocol: "udp", server_port: 5353, weights: vec![1] };
    let http = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let config = topology.config(&[udp, http]).set("flows.udp_idle_timeout", "1s");
    let agent =
        Agent::start(&topology, config.set("flows.tcp_closing_timeout", "1s").set("flows.sweep_interval", "200ms"));

    topology.client.run(|| {
        udp_exchange(VIP, 53, "hello").expect("UDP");
        http_get(VIP, 80).expect("HTTP (the connection closes: FIN both ways)");
    });
    assert_eq!(agent.flow_count(), 2);
    let start = Instant::now();
    while agent.flow_count() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "flows not aged out: {} left", agent.flow_count());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(start.elapsed() >= Duration::from_millis(600), "flows removed before their timeout");
}

/// The datapath reads the time the agent publishes: a connection that keeps
/// talking stays one flow well past its idle timeout. (With a clock that
/// stood still, the sweep would take it for idle and its next packet would
/// open a second flow.)
#[test]
fn a_busy_connection_outlives_its_idle_timeout() {
    let topology = Topology::new(1);
    let _echo = Server::start(&topology.servers[0].ns, "s1", Kind::LineEcho, 7007);
    let echo = ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1] };
    let config = topology.config(&[echo]).set("flows.tcp_idle_timeout", "1s").set("flows.sweep_interval", "100ms");
    let agent = Agent::start(&topology, config);

    let mut client = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("connect");
    let start = Instant::now();
    let mut exchanges = 0;
    while start.elapsed() < Duration::from_millis(3500) {
        client.exchange(&format!("ping {exchanges}")).expect("exchange");
        exchanges += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let server = &agent.pool("p7").servers[0];
    assert_eq!(server.new_flows, 1, "one connection, one flow, over {exchanges} exchanges: {server:?}");
    assert_eq!(agent.flow_count(), 1);
}

#[test]
fn the_api_socket_is_private_and_a_second_agent_of_the_instance_is_refused() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let agent = Agent::start(&topology, topology.config(&[spec]));
    let meta = std::fs::metadata(agent.socket()).expect("API socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "API socket permissions");

    let second = topology
        .lb
        .command(testbed::agent::lb_bin())
        .args(["agent", "--config"])
        .arg(&agent.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second agent started");
    assert!(stderr.contains("another agent already serves"), "{stderr}");
    let (ok, _, err) = agent.lb(&["pool", "list"]);
    assert!(ok, "the first agent no longer answers: {err}");
}

/// A packet of a flow whose server is DISABLED is answered with a reset by
/// the datapath, which asks the agent (through a ring buffer) to reset the
/// server's end too: the server sees its connection reset.
#[test]
fn the_agent_resets_the_server_end_when_the_datapath_answers_a_terminated_flow() {
    let topology = Topology::new(2);
    let echo: Vec<Server> =
        topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::LineEcho, 7007)).collect();
    let spec = ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1, 1] };
    // With the datapath's log on: the reset it sends is a logged event.
    let agent = Agent::start_with_args(&topology, topology.config(&[spec]), &["--datapath-log", "debug"]);
    let mut client = topology.client.run(|| EchoClient::connect(VIP, 7)).expect("connect");
    let name = client.exchange("which").expect("exchange");
    let client_port = client.stream().local_addr().unwrap().port();
    let index = topology.servers.iter().position(|s| s.name == name).expect("a known server");

    // DISABLED written straight into the pinned server table, as the first
    // step of a disable, without the agent's purge: the flow stays, and its
    // next packet meets the datapath's answer.
    let map = MapData::from_pin(agent.pin_dir().join(map_name::SERVERS)).expect("pinned server table");
    let mut servers: Array<_, lb_common::Server> = Array::try_from(Map::Array(map)).expect("an array");
    let address = u32::from_ne_bytes(topology.servers[index].addr.octets());
    let id = (0..servers.len())
        .find(|&id| servers.get(&id, 0).is_ok_and(|s| s.addr == address && s.port == 7007u16.to_be()))
        .expect("the server's record");
    let mut record = servers.get(&id, 0).unwrap();
    record.state = lb_common::server_state::DISABLED;
    servers.set(id, record, 0).expect("write the server's state");

    let before = echo[index].resets();
    let error = client.exchange("after").expect_err("the datapath answers with a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let asked = Instant::now();
    while echo[index].resets() == before {
        assert!(asked.elapsed() < Duration::from_secs(2), "the server's end was never reset");
        std::thread::sleep(Duration::from_millis(10));
    }
    let logged = format!("datapath debug: reset sent to 10.0.0.2:{client_port} for its flow to {VIP}:7");
    while !agent.log().contains(&logged) {
        assert!(asked.elapsed() < Duration::from_secs(2), "no {logged:?} in the agent's log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}
