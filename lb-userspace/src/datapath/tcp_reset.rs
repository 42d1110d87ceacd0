//! Sending TCP resets from the agent, through a raw IP socket: to both ends
//! of a terminated flow, and to the other end of a flow whose packet the
//! datapath answered with a reset.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use lb_common::ResetRequest;

/// One side of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// A reset from `src` to `dst` with sequence number `seq` (the receiver's
/// next expected one, so it is accepted at once, RFC 5961).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: u32,
}

impl Reset {
    pub fn from_request(r: &ResetRequest) -> Reset {
        Reset {
            src: Endpoint { addr: Ipv4Addr::from(r.src_addr.to_ne_bytes()), port: u16::from_be(r.src_port) },
            dst: Endpoint { addr: Ipv4Addr::from(r.dst_addr.to_ne_bytes()), port: u16::from_be(r.dst_port) },
            seq: r.seq,
        }
    }

    /// The IPv4 + TCP packet, checksums included.
    pub fn packet(&self) -> [u8; 40] {
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&self.src.addr.octets());
        p[16..20].copy_from_slice(&self.dst.addr.octets());
        let ip_sum = checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&self.src.port.to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x04; // RST
        let pseudo = sum_words(&self.src.addr.octets()) + sum_words(&self.dst.addr.octets()) + 6 + 20;
        let tcp_sum = checksum(&p[20..], pseudo);
        p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        p
    }
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

fn checksum(bytes: &[u8], extra: u32) -> u16 {
    let mut sum = sum_words(bytes) + extra;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw socket that sends whole IPv4 packets (the kernel routes them).
pub struct ResetSender {
    fd: OwnedFd,
}

impl ResetSender {
    /// Needs CAP_NET_RAW; sends in the caller's network namespace.
    pub fn new() -> io::Result<ResetSender> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(ResetSender { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends every reset, in batches of one syscall per 1024 packets;
    /// returns how many the kernel took.
    pub fn send_all(&self, resets: &[Reset]) -> usize {
        const BATCH: usize = 1024;
        let mut sent = 0;
        for chunk in resets.chunks(BATCH) {
            let mut packets: Vec<[u8; 40]> = chunk.iter().map(Reset::packet).collect();
            let mut addrs: Vec<libc::sockaddr_in> = chunk.iter().map(|r| sockaddr(r.dst.addr)).collect();
            let mut iovecs: Vec<libc::iovec> =
                packets.iter_mut().map(|p| libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: p.len() }).collect();
            let mut headers: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .zip(addrs.iter_mut())
                .map(|(iov, addr)| {
                    // SAFETY: an all-zero msghdr is valid; the pointers set
                    // below stay alive until sendmmsg returns.
                    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
                    hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    hdr.msg_hdr.msg_iov = iov;
                    hdr.msg_hdr.msg_iovlen = 1;
                    hdr
                })
                .collect();
            let mut offset = 0;
            while offset < headers.len() {
                // SAFETY: headers[offset..] are valid mmsghdrs (see above).
                let rc = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        headers[offset..].as_mut_ptr(),
                        (headers.len() - offset) as u32,
                        0,
                    )
                };
                if rc <= 0 {
                    // Skip the packet the kernel refused (no route, ...) and go on.
                    log::debug!("reset not sent: {}", io::Error::last_os_error());
                    offset += 1;
                } else {
                    sent += rc as usize;
                    offset += rc as usize;
                }
            }
        }
        sent
    }

    pub fn send(&self, reset: &Reset) -> io::Result<()> {
        let packet = reset.packet();
        let addr = sockaddr(reset.dst.addr);
        // SAFETY: valid buffer and address for the duration of the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_packet_has_valid_checksums() {
        let r = Reset {
            src: Endpoint { addr: Ipv4Addr::new(10, 100, 0, 1), port: 80 },
            dst: Endpoint { addr: Ipv4Addr::new(10, 0, 0, 2), port: 40000 },
            seq: 0xdead_beef,
        };
        let p = r.packet();
        assert_eq!(checksum(&p[..20], 0), 0, "IPv4 header checksum");
        let pseudo = sum_words(&p[12..20]) + 6 + 20;
        assert_eq!(checksum(&p[20..], pseudo), 0, "TCP checksum");
        assert_eq!(&p[24..28], &0xdead_beefu32.to_be_bytes());
        assert_eq!(p[33], 0x04);
    }
}
