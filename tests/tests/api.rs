//! The agent's API under load, through the real agent: reads answer at once
//! while the owner purges a million flows, and many clients at once (some
//! silent, some sending too much) are each answered or refused, none
//! holding up the others.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use lb_userspace::{
    api::client,
    model::{ApiError, ErrorCode},
};
use serde_json::Value;
use testbed::{
    agent::Agent,
    bench::control_plane::reads_during_purge,
    topology::{ServiceSpec, Topology},
};

#[test]
fn pool_show_answers_at_once_while_an_immediate_disable_purges_a_million_flows() {
    let reads = reads_during_purge(&testbed::agent::lb_bin());
    eprintln!(
        "disable of 1e6 flows took {:?}; {} reads meanwhile, the slowest {:?}",
        reads.took, reads.reads, reads.slowest
    );
    assert_eq!(reads.flows_reset, 1_000_000);
    assert!(reads.reads >= 5, "the disable ({:?}) left no time to read: {} reads", reads.took, reads.reads);
    // A read that waited behind the purge would take about as long as the
    // disable itself; how long that is depends on the machine (seconds on a
    // debug build, more on a busy host), so the bound is a share of it.
    assert!(
        reads.slowest * 10 < reads.took,
        "a read waited {:?} behind the purge (the disable took {:?})",
        reads.slowest,
        reads.took
    );
    assert!(reads.saw_disabled, "readers saw s1 DISABLED only once its purge and resets were done");
    assert!(reads.saw_resetting, "no read showed s1's million flows as being reset while they were");
    assert_eq!(reads.after, (false, 0), "once the disable answered: (still shown resetting, flows shown)");
    assert_eq!(reads.flows_left, 0, "every flow of s1 purged");
    // A million resets out of reach are said once, with why, not once each.
    let [line] = &reads.unsent_lines[..] else { panic!("{} lines on unsent resets", reads.unsent_lines.len()) };
    assert!(line.contains("of 2000000 resets could not be sent (the first: "), "{line}");
}

/// Sends `payload` (and no more) and reads the answer line, whatever it is.
fn exchange(socket: &Path, payload: &[u8]) -> (Duration, Result<Value, ApiError>) {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The agent may answer (and close) before it has read it all.
    let _ = stream.write_all(payload);
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer, not a hang");
    (started.elapsed(), client::read_answer(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}")))
}

#[test]
fn two_hundred_clients_at_once_are_each_answered_or_refused_without_stalling() {
    let topology = Topology::new(1);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1] };
    let agent = Agent::start(&topology, topology.config(&[spec]));
    let socket: PathBuf = agent.socket();
    let barrier = Arc::new(Barrier::new(200));
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (socket, barrier) = (socket.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let payload: Vec<u8> = match i % 4 {
                    // Silent: connects and sends nothing.
                    0 => Vec::new(),
                    // Hostile: a request line far over the limit.
                    1 => vec![b'x'; 200 * 1024],
                    _ => b"{\"op\":\"pool_list\"}\n".to_vec(),
                };
                barrier.wait();
                (i % 4, exchange(&socket, &payload))
            })
        })
        .collect();
    for client in clients {
        let (kind, (took, answer)) = client.join().expect("client thread");
        match kind {
            0 => {
                let refusal = answer.expect_err("a refusal");
                assert_eq!(refusal.code, ErrorCode::BadRequest, "{refusal:?}");
                assert!(refusal.message.contains("no request line within"), "{refusal:?}");
                assert!(took < Duration::from_secs(8), "a silent client held on for {took:?}");
            }
            1 => {
                let refusal = answer.expect_err("a refusal");
                assert_eq!(refusal.code, ErrorCode::BadRequest, "{refusal:?}");
                assert!(refusal.message.contains("longer than 65536 bytes"), "{refusal:?}");
            }
            _ => {
                assert!(answer.is_ok(), "{answer:?}");
                assert!(took < Duration::from_secs(2), "a good client waited {took:?} behind the others");
            }
        }
    }
    let (ok, _, err) = agent.lb(&["pool", "list"]);
    assert!(ok, "the agent no longer answers: {err}");
}
