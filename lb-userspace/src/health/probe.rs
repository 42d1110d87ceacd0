//! One check of one server by one monitor: a TCP connect (and exchange),
//! an HTTP request, or a UDP datagram, from the balancer host to the
//! server's own address (never the VIP: checks are not balanced), within
//! the monitor's timeout. What it found is an [`Outcome`].

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use crate::{
    config::{MaintenanceSigns, Monitor, Probe, parse_duration},
    servers::health::DownReason,
};

/// How much of a reply is read: headers and body, or a TCP or UDP answer.
pub const READ_LIMIT: usize = 2048;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered as expected (with this HTTP status).
    Pass { status: Option<u16> },
    /// Why it is not well.
    Fail(DownReason),
    /// It says it is going into maintenance: what matched, and the drain
    /// it announced, if any.
    Maintenance { matched: String, announced: Option<Duration> },
}

/// Runs `monitor` against the server at `address`:`port` (the monitor's
/// port if it has one).
pub async fn check(monitor: &Monitor, address: std::net::IpAddr, port: u16) -> Outcome {
    let to = SocketAddr::from((address, monitor.port.unwrap_or(port)));
    let run = async {
        match &monitor.probe {
            Probe::Tcp { send, expect } => tcp(to, send.as_deref(), expect.as_deref(), &monitor.maintenance).await,
            Probe::Http { method, path, host, codes, expect } => {
                let request = format!(
                    "{method} {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n",
                    host.clone().unwrap_or_else(|| to.ip().to_string())
                );
                http(to, &request, codes, expect.as_deref(), &monitor.maintenance).await
            }
            Probe::Udp { send, expect } => udp(to, send, expect.as_deref(), &monitor.maintenance).await,
        }
    };
    timeout(monitor.timeout, run).await.unwrap_or(Outcome::Fail(DownReason::TimedOut))
}

async fn tcp(to: SocketAddr, send: Option<&str>, expect: Option<&str>, signs: &MaintenanceSigns) -> Outcome {
    let mut stream = match TcpStream::connect(to).await {
        Ok(stream) => stream,
        Err(e) => return Outcome::Fail(DownReason::from(&e)),
    };
    if let Some(send) = send
        && let Err(e) = stream.write_all(send.as_bytes()).await
    {
        return Outcome::Fail(DownReason::from(&e));
    }
    if expect.is_none() && signs.string.is_none() {
        close_at_once(&stream);
        return Outcome::Pass { status: None };
    }
    let reply = match read_reply(&mut stream, |r| expect.is_some_and(|e| contains(r, e))).await {
        Ok(reply) => reply,
        Err(e) => return Outcome::Fail(DownReason::from(&e)),
    };
    judge(&reply, signs, None, expect)
}

async fn http(
    to: SocketAddr,
    request: &str,
    codes: &[(u16, u16)],
    expect: Option<&str>,
    signs: &MaintenanceSigns,
) -> Outcome {
    let mut stream = match TcpStream::connect(to).await {
        Ok(stream) => stream,
        Err(e) => return Outcome::Fail(DownReason::from(&e)),
    };
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Fail(DownReason::from(&e));
    }
    let reply = match read_reply(&mut stream, |_| false).await {
        Ok(reply) => reply,
        Err(e) => return Outcome::Fail(DownReason::from(&e)),
    };
    let Some(status) = status_of(&reply) else { return Outcome::Fail(DownReason::NotHttp) };
    if signs.codes.contains(&status) {
        return Outcome::Maintenance { matched: format!("status {status}"), announced: drain_header(&reply) };
    }
    if !codes.iter().any(|(low, high)| (*low..=*high).contains(&status)) {
        return match maintenance_string(&reply, signs) {
            Some(found) => found,
            None => Outcome::Fail(DownReason::WrongStatus { status }),
        };
    }
    judge(&reply, signs, Some(status), expect)
}

