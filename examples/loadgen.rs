//! FTP load generator for the namespace benchmarks (`benches/lab/run.sh`, see
//! `docs/benchmarks.md`). Not part of ftpct itself.
//!
//! Subcommands:
//! - `rate`: many short FTP sessions from concurrent workers for a fixed time (login, TYPE I,
//!   PORT/EPRT or PASV/EPSV, RETR of a small file, QUIT). In active mode the generator listens
//!   for the data connection itself. Prints one JSON line: sessions/s, failures by reason, the
//!   client's own CPU time, and latency percentiles (data-connection setup, the
//!   PORT/EPRT/PASV/EPSV round trip, connect + banner).
//! - `get`: one download of a (large) file, read into a 1 MiB buffer and discarded; prints bytes,
//!   seconds and throughput as JSON.
//! - `serve`: a minimal FTP control server (220, USER 331, PASS 230, PORT/EPRT/NOOP/TYPE 200,
//!   QUIT 221): vsftpd forks per session and cannot hold 100 k sessions on a small machine.
//! - `scale`: opens control sessions to `serve` in steps (e.g. 1 k, 10 k, 100 k), logs them in
//!   and keeps them idle; then fills expectations with pipelined EPRTs on some of them (e.g. up to
//!   1 M). After each step it reads the daemon's resident memory (`/proc/PID/status`), its CPU
//!   time (`/proc/PID/task/*/schedstat`) and `ftpct stats`, and runs a NOOP probe to get the
//!   daemon's CPU time per queued packet at that table size. One JSON line per step. The
//!   sessions live in worker processes (`scale-worker`, at most `--per-worker` each) because
//!   RLIMIT_NOFILE may be capped below 100 k.
//!
//! The runtime is tokio's current-thread one (optionally several, one per OS thread, with
//! `--threads`): the client is cheap, and `rate` reports its CPU time against wall time so that
//! a run where the client is the bottleneck can be recognised.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "FTP load generator for ftpct's lab benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Port,
    Eprt,
    Pasv,
    Epsv,
    /// PORT and EPRT alternately (one per session).
    Active,
    /// PASV and EPSV alternately.
    Passive,
}

impl Mode {
    /// The concrete data command of session number `n`.
    fn pick(self, n: u64) -> Mode {
        match self {
            Mode::Active => {
                if n % 2 == 0 {
                    Mode::Port
                } else {
                    Mode::Eprt
                }
            }
            Mode::Passive => {
                if n % 2 == 0 {
                    Mode::Pasv
                } else {
                    Mode::Epsv
                }
            }
            m => m,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Short sessions from concurrent workers for a fixed time.
    Rate {
        /// Server control address (as the client connects to it).
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_enum, default_value = "active")]
        mode: Mode,
        /// Concurrent sessions (workers), split over --threads.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// OS threads, each with its own current-thread runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seconds of load (no session starts after this).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds at the start not counted in the rate.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Stop after this many sessions in total (0: no limit). With --concurrency 1 this
        /// gives an unloaded latency measurement.
        #[arg(long, default_value_t = 0)]
        max_sessions: u64,
        /// File to RETR (its size is checked with SIZE first).
        #[arg(long, default_value = "small.txt")]
        file: String,
        /// Per-operation timeout in seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Source ports of the control connections, used in turn (`LO-HI`), instead of
        /// letting the kernel pick one: a port then comes back only after HI-LO+1 sessions.
        /// (The kernel reuses a client port as soon as the connection is closed, and ftpct
        /// mishandles a new connection on the 4-tuple of a session it still remembers: see
        /// docs/benchmarks.md.)
        #[arg(long)]
        ctl_ports: Option<String>,
        /// Active mode: listen for the data connection on this port (SO_REUSEADDR) instead of
        /// one the kernel picks (to reproduce a data connection on a recently used 4-tuple).
        #[arg(long, default_value_t = 0)]
        data_port: u16,
    },
    /// One download; prints throughput.
    Get {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_enum, default_value = "port")]
        mode: Mode,
        #[arg(long)]
        file: String,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Minimal FTP control server for `scale`.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Idle control sessions and expectations at scale, with daemon measurements per step.
    Scale {
        #[arg(long)]
        target: SocketAddr,
        /// Client source addresses (sessions are spread over them round robin; EPRT announces
        /// the session's own address and port ranges are allocated per address).
        #[arg(long, value_delimiter = ',', required = true)]
        src: Vec<IpAddr>,
        /// Session counts to reach, in increasing order.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        sessions: Vec<usize>,
        /// Expectation counts to reach after the last session step, in increasing order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,10000,100000,1000000"
        )]
        expectations: Vec<usize>,
        /// Sessions that carry the expectations (the first ones opened).
        #[arg(long, default_value_t = 1000)]
        expect_sessions: usize,
        /// EPRT lines sent per write (pipelined), replies awaited per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// NOOP round trips of each probe, spread over all open sessions.
        #[arg(long, default_value_t = 20000)]
        noops: usize,
        /// Concurrent logins / probe workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// PID of the ftpct daemon (memory and CPU read from /proc).
        #[arg(long)]
        daemon_pid: u32,
        /// ftpct control socket (for `stats`).
        #[arg(long)]
        socket: PathBuf,
        /// Per-operation timeout in seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
        /// Seconds to wait after the last line before exiting (so that the caller can stop the
        /// daemon first, and 100 k connections are not closed through it).
        #[arg(long, default_value_t = 0.0)]
        linger: f64,
        /// Sessions per worker process at most (RLIMIT_NOFILE may be capped; 20 000 here).
        #[arg(long, default_value_t = 15000)]
        per_worker: usize,
        /// NOOP probes per step (the median CPU per packet is reported).
        #[arg(long, default_value_t = 3)]
        probe_reps: usize,
    },
    /// One worker process of `scale` (internal; driven over stdin/stdout).
    #[command(hide = true)]
    ScaleWorker {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_delimiter = ',', required = true)]
        src: Vec<IpAddr>,
        #[arg(long)]
        worker: usize,
        #[arg(long)]
        workers: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
}

