//! Shared helpers for the end-to-end tests: a three-namespace FTP lab driven by
//! `tests/lab/lab.sh` (client, gateway, server), with the ALG under test attached to the gateway.
//!
//! Every lab is torn down by `Drop` (namespaces, veths, processes, state dir), also when the test
//! panics; on a failing test the gateway's rules, conntrack table and logs are printed first.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lab script.
pub const LAB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/lab.sh");
/// Where lab.sh keeps each lab's state (`STATE_ROOT/PREFIX`).
pub const STATE_ROOT: &str = "/run/ftpct-lab";
/// NFQUEUE number the ftpct daemon is started with in the lab (queues are per network namespace;
/// a non-zero number checks that `--queue` is honoured by both `rules` and `run`).
pub const FTPCT_QUEUE: u16 = 7;
/// The ftpct binary under test: this crate's `ftpct`, or `$FTPCT_E2E_BIN` if set (e.g. a release
/// build, or `tests/lab/fake-ftpct.sh` to check the harness itself).
pub fn ftpct_bin() -> String {
    std::env::var("FTPCT_E2E_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ftpct").to_string())
}

/// How long to wait for the daemon's control socket to appear.
const FTPCT_START_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Private client 10.77.100.102 behind MASQUERADE; public server 203.0.113.2.
    Masq,
    /// Public client 203.0.113.2; server 10.77.2.2 behind DNAT of the control port only.
    Dnat,
    /// IPv6 only, routed, no NAT: client fd77:1::2, server fd77:2::2.
    V6,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Masq => "masq",
            Topology::Dnat => "dnat",
            Topology::V6 => "v6",
        }
    }
}

/// Which ALG runs in the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// The kernel's nf_conntrack_ftp + nf_nat_ftp via `-t raw ... -j CT --helper ftp` (reference).
    KernelHelper,
    /// This project's daemon (`ftpct rules --apply` + `ftpct run`).
    Ftpct,
    /// Nothing: FTP data connections must fail (proves the tests are not vacuous).
    None,
}

impl Alg {
    pub fn is_some(self) -> bool {
        self != Alg::None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Curl,
    Lftp,
    Ftplib,
}

impl Client {
    pub const ALL: [Client; 3] = [Client::Curl, Client::Lftp, Client::Ftplib];

    pub fn name(self) -> &'static str {
        match self {
            Client::Curl => "curl",
            Client::Lftp => "lftp",
            Client::Ftplib => "ftplib",
        }
    }

    /// Whether this client can be forced to use exactly `mode` in `topo`.
    pub fn supports(self, topo: Topology, mode: Mode) -> bool {
        match (topo, mode) {
            // PORT and PASV carry IPv4 addresses only.
            (Topology::V6, Mode::Port | Mode::Pasv) => false,
            // lftp sends EPRT only over IPv6 (no setting forces it over IPv4).
            (Topology::Masq | Topology::Dnat, Mode::Eprt) => self != Client::Lftp,
            _ => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Port,
    Eprt,
    Pasv,
    Epsv,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Port => "port",
            Mode::Eprt => "eprt",
            Mode::Pasv => "pasv",
            Mode::Epsv => "epsv",
        }
    }
    pub fn is_active(self) -> bool {
        matches!(self, Mode::Port | Mode::Eprt)
    }
    pub fn command(self) -> &'static str {
        match self {
            Mode::Port => "PORT",
            Mode::Eprt => "EPRT",
            Mode::Pasv => "PASV",
            Mode::Epsv => "EPSV",
        }
    }
}

