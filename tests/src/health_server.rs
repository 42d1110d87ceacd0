//! A server's health endpoint that a test controls: an HTTP server in the
//! server's namespace that answers as told (200, a status, a body, a
//! header), or stops listening, so that the agent's monitors see a server
//! fall ill, go into maintenance and come back.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// What the health endpoint answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `200 OK`, body "ok".
    Ok,
    /// This status, body "status".
    Status(u16),
    /// `200 OK` with this body.
    Body(String),
    /// This status with this header line (such as "Drain-Timeout: 300").
    WithHeader(u16, String),
    /// Not listening: connections are refused.
    Off,
    /// `200` and `500` in turn, starting with `500`: a flapping server.
    Flapping,
}

pub struct HealthServer {
    reply: Arc<Mutex<Reply>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    /// Serves on `port` in `ns`, answering `Ok` until told otherwise.
    pub fn start(ns: &NetNs, port: u16) -> HealthServer {
        let reply = Arc::new(Mutex::new(Reply::Ok));
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let netns = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("open the server's namespace");
        let (reply_, stop_, answered_) = (Arc::clone(&reply), Arc::clone(&stop), Arc::clone(&answered));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: an open network namespace file; setns changes only this thread.
            assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let listener = bind(port);
            let _ = ready_tx.send(());
            serve(listener, port, &reply_, &stop_, &answered_);
        });
        ready.recv_timeout(Duration::from_secs(5)).expect("the health server listens");
        HealthServer { reply, stop, answered, thread: Some(thread) }
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(port: u16) -> TcpListener {
    // Dual stack: monitors reach it by IPv4 or IPv6.
    let listener = TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))).expect("bind health");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

fn serve(first: TcpListener, port: u16, reply: &Mutex<Reply>, stop: &AtomicBool, answered: &AtomicU64) {
    let mut listener = Some(first);
    while !stop.load(Ordering::Relaxed) {
        let now = reply.lock().unwrap().clone();
        if now == Reply::Off {
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if listener.is_none() {
            listener = Some(bind(port));
        }
        match listener.as_ref().expect("bound").accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let n = answered.fetch_add(1, Ordering::Relaxed);
                let now = match now {
                    Reply::Flapping if n.is_multiple_of(2) => Reply::Status(500),
                    Reply::Flapping => Reply::Ok,
                    other => other,
                };
                let _ = stream.write_all(response(&now).as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn response(reply: &Reply) -> String {
    let (status, header, body) = match reply {
        Reply::Ok => (200, String::new(), "ok".to_owned()),
        Reply::Status(status) => (*status, String::new(), "status".to_owned()),
        Reply::Body(body) => (200, String::new(), body.clone()),
        Reply::WithHeader(status, header) => (*status, format!("{header}\r\n"), "status".to_owned()),
        Reply::Off | Reply::Flapping => unreachable!("not an answer"),
    };
    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{header}\r\n{body}", body.len())
}
