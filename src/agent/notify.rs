//! systemd's readiness protocol (`sd_notify`): a datagram with `READY=1` or `STOPPING=1` to
//! the socket `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace). Without
//! the variable (not run by systemd with `Type=notify`) it does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd `state`; a failure is logged (readiness is a courtesy, not the service).
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let send = || -> std::io::Result<usize> {
        let socket = UnixDatagram::unbound()?;
        let bytes = target.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    };
    if let Err(e) = send() {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        // The variable is this test's own: no other test reads or sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
