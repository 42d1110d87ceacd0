//! Real TCP and UDP servers run inside server namespaces, each answering with
//! its own name so a client can tell which server it reached, and the clients
//! that talk to them.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// What a server does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 (keep-alive too); the body is the server's name and a newline.
    Http,
    /// Each line is answered with "<name> <line>"; the line "hold" only once
    /// [`Server::release_held`] was called (a request its server takes as
    /// long as a test wants).
    LineEcho,
    /// Each datagram is answered with "<name> <datagram>".
    UdpEcho,
    /// Reads and discards everything (long-flow throughput).
    Sink,
}

/// A running server; stops on drop.
pub struct Server {
    pub name: String,
    stop: Arc<AtomicBool>,
    /// Connections (TCP) or datagrams (UDP) served.
    served: Arc<AtomicU64>,
    /// TCP connections that ended with a reset from the peer.
    resets: Arc<AtomicU64>,
    /// Lines (line echo), requests (HTTP) and datagrams (UDP) answered.
    answers: Arc<Answers>,
    /// Set: "hold" lines are answered.
    release: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &NetNs, name: &str, kind: Kind, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let resets = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(Answers::default());
        let release = Arc::new(AtomicBool::new(false));
        // Dual stack: IPv4 clients arrive as v4-mapped addresses.
        let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let (name_, stop_, served_, resets_, answers_) =
            (name.to_owned(), Arc::clone(&stop), Arc::clone(&served), Arc::clone(&resets), Arc::clone(&answers));
        let thread = match kind {
            Kind::UdpEcho => {
                let socket = ns.run(|| UdpSocket::bind(addr)).expect("bind UDP server");
                socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
                std::thread::spawn(move || udp_echo(socket, &name_, &stop_, (&served_, &answers_)))
            }
            Kind::Http | Kind::LineEcho | Kind::Sink => {
                let listener = ns.run(|| TcpListener::bind(addr)).expect("bind TCP server");
                listener.set_nonblocking(true).expect("nonblocking");
                let counters =
                    Counters { served: served_, resets: resets_, answers: answers_, release: Arc::clone(&release) };
                std::thread::spawn(move || accept_loop(listener, kind, &name_, &stop_, &counters))
            }
        };
        Server { name: name.to_owned(), stop, served, resets, answers, release, thread: Some(thread) }
    }

    /// Answers the "hold" lines waiting and to come.
    pub fn release_held(&self) {
        self.release.store(true, Ordering::Relaxed);
    }

    /// Holds the "hold" lines to come again, until the next release.
    pub fn hold_again(&self) {
        self.release.store(false, Ordering::Relaxed);
    }

    /// Stops serving: the listener and every connection close.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Lines (line echo), requests (HTTP) or datagrams (UDP) answered.
    pub fn answered(&self) -> u64 {
        self.answers.count.load(Ordering::Relaxed)
    }

    /// The newest [`stamp`] among the requests it answered (0: none).
    pub fn newest_answered(&self) -> u64 {
        self.answers.newest_stamp.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP server's counters.
struct Counters {
    served: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
    answers: Arc<Answers>,
    release: Arc<AtomicBool>,
}

/// What a server answered: how many, and when the newest of them was sent.
#[derive(Default)]
struct Answers {
    count: AtomicU64,
    newest_stamp: AtomicU64,
}

impl Answers {
    fn one(&self, stamp: Option<u64>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(stamp) = stamp {
            self.newest_stamp.fetch_max(stamp, Ordering::Relaxed);
        }
    }
}

/// When a request was sent: microseconds since this process's first stamp.
/// The clients here append it to every line and datagram (" @<stamp>"),
/// and the servers take it off before they echo. A check that a server
/// answered nothing sent after some instant then holds however late a busy
/// machine runs the server's thread.
pub fn stamp() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn stamped(text: &str) -> String {
    format!("{text} @{}", stamp())
}

/// A request's text and its stamp, if it has one.
fn unstamped(request: &str) -> (&str, Option<u64>) {
    match request.rsplit_once(" @").map(|(text, stamp)| (text, stamp.parse())) {
        Some((text, Ok(stamp))) => (text, Some(stamp)),
        _ => (request, None),
    }
}

fn accept_loop(listener: TcpListener, kind: Kind, name: &str, stop: &Arc<AtomicBool>, counters: &Counters) {
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                counters.served.fetch_add(1, Ordering::Relaxed);
                let (name, stop) = (name.to_owned(), Arc::clone(stop));
                let (resets, answers) = (Arc::clone(&counters.resets), Arc::clone(&counters.answers));
                let release = Arc::clone(&counters.release);
                workers.push(std::thread::spawn(move || {
                    if let Err(e) = serve_connection(stream, kind, &name, (&stop, &release), &answers)
                        && e.kind() == ErrorKind::ConnectionReset
                    {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                workers.retain(|w| !w.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

fn serve_connection(
    stream: TcpStream,
    kind: Kind,
    name: &str,
    (stop, release): (&AtomicBool, &AtomicBool),
    answers: &Answers,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    if kind == Kind::Sink {
        stream.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut stream = stream;
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut request_done = false;
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        }
        match kind {
            Kind::LineEcho => {
                let (text, stamp) = unstamped(&line[..line.len() - 1]);
                while text == "hold" && !release.load(Ordering::Relaxed) {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                writer.write_all(format!("{name} {text}\n").as_bytes())?;
                answers.one(stamp);
            }
            _ => {
                // HTTP: answer when the request's blank line arrives.
                if line == "\r\n" || line == "\n" {
                    request_done = true;
                }
                if request_done {
                    let body = format!("{name}\n");
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    writer.write_all(format!("{head}{body}").as_bytes())?;
                    answers.one(None);
                    request_done = false;
                }
            }
        }
        line.clear();
    }
    Ok(())
}

/// Echoes datagrams (a stamped one without its stamp); each counts as served and answered.
fn udp_echo(socket: UdpSocket, name: &str, stop: &AtomicBool, (served, answers): (&AtomicU64, &Answers)) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            served.fetch_add(1, Ordering::Relaxed);
            let (text, stamp) = match std::str::from_utf8(&buf[..n]) {
                Ok(request) => unstamped(request),
                Err(_) => ("", None),
            };
            answers.one(stamp);
            let mut reply = format!("{name} ").into_bytes();
            match stamp {
                Some(_) => reply.extend_from_slice(text.as_bytes()),
                None => reply.extend_from_slice(&buf[..n]),
            }
            let _ = socket.send_to(&reply, from);
        }
    }
}

/// One HTTP request on a new connection; returns the name of the server
/// that answered.
pub fn http_get(vip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(vip, port)), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        response.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some((_, body)) = response.split_once("\r\n\r\n")
            && body.ends_with('\n')
        {
            return Ok(body.trim().to_owned());
        }
    }
    Err(std::io::Error::new(ErrorKind::UnexpectedEof, format!("incomplete response: {response:?}")))
}

/// A connection to a [`Kind::LineEcho`] server.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    pub fn connect(vip: impl Into<std::net::IpAddr>, port: u16) -> std::io::Result<EchoClient> {
        let stream = TcpStream::connect_timeout(&SocketAddr::new(vip.into(), port), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(EchoClient { writer: stream.try_clone()?, reader: BufReader::new(stream) })
    }

    /// Sends a line; returns the name of the server that echoed it.
    pub fn exchange(&mut self, text: &str) -> std::io::Result<String> {
        self.send(text)?;
        self.answer(text, Duration::from_secs(3))
    }

    /// Sends a line ([`stamp`]ed), without waiting for its answer ([`EchoClient::answer`]).
    pub fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{}\n", stamped(text)).as_bytes())
    }

    /// The answer to the line `text` sent, waiting up to `wait`: the name of
    /// the server that echoed it.
    pub fn answer(&mut self, text: &str, wait: Duration) -> std::io::Result<String> {
        self.reader.get_ref().set_read_timeout(Some(wait))?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        let (name, echoed) = line.trim_end().split_once(' ').unwrap_or(("", ""));
        if echoed != text {
            return Err(std::io::Error::other(format!("echo mismatch: sent {text:?}, got {line:?}")));
        }
        Ok(name.to_owned())
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }
}

