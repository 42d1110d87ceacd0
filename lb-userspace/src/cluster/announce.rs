//! Where this node announces its VIPs to its routers: through BIRD 2, the
//! BGP daemon beside it (`[bgp]`). The agent writes the VIPs it announces
//! into a file BIRD's config includes, as two static protocols
//! (`lb_vips4`, `lb_vips6`: a /32 or /128 per VIP), and asks BIRD to
//! re-read its config over its control socket (`configure`). BIRD keeps
//! its BGP sessions and BFD; only the static routes change, so a router
//! adds or drops this node's path to a VIP within a round trip.
//!
//! A VIP is announced once the agent forwards it (XDP attached, the
//! store's states applied), and withdrawn when the node is taken out of
//! service. An agent that stops (a restart, an upgrade) leaves the
//! announcement as it is: XDP stays attached and forwards meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    sync::watch,
};

use crate::{
    agent::{runtime::stopped, snapshot::Snapshot},
    config::BgpConfig,
};

/// How long BIRD may take to answer a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// The pause before trying again when BIRD refused or did not answer.
const RETRY: Duration = Duration::from_secs(1);

/// The include file's text for the VIPs to announce, and whether to
/// announce the return route (a default route per family, `[bgp]
/// return_route`; withdrawn with the VIPs).
pub fn include_text(vips: &BTreeSet<IpAddr>, return_route: bool) -> String {
    let routes = |v6: bool| -> String {
        vips.iter()
            .filter(|vip| vip.is_ipv6() == v6)
            .map(|vip| format!("  route {vip}/{} blackhole;\n", if v6 { 128 } else { 32 }))
            .collect()
    };
    let default = |route: &str| {
        if return_route && !vips.is_empty() { format!("  route {route} blackhole;\n") } else { String::new() }
    };
    format!(
        "# Written by lb: the VIPs this node announces. Do not edit: lb rewrites it.\n\
         protocol static lb_vips4 {{\n  ipv4;\n{}}}\n\
         protocol static lb_vips6 {{\n  ipv6;\n{}}}\n\
         protocol static lb_return4 {{\n  ipv4;\n{}}}\n\
         protocol static lb_return6 {{\n  ipv6;\n{}}}\n",
        routes(false),
        routes(true),
        default("0.0.0.0/0"),
        default("::/0"),
    )
}

pub struct Announcer {
    pub config: BgpConfig,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Whether this node is in service (node maintenance withdraws it);
    /// none until decided: BIRD is left as it is meanwhile (an agent that
    /// restarts must not withdraw a node in service while it joins).
    pub in_service: watch::Receiver<Option<bool>>,
    /// What BIRD announces now, for `lb nodes` and the metrics.
    pub announced: watch::Sender<BTreeSet<IpAddr>>,
}

impl Announcer {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut done: Option<BTreeSet<IpAddr>> = None;
        loop {
            let want = match *self.in_service.borrow() {
                Some(true) => Some(announced(&self.snapshots.borrow().vips, self.config.withdraw_without_servers)),
                Some(false) => Some(BTreeSet::new()),
                None => None,
            };
            let failed = want.is_some() && done != want && {
                let want = want.unwrap_or_default();
                match self.announce(&want).await {
                    Ok(()) => {
                        log::info!("BGP: announcing {} VIP(s) through BIRD: {}", want.len(), list(&want));
                        self.announced.send_replace(want.clone());
                        done = Some(want);
                        false
                    }
                    Err(e) => {
                        log::warn!("BGP: cannot announce {}: {e}; trying again in {RETRY:?}", list(&want));
                        true
                    }
                }
            };
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = self.snapshots.changed() => {}
                _ = self.in_service.changed() => {}
                () = tokio::time::sleep(RETRY), if failed => {}
            }
        }
    }

    /// Writes the include file, then has BIRD re-read its config.
    async fn announce(&self, vips: &BTreeSet<IpAddr>) -> Result<(), String> {
        write_atomically(&self.config.include_file, &include_text(vips, self.config.return_route))
            .map_err(|e| format!("cannot write {}: {e}", self.config.include_file.display()))?;
        let answer = tokio::time::timeout(ANSWER_WITHIN, bird_request(&self.config.bird_socket, "configure"))
            .await
            .map_err(|_| format!("BIRD did not answer within {ANSWER_WITHIN:?}"))??;
        log::debug!("BGP: BIRD: {answer}");
        Ok(())
    }
}

