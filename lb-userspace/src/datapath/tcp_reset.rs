//! Sending TCP resets from the agent, through raw IP sockets (one per
//! family): to both ends of a terminated flow, and to the other end of a
//! flow whose packet the datapath answered with a reset.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use lb_common::{ResetRequest, ResetRequest6};

use super::family::{ip4, ip6};

/// One side of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// A reset from `src` to `dst` with sequence number `seq` (the receiver's
/// next expected one, so it is accepted at once, RFC 5961). Both ends are
/// of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: u32,
    /// An acknowledgement (the ACK flag set), for a receiver that takes a
    /// reset only with one: a client whose SYN went unanswered (SYN_SENT,
    /// RFC 793) takes one that acknowledges its SYN, whatever its `seq`.
    pub ack: Option<u32>,
    /// A FIN instead of a reset (with `ack`): the receiver's side is closed
    /// cleanly, as if its peer had closed (`datapath::idle_close`).
    pub fin: bool,
}

/// The longest reset: an IPv6 header and a TCP header.
const MAX_PACKET: usize = 60;
const TCP_HLEN: usize = 20;

impl Reset {
    pub fn from_request(r: &ResetRequest) -> Reset {
        Reset {
            src: Endpoint { addr: ip4(r.src_addr).into(), port: u16::from_be(r.src_port) },
            dst: Endpoint { addr: ip4(r.dst_addr).into(), port: u16::from_be(r.dst_port) },
            seq: r.seq,
            ack: None,
            fin: false,
        }
    }

    pub fn from_request6(r: &ResetRequest6) -> Reset {
        Reset {
            src: Endpoint { addr: ip6(r.src_addr).into(), port: u16::from_be(r.src_port) },
            dst: Endpoint { addr: ip6(r.dst_addr).into(), port: u16::from_be(r.dst_port) },
            seq: r.seq,
            ack: None,
            fin: false,
        }
    }

    /// The IP + TCP packet, checksums included, in a buffer of which the
    /// first `len` bytes are the packet.
    pub fn packet(&self) -> ([u8; MAX_PACKET], usize) {
        let mut p = [0u8; MAX_PACKET];
        let (ip_len, pseudo) = match (self.src.addr, self.dst.addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => (ipv4_header(&mut p, src, dst), sum_words(&p[12..20])),
            (src, dst) => {
                let six = |a: IpAddr| match a {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                (ipv6_header(&mut p, six(src), six(dst)), sum_words(&p[8..40]))
            }
        };
        let t = &mut p[ip_len..ip_len + TCP_HLEN];
        t[0..2].copy_from_slice(&self.src.port.to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = if self.fin { 0x01 } else { 0x04 }; // FIN or RST
        if self.fin {
            // An open window: the receiver may still send its own FIN.
            t[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        }
        if let Some(ack) = self.ack {
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[13] |= 0x10; // ACK
        }
        // The pseudo-header's protocol and TCP length (IPv4's 16-bit fields
        // and IPv6's 32-bit ones sum the same).
        let tcp_sum = checksum(t, pseudo + 6 + TCP_HLEN as u32);
        t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
        (p, ip_len + TCP_HLEN)
    }
}

/// Writes an IPv4 header for a bare TCP segment; its length.
fn ipv4_header(p: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) -> usize {
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    20
}

/// Writes an IPv6 header for a bare TCP segment (no checksum in IPv6); its length.
fn ipv6_header(p: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) -> usize {
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    40
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

/// A destination as the socket calls take it.
enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn of(addr: IpAddr) -> SockAddr {
        match addr {
            IpAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
                sin_zero: [0; 8],
            }),
            IpAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.octets() },
                sin6_scope_id: 0,
            }),
        }
    }

    fn as_ptr(&mut self) -> (*mut libc::c_void, libc::socklen_t) {
        match self {
            SockAddr::V4(a) => ((a as *mut libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32),
            SockAddr::V6(a) => ((a as *mut libc::sockaddr_in6).cast(), size_of::<libc::sockaddr_in6>() as u32),
        }
    }
}