/// One UDP request/reply from a fresh socket; returns the server's name.
pub fn udp_exchange(vip: Ipv4Addr, port: u16, text: &str) -> std::io::Result<String> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    udp_exchange_on(&socket, vip, port, text)
}

/// One UDP request/reply on `socket` (the same socket is the same flow).
pub fn udp_exchange_on(
    socket: &UdpSocket,
    vip: impl Into<std::net::IpAddr>,
    port: u16,
    text: &str,
) -> std::io::Result<String> {
    let vip = SocketAddr::new(vip.into(), port);
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(stamped(text).as_bytes(), vip)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    if from != vip {
        return Err(std::io::Error::other(format!("reply from {from}, not from the VIP")));
    }
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (name, echoed) = reply.split_once(' ').unwrap_or(("", ""));
    if echoed != text {
        return Err(std::io::Error::other(format!("echo mismatch: sent {text:?}, got {reply:?}")));
    }
    Ok(name.to_owned())
}

/// What ended a [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub at: std::time::Instant,
    pub kind: ErrorKind,
}

/// A long-lived connection to a [`Kind::LineEcho`] server, run by its own
/// thread: it exchanges a line every `interval` (never, if `None`: an idle
/// connection) and waits on the socket in between, so a reset is noticed the
/// moment it arrives.
pub struct Session {
    pub server: String,
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    ended: Arc<std::sync::Mutex<Option<Ended>>>,
    thread: Option<JoinHandle<Option<EchoClient>>>,
}