/// The outcome of one command (a lab.sh step, a client run, an ftpct CLI call).
pub struct Run {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// stdout and stderr together (the client's control dialog is on stderr).
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    pub fn contains(&self, s: &str) -> bool {
        self.stdout.contains(s) || self.stderr.contains(s)
    }
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected success: {self}");
        self
    }
    #[track_caller]
    pub fn assert_fails(&self) -> &Self {
        assert!(
            !self.ok(),
            "expected FAILURE but it succeeded (the test would be vacuous): {self}"
        );
        // exit status 2 is lab.sh's "usage/unsupported": a mistake of the test, not a failure
        assert_ne!(self.code, Some(2), "lab.sh refused the command: {self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`{}` exit {:?} after {:.2?}",
            self.what, self.code, self.elapsed
        )?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Runs a command to completion and captures everything.
pub fn run(what: impl Into<String>, cmd: &mut Command) -> Run {
    let what = what.into();
    let t0 = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    Run {
        what,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t0.elapsed(),
    }
}

/// The e2e tests need root (network namespaces, iptables, conntrack) and the lab's tools. Not
/// having them is a test FAILURE with a clear message, never a silent pass.
#[track_caller]
pub fn require_root_and_tools() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "the end-to-end tests must run as root (they create network namespaces and firewall \
         rules); effective uid is {euid}. Run e.g. `sudo -E cargo test --test e2e`."
    );
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "ip6tables",
        "iptables-restore",
        "conntrack",
        "vsftpd",
        "curl",
        "lftp",
        "python3",
        "ss",
        "sha256sum",
        "timeout",
    ]
    .into_iter()
    .filter(|t| !in_path(t))
    .collect();
    assert!(
        missing.is_empty(),
        "tools missing for the end-to-end lab: {missing:?}; install what tests/lab/requirements.txt lists"
    );
}

fn in_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// A prefix unique per test and process: `f` + hash(test name, pid, counter), 8 characters, so
/// tests can run in parallel and namespace names stay short.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = DefaultHasher::new();
    test.hash(&mut h);
    std::process::id().hash(&mut h);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    format!("f{:07x}", h.finish() & 0xfff_ffff)
}

/// Once per test process: remove labs left by an earlier run that was killed (Ctrl-C, SIGKILL)
/// before its `Drop` ran (`lab.sh gc`: labs whose owner PID is gone; never labs made by hand).
fn gc_once() {
    static GC: std::sync::Once = std::sync::Once::new();
    GC.call_once(|| {
        let r = run("lab.sh gc", Command::new(LAB_SH).arg("gc"));
        if !r.ok() || !r.stdout.is_empty() {
            eprintln!("{r}");
        }
    });
}

/// The ftpct daemon running in a lab's gateway.
struct FtpctProc {
    child: Child,
    ports: String,
    log: PathBuf,
}

/// One lab: three namespaces, firewall, optional server and ALG. Dropping it removes everything.
pub struct Lab {
    test: String,
    prefix: String,
    topology: Topology,
    port: u16,
    ftpct: Option<FtpctProc>,
}

impl Lab {
    /// `lab.sh up` with the control port 21.
    #[track_caller]
    pub fn up(test: &str, topology: Topology) -> Lab {
        Self::up_with_port(test, topology, 21)
    }

    #[track_caller]
    pub fn up_with_port(test: &str, topology: Topology, port: u16) -> Lab {
        require_root_and_tools();
        gc_once();
        let prefix = unique_prefix(test);
        let r = run(
            format!("lab.sh up {prefix} --topology {}", topology.name()),
            Command::new(LAB_SH).args([
                "up",
                &prefix,
                "--owner",
                &std::process::id().to_string(),
                "--topology",
                topology.name(),
                "--port",
                &port.to_string(),
            ]),
        );
        // From here on Drop cleans up, also if `up` itself failed half-way.
        let lab = Lab {
            test: test.to_string(),
            prefix,
            topology,
            port,
            ftpct: None,
        };
        assert!(r.ok(), "[{test}] lab up failed: {r}");
        lab
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn topology(&self) -> Topology {
        self.topology
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.prefix)
    }
    pub fn ns(&self, which: &str) -> String {
        format!("{}-{}", self.prefix, which)
    }

    /// `lab.sh CMD PREFIX ARGS...`
    pub fn sh(&self, cmd: &str, args: &[&str]) -> Run {
        let mut c = Command::new(LAB_SH);
        c.arg(cmd).arg(&self.prefix).args(args);
        run(
            format!("lab.sh {cmd} {} {}", self.prefix, args.join(" ")),
            &mut c,
        )
    }

