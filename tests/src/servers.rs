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
    time::Duration,
};

use crate::netns::NetNs;

/// What a server does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 (keep-alive too); the body is the server's name and a newline.
    Http,
    /// Each line is answered with "<name> <line>".
    LineEcho,
    /// Each datagram is answered with "<name> <datagram>".
    UdpEcho,
}

/// A running server; stops on drop.
pub struct Server {
    pub name: String,
    stop: Arc<AtomicBool>,
    /// Connections (TCP) or datagrams (UDP) served.
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &NetNs, name: &str, kind: Kind, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (name_, stop_, served_) = (name.to_owned(), Arc::clone(&stop), Arc::clone(&served));
        let thread = match kind {
            Kind::UdpEcho => {
                let socket = ns.run(|| UdpSocket::bind(addr)).expect("bind UDP server");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                std::thread::spawn(move || udp_echo(socket, &name_, &stop_, &served_))
            }
            Kind::Http | Kind::LineEcho => {
                let listener = ns.run(|| TcpListener::bind(addr)).expect("bind TCP server");
                listener.set_nonblocking(true).expect("nonblocking");
                std::thread::spawn(move || accept_loop(listener, kind, &name_, &stop_, &served_))
            }
        };
        Server {
            name: name.to_owned(),
            stop,
            served,
            thread: Some(thread),
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    name: &str,
    stop: &Arc<AtomicBool>,
    served: &AtomicU64,
) {
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                served.fetch_add(1, Ordering::Relaxed);
                let (name, stop) = (name.to_owned(), Arc::clone(stop));
                workers.push(std::thread::spawn(move || {
                    let _ = serve_connection(stream, kind, &name, &stop);
                }));
                workers.retain(|w| !w.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
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
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
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
            Kind::LineEcho => writer.write_all(format!("{name} {line}").as_bytes())?,
            _ => {
                // HTTP: answer when the request's blank line arrives.
                if line == "\r\n" || line == "\n" {
                    request_done = true;
                }
                if request_done {
                    let body = format!("{name}\n");
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    writer.write_all(format!("{head}{body}").as_bytes())?;
                    request_done = false;
                }
            }
        }
        line.clear();
    }
    Ok(())
}

fn udp_echo(socket: UdpSocket, name: &str, stop: &AtomicBool, served: &AtomicU64) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            served.fetch_add(1, Ordering::Relaxed);
            let mut reply = format!("{name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    }
}

/// One HTTP request on a new connection; returns the name of the server
/// that answered.
pub fn http_get(vip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(vip, port)),
        Duration::from_secs(3),
    )?;
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
    Err(std::io::Error::new(
        ErrorKind::UnexpectedEof,
        format!("incomplete response: {response:?}"),
    ))
}

/// A connection to a [`Kind::LineEcho`] server.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    pub fn connect(vip: Ipv4Addr, port: u16) -> std::io::Result<EchoClient> {
        let stream = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(vip, port)),
            Duration::from_secs(3),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(EchoClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends a line; returns the name of the server that echoed it.
    pub fn exchange(&mut self, text: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let (name, echoed) = line.trim_end().split_once(' ').unwrap_or(("", ""));
        if echoed != text {
            return Err(std::io::Error::other(format!(
                "echo mismatch: sent {text:?}, got {line:?}"
            )));
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
    vip: Ipv4Addr,
    port: u16,
    text: &str,
) -> std::io::Result<String> {
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(text.as_bytes(), (vip, port))?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    if from != SocketAddr::V4(SocketAddrV4::new(vip, port)) {
        return Err(std::io::Error::other(format!(
            "reply from {from}, not from the VIP"
        )));
    }
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (name, echoed) = reply.split_once(' ').unwrap_or(("", ""));
    if echoed != text {
        return Err(std::io::Error::other(format!(
            "echo mismatch: sent {text:?}, got {reply:?}"
        )));
    }
    Ok(name.to_owned())
}
