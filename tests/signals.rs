//! The daemon's life cycle in bare network namespaces (no FTP lab needed): a clean stop on
//! SIGTERM and on SIGINT (exit status 0, control socket removed, "ftpct stopping" logged, state
//! saved), a second daemon refused on a socket that is in use, two daemons in two namespaces
//! side by side with the same queue number, a reload (SIGHUP) of an invalid file that keeps
//! the running settings, a file in the old (0.1) format that runs with a warning, and a
//! malformed queued packet logged and counted.
//!
//! Needs root (network namespaces), like the other kernel tests; fails, never skips, without.

#[path = "common/netns.rs"]
#[allow(dead_code)] // Netns::run is for the tests that enter the namespace themselves
mod netns;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netns::{require_root, Netns};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_ftpct");
/// How long a clean stop may take.
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long the daemon may take to create its control socket.
const START_WITHIN: Duration = Duration::from_secs(10);

/// A directory of its own for each daemon of this test process, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ftpct-signals-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create the test directory");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `ftpct run` in a namespace, with its socket, state file, configuration and log in `dir`.
/// Killed on drop if still running.
struct Daemon {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
    conf: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `queue` and waits for its control socket.
    fn start(ns: &Netns, dir: &Path, queue: u16) -> Daemon {
        let d = Self::spawn(ns, dir, queue, &dir.join("ftpct.sock"));
        let t0 = Instant::now();
        let mut d = d;
        while !d.sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("ftpct exited at start ({st}):\n{}", d.log_text());
            }
            assert!(
                t0.elapsed() < START_WITHIN,
                "no control socket after {START_WITHIN:?}:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Starts the daemon without waiting; `sock` may be another daemon's.
    fn spawn(ns: &Netns, dir: &Path, queue: u16, sock: &Path) -> Daemon {
        Self::spawn_with(ns, dir, queue, sock, &dir.join("ftpct.state"), &[])
    }

    /// `start` with the socket and state file at other paths and more arguments; waits for
    /// the socket.
    fn start_with(
        ns: &Netns,
        dir: &Path,
        queue: u16,
        sock: &Path,
        state: &Path,
        args: &[&str],
    ) -> Daemon {
        let mut d = Self::spawn_with(ns, dir, queue, sock, state, args);
        let t0 = Instant::now();
        while !d.sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("ftpct exited at start ({st}):\n{}", d.log_text());
            }
            assert!(
                t0.elapsed() < START_WITHIN,
                "no control socket after {START_WITHIN:?}:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Starts the daemon without waiting, under a umask of 000 (what it creates must not
    /// depend on the umask it inherits).
    fn spawn_with(
        ns: &Netns,
        dir: &Path,
        queue: u16,
        sock: &Path,
        state: &Path,
        args: &[&str],
    ) -> Daemon {
        let conf = dir.join("ftpct.conf");
        if !conf.exists() {
            fs::write(&conf, "ports = 21\n").expect("write ftpct.conf");
        }
        let n = fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("ftpct-{n}.log"));
        let state = state.to_path_buf();
        let logf = fs::File::create(&log).expect("create the log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sh",
                "-c",
                "umask 000; exec \"$@\"",
                "sh",
            ])
            .args([BIN, "run", "--queue"])
            .arg(queue.to_string())
            .arg("--socket")
            .arg(sock)
            .arg("--state")
            .arg(&state)
            .arg("--config")
            .arg(&conf)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup the log"))
            .stderr(logf)
            .spawn()
            .expect("start ftpct");
        Daemon {
            child,
            sock: sock.to_path_buf(),
            state,
            conf,
            log,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal ftpct");
    }

    /// Waits for the exit, at most `within`.
    fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ftpct CMD --socket SOCK` (from the host: the socket is a file).
    fn cli(&self, cmd: &str) -> std::process::Output {
        Command::new(BIN)
            .args([cmd, "--socket"])
            .arg(&self.sock)
            .output()
            .expect("run the ftpct CLI")
    }

    /// The value of one row of `ftpct stats`.
    fn stat(&self, name: &str) -> u64 {
        let out = self.cli("stats");
        assert!(out.status.success(), "ftpct stats: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in ftpct stats:\n{text}"))
    }

    /// Waits until the log contains `what`.
    fn wait_for_log(&self, what: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(what) {
                return text;
            }
            assert!(
                t0.elapsed() < within,
                "no `{what}` in the log within {within:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a daemon, stops it with `sig`, and checks a clean stop.
fn clean_stop(sig: Signal) {
    require_root("signals");
    let tag = format!("{sig:?}").to_lowercase();
    let ns = Netns::new(&format!("sig-{tag}"));
    let dir = Dir::new(&tag);
    let mut d = Daemon::start(&ns, &dir.0, 0);
    d.wait_for_log("ftpct running", START_WITHIN);
    let before = fs::metadata(&d.state)
        .unwrap_or_else(|e| panic!("no state file {} at start: {e}", d.state.display()))
        .ino();
    let t0 = Instant::now();
    d.signal(sig);
    let st = d.wait(STOP_WITHIN).unwrap_or_else(|| {
        panic!(
            "still running {STOP_WITHIN:?} after {sig}:\n{}",
            d.log_text()
        )
    });
    let log = d.log_text();
    assert_eq!(st.code(), Some(0), "exit status after {sig}: {st}\n{log}");
    assert!(
        !d.sock.exists(),
        "control socket {} left behind",
        d.sock.display()
    );
    assert!(log.contains("ftpct stopping"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    // the final snapshot replaced the state file (written to .tmp and renamed over it)
    let meta = fs::metadata(&d.state).expect("state file after the stop");
    assert_ne!(
        meta.ino(),
        before,
        "the state file was not saved at the stop"
    );
    let text = fs::read_to_string(&d.state).expect("read the state file");
    assert!(text.starts_with("ftpct-state 1 boot="), "{text:?}");
    eprintln!("{sig}: clean stop in {:?}", t0.elapsed());
}

#[test]
fn sigterm_stops_cleanly() {
    clean_stop(Signal::SIGTERM);
}

#[test]
fn sigint_stops_cleanly() {
    clean_stop(Signal::SIGINT);
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    require_root("signals");
    let ns = Netns::new("sig-twice");
    let dir = Dir::new("twice");
    let mut first = Daemon::start(&ns, &dir.0, 1);
    // Another queue, so that only the socket is shared.
    let mut second = Daemon::spawn(&ns, &dir.0, 2, &first.sock);
    let st = second
        .wait(START_WITHIN)
        .unwrap_or_else(|| panic!("the second daemon kept running:\n{}", second.log_text()));
    let log = second.log_text();
    assert_eq!(st.code(), Some(1), "{st}\n{log}");
    let want = format!(
        "control socket {}: a daemon is already listening there (is another ftpct using it? \
         choose another --socket)",
        first.sock.display()
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    // the first one is untouched and still answers
    assert!(first.sock.exists());
    assert!(first.cli("stats").status.success());
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

#[test]
fn daemons_in_two_namespaces_run_side_by_side() {
    require_root("signals");
    let (ns_a, ns_b) = (Netns::new("sig-side-a"), Netns::new("sig-side-b"));
    let (dir_a, dir_b) = (Dir::new("side-a"), Dir::new("side-b"));
    // The same queue number in both: queues belong to a network namespace.
    let mut a = Daemon::start(&ns_a, &dir_a.0, 0);
    let mut b = Daemon::start(&ns_b, &dir_b.0, 0);
    for d in [&mut a, &mut b] {
        let out = d.cli("stats");
        assert!(out.status.success(), "{out:?}\n{}", d.log_text());
        assert!(matches!(d.child.try_wait(), Ok(None)), "{}", d.log_text());
    }
    // Stopping one leaves the other running.
    a.signal(Signal::SIGTERM);
    assert_eq!(a.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
    assert!(b.cli("stats").status.success(), "{}", b.log_text());
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

#[test]
fn sighup_with_an_invalid_file_keeps_the_running_settings() {
    require_root("signals");
    let ns = Netns::new("sig-hup");
    let dir = Dir::new("hup");
    let mut d = Daemon::start(&ns, &dir.0, 0);
    d.wait_for_log("ftpct running", START_WITHIN);
    fs::write(&d.conf, "ports = 2121\nmax_sessions = 0\n").expect("rewrite ftpct.conf");
    d.signal(Signal::SIGHUP);
    let log = d.wait_for_log("reload failed", STOP_WITHIN);
    let want = format!(
        "{}:2: max_sessions = 0 is too small: use at least 1",
        d.conf.display()
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    assert!(log.contains("keeping the running configuration"), "{log}");
    assert!(!log.contains("configuration reloaded"), "{log}");
    assert!(matches!(d.child.try_wait(), Ok(None)), "{log}");
    assert!(d.cli("stats").status.success());
    // a valid file is applied by the next reload
    fs::write(&d.conf, "ports = 2121\n").expect("rewrite ftpct.conf");
    d.signal(Signal::SIGHUP);
    d.wait_for_log("configuration reloaded", STOP_WITHIN);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

/// A configuration file in the format of ftpct 0.1 (bare words, `21, 2121`, `yes`), as an
/// upgraded gateway still has it: the daemon runs with its values and warns, at start and at
/// each reload, with the command that converts it; once converted, a reload no longer warns.
#[test]
fn an_old_format_file_runs_with_a_warning_naming_the_migration() {
    require_root("signals");
    let ns = Netns::new("sig-oldconf");
    let dir = Dir::new("oldconf");
    let conf = dir.0.join("ftpct.conf");
    let old = "# ftpct 0.1\nports = 21, 2121\nbackend = iptables-nft\nfail_open = yes\n";
    fs::write(&conf, old).expect("write ftpct.conf");
    let mut d = Daemon::start(&ns, &dir.0, 0);
    let log = d.wait_for_log("ftpct running", START_WITHIN);
    let migrate = format!("ftpct check-config --migrate {}", conf.display());
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(&migrate))
            .count()
    };
    assert_eq!(warned(&log), 1, "{log}");
    let running = log.lines().find(|l| l.contains("ftpct running")).unwrap();
    assert!(
        running.contains("ports=[21, 2121]") && running.contains("fail_open=true"),
        "the old file's values apply: {running}"
    );
    d.signal(Signal::SIGHUP);
    let log = d.wait_for_log("configuration reloaded", STOP_WITHIN);
    assert_eq!(warned(&log), 2, "a reload warns again:\n{log}");
    // converted by the documented command, the file reloads without the warning
    let out = Command::new(BIN)
        .args(["check-config", "--migrate"])
        .arg(&conf)
        .output()
        .expect("run ftpct check-config --migrate");
    assert!(out.status.success(), "{out:?}");
    let new = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        new.contains("ports = [21, 2121]\n") && new.contains("fail_open = true\n"),
        "{new}"
    );
    fs::write(&conf, new).expect("write the converted ftpct.conf");
    let before = d.log_text().matches("configuration reloaded").count();
    d.signal(Signal::SIGHUP);
    let t0 = Instant::now();
    while d.log_text().matches("configuration reloaded").count() == before {
        assert!(
            t0.elapsed() < STOP_WITHIN,
            "no second reload:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.log_text();
    assert_eq!(warned(&log), 2, "the converted file warns no more:\n{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

#[test]
fn malformed_queued_packets_are_logged_once_and_counted() {
    require_root("signals");
    let ns = Netns::new("sig-malformed");
    let dir = Dir::new("malformed");
    let mut d = Daemon::start(&ns, &dir.0, 3);
    // Something else queues UDP to ftpct's queue: every such packet is malformed for ftpct.
    ns.shw("iptables -t raw -A OUTPUT -p udp --dport 9 -j NFQUEUE --queue-num 3");
    for _ in 0..3 {
        ns.sh(&["bash", "-c", "echo x > /dev/udp/127.0.0.1/9"]);
    }
    let t0 = Instant::now();
    while d.stat("packets_malformed") < 3 {
        assert!(t0.elapsed() < STOP_WITHIN, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is not a TCP/IP packet"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per 10 s at most:\n{log}");
    for want in [
        "accepted unchanged",
        "another rule that queues to 3",
        "reason=not TCP",
        "count=1",
    ] {
        assert!(lines[0].contains(want), "no `{want}` in {}", lines[0]);
    }
    assert_eq!(d.stat("packets_accepted"), 3);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

/// The status line `name` of a process (`/proc/PID/status`).
fn proc_status(pid: Pid, name: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in the status of {pid}"))
}

/// Waits for the daemon to exit at start and returns its log.
fn refused_at_start(mut d: Daemon) -> String {
    let st = d
        .wait(START_WITHIN)
        .unwrap_or_else(|| panic!("the daemon kept running:\n{}", d.log_text()));
    let log = d.log_text();
    assert_eq!(st.code(), Some(1), "{st}\n{log}");
    log
}

#[test]
fn the_control_socket_path_takes_only_a_stale_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    require_root("signals");
    let ns = Netns::new("sig-sockpath");
    let dir = Dir::new("sockpath");
    let sock = dir.0.join("ftpct.sock");
    let victim = dir.0.join("victim");
    fs::write(&victim, "precious\n").expect("write victim");
    let state = dir.0.join("ftpct.state");

    // a regular file: refused, untouched
    fs::write(&sock, "not a socket\n").expect("write file");
    let log = refused_at_start(Daemon::spawn(&ns, &dir.0, 0, &sock));
    let want = format!(
        "control socket {}: a regular file is there, not a socket; ftpct only replaces a stale \
         socket of its own. Remove it if nothing needs it (rm {}), or choose another path",
        sock.display(),
        sock.display()
    );
    assert!(log.contains(&want), "expected `{want}` in:\n{log}");
    assert_eq!(fs::read_to_string(&sock).unwrap(), "not a socket\n");
    fs::remove_file(&sock).unwrap();

    // a directory
    fs::create_dir(&sock).unwrap();
    let log = refused_at_start(Daemon::spawn(&ns, &dir.0, 0, &sock));
    assert!(log.contains("a directory is there, not a socket"), "{log}");
    assert!(sock.is_dir());
    fs::remove_dir(&sock).unwrap();

    // a symbolic link (to a file the daemon must not touch): neither followed nor removed
    std::os::unix::fs::symlink(&victim, &sock).unwrap();
    let log = refused_at_start(Daemon::spawn(&ns, &dir.0, 0, &sock));
    assert!(
        log.contains("a symbolic link is there, not a socket"),
        "{log}"
    );
    assert!(fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    fs::remove_file(&sock).unwrap();

    // a stale socket (nothing listens on it, as after a kill -9) is replaced; the new one is
    // private although the daemon inherited a umask of 000
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind a stale socket"));
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    let mut d = Daemon::start_with(&ns, &dir.0, 0, &sock, &state, &[]);
    d.wait_for_log("ftpct running", START_WITHIN);
    let meta = fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let smeta = fs::symlink_metadata(&state).unwrap();
    assert_eq!(smeta.permissions().mode() & 0o777, 0o600, "state file mode");
    assert!(d.cli("stats").status.success());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// One `GET /metrics` from inside the namespace: the status line and the body.
fn scrape(ns: &Netns, port: u16) -> (String, String) {
    use std::io::{Read, Write};
    ns.run(|| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    })
}

#[test]
fn the_metrics_endpoint_cuts_off_slow_clients_and_caps_connections() {
    use std::io::{Read, Write};
    require_root("signals");
    let ns = Netns::new("sig-metrics");
    let dir = Dir::new("metrics");
    let sock = dir.0.join("ftpct.sock");
    let state = dir.0.join("ftpct.state");
    let mut d = Daemon::start_with(
        &ns,
        &dir.0,
        0,
        &sock,
        &state,
        &["--metrics", "127.0.0.1:9477"],
    );
    d.wait_for_log("ftpct running", START_WITHIN);
    let (status, body) = scrape(&ns, 9477);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("ftpct_sessions 0\n"), "{body}");

    // A client that sends one header line every 3 s, never ending its request: with a time
    // limit per line it would hold the connection for as long as it likes.
    let (sent, answer, closed) = ns.run(|| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", 9477)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let mut sent = 0;
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => {
                    // 3 s without news: the next header line
                    if sent == 6 {
                        break false;
                    }
                    if c.write_all(format!("X-Slow-{sent}: 1\r\n").as_bytes())
                        .is_err()
                    {
                        break true;
                    }
                    sent += 1;
                }
            }
        };
        (sent, answer, closed)
    });
    assert!(
        closed,
        "the slow client kept its connection through {sent} header lines (18 s)"
    );
    assert!(sent < 6, "cut off only after {sent} header lines");
    assert!(
        answer.is_empty(),
        "an answer to an unfinished request: {answer:?}"
    );
    assert!(d.stat("metrics_timeouts") >= 1);

    // Connections beyond the cap (8) are closed at once; the others are served.
    let idle: Vec<std::net::TcpStream> = ns.run(|| {
        (0..8)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", 9477)).expect("connect"))
            .collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    let refused_before = d.stat("metrics_refused");
    let extra = ns.run(|| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", 9477)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => "closed".to_string(),
            Ok(n) => format!("{n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "closed".to_string(),
            Err(e) => format!("still open ({e})"),
        }
    });
    assert_eq!(extra, "closed", "a 9th connection must be closed at once");
    assert_eq!(d.stat("metrics_refused"), refused_before + 1);
    drop(idle);
    // the places are given back
    let t0 = Instant::now();
    loop {
        let (status, _) = scrape(&ns, 9477);
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            t0.elapsed() < STOP_WITHIN,
            "no scrape after the idle ones left: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}

/// The user a root daemon without `user =` switches to: `ftpct` if it exists, else `nobody`.
fn default_user() -> nix::unistd::User {
    ["ftpct", "nobody"]
        .iter()
        .find_map(|n| nix::unistd::User::from_name(n).ok().flatten())
        .expect("a user ftpct or nobody on the test machine")
}

#[test]
fn without_user_a_root_daemon_runs_unprivileged_where_it_can() {
    use std::os::unix::fs::MetadataExt;
    require_root("signals");
    let user = default_user();
    let ns = Netns::new("sig-user");
    let dir = Dir::new("user");
    // A directory that does not exist yet: the daemon creates it and gives it to the user.
    let run = dir.0.join("run");
    let sock = run.join("ftpct.sock");
    let state = run.join("ftpct.sock.state");
    let mut d = Daemon::start_with(
        &ns,
        &dir.0,
        0,
        &sock,
        &state,
        &["--metrics", "127.0.0.1:9477"],
    );
    let log = d.wait_for_log("ftpct running", START_WITHIN);
    let uid = user.uid.as_raw();
    let want = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(proc_status(d.pid(), "Uid:"), want, "{log}");
    assert_eq!(proc_status(d.pid(), "CapEff:"), "0000000000001000");
    assert!(log.contains(&format!("uid={uid}")), "{log}");
    assert_eq!(
        fs::metadata(&run).unwrap().uid(),
        uid,
        "the directory is the user's"
    );
    // the control socket, the metrics and the state file still work
    assert!(d.cli("stats").status.success(), "{}", d.log_text());
    let (status, body) = scrape(&ns, 9477);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let before = fs::metadata(&state).unwrap().ino();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
    let log = d.log_text();
    assert!(!log.contains("ERROR"), "{log}");
    let meta = fs::metadata(&state).expect("state file after the stop");
    assert_ne!(
        meta.ino(),
        before,
        "the final snapshot was not written:\n{log}"
    );
    assert_eq!(meta.uid(), uid, "written by the user");
    assert!(!sock.exists(), "socket left behind");

    // In a root-owned directory the user could not write its state file: uid 0, and a
    // warning that says so and how to fix it.
    let mut d = Daemon::start(&ns, &dir.0, 0);
    let log = d.wait_for_log("ftpct running", START_WITHIN);
    assert_eq!(proc_status(d.pid(), "Uid:"), "0\t0\t0\t0", "{log}");
    assert!(
        log.contains("staying root") && log.contains(&format!("chown {}", user.name)),
        "{log}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait(STOP_WITHIN).and_then(|s| s.code()), Some(0));
}