/// What [`ResetSender::send_all`] did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Packets the kernel took.
    pub count: usize,
    /// Why it refused the first it refused (no route to a client, say).
    pub first_refusal: Option<io::Error>,
}

impl Sent {
    /// Adds what a later send did: its count, and its refusal if none was
    /// kept yet (the first is the one said).
    pub fn add(&mut self, later: Sent) {
        self.count += later.count;
        if self.first_refusal.is_none() {
            self.first_refusal = later.first_refusal;
        }
    }

    /// "3 of 10 resets could not be sent (the first: Network is
    /// unreachable)", if any could not; `what` names the packets.
    pub fn warn_unsent(&self, of: usize, what: &str) {
        if self.count < of {
            let why = self.first_refusal.as_ref().map(|e| format!(" (the first: {e})")).unwrap_or_default();
            log::warn!("{} of {of} {what} could not be sent{why}", of - self.count);
        }
    }
}

/// Raw sockets that send whole IP packets (the kernel routes them): one
/// for IPv4, one for IPv6 (IPPROTO_RAW implies the header is included).
pub struct ResetSender {
    fd4: OwnedFd,
    fd6: OwnedFd,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ResetSender {
    /// Needs CAP_NET_RAW; sends in the caller's network namespace.
    pub fn new() -> io::Result<ResetSender> {
        Ok(ResetSender { fd4: raw_socket(libc::AF_INET)?, fd6: raw_socket(libc::AF_INET6)? })
    }

    fn fd(&self, dst: IpAddr) -> &OwnedFd {
        if dst.is_ipv4() { &self.fd4 } else { &self.fd6 }
    }

    /// Sends every reset, in batches of one syscall per 1024 packets of a
    /// family; says how many the kernel took, and why it refused the first
    /// it refused.
    pub fn send_all(&self, resets: &[Reset]) -> Sent {
        let (four, six): (Vec<Reset>, Vec<Reset>) = resets.iter().partition(|r| r.dst.addr.is_ipv4());
        let mut sent = Sent::default();
        self.send_batches(&self.fd4, &four, &mut sent);
        self.send_batches(&self.fd6, &six, &mut sent);
        sent
    }

    fn send_batches(&self, fd: &OwnedFd, resets: &[Reset], sent: &mut Sent) {
        const BATCH: usize = 1024;
        for chunk in resets.chunks(BATCH) {
            let mut packets: Vec<([u8; MAX_PACKET], usize)> = chunk.iter().map(Reset::packet).collect();
            let mut addrs: Vec<SockAddr> = chunk.iter().map(|r| SockAddr::of(r.dst.addr)).collect();
            let mut iovecs: Vec<libc::iovec> = packets
                .iter_mut()
                .map(|(p, len)| libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: *len })
                .collect();
            let mut headers: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .zip(addrs.iter_mut())
                .map(|(iov, addr)| {
                    // SAFETY: an all-zero msghdr is valid; the pointers set
                    // below stay alive until sendmmsg returns.
                    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    (hdr.msg_hdr.msg_name, hdr.msg_hdr.msg_namelen) = addr.as_ptr();
                    hdr.msg_hdr.msg_iov = iov;
                    hdr.msg_hdr.msg_iovlen = 1;
                    hdr
                })
                .collect();
            let mut offset = 0;
            while offset < headers.len() {
                // SAFETY: headers[offset..] are valid mmsghdrs (see above).
                let rc = unsafe {
                    libc::sendmmsg(fd.as_raw_fd(), headers[offset..].as_mut_ptr(), (headers.len() - offset) as u32, 0)
                };
                if rc <= 0 {
                    // Skip the packet the kernel refused (no route, ...) and
                    // go on. Said once by the caller, not once a packet: a
                    // million flows' clients out of reach made a million
                    // log lines, which took longer than the resets.
                    let refusal = io::Error::last_os_error();
                    sent.first_refusal.get_or_insert(refusal);
                    offset += 1;
                } else {
                    sent.count += rc as usize;
                    offset += rc as usize;
                }
            }
        }
    }

