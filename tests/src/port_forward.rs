//! A TCP port forward from the host's loopback into a namespace: how the
//! demo's dashboard (served on the balancer namespace's own loopback) is
//! opened in the host's browser. Each connection is relayed by two threads.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

pub struct PortForward {
    /// Where it listens, on the host.
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PortForward {
    /// Listens on the first free port of `ports` on the host's 127.0.0.1
    /// and relays each connection to `target` as reached from `ns`.
    pub fn start(ports: std::ops::RangeInclusive<u16>, ns: &NetNs, target: SocketAddr) -> io::Result<PortForward> {
        let listener = ports
            .clone()
            .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, format!("no free port in {ports:?}")))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let netns = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_ = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stop_.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = relay(client, &netns, target);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(PortForward { local, stop, thread: Some(thread) })
    }
}

/// Connects to `target` from the namespace `netns` and copies both ways.
fn relay(client: TcpStream, netns: &std::fs::File, target: SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    client.set_nonblocking(false)?;
    let fd = netns.as_raw_fd();
    let upstream = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: fd is an open network namespace file; setns changes
            // only this (fresh) thread's namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&target, Duration::from_secs(2))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")))
    })?;
    for (mut from, mut to) in [(client.try_clone()?, upstream.try_clone()?), (upstream, client)] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