fn main() {
    raise_nofile();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rate {
            target,
            mode,
            concurrency,
            threads,
            duration,
            warmup,
            max_sessions,
            file,
            timeout,
            ctl_ports,
            data_port,
        } => cmd_rate(RateCfg {
            target,
            mode,
            concurrency: concurrency.max(1),
            threads: threads.clamp(1, concurrency.max(1)),
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(warmup.min(duration / 2.0)),
            max_sessions,
            file,
            tmo: Duration::from_secs_f64(timeout),
            ctl_ports: match ctl_ports.as_deref().map(parse_range) {
                None => None,
                Some(Some(r)) => Some(r),
                Some(None) => {
                    eprintln!("loadgen: --ctl-ports LO-HI, e.g. 1024-32767");
                    std::process::exit(2);
                }
            },
            data_port,
        }),
        Cmd::Get {
            target,
            mode,
            file,
            timeout,
        } => rt().block_on(cmd_get(
            target,
            mode,
            file,
            Duration::from_secs_f64(timeout),
        )),
        Cmd::Serve { listen } => rt().block_on(cmd_serve(listen)),
        Cmd::Scale {
            target,
            src,
            sessions,
            expectations,
            expect_sessions,
            batch,
            noops,
            concurrency,
            daemon_pid,
            socket,
            timeout,
            linger,
            per_worker,
            probe_reps,
        } => cmd_scale(ScaleCfg {
            target,
            src,
            sessions,
            expectations,
            expect_sessions,
            batch: batch.max(1),
            noops,
            concurrency: concurrency.max(1),
            pid: daemon_pid,
            socket,
            tmo: Duration::from_secs_f64(timeout),
            linger: Duration::from_secs_f64(linger),
            per_worker,
            probe_reps,
        }),
        Cmd::ScaleWorker {
            target,
            src,
            worker,
            workers,
            batch,
            timeout,
        } => cmd_scale_worker(WorkerCfg {
            target,
            src,
            worker,
            workers: workers.max(1),
            batch: batch.max(1),
            tmo: Duration::from_secs_f64(timeout),
        }),
    };
    if let Err(e) = r {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Soft RLIMIT_NOFILE up to the hard limit (100 k sessions need 100 k descriptors).
fn raise_nofile() {
    use nix::libc;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// (user, system) CPU seconds of this process.
fn self_cpu() -> (f64, f64) {
    use nix::libc;
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(u.ru_utime), s(u.ru_stime))
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

// ---------------------------------------------------------------------------------------------
// FTP control connection
// ---------------------------------------------------------------------------------------------

struct Ctl {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    local: SocketAddr,
    peer: SocketAddr,
    /// Text of the last reply's final line.
    last: String,
    tmo: Duration,
}

impl Ctl {
    async fn connect(target: SocketAddr, src: Option<IpAddr>, tmo: Duration) -> io::Result<Ctl> {
        Self::connect_from(target, src, 0, tmo).await
    }

    /// Connects from `src` (any address if `None`) and source port `port` (0: the kernel's
    /// choice).
    async fn connect_from(
        target: SocketAddr,
        src: Option<IpAddr>,
        port: u16,
        tmo: Duration,
    ) -> io::Result<Ctl> {
        let sock = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if src.is_some() || port != 0 {
            let ip = src.unwrap_or(if target.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            });
            if port != 0 {
                sock.set_reuseaddr(true)?;
            }
            sock.bind(SocketAddr::new(ip, port))?;
        }
        let s = timeout(tmo, sock.connect(target))
            .await
            .map_err(|_| err("connect timeout"))??;
        Self::from_stream(s, tmo)
    }

    fn from_stream(s: TcpStream, tmo: Duration) -> io::Result<Ctl> {
        s.set_nodelay(true)?;
        let local = s.local_addr()?;
        let peer = s.peer_addr()?;
        let (r, w) = s.into_split();
        Ok(Ctl {
            r: BufReader::new(r),
            w,
            local,
            peer,
            last: String::new(),
            tmo,
        })
    }

    /// Reads one complete reply (multi-line replies included) and returns its code.
    async fn reply(&mut self) -> io::Result<u16> {
        let tmo = self.tmo;
        timeout(tmo, self.reply_inner())
            .await
            .map_err(|_| err("reply timeout"))?
    }

    async fn reply_inner(&mut self) -> io::Result<u16> {
        let mut first: Option<u16> = None;
        loop {
            self.last.clear();
            let n = self.r.read_line(&mut self.last).await?;
            if n == 0 {
                return Err(err("control connection closed"));
            }
            let b = self.last.as_bytes();
            let code = if b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) {
                std::str::from_utf8(&b[..3])
                    .ok()
                    .and_then(|s| s.parse().ok())
            } else {
                None
            };
            match (first, code) {
                (None, Some(c)) => {
                    if b.get(3) == Some(&b'-') {
                        first = Some(c);
                    } else {
                        return Ok(c);
                    }
                }
                (None, None) => return Err(err("malformed reply")),
                (Some(f), Some(c)) if c == f && b.get(3) != Some(&b'-') => return Ok(c),
                _ => {}
            }
        }
    }

    async fn send(&mut self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        timeout(self.tmo, self.w.write_all(&buf))
            .await
            .map_err(|_| err("send timeout"))?
    }

    async fn cmd(&mut self, line: &str) -> io::Result<u16> {
        self.send(line).await?;
        self.reply().await
    }

    async fn expect(&mut self, line: &str, want: u16, what: &'static str) -> Result<(), Fail> {
        match self.cmd(line).await {
            Ok(c) if c == want => Ok(()),
            Ok(_) => Err(Fail(what)),
            Err(_) => Err(Fail(what)),
        }
    }

    async fn login(&mut self) -> Result<(), Fail> {
        match self.reply().await {
            Ok(220) => {}
            _ => return Err(Fail("banner")),
        }
        match self.cmd("USER anonymous").await {
            Ok(331) => self.expect("PASS lab@", 230, "pass").await,
            Ok(230) => Ok(()),
            _ => Err(Fail("user")),
        }
    }
}

