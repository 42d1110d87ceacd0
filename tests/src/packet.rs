//! A readable packet builder for datapath fixtures:
//! `Pkt::tcp((client, 40000), (vip, 80)).flags(SYN).build()`.
//!
//! Checksums are computed in full here, so comparing with the datapath's
//! output also checks its incremental checksum updates.

use std::net::{IpAddr, Ipv4Addr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub type Mac = [u8; 6];

#[derive(Clone, Debug)]
pub struct Pkt {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// IPv4 or IPv6 (both of one family): the frame's IP header follows.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub protocol: u8,
    /// IPv4 option bytes (a multiple of 4); sets the header length.
    pub options: Vec<u8>,
    /// Header length in 32-bit words, when it must lie.
    pub ihl_override: Option<u8>,
    /// Raw frag_off field (flags and offset), host order.
    pub frag_off: u16,
    pub ip_id: u16,
    pub window: u16,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// TCP data offset in words, when it must lie.
    pub doff_override: Option<u8>,
    pub payload: Vec<u8>,
    /// UDP: send a zero checksum ("none").
    pub udp_no_checksum: bool,
    /// IPv4 total length, when it must lie.
    pub tot_len_override: Option<u16>,
    /// Cut the frame to this many bytes.
    pub truncate: Option<usize>,
    /// IPv6 extension headers, in order: (type, bytes after the first two).
    pub ext_headers: Vec<(u8, Vec<u8>)>,
}

impl Pkt {
    fn new(protocol: u8, src: (impl Into<IpAddr>, u16), dst: (impl Into<IpAddr>, u16)) -> Pkt {
        Pkt {
            src_mac: [2, 0, 0, 0, 0, 0xaa],
            dst_mac: [2, 0, 0, 0, 0, 0xbb],
            src: src.0.into(),
            dst: dst.0.into(),
            ttl: 64,
            protocol,
            options: Vec::new(),
            ihl_override: None,
            frag_off: 0x4000, // don't fragment
            ip_id: 0x1234,
            window: 64240,
            sport: src.1,
            dport: dst.1,
            tcp_flags: ACK,
            seq: 1000,
            ack: 5000,
            doff_override: None,
            payload: Vec::new(),
            udp_no_checksum: false,
            tot_len_override: None,
            truncate: None,
            ext_headers: Vec::new(),
        }
    }

    pub fn tcp(src: (impl Into<IpAddr>, u16), dst: (impl Into<IpAddr>, u16)) -> Pkt {
        Pkt::new(6, src, dst)
    }

    pub fn udp(src: (impl Into<IpAddr>, u16), dst: (impl Into<IpAddr>, u16)) -> Pkt {
        Pkt::new(17, src, dst)
    }

    /// Another IP protocol (ICMP is 1), with `payload` as its whole body.
    pub fn ip_protocol(protocol: u8, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Pkt {
        Pkt::new(protocol, (src, 0), (dst, 0))
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Pkt {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    pub fn flags(mut self, flags: u8) -> Pkt {
        self.tcp_flags = flags;
        self
    }
    pub fn seq(mut self, seq: u32, ack: u32) -> Pkt {
        self.seq = seq;
        self.ack = ack;
        self
    }
    pub fn payload(mut self, payload: &[u8]) -> Pkt {
        self.payload = payload.to_vec();
        self
    }
    pub fn ttl(mut self, ttl: u8) -> Pkt {
        self.ttl = ttl;
        self
    }
    pub fn options(mut self, options: &[u8]) -> Pkt {
        assert_eq!(options.len() % 4, 0);
        self.options = options.to_vec();
        self
    }
    pub fn ip_id(mut self, id: u16) -> Pkt {
        self.ip_id = id;
        self
    }
    pub fn window(mut self, window: u16) -> Pkt {
        self.window = window;
        self
    }
    pub fn ihl(mut self, words: u8) -> Pkt {
        self.ihl_override = Some(words);
        self
    }
    pub fn fragment(mut self, offset_bytes: u16, more: bool) -> Pkt {
        self.frag_off = (offset_bytes / 8) | if more { 0x2000 } else { 0 };
        self
    }
    pub fn data_offset(mut self, words: u8) -> Pkt {
        self.doff_override = Some(words);
        self
    }
    pub fn no_udp_checksum(mut self) -> Pkt {
        self.udp_no_checksum = true;
        self
    }
    pub fn tot_len(mut self, len: u16) -> Pkt {
        self.tot_len_override = Some(len);
        self
    }
    pub fn truncate(mut self, len: usize) -> Pkt {
        self.truncate = Some(len);
        self
    }
    /// The same packet with other addresses and ports (for expected output).
    pub fn addresses(mut self, src: (impl Into<IpAddr>, u16), dst: (impl Into<IpAddr>, u16)) -> Pkt {
        self.src = src.0.into();
        self.sport = src.1;
        self.dst = dst.0.into();
        self.dport = dst.1;
        self
    }

    /// An IPv6 extension header of `kind` (0 hop-by-hop, 43 routing, 44
    /// fragment, 60 destination options), with `body` after its first two
    /// bytes (next header and length, filled in): 6, 14, 22... bytes.
    pub fn ext_header(mut self, kind: u8, body: &[u8]) -> Pkt {
        assert_eq!((body.len() + 2) % 8, 0, "extension headers are multiples of 8 bytes");
        self.ext_headers.push((kind, body.to_vec()));
        self
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.protocol {
            6 => {
                let doff = self.doff_override.unwrap_or(5);
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&self.seq.to_be_bytes());
                l4.extend_from_slice(&self.ack.to_be_bytes());
                l4.push(doff << 4);
                l4.push(self.tcp_flags);
                l4.extend_from_slice(&self.window.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                l4.extend_from_slice(&self.payload);
                let sum = checksum(&[&self.pseudo_header(l4.len()), &l4]);
                l4[16..18].copy_from_slice(&sum.to_be_bytes());
            }
            17 => {
                let len = (8 + self.payload.len()) as u16;
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                if !self.udp_no_checksum {
                    let mut sum = checksum(&[&self.pseudo_header(l4.len()), &l4]);
                    if sum == 0 {
                        sum = 0xffff;
                    }
                    l4[6..8].copy_from_slice(&sum.to_be_bytes());
                }
            }
            _ => l4.extend_from_slice(&self.payload),
        }
        l4
    }

    fn pseudo_header(&self, l4_len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&octets(self.src));
        p.extend_from_slice(&octets(self.dst));
        if self.src.is_ipv6() {
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, self.protocol]);
        } else {
            p.push(0);
            p.push(self.protocol);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        p
    }

    pub fn build(&self) -> Vec<u8> {
        if self.src.is_ipv6() {
            return self.build6();
        }
        let l4 = self.l4();
        let hlen = 20 + self.options.len();
        let mut ip = Vec::with_capacity(hlen);
        let ihl = self.ihl_override.unwrap_or((hlen / 4) as u8);
        ip.push(0x40 | ihl);
        ip.push(0);
        let tot_len = self.tot_len_override.unwrap_or((hlen + l4.len()) as u16);
        ip.extend_from_slice(&tot_len.to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.protocol);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&octets(self.src));
        ip.extend_from_slice(&octets(self.dst));
        ip.extend_from_slice(&self.options);
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut frame = ethernet(self.dst_mac, self.src_mac, 0x0800);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }
}

impl Pkt {
    /// The IPv6 frame: header (the TTL as hop limit, `tot_len` as the
    /// payload length), extension headers, then TCP or UDP.
    fn build6(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut ext = Vec::new();
        for (i, (_, body)) in self.ext_headers.iter().enumerate() {
            let next = self.ext_headers.get(i + 1).map_or(self.protocol, |(kind, _)| *kind);
            ext.push(next);
            ext.push(((body.len() + 2) / 8 - 1) as u8);
            ext.extend_from_slice(body);
        }
        let first = self.ext_headers.first().map_or(self.protocol, |(kind, _)| *kind);
        let mut ip = vec![0x60, 0, 0, 0];
        let payload_len = self.tot_len_override.unwrap_or((ext.len() + l4.len()) as u16);
        ip.extend_from_slice(&payload_len.to_be_bytes());
        ip.push(first);
        ip.push(self.ttl);
        ip.extend_from_slice(&octets(self.src));
        ip.extend_from_slice(&octets(self.dst));
        let mut frame = ethernet(self.dst_mac, self.src_mac, 0x86dd);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&ext);
        frame.extend_from_slice(&l4);
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }
}

