//! Where the idle connections of a draining server are closed cleanly (a
//! pool's `idle_close`): a TCP connection that carried nothing either way
//! for the quiet period (so everything each side sent is acknowledged) and
//! whose server spoke last (a keep-alive connection resting between
//! requests, not one whose request the server is still working on) gets a
//! FIN from the VIP to its client, as if the server had closed it, and a
//! reset to the server; its flow is removed. A slow request is answered
//! first, and its connection closed once it rests, or reset at the drain's
//! deadline as any busy one. The client sees a clean close (an HTTP
//! client opens a new connection for its next request, which goes to a
//! server in service) instead of a reset at the drain's deadline.
//!
//! The one race: a client that sends a request while its FIN is on the way.
//! The request reaches a server that has no such connection and is reset;
//! an HTTP client retries a request that failed so on a reused connection.
//!
//! Left as it is: the client's acknowledgement of the FIN (and its own FIN
//! when it closes) no longer has a flow, so it goes where a new flow would
//! and that server answers with a reset. The client has read its end of
//! stream first (the FIN is queued before the reset), so a client that
//! checks a pooled connection before reusing it, as HTTP libraries do,
//! sees a closed connection; one that writes to it without looking gets
//! EPIPE. Answering those segments without a server would take a per-flow
//! mark read on the packet path.

use std::{collections::HashMap, io};

use lb_common::{Flow, flow_seen, flow_state};

use super::{
    Datapath,
    family::FlowEnds,
    sweep,
    tcp_reset::{Endpoint, Reset, ResetSender},
};
use crate::servers::ServerTable;

/// Whether `flow` is an established TCP connection with nothing in flight
/// for at least `quiet_ns` at `now_ns`: neither side closed, both sides'
/// sequence numbers known, no request awaiting its answer (the client did
/// not send data after the server last did), and forwarded by this node.
/// In a cluster, a copy from another node that never came here is that
/// node's to judge; a flow that came here and then moved to another node
/// looks idle here while it is busy there, but its sequence numbers here
/// are then behind, and both ends drop a FIN or a reset out of their
/// window (RFC 5961).
pub fn is_idle(flow: &Flow, now_ns: u64, quiet_ns: u64) -> bool {
    let both = flow_seen::CLIENT_ACK | flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ;
    let closing = flow_seen::FIN_FROM_CLIENT | flow_seen::FIN_FROM_SERVER | flow_seen::RST;
    super::flow_table::forwarded_here(flow)
        && flow.state != flow_state::UDP
        && flow.seen & both == both
        && flow.seen & closing == 0
        && flow.seen & flow_seen::AWAITING_SERVER == 0
        && lb_common::flow_time::age_ns(now_ns, flow.last_seen) >= quiet_ns
}

/// The FIN to the client (as from the VIP, at the server's next sequence
/// number, acknowledging all the client sent) and the reset to the server
/// (as from the client, at the client's next sequence number).
pub fn close_segments(ends: &FlowEnds, flow: &Flow, server: Endpoint) -> [Reset; 2] {
    let client = Endpoint { addr: ends.client.ip(), port: ends.client.port() };
    let vip = Endpoint { addr: ends.vip.ip(), port: ends.vip.port() };
    [
        Reset { src: vip, dst: client, seq: flow.server_next_seq, ack: Some(flow.client_next_seq), fin: true },
        Reset { src: client, dst: server, seq: flow.client_next_seq, ack: None, fin: false },
    ]
}

/// Closes the idle connections of the servers in `quiet_ns` (server id ->
/// its pool's quiet period), as of `now_ns` (the datapath's clock). How
/// many it closed, by server.
pub fn close_idle(
    dp: &Datapath,
    table: &ServerTable,
    quiet_ns: &HashMap<u32, u64>,
    now_ns: u64,
    sender: &ResetSender,
) -> io::Result<HashMap<u32, usize>> {
    let mut closed: HashMap<u32, usize> = HashMap::new();
    let mut segments = Vec::new();
    sweep::remove_flows_where(&dp.maps, table, |ends, flow| {
        let Some(&quiet) = quiet_ns.get(&flow.server()) else { return false };
        let Some(server) = table.get(flow.server()) else { return false };
        if !is_idle(flow, now_ns, quiet) {
            return false;
        }
        let addr = server.address_for(ends.vip.ip()).unwrap_or(server.address);
        segments.extend(close_segments(ends, flow, Endpoint { addr, port: server.port }));
        *closed.entry(flow.server()).or_default() += 1;
        true
    })?;
    sender.send_all(&segments).warn_unsent(segments.len(), "idle-close segments");
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u8 = flow_seen::CLIENT_ACK | flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ;

    /// A flow last seen at tick `last_seen`.
    fn flow(seen: u8, last_seen: u32) -> Flow {
        Flow { seen, last_seen, client_next_seq: 1001, server_next_seq: 7001, ..Flow::default() }
    }

    /// The clock's time in ns at the start of tick `t`.
    fn at(t: u64) -> u64 {
        t << lb_common::flow_time::TICK_SHIFT
    }

    #[test]
    fn only_an_established_connection_quiet_for_the_period_is_idle() {
        // A flow's times are ticks: the period is judged to a tick.
        let quiet = at(2_000);
        assert!(is_idle(&flow(ALL, 10), at(10) + quiet, quiet));
        assert!(!is_idle(&flow(ALL, 10), at(10) + quiet - 1, quiet), "not quiet long enough");
        assert!(!is_idle(&flow(ALL | flow_seen::FIN_FROM_CLIENT, 0), quiet, quiet), "closing already");
        assert!(!is_idle(&flow(ALL | flow_seen::RST, 0), quiet, quiet), "reset");
        assert!(!is_idle(&flow(flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ, 0), quiet, quiet), "handshake");
        let awaiting = flow(ALL | flow_seen::AWAITING_SERVER, 0);
        assert!(!is_idle(&awaiting, 10 * quiet, quiet), "a request its server is still working on");
        let udp = Flow { state: flow_state::UDP, ..flow(ALL, 0) };
        assert!(!is_idle(&udp, quiet, quiet), "UDP has no FIN");
        let copy = flow(ALL | flow_seen::COPY, 0);
        assert!(!is_idle(&copy, quiet, quiet), "another node's copy, never used here");
        assert!(is_idle(&flow(ALL, 1), at(1) + quiet, quiet), "a copy used here (the datapath cleared its mark)");
    }

    #[test]
    fn the_client_gets_a_fin_at_its_next_sequence_and_the_server_a_reset() {
        let ends =
            FlowEnds { client: "10.0.0.2:40000".parse().unwrap(), vip: "10.100.0.1:80".parse().unwrap(), proto: 6 };
        let server = Endpoint { addr: "10.0.1.2".parse().unwrap(), port: 8080 };
        let [to_client, to_server] = close_segments(&ends, &flow(ALL, 0), server);
        assert_eq!((to_client.dst.port, to_client.seq, to_client.ack, to_client.fin), (40000, 7001, Some(1001), true));
        assert_eq!(to_client.src.port, 80, "from the VIP");
        assert_eq!((to_server.dst, to_server.seq, to_server.fin), (server, 1001, false));
    }
}