/// Why a session failed (counted by reason).
#[derive(Debug, Clone, Copy)]
struct Fail(&'static str);

fn port_cmd(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let o = a.ip().octets();
            format!(
                "PORT {},{},{},{},{},{}",
                o[0],
                o[1],
                o[2],
                o[3],
                a.port() >> 8,
                a.port() & 0xff
            )
        }
        SocketAddr::V6(_) => eprt_cmd(addr),
    }
}

fn eprt_cmd(addr: SocketAddr) -> String {
    let fam = if addr.is_ipv4() { 1 } else { 2 };
    format!("EPRT |{}|{}|{}|", fam, addr.ip(), addr.port())
}

/// The address of a 227 reply: `227 Entering Passive Mode (a,b,c,d,p1,p2).`
fn parse_227(text: &str) -> Option<SocketAddr> {
    let start = text.find('(')?;
    let end = text[start..].find(')')? + start;
    let nums: Vec<u16> = text[start + 1..end]
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    if nums.len() != 6 || nums.iter().any(|&n| n > 255) {
        return None;
    }
    let ip = Ipv4Addr::new(nums[0] as u8, nums[1] as u8, nums[2] as u8, nums[3] as u8);
    Some(SocketAddr::new(IpAddr::V4(ip), nums[4] << 8 | nums[5]))
}

/// The port of a 229 reply: `229 Entering Extended Passive Mode (|||port|)`.
fn parse_229(text: &str) -> Option<u16> {
    let start = text.find("(|||")? + 4;
    let end = text[start..].find('|')? + start;
    text[start..end].parse().ok()
}

/// An open data connection and how long it took to set up.
struct Data {
    stream: TcpStream,
    setup: Duration,
}

/// Sends the data command of `mode`, then `retr` (e.g. `RETR f`), and returns the data
/// connection with its setup time: active mode, from sending RETR to accept() returning (the
/// server's SYN crossed the gateway, the handshake completed); passive mode, connect() (SYN to
/// SYN-ACK at the client). Also returns the data command's round trip.
async fn open_data(
    c: &mut Ctl,
    mode: Mode,
    retr: &str,
    data_port: u16,
) -> Result<(Data, Duration), Fail> {
    match mode {
        Mode::Port | Mode::Eprt => {
            let l = (|| {
                let s = if c.local.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                if data_port != 0 {
                    s.set_reuseaddr(true)?;
                }
                s.bind(SocketAddr::new(c.local.ip(), data_port))?;
                s.listen(8)
            })()
            .map_err(|_| Fail("listen"))?;
            let at = l.local_addr().map_err(|_| Fail("listen"))?;
            let line = if mode == Mode::Port {
                port_cmd(at)
            } else {
                eprt_cmd(at)
            };
            let t = Instant::now();
            let code = c.cmd(&line).await.map_err(|_| Fail("port_reply"))?;
            let rtt = t.elapsed();
            if code != 200 {
                return Err(Fail("port_refused"));
            }
            c.send(retr).await.map_err(|_| Fail("retr_send"))?;
            let t = Instant::now();
            let (stream, _) = timeout(c.tmo, l.accept())
                .await
                .map_err(|_| Fail("accept_timeout"))?
                .map_err(|_| Fail("accept"))?;
            let setup = t.elapsed();
            match c.reply().await {
                Ok(150) | Ok(125) => {}
                _ => return Err(Fail("retr_reply")),
            }
            Ok((Data { stream, setup }, rtt))
        }
        Mode::Pasv | Mode::Epsv => {
            let t = Instant::now();
            let cmd = if mode == Mode::Pasv { "PASV" } else { "EPSV" };
            let code = c.cmd(cmd).await.map_err(|_| Fail("pasv_reply"))?;
            let rtt = t.elapsed();
            let addr = match (mode, code) {
                (Mode::Pasv, 227) => parse_227(&c.last).ok_or(Fail("pasv_parse"))?,
                (Mode::Epsv, 229) => {
                    SocketAddr::new(c.peer.ip(), parse_229(&c.last).ok_or(Fail("epsv_parse"))?)
                }
                _ => return Err(Fail("pasv_refused")),
            };
            let t = Instant::now();
            let stream = timeout(c.tmo, TcpStream::connect(addr))
                .await
                .map_err(|_| Fail("data_connect_timeout"))?
                .map_err(|_| Fail("data_connect"))?;
            let setup = t.elapsed();
            c.send(retr).await.map_err(|_| Fail("retr_send"))?;
            match c.reply().await {
                Ok(150) | Ok(125) => {}
                _ => return Err(Fail("retr_reply")),
            }
            Ok((Data { stream, setup }, rtt))
        }
        Mode::Active | Mode::Passive => unreachable!("picked before"),
    }
}

/// Reads the data connection to EOF into `buf` (discarded); returns the byte count and the
/// time from the first byte to EOF.
async fn drain(s: &mut TcpStream, buf: &mut [u8], tmo: Duration) -> Result<(u64, Duration), Fail> {
    let mut n = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let k = timeout(tmo, s.read(buf))
            .await
            .map_err(|_| Fail("data_timeout"))?
            .map_err(|_| Fail("data_read"))?;
        if k == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        n += k as u64;
    }
    Ok((n, first.map_or(Duration::ZERO, |f| f.elapsed())))
}

