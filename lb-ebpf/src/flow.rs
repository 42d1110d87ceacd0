//! Where a flow is created and tracked: the flow table keeps each flow on the
//! server it was given, and the server's state is checked on every hit.

use lb_common::{
    Flow, FlowKey, MAGLEV_TABLE_SIZE, NO_SERVER, Outcome, ReverseNat, Server, Service, flow_state,
    proto, server_state,
};

use crate::{
    maps::{FLOWS, MAGLEV, REVERSE_NAT, SERVERS},
    parse::{Packet, tcp_flag},
};

/// The server a packet goes to.
pub struct Assignment {
    pub server_id: u32,
    pub server: Server,
    pub new_flow: bool,
}

/// Packets of existing flows still go to ENABLED and DRAINING servers.
#[inline(always)]
fn serves_existing_flows(server: &Server) -> bool {
    server.state == server_state::ENABLED || server.state == server_state::DRAINING
}

#[inline(always)]
fn server(server_id: u32) -> Option<Server> {
    SERVERS.get(server_id).copied()
}

/// Client -> VIP: the flow's server, or a new flow on a server chosen by the
/// service's consistent-hash table.
#[inline(always)]
pub fn assign(
    pkt: &Packet,
    service: &Service,
    vip: u32,
    vport: u16,
    now: u64,
) -> Result<Assignment, Outcome> {
    if let Some(flow) = FLOWS.get_ptr_mut(&pkt.key) {
        let flow = unsafe { &mut *flow };
        // A SYN on a closed connection's 5-tuple (port reuse) starts a new flow.
        if !(pkt.is_syn() && flow.state == flow_state::TCP_CLOSING) {
            let server = server(flow.server_id).ok_or(Outcome::DropServerUnavailable)?;
            if !serves_existing_flows(&server) {
                return Err(Outcome::DropServerUnavailable);
            }
            touch(flow, pkt, now);
            return Ok(Assignment {
                server_id: flow.server_id,
                server,
                new_flow: false,
            });
        }
    }
    create(pkt, service, vip, vport, now)
}

/// Server -> client: the flow this reply belongs to. Returns its server id.
#[inline(always)]
pub fn reply(pkt: &Packet, nat: &ReverseNat, now: u64) -> Result<u32, Outcome> {
    let key = FlowKey {
        src_addr: pkt.key.dst_addr,
        dst_addr: nat.vip,
        src_port: pkt.key.dst_port,
        dst_port: nat.port,
        proto: pkt.key.proto,
        _pad: [0; 3],
    };
    let flow = FLOWS
        .get_ptr_mut(&key)
        .ok_or(Outcome::DropReplyWithoutFlow)?;
    let flow = unsafe { &mut *flow };
    let server = server(flow.server_id).ok_or(Outcome::DropServerUnavailable)?;
    // The 5-tuple may have been reused for a flow on another server since.
    if server.addr != pkt.key.src_addr || server.port != pkt.key.src_port {
        return Err(Outcome::DropReplyWithoutFlow);
    }
    if !serves_existing_flows(&server) {
        return Err(Outcome::DropServerUnavailable);
    }
    touch(flow, pkt, now);
    Ok(flow.server_id)
}

#[inline(always)]
fn create(
    pkt: &Packet,
    service: &Service,
    vip: u32,
    vport: u16,
    now: u64,
) -> Result<Assignment, Outcome> {
    let server_id = choose_server(service, &pkt.key).ok_or(Outcome::DropNoServer)?;
    let server = server(server_id).ok_or(Outcome::DropNoServer)?;
    // The table only holds ENABLED servers; this guards the moment it is rewritten.
    if server.state != server_state::ENABLED {
        return Err(Outcome::DropNoServer);
    }
    let state = if pkt.key.proto == proto::UDP {
        flow_state::UDP
    } else if pkt.tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        flow_state::TCP_CLOSING
    } else {
        flow_state::TCP_OPEN
    };
    let flow = Flow {
        server_id,
        state,
        _pad: [0; 3],
        created_ns: now,
        last_seen_ns: now,
    };
    FLOWS
        .insert(&pkt.key, &flow, 0)
        .map_err(|_| Outcome::Aborted)?;
    let reply_key = FlowKey {
        src_addr: server.addr,
        dst_addr: pkt.key.src_addr,
        src_port: server.port,
        dst_port: pkt.key.src_port,
        proto: pkt.key.proto,
        _pad: [0; 3],
    };
    let nat = ReverseNat {
        vip,
        port: vport,
        _pad: 0,
    };
    REVERSE_NAT
        .insert(&reply_key, &nat, 0)
        .map_err(|_| Outcome::Aborted)?;
    Ok(Assignment {
        server_id,
        server,
        new_flow: true,
    })
}

/// Records a packet of the flow: its time, and a FIN or RST from either side.
#[inline(always)]
fn touch(flow: &mut Flow, pkt: &Packet, now: u64) {
    // Skip the store when nothing changes: fewer dirty cache lines across CPUs.
    if flow.last_seen_ns != now {
        flow.last_seen_ns = now;
    }
    if flow.state == flow_state::TCP_OPEN && pkt.tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        flow.state = flow_state::TCP_CLOSING;
    }
}

/// Consistent hashing: the client's address and port pick a slot of the
/// service's Maglev row.
#[inline(always)]
fn choose_server(service: &Service, key: &FlowKey) -> Option<u32> {
    let slot = (flow_hash(key) % MAGLEV_TABLE_SIZE as u64) as u32;
    let id = *MAGLEV.get(service.index * MAGLEV_TABLE_SIZE + slot)?;
    if id == NO_SERVER { None } else { Some(id) }
}

/// A 64-bit mix (MurmurHash3's finaliser) of the 5-tuple.
#[inline(always)]
fn flow_hash(key: &FlowKey) -> u64 {
    let a = ((key.src_addr as u64) << 32) | ((key.src_port as u64) << 16) | key.proto as u64;
    let b = ((key.dst_addr as u64) << 32) | key.dst_port as u64;
    fmix64(a ^ fmix64(b))
}

#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}
