//! Which connections a host was sent: the source port of every IPv4 TCP SYN
//! that reaches a namespace for one port, seen by a raw socket there.
//!
//! A server's `accept` is not enough to tell. A connection whose client has
//! sent its ACK (so `connect` returned) but whose ACK is cut by the balancer
//! before it reaches the server was that server's, yet the server never
//! accepted it: its SYN reached the server all the same.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::netns::NetNs;

/// Records SYNs until dropped.
pub struct SynWitness {
    ports: Arc<Mutex<HashSet<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SynWitness {
    /// Starts recording the SYNs to `port` that reach `ns`.
    pub fn start(ns: &NetNs, port: u16) -> SynWitness {
        let socket = ns.run(raw_tcp_socket);
        let (ports, stop) = (Arc::new(Mutex::new(HashSet::new())), Arc::new(AtomicBool::new(false)));
        let (ports_, stop_) = (Arc::clone(&ports), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop_.load(Ordering::Relaxed) {
                // SAFETY: an open socket and a buffer of the length given.
                let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if let Some(from) = usize::try_from(n).ok().and_then(|n| syn_source(&buf[..n], port)) {
                    ports_.lock().unwrap().insert(from);
                }
            }
        });
        SynWitness { ports, stop, thread: Some(thread) }
    }

    /// Whether a SYN from `port` reached the host.
    pub fn saw(&self, port: u16) -> bool {
        self.ports.lock().unwrap().contains(&port)
    }
}

impl Drop for SynWitness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw socket that gets a copy of every IPv4 TCP packet the namespace
/// receives, with a short receive timeout (so a stop is seen) and a large
/// buffer (so a busy machine loses none while the reader waits for a core).
fn raw_tcp_socket() -> OwnedFd {
    // SAFETY: plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw TCP socket: {}", std::io::Error::last_os_error());
    // SAFETY: a socket just opened, owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    let buffer: libc::c_int = 8 << 20;
    set_option(&socket, libc::SO_RCVTIMEO, &timeout);
    set_option(&socket, libc::SO_RCVBUFFORCE, &buffer);
    socket
}

fn set_option<T>(socket: &OwnedFd, name: libc::c_int, value: &T) {
    // SAFETY: an open socket, and a value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {name}: {}", std::io::Error::last_os_error());
}

/// The source port of `packet` (an IPv4 header, then TCP) if it is a SYN
/// (no ACK) to `port`.
fn syn_source(packet: &[u8], port: u16) -> Option<u16> {
    let tcp = packet.get(usize::from(packet.first()? & 0x0f) * 4..)?;
    let (from, to, flags) = (u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]), tcp.get(2..4)?, *tcp.get(13)?);
    let syn = flags & (crate::packet::SYN | crate::packet::ACK) == crate::packet::SYN;
    (syn && to == port.to_be_bytes()).then_some(from)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::syn_source;
    use crate::packet::{ACK, Pkt, SYN};

    /// The IP packet of a frame the packet builder made.
    fn ip(pkt: Pkt) -> Vec<u8> {
        pkt.build()[14..].to_vec()
    }

    #[test]
    fn a_syn_to_the_port_names_its_source_and_nothing_else_does() {
        let (client, server) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1));
        let syn = |flags, to| ip(Pkt::tcp((client, 40000), (server, to)).flags(flags));
        assert_eq!(syn_source(&syn(SYN, 7), 7), Some(40000));
        assert_eq!(syn_source(&syn(SYN | ACK, 7), 7), None);
        assert_eq!(syn_source(&syn(ACK, 7), 7), None);
        assert_eq!(syn_source(&syn(SYN, 8), 7), None);
        let whole = syn(SYN, 7);
        assert_eq!(syn_source(&whole[..30], 7), None, "truncated");
    }
}