impl Session {
    pub fn start(mut client: EchoClient, server: &str, interval: Option<Duration>) -> Session {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(std::sync::Mutex::new(None));
        let (stop_, exchanges_, ended_) = (Arc::clone(&stop), Arc::clone(&exchanges), Arc::clone(&ended));
        let thread = std::thread::spawn(move || {
            let mut next = std::time::Instant::now();
            let mut i = 0u64;
            while !stop_.load(Ordering::Relaxed) {
                let result = match interval {
                    Some(interval) if std::time::Instant::now() >= next => {
                        next += interval;
                        i += 1;
                        client.exchange(&format!("line {i}")).map(|_| {
                            exchanges_.fetch_add(1, Ordering::Relaxed);
                        })
                    }
                    _ => wait_readable(client.stream(), Duration::from_millis(10)),
                };
                if let Err(e) = result {
                    *ended_.lock().unwrap() = Some(Ended { at: std::time::Instant::now(), kind: e.kind() });
                    return None;
                }
            }
            Some(client)
        });
        Session { server: server.to_owned(), stop, exchanges, ended, thread: Some(thread) }
    }

    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    pub fn ended(&self) -> Option<Ended> {
        *self.ended.lock().unwrap()
    }

    /// Stops the thread; returns the connection if it is still open.
    pub fn finish(mut self) -> Option<EchoClient> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for the socket to have data or an error; an error
/// (such as a reset) is returned, data or a timeout are not.
fn wait_readable(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    let result = match stream.peek(&mut byte) {
        Ok(0) => Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed by the peer")),
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        Err(e) => Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    result
}

/// Sends as fast as it can on one connection for `duration`; returns bits per second.
pub fn bulk_send(addr: Ipv4Addr, port: u16, duration: Duration) -> std::io::Result<f64> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(addr, port)), Duration::from_secs(3))?;
    let buf = vec![0x5au8; 128 * 1024];
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        stream.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    Ok(sent as f64 * 8.0 / started.elapsed().as_secs_f64())
}
