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