    /// Starts vsftpd on the lab's control port (connect_from_port_20=YES).
    #[track_caller]
    pub fn server(&self) {
        self.server_with(self.port, true);
    }

    #[track_caller]
    pub fn server_with(&self, port: u16, port20: bool) {
        assert_eq!(
            port, self.port,
            "use Lab::up_with_port for another control port"
        );
        let r = self.sh(
            "server",
            &[
                "--port",
                &port.to_string(),
                "--port20",
                if port20 { "yes" } else { "no" },
            ],
        );
        assert!(r.ok(), "[{}] server start failed: {r}", self.test);
    }

    /// Adds the attacker namespace `PREFIX-att` (`lab.sh attacker`): its own veth into the
    /// gateway (`to-att`, 198.18.0.1 ↔ 198.18.0.2), rp_filter off in the gateway. Removed with
    /// the lab (`lab.sh down`, also when the test fails). IPv4 topologies only.
    #[track_caller]
    pub fn attacker(&self) {
        let r = self.sh("attacker", &[]);
        assert!(r.ok(), "[{}] lab.sh attacker failed: {r}", self.test);
    }

    /// Attaches (or detaches) the kernel's FTP helper on the control port in the gateway.
    #[track_caller]
    pub fn kernel_helper(&self, on: bool) {
        let r = self.sh("helper", &[if on { "on" } else { "off" }]);
        assert!(r.ok(), "[{}] helper {on} failed: {r}", self.test);
    }

    /// Attaches a kernel helper rule for a port other than the lab's control port.
    #[track_caller]
    pub fn kernel_helper_on_port(&self, port: u16) {
        for tool in ["iptables", "ip6tables"] {
            let p = port.to_string();
            let r = self.exec(
                "gw",
                &[
                    tool,
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "--dport",
                    &p,
                    "-j",
                    "CT",
                    "--helper",
                    "ftp",
                ],
            );
            assert!(r.ok(), "[{}] helper rule failed: {r}", self.test);
        }
    }

    /// Puts `alg` in place in the gateway.
    #[track_caller]
    pub fn enable(&mut self, alg: Alg) {
        match alg {
            Alg::KernelHelper => self.kernel_helper(true),
            Alg::Ftpct => self.start_ftpct(&[]),
            Alg::None => {}
        }
    }