// ---------------------------------------------------------------------------------------------
// rate
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct RateCfg {
    target: SocketAddr,
    mode: Mode,
    concurrency: usize,
    threads: usize,
    duration: Duration,
    warmup: Duration,
    max_sessions: u64,
    file: String,
    tmo: Duration,
    ctl_ports: Option<(u16, u16)>,
    data_port: u16,
}

#[derive(Default)]
struct RateStats {
    /// Sessions that completed inside the measurement window.
    counted: u64,
    ok: u64,
    fail: BTreeMap<&'static str, u64>,
    setup_us: Vec<u32>,
    cmd_us: Vec<u32>,
    banner_us: Vec<u32>,
    session_us: Vec<u32>,
}

impl RateStats {
    fn merge(&mut self, o: RateStats) {
        self.counted += o.counted;
        self.ok += o.ok;
        for (k, v) in o.fail {
            *self.fail.entry(k).or_default() += v;
        }
        self.setup_us.extend(o.setup_us);
        self.cmd_us.extend(o.cmd_us);
        self.banner_us.extend(o.banner_us);
        self.session_us.extend(o.session_us);
    }
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

struct Times {
    banner: Duration,
    cmd: Duration,
    setup: Duration,
}

async fn one_session(cfg: &RateCfg, n: u64, size: u64, buf: &mut [u8]) -> Result<Times, Fail> {
    let t0 = Instant::now();
    let mut c = match cfg.ctl_ports {
        None => Ctl::connect(cfg.target, None, cfg.tmo).await,
        Some((lo, hi)) => {
            // Session n uses port lo + n mod (range); a port still busy (bind or connect
            // refused) is skipped for the next one, a few times at most.
            let span = (hi - lo) as u64 + 1;
            let mut r = Err(err("no port"));
            for k in 0..8u64 {
                let port = lo + ((n + k * (span / 8)) % span) as u16;
                r = Ctl::connect_from(cfg.target, None, port, cfg.tmo).await;
                match &r {
                    Err(e)
                        if e.kind() == io::ErrorKind::AddrInUse
                            || e.kind() == io::ErrorKind::AddrNotAvailable =>
                    {
                        continue
                    }
                    _ => break,
                }
            }
            r
        }
    }
    .map_err(|_| Fail("connect"))?;
    match c.reply().await {
        Ok(220) => {}
        _ => return Err(Fail("banner")),
    }
    let banner = t0.elapsed();
    match c.cmd("USER anonymous").await {
        Ok(331) => c.expect("PASS lab@", 230, "pass").await?,
        Ok(230) => {}
        _ => return Err(Fail("user")),
    }
    c.expect("TYPE I", 200, "type").await?;
    let retr = format!("RETR {}", cfg.file);
    let (mut data, cmd) = open_data(&mut c, cfg.mode.pick(n), &retr, cfg.data_port).await?;
    let (got, _) = drain(&mut data.stream, buf, cfg.tmo).await?;
    drop(data.stream);
    if got != size {
        return Err(Fail("short_data"));
    }
    match c.reply().await {
        Ok(226) => {}
        _ => return Err(Fail("transfer_reply")),
    }
    match c.cmd("QUIT").await {
        Ok(221) => {}
        _ => return Err(Fail("quit")),
    }
    // Wait for the server to close first, as a polite client does: the TIME_WAIT state then
    // stays on the server, and the client's port can be used again at once.
    let mut rest = [0u8; 64];
    let _ = timeout(cfg.tmo, c.r.read(&mut rest)).await;
    Ok(Times {
        banner,
        cmd,
        setup: data.setup,
    })
}

/// SIZE of the file (TYPE I first), on a throwaway session.
async fn file_size(target: SocketAddr, file: &str, tmo: Duration) -> io::Result<u64> {
    let mut c = Ctl::connect(target, None, tmo).await?;
    c.login()
        .await
        .map_err(|f| err(format!("login failed at {}", f.0)))?;
    c.expect("TYPE I", 200, "type")
        .await
        .map_err(|_| err("TYPE I refused"))?;
    let code = c.cmd(&format!("SIZE {file}")).await?;
    if code != 213 {
        return Err(err(format!("SIZE {file}: {}", c.last.trim_end())));
    }
    let size = c.last[4..]
        .trim()
        .parse()
        .map_err(|_| err("bad SIZE reply"))?;
    let _ = c.cmd("QUIT").await;
    Ok(size)
}

fn cmd_rate(cfg: RateCfg) -> io::Result<()> {
    let size = rt().block_on(file_size(cfg.target, &cfg.file, cfg.tmo))?;
    let start = Instant::now();
    let window_start = start + cfg.warmup;
    let deadline = start + cfg.duration;
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu0 = self_cpu();
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let cfg = cfg.clone();
        let started = started.clone();
        let workers =
            cfg.concurrency / cfg.threads + usize::from(t < cfg.concurrency % cfg.threads);
        handles.push(std::thread::spawn(move || {
            rt().block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..workers {
                    let cfg = cfg.clone();
                    let started = started.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut st = RateStats::default();
                        let mut buf = vec![0u8; 64 * 1024];
                        while Instant::now() < deadline {
                            let n = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if cfg.max_sessions != 0 && n >= cfg.max_sessions {
                                break;
                            }
                            let t = Instant::now();
                            match one_session(&cfg, n, size, &mut buf).await {
                                Ok(times) => {
                                    let end = Instant::now();
                                    st.ok += 1;
                                    // Sessions that end inside the window are counted.
                                    if end >= window_start && end <= deadline {
                                        st.counted += 1;
                                    }
                                    st.setup_us.push(us(times.setup));
                                    st.cmd_us.push(us(times.cmd));
                                    st.banner_us.push(us(times.banner));
                                    st.session_us.push(us(end - t));
                                }
                                Err(Fail(why)) => {
                                    *st.fail.entry(why).or_default() += 1;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                        st
                    }));
                }
                let mut all = RateStats::default();
                for t in tasks {
                    if let Ok(st) = t.await {
                        all.merge(st);
                    }
                }
                all
            })
        }));
    }
    let mut all = RateStats::default();
    for h in handles {
        all.merge(h.join().map_err(|_| err("worker thread panicked"))?);
    }
    let wall = start.elapsed();
    let cpu1 = self_cpu();
    let window = if cfg.max_sessions != 0 {
        wall.as_secs_f64()
    } else {
        (cfg.duration - cfg.warmup).as_secs_f64()
    };
    let counted = if cfg.max_sessions != 0 {
        all.ok
    } else {
        all.counted
    };
    let mut o = String::new();
    let fails: u64 = all.fail.values().sum();
    let _ = write!(
        o,
        "{{\"cmd\":\"rate\",\"mode\":\"{:?}\",\"concurrency\":{},\"threads\":{},\"file_bytes\":{},\
         \"sessions_ok\":{},\"sessions_counted\":{},\"failures\":{},\"window_s\":{:.3},\"rate\":{:.2},\
         \"wall_s\":{:.3},\"cpu_user_s\":{:.3},\"cpu_sys_s\":{:.3},\"cpu_frac\":{:.4},\"fail_reasons\":{{",
        cfg.mode,
        cfg.concurrency,
        cfg.threads,
        size,
        all.ok,
        counted,
        fails,
        window,
        counted as f64 / window,
        wall.as_secs_f64(),
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
        (cpu1.0 - cpu0.0 + cpu1.1 - cpu0.1) / wall.as_secs_f64(),
    );
    for (i, (k, v)) in all.fail.iter().enumerate() {
        let _ = write!(o, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
    }
    o.push('}');
    for (name, v) in [
        ("setup_us", &mut all.setup_us),
        ("cmd_us", &mut all.cmd_us),
        ("banner_us", &mut all.banner_us),
        ("session_us", &mut all.session_us),
    ] {
        let _ = write!(o, ",\"{name}\":{}", pct_json(v));
    }
    o.push('}');
    println!("{o}");
    Ok(())
}

