//! Steady load: new TCP connections at a fixed rate from the client, each
//! timed and attributed (which server answered, or how it failed), to show
//! that no change drops or delays one.

use std::{
    io::ErrorKind,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{bed::ECHO, netns::NetNs, servers::EchoClient, topology::VIP};

/// What became of one new connection.
pub struct Attempt {
    /// When the connect began.
    pub started: Instant,
    pub connect: Duration,
    /// The client's port, once connected.
    pub port: Option<u16>,
    /// The server that answered, or how the connection failed.
    pub outcome: Result<String, ErrorKind>,
}

/// Opens connections at `per_second` from the client until `stop`: each
/// connects, asks which server it reached, and closes.
pub fn steady_connections(client: &NetNs, per_second: u32, stop: &AtomicBool, attempts: &Mutex<Vec<Attempt>>) {
    let every = Duration::from_secs(1) / per_second;
    client.run(|| {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            next += every;
            let started = Instant::now();
            let attempt = match EchoClient::connect(VIP, ECHO) {
                Err(e) => Attempt { started, connect: started.elapsed(), port: None, outcome: Err(e.kind()) },
                Ok(mut client) => {
                    let connect = started.elapsed();
                    let port = client.stream().local_addr().ok().map(|a| a.port());
                    Attempt { started, connect, port, outcome: client.exchange("which").map_err(|e| e.kind()) }
                }
            };
            attempts.lock().unwrap().push(attempt);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
}

/// Panics unless a connection began between each two consecutive `marks`
/// (the steps of a test): the load ran through every step, whatever rate
/// this machine reached, and so the test meant something.
pub fn assert_ran_through(attempts: &[Attempt], marks: &[Instant], what: &str) {
    for (i, step) in marks.windows(2).enumerate() {
        let began = attempts.iter().filter(|a| (step[0]..step[1]).contains(&a.started)).count();
        assert!(began > 0, "{what}: no connection began during step {i} ({:?})", step[1] - step[0]);
    }
}