    /// Runs a command in one of the lab's namespaces (`cli`, `gw`, `srv`, and `att` after
    /// [`Lab::attacker`]).
    pub fn exec(&self, which: &str, argv: &[&str]) -> Run {
        let ns = self.ns(which);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).args(argv);
        run(format!("ip netns exec {ns} {}", argv.join(" ")), &mut c)
    }

    pub fn ftpct_socket(&self) -> PathBuf {
        self.state_dir().join("ftpct.sock")
    }

    /// Installs ftpct's rules in the gateway (`ftpct rules --queue N --ports P --apply`) and starts
    /// `ftpct run --queue N --socket STATE/ftpct.sock ARGS...` there; waits for the control socket.
    /// Stopped (and its rules deleted) by `stop_ftpct` or when the lab is dropped.
    #[track_caller]
    pub fn start_ftpct(&mut self, args: &[&str]) {
        self.start_ftpct_with_config("", args)
    }

    /// `start_ftpct` with `extra_conf` appended to `STATE/ftpct.conf` (whole TOML `key = value`
    /// lines, e.g. `"max_sessions = 1000\n"` or `"backend = \"nft\"\n"`; see ftpct.conf(5)).
    #[track_caller]
    pub fn start_ftpct_with_config(&mut self, extra_conf: &str, args: &[&str]) {
        self.start_ftpct_with_env(extra_conf, args, &[])
    }

    /// `start_ftpct_with_config` with extra environment variables for the daemon (e.g.
    /// `NOTIFY_SOCKET`).
    #[track_caller]
    pub fn start_ftpct_with_env(&mut self, extra_conf: &str, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.ftpct.is_none(), "ftpct already running in this lab");
        let bin = ftpct_bin();
        let bin = bin.as_str();
        let queue = FTPCT_QUEUE.to_string();
        let ports = self.port.to_string();
        let gw = self.ns("gw");
        // The control port goes to the daemon through its configuration file (the documented
        // contract is `ftpct run [--queue N] [--config FILE] [--socket PATH]`); `ftpct rules`
        // reads the same file (e.g. `backend = nft` in `extra_conf`).
        let conf = self.state_dir().join("ftpct.conf");
        fs::write(
            &conf,
            format!("# written by tests/common\nports = [{ports}]\n{extra_conf}"),
        )
        .expect("write ftpct.conf");
        let conf_s = conf.to_string_lossy().into_owned();
        let r = self.exec(
            "gw",
            &[
                bin, "rules", "--config", &conf_s, "--queue", &queue, "--ports", &ports, "--apply",
            ],
        );
        assert!(
            r.ok(),
            "[{}] `ftpct rules --apply` failed in {gw}: {r}",
            self.test
        );
        let sock = self.ftpct_socket();
        let _ = fs::remove_file(&sock);
        let log = self.state_dir().join("ftpct.log");
        // Appended to, so that the log of a restarted daemon follows the first one.
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open ftpct.log");
        let child = Command::new("ip")
            .args([
                "netns", "exec", &gw, bin, "run", "--queue", &queue, "--socket",
            ])
            .arg(&sock)
            .arg("--config")
            .arg(&conf)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ftpct: {e}"));
        // Recorded for lab.sh down as well (it kills the PIDs in STATE/*.pid).
        let _ = fs::write(
            self.state_dir().join("ftpct.pid"),
            format!("{}\n", child.id()),
        );
        self.ftpct = Some(FtpctProc {
            child,
            ports,
            log: log.clone(),
        });
        let t0 = Instant::now();
        loop {
            if sock.exists() {
                return;
            }
            let p = self.ftpct.as_mut().unwrap();
            if let Ok(Some(st)) = p.child.try_wait() {
                let text = fs::read_to_string(&log).unwrap_or_default();
                panic!("[{}] ftpct exited at start ({st}):\n{text}", self.test);
            }
            if t0.elapsed() > FTPCT_START_TIMEOUT {
                let text = fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "[{}] ftpct did not create its socket {} within {:?}:\n{text}",
                    self.test,
                    sock.display(),
                    FTPCT_START_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 3 s) and deletes its rules. Returns its log.
    pub fn stop_ftpct(&mut self) -> Option<String> {
        let mut p = self.ftpct.take()?;
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = p.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(p.child.try_wait(), Ok(Some(_))) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = fs::remove_file(self.state_dir().join("ftpct.pid"));
        let bin = ftpct_bin();
        let bin = bin.as_str();
        let queue = FTPCT_QUEUE.to_string();
        let conf = self.state_dir().join("ftpct.conf");
        let conf = conf.to_string_lossy();
        let r = self.exec(
            "gw",
            &[
                bin, "rules", "--config", &conf, "--queue", &queue, "--ports", &p.ports, "--delete",
            ],
        );
        if !r.ok() {
            eprintln!("[{}] `ftpct rules --delete` failed: {r}", self.test);
        }
        Some(fs::read_to_string(&p.log).unwrap_or_default())
    }

    /// Sends `sig` to the daemon. For SIGKILL/SIGTERM waits for it to exit and forgets it, but
    /// keeps its rules (a restart with `start_ftpct` follows). Returns the exit status text.
    pub fn signal_ftpct(&mut self, sig: nix::sys::signal::Signal) -> String {
        use nix::sys::signal::Signal;
        let p = self.ftpct.as_mut().expect("ftpct is running");
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal ftpct");
        if !matches!(sig, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT) {
            return String::new();
        }
        let mut p = self.ftpct.take().expect("ftpct is running");
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                return format!("{st}");
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = p.child.kill();
                let _ = p.child.wait();
                return "did not exit within 5 s".into();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's log so far.
    pub fn ftpct_log(&self) -> String {
        fs::read_to_string(self.state_dir().join("ftpct.log")).unwrap_or_default()
    }

    /// `lab.sh CMD PREFIX ARGS...` in the background (stdout and stderr captured).
    pub fn spawn_sh(&self, cmd: &str, args: &[&str]) -> Child {
        Command::new(LAB_SH)
            .arg(cmd)
            .arg(&self.prefix)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run lab.sh {cmd}: {e}"))
    }

    /// `spawn_sh` with extra environment variables.
    pub fn spawn_sh_env(&self, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = Command::new(LAB_SH);
        c.arg(cmd).arg(&self.prefix).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run lab.sh {cmd}: {e}"))
    }

    /// `ftpct list` / `ftpct sessions` (with `--socket`) in the gateway.
    pub fn ftpct_cli(&self, cmd: &str) -> Run {
        let bin = ftpct_bin();
        let bin = bin.as_str();
        let sock = self.ftpct_socket();
        let sock = sock.to_string_lossy();
        self.exec("gw", &[bin, cmd, "--socket", &sock])
    }

    /// Downloads FILE from the server with CLIENT forced to MODE; sha256-checked by lab.sh.
    pub fn fetch(&self, client: Client, mode: Mode, file: &str) -> Run {
        self.sh("fetch", &[client.name(), mode.name(), file])
    }

    /// Control connection only (login, SIZE): proves the lab works without any data connection.
    pub fn probe(&self) -> Run {
        self.sh("probe", &[])
    }

    /// One session, COUNT files, MODE = port|eprt|pasv|epsv|active|passive.
    pub fn many(&self, mode: &str, count: u32) -> Run {
        self.sh("many", &[mode, &count.to_string()])
    }

    /// PORT (or EPRT) split across two TCP segments 50 ms apart, then RETR in active mode.
    pub fn split(&self, mode: Mode, file: &str) -> Run {
        self.sh("split", &[mode.name(), file])
    }

    /// `split` with the pause between the two writes, and Nagle on or off (TCP_NODELAY).
    pub fn split_paused(&self, mode: Mode, file: &str, delay: f64, nagle: bool) -> Run {
        let d = format!("{delay}");
        let mut args = vec![mode.name(), file, d.as_str(), "-1"];
        if nagle {
            args.push("nagle");
        }
        self.sh("split", &args)
    }

    /// Starts another server instead of vsftpd: `pure-ftpd`, `pyftpdlib` or `fake`
    /// (tests/lab/fakeftpd.py; with `split227`, its 227 replies are written in two parts that
    /// many seconds apart). See `lab.sh server --kind`.
    #[track_caller]
    pub fn server_kind(&self, kind: &str, split227: Option<f64>) {
        let s227 = split227.map(|d| format!("{d}"));
        let mut args = vec!["--kind", kind];
        if let Some(d) = &s227 {
            args.extend(["--split227", d.as_str()]);
        }
        let r = self.sh("server", &args);
        assert!(r.ok(), "[{}] {kind} start failed: {r}", self.test);
    }

    /// The server's protocol log (vsftpd log_ftp_protocol, or what pyftpdlib and fakeftpd.py
    /// log of each command): what the server really received.
    pub fn server_log(&self) -> String {
        let mut log = fs::read_to_string(self.state_dir().join("vsftpd.log")).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.state_dir().join("server.log")).unwrap_or_default());
        log
    }

    /// `lab.sh CMD PREFIX ARGS...` with extra environment variables (e.g.
    /// `FTPCT_LAB_TIMEOUT=10` for one slow scenario).
    pub fn sh_env(&self, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(LAB_SH);
        c.arg(cmd).arg(&self.prefix).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        run(
            format!(
                "{} lab.sh {cmd} {} {}",
                shown.join(" "),
                self.prefix,
                args.join(" ")
            ),
            &mut c,
        )
    }

    /// One variable of `lab.sh env` (TARGET, CLI_IP, SRV_IP, GW_PUBLIC_IP, ...).
    #[track_caller]
    pub fn env_var(&self, key: &str) -> String {
        let r = self.sh("env", &[]);
        assert!(r.ok(), "[{}] lab.sh env failed: {r}", self.test);
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("[{}] lab.sh env has no {key}: {r}", self.test))
            .to_string()
    }

    /// Runs a command in one of the lab's namespaces in the background (stdout and stderr
    /// captured). Whatever still runs there is killed by `lab.sh down` when the lab is dropped.
    pub fn spawn_exec(&self, which: &str, argv: &[&str]) -> Child {
        let ns = self.ns(which);
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in {ns}: {e}"))
    }

    /// `python3 tests/lab/SCRIPT ARGS...` in namespace `which`, to completion.
    pub fn python(&self, which: &str, script: &str, args: &[&str]) -> Run {
        let py = python_bin();
        let path = lab_file(script);
        let mut argv = vec![py.as_str(), path.as_str()];
        argv.extend_from_slice(args);
        self.exec(which, &argv)
    }

    /// `python3 tests/lab/SCRIPT ARGS...` in namespace `which`, in the background.
    pub fn spawn_python(&self, which: &str, script: &str, args: &[&str]) -> Child {
        let py = python_bin();
        let path = lab_file(script);
        let mut argv = vec![py.as_str(), path.as_str()];
        argv.extend_from_slice(args);
        self.spawn_exec(which, &argv)
    }

    /// A scripted control connection from the client to the lab's server (`tests/lab/ftpscript.py`,
    /// steps documented there), files checked against `root` (default: the lab's served files).
    pub fn ftpscript(&self, timeout_secs: u32, root: Option<&Path>, steps: &[&str]) -> Run {
        let argv = self.ftpscript_argv(timeout_secs, root, steps);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.python("cli", "ftpscript.py", &argv)
    }

    /// `ftpscript` in the background (e.g. with `mark:`/`waitfor:` steps to check the daemon at a
    /// point of the session).
    pub fn spawn_ftpscript(&self, timeout_secs: u32, root: Option<&Path>, steps: &[&str]) -> Child {
        let argv = self.ftpscript_argv(timeout_secs, root, steps);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.spawn_python("cli", "ftpscript.py", &argv)
    }

    fn ftpscript_argv(
        &self,
        timeout_secs: u32,
        root: Option<&Path>,
        steps: &[&str],
    ) -> Vec<String> {
        let root = root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.state_dir().join("root"));
        let mut args = vec![
            "--host".to_string(),
            self.env_var("TARGET"),
            "--port".to_string(),
            self.port.to_string(),
            "--timeout".to_string(),
            timeout_secs.to_string(),
            "--root".to_string(),
            root.to_string_lossy().into_owned(),
        ];
        args.extend(steps.iter().map(|s| s.to_string()));
        args
    }

    /// PID of the running daemon (`ip netns exec` execs it, so the child's PID is ftpct's).
    pub fn ftpct_pid(&self) -> Option<u32> {
        self.ftpct.as_ref().map(|p| p.child.id())
    }

    /// The daemon's memory from /proc/PID/status: (VmRSS, VmHWM) in KiB.
    #[track_caller]
    pub fn ftpct_memory_kib(&self) -> (u64, u64) {
        let pid = self.ftpct_pid().expect("ftpct is running");
        let st = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("[{}] /proc/{pid}/status: {e}", self.test));
        let field = |name: &str| -> u64 {
            st.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("[{}] no {name} in /proc/{pid}/status", self.test))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// `ftpct stats`, parsed (`name value` lines).
    #[track_caller]
    pub fn ftpct_stats(&self) -> FtpctStats {
        let r = self.ftpct_cli("stats");
        assert!(r.ok(), "[{}] ftpct stats failed: {r}", self.test);
        FtpctStats::parse(&r.stdout)
    }

    /// The kernel's view of ftpct's queue (`FTPCT_QUEUE`) in the gateway, from
    /// /proc/net/netfilter/nfnetlink_queue (per network namespace); None when no process is bound
    /// to it.
    #[track_caller]
    pub fn nfqueue_proc(&self) -> Option<NfQueueProc> {
        let r = self.gw(&["cat", "/proc/net/netfilter/nfnetlink_queue"]);
        r.stdout.lines().find_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 8 && f[0] == u64::from(FTPCT_QUEUE)).then(|| NfQueueProc {
                total: f[2],
                dropped: f[5],
                user_dropped: f[6],
                id_sequence: f[7],
            })
        })
    }

    /// Runs a command in the gateway and asserts it succeeded (firewall changes of a test).
    #[track_caller]
    pub fn gw(&self, argv: &[&str]) -> Run {
        let r = self.exec("gw", argv);
        assert!(r.ok(), "[{}] in the gateway: {r}", self.test);
        r
    }

    /// `iptables` for the IPv4 topologies, `ip6tables` for v6.
    pub fn ipt(&self) -> &'static str {
        if self.topology == Topology::V6 {
            "ip6tables"
        } else {
            "iptables"
        }
    }

    /// (packets, bytes) of the gateway's filter FORWARD rule that lab.sh tags with
    /// `--comment TAG` (`lab-invalid`, `lab-related-tcp`, `lab-established`), for `tool`
    /// (iptables or ip6tables).
    #[track_caller]
    pub fn forward_rule(&self, tool: &str, tag: &str) -> (u64, u64) {
        let r = self.gw(&[tool, "-w", "-L", "FORWARD", "-v", "-n", "-x"]);
        let want = format!("/* {tag} */");
        let rows: Vec<(u64, u64)> = r
            .stdout
            .lines()
            .filter(|l| l.contains(&want))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect();
        assert_eq!(
            rows.len(),
            1,
            "[{}] exactly one FORWARD rule tagged {tag} expected:\n{}",
            self.test,
            r.stdout
        );
        rows[0]
    }

    /// TCP packets that entered the gateway's FORWARD chain as RELATED (lab.sh's counting rule
    /// `-p tcp --ctstate RELATED`, no target, in the topology's family): the first packet of
    /// each data connection an ALG admitted through an expectation (conntrack's
    /// IPS_EXPECTED), nothing else.
    #[track_caller]
    pub fn related_tcp_packets(&self) -> u64 {
        self.forward_rule(self.ipt(), "lab-related-tcp").0
    }

    /// Control connections (port 21) in the gateway's conntrack table that carry ftpct's
    /// default `seqadj_mark` bit (0x100000).
    pub fn marked_control_connections(&self) -> usize {
        let r = self.gw(&[
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--dport",
            "21",
            "--mark",
            "0x100000/0x100000",
        ]);
        r.stdout.lines().filter(|l| l.contains("dport=21")).count()
    }

    /// Packets the gateway's `--ctstate INVALID -j DROP` rule dropped: [IPv4, IPv6].
    #[track_caller]
    pub fn invalid_dropped(&self) -> [u64; 2] {
        [
            self.forward_rule("iptables", "lab-invalid").0,
            self.forward_rule("ip6tables", "lab-invalid").0,
        ]
    }

    /// Turns conntrack accounting on in the gateway (`nf_conntrack_acct=1`): entries created from
    /// now on count their packets and bytes (see [`Lab::conntrack_acct`]).
    #[track_caller]
    pub fn conntrack_acct_on(&self) {
        self.gw(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
    }

    /// Zeroes the packet and byte counters of every conntrack entry in the gateway.
    #[track_caller]
    pub fn conntrack_zero(&self) {
        self.gw(&["conntrack", "-L", "-z"]);
    }

    /// Sums the accounting counters (both directions) of the gateway's TCP conntrack entries,
    /// split into the control connections (the lab's control port) and the others (the data
    /// connections). Needs [`Lab::conntrack_acct_on`] before the connections were made.
    #[track_caller]
    pub fn conntrack_acct(&self) -> CtAcct {
        let r = self.gw(&["conntrack", "-L", "-p", "tcp"]);
        let ctl = format!("dport={}", self.port);
        let mut a = CtAcct::default();
        for l in r.stdout.lines() {
            let mut packets = 0;
            let mut bytes = 0;
            for w in l.split_whitespace() {
                if let Some(v) = w.strip_prefix("packets=") {
                    packets += v.parse::<u64>().unwrap_or(0);
                } else if let Some(v) = w.strip_prefix("bytes=") {
                    bytes += v.parse::<u64>().unwrap_or(0);
                }
            }
            // the original direction's dport names the control connection
            let orig_dport = l.split_whitespace().find(|w| w.starts_with("dport="));
            if orig_dport == Some(ctl.as_str()) {
                a.control_packets += packets;
            } else {
                a.data_packets += packets;
                a.data_bytes += bytes;
            }
        }
        assert!(
            r.stdout.contains("packets="),
            "[{}] conntrack accounting is off (no packets= in conntrack -L):\n{}",
            self.test,
            r.stdout
        );
        a
    }

    fn teardown(&mut self) -> Result<(), String> {
        let log = self.stop_ftpct();
        if std::thread::panicking() {
            let st = self.sh("status", &[]);
            eprintln!(
                "==== [{}] lab {} at failure ====\n{}\n{}",
                self.test, self.prefix, st.stdout, st.stderr
            );
            if let Some(log) = log {
                eprintln!("==== ftpct log ====\n{log}");
            }
        }
        let r = self.sh("down", &[]);
        let left: Vec<String> = ["cli", "gw", "srv", "att"]
            .iter()
            .map(|w| self.ns(w))
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .collect();
        if !r.ok() || !left.is_empty() || self.state_dir().exists() {
            return Err(format!(
                "lab {} not cleaned up (namespaces left: {left:?}): {r}",
                self.prefix
            ));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            if std::thread::panicking() {
                eprintln!("[{}] {e}", self.test);
            } else {
                panic!("[{}] {e}", self.test);
            }
        }
    }
}