    pub fn send(&self, reset: &Reset) -> io::Result<()> {
        let (packet, len) = reset.packet();
        let mut addr = SockAddr::of(reset.dst.addr);
        let (name, namelen) = addr.as_ptr();
        // SAFETY: valid buffer and address for the duration of the call.
        let rc = unsafe {
            libc::sendto(self.fd(reset.dst.addr).as_raw_fd(), packet.as_ptr().cast(), len, 0, name.cast(), namelen)
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_packet_has_valid_checksums() {
        let r = Reset {
            src: Endpoint { addr: Ipv4Addr::new(10, 100, 0, 1).into(), port: 80 },
            dst: Endpoint { addr: Ipv4Addr::new(10, 0, 0, 2).into(), port: 40000 },
            seq: 0xdead_beef,
            ack: None,
            fin: false,
        };
        let (p, len) = r.packet();
        assert_eq!(len, 40);
        assert_eq!(checksum(&p[..20], 0), 0, "IPv4 header checksum");
        let pseudo = sum_words(&p[12..20]) + 6 + 20;
        assert_eq!(checksum(&p[20..40], pseudo), 0, "TCP checksum");
        assert_eq!(&p[24..28], &0xdead_beefu32.to_be_bytes());
        assert_eq!(p[33], 0x04);
    }

    #[test]
    fn ipv6_reset_packet_has_a_valid_checksum() {
        let r = Reset {
            src: Endpoint { addr: "fd00:100::1".parse::<Ipv6Addr>().unwrap().into(), port: 80 },
            dst: Endpoint { addr: "fd00::2".parse::<Ipv6Addr>().unwrap().into(), port: 40000 },
            seq: 7,
            ack: None,
            fin: false,
        };
        let (p, len) = r.packet();
        assert_eq!(len, 60);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 20, "payload length");
        let pseudo = sum_words(&p[8..40]) + 6 + 20;
        assert_eq!(checksum(&p[40..60], pseudo), 0, "TCP checksum over the IPv6 pseudo-header");
        assert_eq!(p[53], 0x04);
    }

    /// A segment from the VIP to a client that acknowledges 1001.
    fn to_client(seq: u32, fin: bool) -> Reset {
        Reset {
            src: Endpoint { addr: Ipv4Addr::new(10, 100, 0, 1).into(), port: 80 },
            dst: Endpoint { addr: Ipv4Addr::new(10, 0, 0, 2).into(), port: 40000 },
            seq,
            ack: Some(1001),
            fin,
        }
    }

    #[test]
    fn a_reset_for_an_unanswered_syn_acknowledges_it() {
        let (p, _) = to_client(0, false).packet();
        assert_eq!(&p[28..32], &1001u32.to_be_bytes(), "the acknowledgement");
        assert_eq!(p[33], 0x14, "RST and ACK");
        let pseudo = sum_words(&p[12..20]) + 6 + 20;
        assert_eq!(checksum(&p[20..40], pseudo), 0, "TCP checksum");
    }

    #[test]
    fn a_fin_closes_with_an_acknowledgement_and_no_reset() {
        let (p, _) = to_client(7001, true).packet();
        assert_eq!(p[33], 0x11, "FIN and ACK, no RST");
        assert_eq!(&p[34..36], &[0xff, 0xff], "an open window: the client may still send its FIN");
        assert_eq!(&p[24..28], &7001u32.to_be_bytes());
        assert_eq!(&p[28..32], &1001u32.to_be_bytes());
        let pseudo = sum_words(&p[12..20]) + 6 + 20;
        assert_eq!(checksum(&p[20..40], pseudo), 0, "TCP checksum");
    }

    #[test]
    fn sends_added_up_keep_the_first_refusal() {
        let refused = |count, why| Sent { count, first_refusal: Some(io::Error::from_raw_os_error(why)) };
        let mut sent = Sent::default();
        sent.add(Sent { count: 3, first_refusal: None });
        sent.add(refused(1, libc::ENETUNREACH));
        sent.add(refused(2, libc::EPERM));
        assert_eq!(sent.count, 6);
        assert_eq!(sent.first_refusal.and_then(|e| e.raw_os_error()), Some(libc::ENETUNREACH));
    }
}