/// `{"n":..,"p50":..,"p90":..,"p99":..,"max":..}` of microsecond samples.
fn pct_json(v: &mut [u32]) -> String {
    v.sort_unstable();
    let q = |p: f64| -> u32 {
        if v.is_empty() {
            0
        } else {
            let i = ((v.len() as f64) * p).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        }
    };
    format!(
        "{{\"n\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}}",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        v.last().copied().unwrap_or(0)
    )
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

async fn cmd_get(target: SocketAddr, mode: Mode, file: String, tmo: Duration) -> io::Result<()> {
    let size = file_size(target, &file, tmo).await?;
    let mut c = Ctl::connect(target, None, tmo).await?;
    c.login()
        .await
        .map_err(|f| err(format!("login: {}", f.0)))?;
    c.expect("TYPE I", 200, "type")
        .await
        .map_err(|_| err("TYPE I refused"))?;
    let t0 = Instant::now();
    let (mut data, _) = open_data(&mut c, mode.pick(0), &format!("RETR {file}"), 0)
        .await
        .map_err(|f| err(format!("data connection: {}", f.0)))?;
    let mut buf = vec![0u8; 1 << 20];
    let (n, xfer) = drain(&mut data.stream, &mut buf, tmo)
        .await
        .map_err(|f| err(format!("transfer: {}", f.0)))?;
    let total = t0.elapsed();
    drop(data.stream);
    let code = c.reply().await?;
    let _ = c.cmd("QUIT").await;
    if n != size || code != 226 {
        return Err(err(format!(
            "transfer incomplete: {n} of {size} bytes, final reply {code}"
        )));
    }
    println!(
        "{{\"cmd\":\"get\",\"mode\":\"{:?}\",\"bytes\":{n},\"xfer_s\":{:.6},\"total_s\":{:.6},\"mbps\":{:.2},\"setup_us\":{}}}",
        mode,
        xfer.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / xfer.as_secs_f64() / 1e6,
        us(data.setup)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

async fn cmd_serve(listen: SocketAddr) -> io::Result<()> {
    let sock = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    // Several `serve` processes may share the port (one process cannot hold 100 k sockets where
    // RLIMIT_NOFILE is capped); the kernel spreads the connections over them.
    sock.set_reuseport(true)?;
    sock.bind(listen)?;
    let l = sock.listen(4096)?;
    eprintln!("loadgen serve: listening on {listen}");
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("loadgen serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = serve_one(s).await;
        });
    }
}

async fn serve_one(s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    let mut r = BufReader::with_capacity(2048, r);
    let mut w = BufWriter::with_capacity(2048, w);
    w.write_all(b"220 loadgen stub\r\n").await?;
    w.flush().await?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "USER" => b"331 Please specify the password.\r\n",
            "PASS" => b"230 Login successful.\r\n",
            "PORT" => b"200 PORT command successful.\r\n",
            "EPRT" => b"200 EPRT command successful.\r\n",
            "NOOP" => b"200 NOOP ok.\r\n",
            "TYPE" => b"200 Switching to Binary mode.\r\n",
            "QUIT" => {
                w.write_all(b"221 Goodbye.\r\n").await?;
                w.flush().await?;
                return Ok(());
            }
            _ => b"502 Command not implemented.\r\n",
        };
        w.write_all(reply).await?;
        // Pipelined commands get their replies in one write.
        if !r.buffer().contains(&b'\n') {
            w.flush().await?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scale
//
// One process cannot hold 100 k sockets where RLIMIT_NOFILE is capped (here: 20 000, without
// CAP_SYS_RESOURCE), so `scale` is a coordinator that runs W `scale-worker` processes (itself,
// re-executed) and drives them in lock step over pipes. Worker w owns the sessions whose global
// number i has i % W == w. Commands (one line each; one answer line `ok ...` or `err ...`):
//   open N CONC              open the owned sessions below N (logged in), CONC logins at a time
//   noop K CONC              K NOOP round trips over the owned sessions; answer: the samples (µs)
//   eprt DONE PER ES MAXPER CONC
//                            on the owned sessions below ES, EPRTs number DONE..PER, pipelined;
//                            session i announces its own address, ports 1024 + (i / NSRC) * MAXPER
//                            + k (one block per session and address)
//   quit
// ---------------------------------------------------------------------------------------------

struct ScaleCfg {
    target: SocketAddr,
    src: Vec<IpAddr>,
    sessions: Vec<usize>,
    expectations: Vec<usize>,
    expect_sessions: usize,
    batch: usize,
    noops: usize,
    concurrency: usize,
    per_worker: usize,
    probe_reps: usize,
    pid: u32,
    socket: PathBuf,
    tmo: Duration,
    linger: Duration,
}

/// What is read from the daemon at each step.
struct Probe {
    rss_kb: u64,
    /// `RssAnon`: the daemon's own memory (its tables), without the file pages it maps.
    anon_kb: u64,
    /// `RssFile` + `RssShmem`: mapped file pages, among them the state file (tmpfs).
    mapped_kb: u64,
    cpu_ns: u64,
    stats: BTreeMap<String, u64>,
}

fn daemon_probe(pid: u32, socket: &std::path::Path) -> io::Result<Probe> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err(format!("no {name} in /proc/{pid}/status")))
    };
    let rss_kb = field("VmRSS:")?;
    let anon_kb = field("RssAnon:")?;
    let mapped_kb = field("RssFile:")? + field("RssShmem:")?;
    let mut cpu_ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let p = t?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            cpu_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let text = ftpct::control::query(socket, ftpct::control::Request::Stats)?;
    let stats = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    Ok(Probe {
        rss_kb,
        anon_kb,
        mapped_kb,
        cpu_ns,
        stats,
    })
}

