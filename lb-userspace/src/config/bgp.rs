//! The `[bgp]` section: how this node announces its VIPs to its routers,
//! through a BIRD 2 daemon beside it. Without the section the agent
//! announces nothing (the VIPs are routed to it some other way).

use std::path::PathBuf;

use serde::Deserialize;

use super::checks::Validator;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// BIRD's control socket (`bird -s`), where the agent asks it to
    /// re-read its config once the VIPs to announce changed.
    pub bird_socket: PathBuf,
    /// The file the agent writes the VIPs to announce into, as BIRD static
    /// protocols (`lb_vips4`, `lb_vips6`); BIRD's config includes it and
    /// exports those protocols to its BGP peers.
    pub include_file: PathBuf,
    /// Also announce a default route (`lb_return4`, `lb_return6`) while
    /// the node is in service: where the router sends the servers'
    /// replies (its return table), so that a withdrawn node stops getting
    /// them too.
    pub return_route: bool,
    /// Withdraw a VIP while none of its services has a server in service
    /// (all disabled, draining or DOWN), so that the routers send its
    /// clients to another site announcing it; announce it again with the
    /// first server back. Off by default: a VIP stays announced.
    pub withdraw_without_servers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    bird_socket: Option<PathBuf>,
    include_file: Option<PathBuf>,
    #[serde(default)]
    return_route: bool,
    #[serde(default)]
    withdraw_without_servers: bool,
}

impl Validator {
    pub(super) fn bgp(&mut self, raw: RawBgp) -> BgpConfig {
        let mut path = |key: &str, value: Option<PathBuf>, example: &str| match value {
            Some(path) if path.is_absolute() => path,
            Some(path) => {
                self.problem(format!("bgp.{key}"), format!("\"{}\" must be an absolute path", path.display()));
                path
            }
            None => {
                self.problem(format!("bgp.{key}"), format!("missing (such as \"{example}\")"));
                PathBuf::new()
            }
        };
        let bird_socket = path("bird_socket", raw.bird_socket, "/run/bird/bird.ctl");
        let include_file = path("include_file", raw.include_file, "/etc/bird/lb-vips.conf");
        BgpConfig {
            bird_socket,
            include_file,
            return_route: raw.return_route,
            withdraw_without_servers: raw.withdraw_without_servers,
        }
    }
}
