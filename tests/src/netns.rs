//! Network namespaces a test creates, uses and always removes (on drop, and
//! so on panic too).

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// A prefix unique to this process and call: namespace and instance names
/// built on it never collide between tests running in parallel.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("lbt{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What a run stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) would leave:
/// the guards' Drop does not run then. Long runs of their own (the bench,
/// the soak) call this first: on such a signal, their child processes (the
/// agents, etcd) are killed and everything named with this process's
/// [`unique_prefix`] (namespaces, BPF pins, temporary files) is removed
/// before the process exits with 128 + the signal. Tests end by panics,
/// which the guards handle.
pub fn clean_up_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).expect("signal handlers");
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("stopped by signal {signal}: removing this run's processes, namespaces, pins and files");
            clean_up(std::process::id());
            std::process::exit(128 + signal);
        }
    });
}

/// Kills `pid`'s children, then removes what is named with its prefix.
fn clean_up(pid: u32) {
    for child in children(pid) {
        // SAFETY: kill has no memory effects; `child` is this process's
        // own child, read from /proc just now (not reaped, so not reused).
        unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
    }
    let prefix = format!("lbt{pid}x");
    let named = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()).collect()
    };
    for ns in named("/run/netns".as_ref()) {
        let name = ns.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
    for path in named("/sys/fs/bpf".as_ref()).into_iter().chain(named(&std::env::temp_dir())) {
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
}

/// The processes whose parent is `pid` (/proc/<child>/stat's 4th field).
pub fn children(pid: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // After the command's name, which may hold spaces, in parentheses.
            let fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            fields.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// Runs a command, panicking with its output if it fails.
pub fn must(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// A named network namespace (`ip netns`), deleted on drop.
pub struct NetNs {
    pub name: String,
    file: File,
}

impl NetNs {
    pub fn create(name: &str) -> NetNs {
        must(Command::new("ip").args(["netns", "add", name]));
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        let ns = NetNs { name: name.to_owned(), file };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Output {
        must(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl of this namespace (net.*).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value)).unwrap_or_else(|e| panic!("{}: cannot set {key}: {e}", self.name));
    }

    /// Runs `f` on a thread inside this namespace. Sockets created there
    /// belong to the namespace for their whole life, wherever they are used.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: fd is an open network namespace file; setns only
                // changes this (fresh) thread's namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    panic!("setns into {}: {}", self.name, std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// A command that will run inside this namespace (the mount namespace,
    /// and so /sys/fs/bpf, stays the host's, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; fd stays open in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