impl Probe {
    fn stat(&self, k: &str) -> u64 {
        self.stats.get(k).copied().unwrap_or(0)
    }
}

fn print_line(phase: &str, n: usize, p: &Probe, extra: String) {
    println!(
        "{{\"cmd\":\"scale\",\"phase\":\"{phase}\",\"n\":{n},\"rss_kb\":{},\"anon_kb\":{},\"mapped_kb\":{},\
         \"sessions\":{},\"expectations\":{},\"expect_created\":{},\"ipset_errors\":{},\"queue_overruns\":{},\
         \"packets\":{}{extra}}}",
        p.rss_kb,
        p.anon_kb,
        p.mapped_kb,
        p.stat("sessions"),
        p.stat("expectations"),
        p.stat("expect_created"),
        p.stat("ipset_errors"),
        p.stat("queue_overruns"),
        p.stat("latency_count"),
    );
}

/// The worker processes, driven over their stdin/stdout.
struct Workers {
    kids: Vec<(
        std::process::Child,
        std::process::ChildStdin,
        std::io::BufReader<std::process::ChildStdout>,
    )>,
}

impl Workers {
    fn spawn(cfg: &ScaleCfg, n: usize) -> io::Result<Workers> {
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe()?;
        let src: Vec<String> = cfg.src.iter().map(|a| a.to_string()).collect();
        let mut kids = Vec::new();
        for w in 0..n {
            let mut c = Command::new(&exe)
                .arg("scale-worker")
                .arg("--target")
                .arg(cfg.target.to_string())
                .arg("--src")
                .arg(src.join(","))
                .arg("--worker")
                .arg(w.to_string())
                .arg("--workers")
                .arg(n.to_string())
                .arg("--batch")
                .arg(cfg.batch.to_string())
                .arg("--timeout")
                .arg(cfg.tmo.as_secs_f64().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let i = c.stdin.take().expect("piped");
            let o = std::io::BufReader::new(c.stdout.take().expect("piped"));
            kids.push((c, i, o));
        }
        Ok(Workers { kids })
    }

    /// Sends `cmd` to every worker, then collects every answer (the part after `ok `).
    fn all(&mut self, cmd: &str) -> io::Result<Vec<String>> {
        use std::io::{BufRead, Write};
        for (_, i, _) in &mut self.kids {
            writeln!(i, "{cmd}")?;
            i.flush()?;
        }
        let mut out = Vec::new();
        for (w, (_, _, o)) in self.kids.iter_mut().enumerate() {
            let mut line = String::new();
            o.read_line(&mut line)?;
            let line = line.trim_end();
            match line.strip_prefix("ok") {
                Some(rest) => out.push(rest.trim().to_string()),
                None => {
                    return Err(err(format!(
                        "worker {w}: `{cmd}`: {}",
                        if line.is_empty() { "exited" } else { line }
                    )))
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cmd_scale(cfg: ScaleCfg) -> io::Result<()> {
    let max_s = cfg.sessions.iter().copied().max().unwrap_or(0);
    let nw = max_s.div_ceil(cfg.per_worker.max(1)).max(1);
    let mut workers = Workers::spawn(&cfg, nw)?;
    let wconc = cfg.concurrency.div_ceil(nw).max(1);
    let base = daemon_probe(cfg.pid, &cfg.socket)?;
    print_line("baseline", 0, &base, format!(",\"workers\":{nw}"));

    // `probe_reps` NOOP probes; the CPU per packet of each, and their median.
    let probe = |workers: &mut Workers, phase: &str, n: usize| -> io::Result<()> {
        let mut rtt: Vec<u32> = Vec::new();
        let mut per_packet = Vec::new();
        let mut packets = 0u64;
        let mut wall = Duration::ZERO;
        let mut last = None;
        for _ in 0..cfg.probe_reps.max(1) {
            std::thread::sleep(Duration::from_millis(300));
            let p0 = daemon_probe(cfg.pid, &cfg.socket)?;
            let t = Instant::now();
            let answers = workers.all(&format!("noop {} {wconc}", cfg.noops.div_ceil(nw)))?;
            wall += t.elapsed();
            std::thread::sleep(Duration::from_millis(300));
            let p1 = daemon_probe(cfg.pid, &cfg.socket)?;
            rtt.extend(
                answers
                    .iter()
                    .flat_map(|a| a.split_whitespace().filter_map(|x| x.parse::<u32>().ok())),
            );
            let pk = p1.stat("latency_count") - p0.stat("latency_count");
            packets += pk;
            per_packet.push((p1.cpu_ns - p0.cpu_ns) as f64 / pk.max(1) as f64);
            last = Some(p1);
        }
        let mut sorted = per_packet.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        let list: Vec<String> = per_packet.iter().map(|x| format!("{x:.0}")).collect();
        let extra = format!(
            ",\"noops\":{},\"probe_packets\":{packets},\"probe_cpu_ns_per_packet\":{median:.0},\"probe_cpu_ns_per_packet_all\":[{}],\"probe_wall_s\":{:.3},\"noop_rtt_us\":{}",
            rtt.len(),
            list.join(","),
            wall.as_secs_f64(),
            pct_json(&mut rtt)
        );
        print_line(phase, n, last.as_ref().expect("one probe"), extra);
        Ok(())
    };

    let mut open = 0usize;
    for &n in &cfg.sessions {
        if n <= open {
            continue;
        }
        let p0 = daemon_probe(cfg.pid, &cfg.socket)?;
        let t = Instant::now();
        workers.all(&format!("open {n} {wconc}"))?;
        open = n;
        let open_s = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1000));
        let p1 = daemon_probe(cfg.pid, &cfg.socket)?;
        let pk = p1.stat("latency_count") - p0.stat("latency_count");
        print_line(
            "sessions_open",
            n,
            &p1,
            format!(
                ",\"open_s\":{open_s:.3},\"open_packets\":{pk},\"open_cpu_ns_per_packet\":{:.0}",
                (p1.cpu_ns - p0.cpu_ns) as f64 / pk.max(1) as f64
            ),
        );
        probe(&mut workers, "sessions_probe", n)?;
    }

    if !cfg.expectations.is_empty() && open > 0 {
        let es = cfg.expect_sessions.min(open).max(1);
        let max_total = cfg.expectations.iter().copied().max().unwrap_or(0);
        let max_per = max_total.div_ceil(es);
        let per_addr = es.div_ceil(cfg.src.len());
        if 1024 + per_addr * max_per > 65535 {
            return Err(err(format!(
                "{max_per} EPRTs on each of {per_addr} sessions per address do not fit in the \
                 port space: give more --src addresses"
            )));
        }
        let mut done = 0usize;
        for &e in &cfg.expectations {
            let per = e.div_ceil(es);
            if per <= done {
                continue;
            }
            let p0 = daemon_probe(cfg.pid, &cfg.socket)?;
            let t = Instant::now();
            workers.all(&format!("eprt {done} {per} {es} {max_per} {wconc}"))?;
            let fill_s = t.elapsed().as_secs_f64();
            let sent = (per - done) * es;
            done = per;
            std::thread::sleep(Duration::from_millis(1000));
            let p1 = daemon_probe(cfg.pid, &cfg.socket)?;
            let pk = p1.stat("latency_count") - p0.stat("latency_count");
            print_line(
                "expect_fill",
                per * es,
                &p1,
                format!(
                    ",\"eprt_sent\":{sent},\"fill_s\":{fill_s:.3},\"fill_packets\":{pk},\"fill_cpu_ns_per_eprt\":{:.0},\"fill_cpu_ns_per_packet\":{:.0}",
                    (p1.cpu_ns - p0.cpu_ns) as f64 / sent.max(1) as f64,
                    (p1.cpu_ns - p0.cpu_ns) as f64 / pk.max(1) as f64
                ),
            );
            probe(&mut workers, "expect_probe", per * es)?;
        }
    }
    println!("{{\"cmd\":\"scale\",\"phase\":\"done\"}}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // The workers keep their connections open meanwhile (see --linger).
    std::thread::sleep(cfg.linger);
    Ok(())
}

struct WorkerCfg {
    target: SocketAddr,
    src: Vec<IpAddr>,
    worker: usize,
    workers: usize,
    batch: usize,
    tmo: Duration,
}

fn cmd_scale_worker(cfg: WorkerCfg) -> io::Result<()> {
    use std::io::{BufRead, Write};
    let rt = rt();
    let mut sessions: Vec<(usize, Ctl)> = Vec::new();
    let mut next = cfg.worker; // next global session number this worker owns
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let w: Vec<usize> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let r: io::Result<String> = match (line.split_whitespace().next(), w.as_slice()) {
            (Some("open"), &[n, conc]) => {
                let ids: Vec<usize> = (next..n).step_by(cfg.workers).collect();
                if let Some(&l) = ids.last() {
                    next = l + cfg.workers;
                }
                rt.block_on(open_sessions(&cfg, ids, conc)).map(|mut v| {
                    let k = v.len();
                    sessions.append(&mut v);
                    k.to_string()
                })
            }
            (Some("noop"), &[k, conc]) => rt
                .block_on(noop_probe(&mut sessions, k, conc))
                .map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")),
            (Some("eprt"), &[done, per, es, max_per, conc]) => rt
                .block_on(fill_eprt(
                    &mut sessions,
                    done,
                    per,
                    es,
                    max_per,
                    cfg.src.len(),
                    cfg.batch,
                    conc,
                ))
                .map(|()| String::new()),
            (Some("quit"), _) => return Ok(()),
            _ => Err(err(format!("unknown command `{line}`"))),
        };
        match r {
            Ok(s) => writeln!(out, "ok {s}")?,
            Err(e) => writeln!(out, "err {e}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// Opens the sessions `ids` (logged in), with at most `conc` logins in flight. Session i comes
/// from source address i mod the number of addresses.
async fn open_sessions(
    cfg: &WorkerCfg,
    ids: Vec<usize>,
    conc: usize,
) -> io::Result<Vec<(usize, Ctl)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let mut tasks = Vec::with_capacity(ids.len());
    for i in ids {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let src = cfg.src[i % cfg.src.len()];
        let (target, tmo) = (cfg.target, cfg.tmo);
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            let mut c = Ctl::connect(target, Some(src), tmo).await?;
            c.login()
                .await
                .map_err(|f| err(format!("session login failed at {}", f.0)))?;
            Ok::<(usize, Ctl), io::Error>((i, c))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| err(e.to_string()))??);
    }
    Ok(out)
}

/// Splits `all` into `conc` groups (k, k+conc, ...), runs `f` on each group concurrently, and
/// puts the sessions back in order. Returns what the groups returned.
async fn in_groups<T, F, Fut>(all: &mut Vec<(usize, Ctl)>, conc: usize, f: F) -> io::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Vec<(usize, Ctl)>) -> Fut,
    Fut: std::future::Future<Output = (Vec<(usize, Ctl)>, io::Result<T>)> + Send + 'static,
{
    let conc = conc.min(all.len()).max(1);
    let mut groups: Vec<Vec<(usize, Ctl)>> = (0..conc).map(|_| Vec::new()).collect();
    for (k, s) in all.drain(..).enumerate() {
        groups[k % conc].push(s);
    }
    let tasks: Vec<_> = groups.into_iter().map(|g| tokio::spawn(f(g))).collect();
    let mut back = Vec::new();
    let mut res = Vec::new();
    let mut first_err = None;
    for t in tasks {
        let (g, r) = t.await.map_err(|e| err(e.to_string()))?;
        back.extend(g);
        match r {
            Ok(x) => res.push(x),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    back.sort_by_key(|(i, _)| *i);
    all.extend(back);
    match first_err {
        Some(e) => Err(e),
        None => Ok(res),
    }
}

/// `count` NOOP round trips over all the sessions by `conc` workers, each striding through its
/// group so that consecutive NOOPs hit distant sessions. Returns the round trips in µs.
async fn noop_probe(
    all: &mut Vec<(usize, Ctl)>,
    count: usize,
    conc: usize,
) -> io::Result<Vec<u32>> {
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let per = count / conc.min(all.len()).max(1);
    let r = in_groups(all, conc, move |mut g| async move {
        let mut samples = Vec::with_capacity(per);
        let stride = (g.len() / 7).max(1) | 1;
        let mut j = 0usize;
        for _ in 0..per {
            let len = g.len();
            let c = &mut g[j % len].1;
            let t = Instant::now();
            match c.cmd("NOOP").await {
                Ok(200) => samples.push(us(t.elapsed())),
                Ok(code) => return (g, Err(err(format!("NOOP: reply {code}")))),
                Err(e) => return (g, Err(e)),
            }
            j = j.wrapping_add(stride);
        }
        (g, Ok(samples))
    })
    .await?;
    Ok(r.into_iter().flatten().collect())
}

/// Brings every owned session below `es` from `done` to `per` EPRTs, `batch` lines per write.
#[allow(clippy::too_many_arguments)]
async fn fill_eprt(
    all: &mut Vec<(usize, Ctl)>,
    done: usize,
    per: usize,
    es: usize,
    max_per: usize,
    nsrc: usize,
    batch: usize,
    conc: usize,
) -> io::Result<()> {
    let mut carriers: Vec<(usize, Ctl)> = Vec::new();
    let mut rest = Vec::new();
    for s in all.drain(..) {
        if s.0 < es {
            carriers.push(s);
        } else {
            rest.push(s);
        }
    }
    let r = in_groups(&mut carriers, conc, move |mut g| async move {
        for (i, c) in g.iter_mut() {
            let ip = c.local.ip();
            let base = 1024 + (*i / nsrc) * max_per;
            let mut k = done;
            while k < per {
                let n = batch.min(per - k);
                let mut text = String::with_capacity(n * 48);
                for j in 0..n {
                    let port = (base + k + j) as u16;
                    let _ = write!(text, "{}\r\n", eprt_cmd(SocketAddr::new(ip, port)));
                }
                if let Err(e) = c.w.write_all(text.as_bytes()).await {
                    return (g, Err(e));
                }
                for _ in 0..n {
                    match c.reply().await {
                        Ok(200) => {}
                        Ok(code) => {
                            let e = err(format!("EPRT: reply {code}: {}", c.last.trim_end()));
                            return (g, Err(e));
                        }
                        Err(e) => return (g, Err(e)),
                    }
                }
                k += n;
            }
        }
        (g, Ok(()))
    })
    .await;
    carriers.append(&mut rest);
    carriers.sort_by_key(|(i, _)| *i);
    *all = carriers;
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_227("227 Entering Passive Mode (203,0,113,2,117,48)."),
            Some("203.0.113.2:30000".parse().unwrap())
        );
        assert_eq!(
            parse_229("229 Entering Extended Passive Mode (|||30001|)"),
            Some(30001)
        );
        assert_eq!(
            port_cmd("10.77.100.102:258".parse().unwrap()),
            "PORT 10,77,100,102,1,2"
        );
        assert_eq!(
            eprt_cmd("[fd77:1::2]:5000".parse().unwrap()),
            "EPRT |2|fd77:1::2|5000|"
        );
    }
}
