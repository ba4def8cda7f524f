//! A minimal `sd_notify(3)` client: tells systemd (or any supervisor speaking the same protocol)
//! when the daemon is ready, reloading or stopping, and what it is doing.
//!
//! The protocol (systemd's `sd_notify(3)`, `systemd.service(5)` `Type=notify`): the supervisor
//! passes the address of a `SOCK_DGRAM` `AF_UNIX` socket in `$NOTIFY_SOCKET`; each notification
//! is one datagram of newline-separated `KEY=VALUE` assignments. An address starting with `/` is
//! a file-system socket; one starting with `@` is in the abstract namespace (the `@` stands for
//! the leading NUL byte). Other forms (e.g. systemd 254's `vsock:`) are refused with an error.
//!
//! When `$NOTIFY_SOCKET` is unset or empty, every call is a no-op returning `Ok(false)`: the
//! daemon runs the same way in a terminal, under another supervisor or in the tests.
//!
//! Hand-rolled rather than a crate: it is one `sendto(2)` on a std `UnixDatagram`, and the
//! crates that do it pull in more than they save (libsystemd bindings, or their own env
//! handling that unsets the variable).
//!
//! `reloading()` sends `MONOTONIC_USEC` along with `RELOADING=1`: systemd ≥ 253 requires it for
//! `Type=notify-reload` services (it uses the timestamp to tell a reload it triggered from an
//! older one); older systemd (Debian 12 ships 252) ignores the extra field.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable holding the supervisor's socket address.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Parses a `$NOTIFY_SOCKET` value into a socket address.
pub fn parse_address(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value)),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{NOTIFY_SOCKET}={:?}: only absolute paths and @abstract sockets are supported",
                value
            ),
        )),
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the socket at `address` (a
/// `$NOTIFY_SOCKET` value).
pub fn notify_to(address: &OsStr, state: &str) -> io::Result<()> {
    let addr = parse_address(address)?;
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(state.as_bytes(), &addr)?;
    if n != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset or empty (nothing
/// sent), `Ok(true)` when sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(a) if !a.is_empty() => notify_to(&a, state).map(|()| true),
        _ => Ok(false),
    }
}

/// `READY=1`: start-up is finished (and, after [`reloading`], the reload is).
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// The message [`reloading`] sends, for a given `CLOCK_MONOTONIC` reading in microseconds.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `RELOADING=1` with `MONOTONIC_USEC`: a configuration reload has started; send [`ready`]
/// when it is done (also when it failed and the old configuration is kept).
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

/// `STOPPING=1`: the daemon is shutting down.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `STATUS=...`: a one-line status shown by `systemctl status`. Newlines in `text` are replaced
/// by spaces (a newline would start another assignment).
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// The message [`status`] sends.
pub fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
pub fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000)
            .saturating_add(ts.tv_nsec() as u64 / 1000),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "ftpct-notify-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn recv(s: &UnixDatagram) -> String {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn path_socket_receives_each_message() {
        let dir = TempDir::new("path");
        let path = dir.0.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = path.as_os_str();
        notify_to(addr, "READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
        notify_to(addr, &status_message("queue 0\nports 21")).unwrap();
        assert_eq!(recv(&server), "STATUS=queue 0 ports 21");
        let before = monotonic_usec();
        notify_to(addr, &reloading_message(monotonic_usec())).unwrap();
        let msg = recv(&server);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC line")
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec(), "{usec}");
        notify_to(addr, "STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ftpct-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn bad_addresses_are_errors() {
        for a in ["relative/path", "vsock:2:1234", "x"] {
            let e = notify_to(OsStr::new(a), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{a}: {e}");
        }
        let dir = TempDir::new("missing");
        let e = notify_to(dir.0.join("nobody").as_os_str(), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    /// The only test that touches the process environment (tests run in threads of one process).
    #[test]
    fn environment_unset_is_a_no_op_and_set_is_used() {
        std::env::remove_var(NOTIFY_SOCKET);
        assert!(!ready().unwrap());
        assert!(!reloading().unwrap());
        assert!(!stopping().unwrap());
        assert!(!status("x").unwrap());
        std::env::set_var(NOTIFY_SOCKET, "");
        assert!(!ready().unwrap());

        let dir = TempDir::new("env");
        let path = dir.0.join("n.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(NOTIFY_SOCKET, &path);
        assert!(ready().unwrap());
        assert_eq!(recv(&server), "READY=1");
        assert!(status("serving").unwrap());
        assert_eq!(recv(&server), "STATUS=serving");
        assert!(reloading().unwrap());
        assert!(recv(&server).starts_with("RELOADING=1\nMONOTONIC_USEC="));
        assert!(stopping().unwrap());
        assert_eq!(recv(&server), "STOPPING=1");
        std::env::remove_var(NOTIFY_SOCKET);
    }
}