async fn udp(to: SocketAddr, send: &str, expect: Option<&str>, signs: &MaintenanceSigns) -> Outcome {
    let exchange = async {
        // A socket of the server address's family (an IPv4 one cannot
        // send to an IPv6 server).
        let any: SocketAddr =
            if to.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(to).await?;
        socket.send(send.as_bytes()).await?;
        let mut buf = vec![0u8; READ_LIMIT];
        let n = socket.recv(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, std::io::Error>(buf)
    };
    match exchange.await {
        Ok(reply) => judge(&String::from_utf8_lossy(&reply), signs, None, expect),
        Err(e) => Outcome::Fail(DownReason::from(&e)),
    }
}

/// Closes a check's connection with a reset, as HAProxy does: no FIN
/// exchange, and no socket left in TIME_WAIT (2,000 checks a second would
/// leave 120,000 of them).
pub fn close_at_once(stream: &impl std::os::fd::AsRawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor the stream owns, and a `linger` of
    // the size given. Linger 0 makes close send a reset; it never blocks.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Reads up to [`READ_LIMIT`] bytes, until the end or until `enough`.
async fn read_reply(stream: &mut TcpStream, enough: impl Fn(&str) -> bool) -> std::io::Result<String> {
    let mut buf = vec![0u8; READ_LIMIT];
    let mut len = 0;
    while len < READ_LIMIT {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if enough(&String::from_utf8_lossy(&buf[..len])) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// A reply read: maintenance if it says so, else a pass if it holds
/// `expect` (when one is asked for).
fn judge(reply: &str, signs: &MaintenanceSigns, status: Option<u16>, expect: Option<&str>) -> Outcome {
    if let Some(found) = maintenance_string(reply, signs) {
        return found;
    }
    match expect {
        Some(expect) if !contains(reply, expect) => Outcome::Fail(DownReason::StringNotFound),
        _ => Outcome::Pass { status },
    }
}

/// The maintenance string in a reply, with a drain it announces right
/// after it ("maintenance 300s", "maintenance 300") or in a `Drain-Timeout`
/// header.
fn maintenance_string(reply: &str, signs: &MaintenanceSigns) -> Option<Outcome> {
    let string = signs.string.as_deref()?;
    let at = reply.find(string)?;
    let after = reply[at + string.len()..].trim_start();
    let word: String = after.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let announced = parse_seconds(&word).or_else(|| drain_header(reply));
    Some(Outcome::Maintenance { matched: format!("\"{string}\""), announced })
}

/// `Drain-Timeout: 300` (seconds, or a duration such as "5m").
fn drain_header(reply: &str) -> Option<Duration> {
    let headers = reply.split("\r\n\r\n").next()?;
    headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("drain-timeout").then(|| parse_seconds(value.trim()))?
    })
}

fn parse_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    match text.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => parse_duration(text).ok(),
    }
}

fn status_of(reply: &str) -> Option<u16> {
    let line = reply.lines().next()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

fn contains(reply: &str, expect: &str) -> bool {
    reply.contains(expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signs(codes: &[u16], string: Option<&str>) -> MaintenanceSigns {
        MaintenanceSigns { codes: codes.to_vec(), string: string.map(str::to_owned) }
    }

    #[test]
    fn replies_are_judged_pass_fail_or_maintenance() {
        let s = signs(&[503], Some("maintenance"));
        assert_eq!(judge("ok", &s, None, Some("ok")), Outcome::Pass { status: None });
        assert_eq!(judge("nope", &s, None, Some("ok")), Outcome::Fail(DownReason::StringNotFound));
        assert_eq!(
            judge("going into maintenance 300s now", &s, None, Some("ok")),
            Outcome::Maintenance { matched: "\"maintenance\"".into(), announced: Some(Duration::from_secs(300)) }
        );
        assert_eq!(
            judge("maintenance", &s, None, None),
            Outcome::Maintenance { matched: "\"maintenance\"".into(), announced: None }
        );
    }

    #[test]
    fn http_status_and_the_drain_header() {
        let reply = "HTTP/1.1 503 Service Unavailable\r\nDrain-Timeout: 120\r\n\r\nbody";
        assert_eq!(status_of(reply), Some(503));
        assert_eq!(drain_header(reply), Some(Duration::from_secs(120)));
        assert_eq!(drain_header("HTTP/1.1 200 OK\r\n\r\nDrain-Timeout: 5"), None, "only in the headers");
        assert_eq!(status_of("SSH-2.0"), None);
        assert_eq!(parse_seconds("5m"), Some(Duration::from_secs(300)));
    }
}
