//! systemd's readiness protocol (sd_notify(3)) for the unit's
//! `Type=notify`: the unit counts as started once the agent serves (XDP
//! attached, the API answering), so `systemctl start` and `restart` wait
//! for that and report a start that fails; before, they returned at once,
//! and a bad config showed only later in `systemctl status`.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// The agent serves: XDP attached, the API answering.
pub const READY: &str = "READY=1";
/// The agent is stopping (XDP stays attached).
pub const STOPPING: &str = "STOPPING=1";

/// Tells systemd `state`, if it asked (`$NOTIFY_SOCKET`); outside
/// systemd, nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path, state) {
        log::warn!("cannot tell systemd {state:?} (NOTIFY_SOCKET {}): {e}", path.display());
    }
}

/// One datagram to `path`: a file, or an abstract name after '@'.
pub fn send(path: &OsStr, state: &str) -> io::Result<()> {
    let address = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_socket_named_by_a_path_or_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("lb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), READY).unwrap();
        let mut buffer = [0u8; 64];
        let n = by_path.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");

        let name = format!("lb-notify-test-{}", std::process::id());
        let by_name = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(OsStr::new(&format!("@{name}")), STOPPING).unwrap();
        let n = by_name.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