/// The VIPs to announce while the node is in service: every VIP, or with
/// `withdraw_without_servers` only those with a server in service.
pub fn announced(vips: &BTreeMap<IpAddr, bool>, withdraw_without_servers: bool) -> BTreeSet<IpAddr> {
    vips.iter().filter(|(_, serving)| **serving || !withdraw_without_servers).map(|(vip, _)| *vip).collect()
}

fn list(vips: &BTreeSet<IpAddr>) -> String {
    if vips.is_empty() {
        "none".to_owned()
    } else {
        vips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Replaces `path` whole: BIRD never reads half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Sends one request on BIRD's control socket; its final reply line if it
/// succeeded (a code starting with 0), else the lines it gave.
async fn bird_request(socket: &Path, request: &str) -> Result<String, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot reach BIRD's control socket {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting ("0001 BIRD 2.0.12 ready."), then the request's answer.
    reply(&mut lines).await?;
    write.write_all(format!("{request}\n").as_bytes()).await.map_err(|e| format!("cannot ask BIRD: {e}"))?;
    reply(&mut lines).await
}

/// Reads one reply: lines "NNNN-text" (more follow) up to "NNNN text".
async fn reply(lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>) -> Result<String, String> {
    let mut said = Vec::new();
    loop {
        let line = lines.next_line().await.map_err(|e| format!("reading BIRD's answer: {e}"))?;
        let line = line.ok_or_else(|| format!("BIRD closed the socket after: {}", said.join(" / ")))?;
        let (code, last) = match line.as_bytes() {
            [a, b, c, d, sep, ..] if [a, b, c, d].iter().all(|x| x.is_ascii_digit()) => (*a, *sep == b' '),
            _ => (b'0', false),
        };
        said.push(line.get(5..).unwrap_or(&line).trim().to_owned());
        if last {
            let text = said.join(" / ");
            return if code == b'0' { Ok(text) } else { Err(format!("BIRD refused: {text}")) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_include_file_announces_each_vip_in_its_familys_protocol() {
        let vips: BTreeSet<IpAddr> = ["10.100.0.1", "fd00:100::1", "10.100.0.2"].map(|a| a.parse().unwrap()).into();
        let text = include_text(&vips, false);
        assert!(text.contains("protocol static lb_vips4 {\n  ipv4;\n  route 10.100.0.1/32 blackhole;\n  route 10.100.0.2/32 blackhole;\n}"), "{text}");
        assert!(text.contains("protocol static lb_vips6 {\n  ipv6;\n  route fd00:100::1/128 blackhole;\n}"), "{text}");
        // Withdrawn: both protocols stay (BIRD's export filters name them), empty.
        let none = include_text(&BTreeSet::new(), true);
        assert!(none.contains("protocol static lb_vips4 {\n  ipv4;\n}") && !none.contains("route"), "{none}");
        // The return route goes with the VIPs.
        let back = include_text(&vips, true);
        assert!(back.contains("protocol static lb_return4 {\n  ipv4;\n  route 0.0.0.0/0 blackhole;\n}"), "{back}");
        assert!(back.contains("protocol static lb_return6 {\n  ipv6;\n  route ::/0 blackhole;\n}"), "{back}");
        assert!(!text.contains("0.0.0.0/0"), "{text}");
    }

    #[test]
    fn a_vip_without_a_server_in_service_is_withdrawn_only_if_asked() {
        let vips: BTreeMap<IpAddr, bool> =
            [("10.100.0.1".parse().unwrap(), true), ("10.100.0.2".parse().unwrap(), false)].into();
        assert_eq!(announced(&vips, false).len(), 2, "by default a VIP stays announced");
        assert_eq!(announced(&vips, true), ["10.100.0.1".parse().unwrap()].into());
    }

    #[tokio::test]
    async fn a_bird_reply_is_read_to_its_last_line_and_a_refusal_says_why() {
        let dir = std::env::temp_dir().join(format!("lb-bird-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let answers =
            ["0002-Reading configuration from /etc/bird.conf\n0003 Reconfigured\n", "8002 /x.conf:3:1 syntax error\n"];
        let server = tokio::spawn(async move {
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
                let mut request = [0u8; 10];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut request).await.unwrap();
                assert_eq!(&request, b"configure\n");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let ok = bird_request(&path, "configure").await.expect("reconfigured");
        assert!(ok.ends_with("Reconfigured"), "{ok}");
        let refused = bird_request(&path, "configure").await.expect_err("a syntax error");
        assert!(refused.contains("BIRD refused") && refused.contains("syntax error"), "{refused}");
        server.await.unwrap();
        let missing = bird_request(&dir.join("none.ctl"), "configure").await.expect_err("no BIRD");
        assert!(missing.contains("cannot reach BIRD's control socket"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
