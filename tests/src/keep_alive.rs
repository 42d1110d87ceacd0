//! Keep-alive clients as HTTP clients behave through a drain: connections
//! resting between requests, and clients that send at any moment and send
//! a request again on a new connection when it fails on a reused one (as
//! browsers and HTTP libraries do). Used by the idle-close tests and the
//! bench's drain section.

use std::{
    io::{ErrorKind, Read},
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use crate::{netns::NetNs, servers::EchoClient};

/// How a resting connection ended, as its client reads it within `within`:
/// `Ok(true)` a clean end (FIN), `Ok(false)` still open, or the error (a
/// reset).
pub fn end_of(client: &mut EchoClient, within: Duration) -> Result<bool, ErrorKind> {
    let stream = client.stream();
    stream.set_read_timeout(Some(within.max(Duration::from_millis(1)))).expect("set a read timeout");
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => Ok(true),
        Ok(_) => Err(ErrorKind::InvalidData),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e.kind()),
    }
}

/// What keep-alive clients saw.
#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    /// Failed on their connection, and sent again on a new one.
    pub retried: AtomicU64,
    /// Of those, the ones that met a reset rather than a clean end (a
    /// request sent while its connection's close was on the way).
    pub raced: AtomicU64,
    /// Failed again: what a user would see.
    pub lost: AtomicU64,
}

/// A request on `first` (then on whatever connection replaced it) every
/// 0.5-1.5 s (`seed` varies the rhythm) until `stop`, to `vip:port` from
/// `client`'s namespace.
pub fn keep_alive_client(
    client: &NetNs,
    target: (IpAddr, u16),
    first: EchoClient,
    seed: u64,
    stop: &AtomicBool,
    counts: &Counts,
) {
    let mut conn = first;
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(500 + (n >> 33) % 1000));
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let failed = match conn.exchange("request") {
            Ok(_) => continue,
            Err(e) => e,
        };
        counts.retried.fetch_add(1, Ordering::Relaxed);
        if failed.kind() == ErrorKind::ConnectionReset {
            counts.raced.fetch_add(1, Ordering::Relaxed);
        }
        let again = client.run(|| EchoClient::connect(target.0, target.1)).and_then(|mut c| {
            c.exchange("request")?;
            Ok(c)
        });
        match again {
            Ok(c) => conn = c,
            Err(_) => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