/// An ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" from
/// `router`, about `quoted` (a packet the router could not send on): to the
/// quoted packet's source, with the next hop's `mtu`, quoting the first
/// `quote` bytes of `quoted` from its IP header on. Checksum computed whole.
pub fn too_big(router: impl Into<IpAddr>, quoted: &Pkt, mtu: u16, quote: usize) -> Pkt {
    let router = router.into();
    let mut body = quoted.build().split_off(14);
    body.truncate(quote);
    let (protocol, mut message) = match router {
        IpAddr::V4(_) => (1, vec![3, 4, 0, 0, 0, 0]),
        IpAddr::V6(_) => (58, vec![2, 0, 0, 0, 0, 0]),
    };
    message.extend_from_slice(&mtu.to_be_bytes());
    message.extend_from_slice(&body);
    let error = Pkt::ip_protocol(protocol, router, quoted.src);
    let pseudo = if router.is_ipv6() { error.pseudo_header(message.len()) } else { Vec::new() };
    let sum = checksum(&[&pseudo, &message]);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    error.payload(&message)
}

/// An address's bytes, of either family.
fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn ethernet(dst: Mac, src: Mac, ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// An ARP request: who has `target`? tell `sender`.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet([0xff; 6], sender_mac, 0x0806);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender_mac);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// An IPv6 frame (the datapath must pass it untouched).
pub fn ipv6_frame(src_mac: Mac, dst_mac: Mac) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, 0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
    frame
}

/// Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