/// A file of tests/lab/.
pub fn lab_file(name: &str) -> String {
    format!("{}/tests/lab/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The python lab.sh uses: /usr/bin/python3 when it exists (or `$FTPCT_LAB_PYTHON`).
pub fn python_bin() -> String {
    if let Ok(p) = std::env::var("FTPCT_LAB_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// The counters of `ftpct stats`.
#[derive(Clone, Debug)]
pub struct FtpctStats {
    pub values: std::collections::BTreeMap<String, u64>,
    pub text: String,
}

impl FtpctStats {
    pub fn parse(text: &str) -> FtpctStats {
        let values = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(char::is_whitespace)?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect();
        FtpctStats {
            values,
            text: text.to_string(),
        }
    }
    /// The counter `name`; panics (showing every counter) if the daemon does not report it.
    #[track_caller]
    pub fn get(&self, name: &str) -> u64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("`ftpct stats` has no counter {name}:\n{}", self.text))
    }
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// One line of /proc/net/netfilter/nfnetlink_queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NfQueueProc {
    /// Packets waiting for a verdict now.
    pub total: u64,
    /// Dropped because the queue was full (or accepted, with fail-open).
    pub dropped: u64,
    /// Dropped because the netlink socket's receive buffer was full (ENOBUFS).
    pub user_dropped: u64,
    /// Packet ids handed out (= packets queued so far).
    pub id_sequence: u64,
}

/// Conntrack accounting of the gateway's TCP entries (see [`Lab::conntrack_acct`]), in
/// netfilter's units: a GSO packet (up to 64 KiB on the lab's veths) counts once, as it does in
/// the NFQUEUE counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtAcct {
    /// Packets of the control connections, both directions.
    pub control_packets: u64,
    /// Packets and bytes of every other TCP connection (the data connections), both directions.
    pub data_packets: u64,
    pub data_bytes: u64,
}

/// Waits (bounded) for `path` to exist (a checkpoint file a lab script writes).
pub fn wait_for_file(path: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
