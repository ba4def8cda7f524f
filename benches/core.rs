//! Benchmarks of the per-packet path of the core, driven as the daemon drives it.
//!
//! Every packet goes through `Engine::handle_packet` (with a conntrack table that has the
//! session's entry, asked for a new session's first packet), then `poll_action` and
//! `poll_event` are drained, as `daemon::Shell::process` does (`ftpct_testutil::drive::step`).
//! Packets are built once (`ftpct_testutil::Seg`, with etherparse); before each call only their seq/ack words are patched (4 stores: the engine does
//! not verify checksums, the kernel did), so the measurement is the engine's work plus that.
//!
//! Groups (one criterion iteration = one packet, throughput in control lines):
//! - `parse/*`: the parser alone on typical lines;
//! - `track/*`: an established session behind MASQUERADE, pre-conntrack hook, lines that need
//!   no rewrite: 10-line segments (a client segment of 10 commands, then a server segment of
//!   10 replies, alternately) and one line per segment (the same 20 lines as a dialogue);
//! - `rewrite/port`: a PORT line rewritten (masquerade), expectation created, the previous one
//!   evicted, WatchDst/UnwatchDst actions drained;
//! - `post/*`: the post-conntrack hook: the server's pure ACK whose ack is mapped back after
//!   rewrites (packet rebuilt, checksums recomputed), and a packet with nothing to map;
//! - `scale/*`: one-line packets spread over 1, 1 k or 100 k established sessions (created with
//!   SYN-ACK packets and their conntrack entries), visited in a scattered order.
//!
//! Before criterion runs, a counting global allocator reports heap allocations per packet on
//! the steady-state paths.
//!
//! Run: `cargo bench --bench core` (criterion options after `--`, e.g. `-- track`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use ftpct::engine::{Config, Engine, Verdict};
use ftpct::parser;
use ftpct::policy::Policy;
use ftpct::types::{CtTuples, FlowTuple, Hook, Timestamp};
use ftpct_testutil::alloc::{allocations as alloc_counters, live_bytes, Counting};
use ftpct_testutil::drive::{found, step, Always, Discard};
use ftpct_testutil::Seg;

// ---------------------------------------------------------------------------------------------
// Allocation counting

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Traffic

const CMDS: [&str; 10] = [
    "USER anonymous\r\n",
    "PASS guest@example.org\r\n",
    "SYST\r\n",
    "TYPE I\r\n",
    "PWD\r\n",
    "CWD /pub/linux/releases\r\n",
    "SIZE image-2024.iso\r\n",
    "MDTM image-2024.iso\r\n",
    "NOOP\r\n",
    "LIST -la\r\n",
];

const REPLIES: [&str; 10] = [
    "220 ProFTPD Server (Debian) ready.\r\n",
    "331 Anonymous login ok, send your complete email address as your password\r\n",
    "230 Anonymous access granted, restrictions apply\r\n",
    "215 UNIX Type: L8\r\n",
    "200 Type set to I\r\n",
    "257 \"/\" is the current directory\r\n",
    "250 CWD command successful\r\n",
    "213 4294967296\r\n",
    "213 20240101120000\r\n",
    "150 Opening BINARY mode data connection for file list\r\n",
];

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 21);
const C_ISN: u32 = 0xfff0_0000;
const S_ISN: u32 = 0x7000_0000;

/// Control connection number `k` of a client behind MASQUERADE: private 10.x.y.z:40000,
/// public 203.0.113.(1 + k / 60000):(1024 + k % 60000).
fn masq_ct(k: u32) -> CtTuples {
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k + 2)), 40000);
    let public = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1 + (k / 60000) as u8)),
        1024 + (k % 60000) as u16,
    );
    CtTuples {
        original: FlowTuple::new(client, SERVER),
        reply: FlowTuple::new(SERVER, public),
    }
}

fn packet(t: FlowTuple, seq: u32, ack: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    assert!(t.src.is_ipv4() && t.dst.is_ipv4(), "IPv4 only");
    Seg {
        seq,
        // A client's SYN carries no ACK (ack == 0 here); everything else does.
        ack_flag: !(syn && ack == 0),
        syn,
        psh: !syn,
        window: 64240,
        ..Seg::new(t.src, t.dst, 0, ack, payload)
    }
    .bytes()
}

/// Patches seq and ack (IPv4 without options: TCP header at 20).
fn set_seq_ack(p: &mut [u8], seq: u32, ack: u32) {
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&ack.to_be_bytes());
}

/// One packet, as `daemon::Shell::process` handles it (ftpct-testutil's driver step: actions
/// and events drained into `black_box`, and the modified packet).
fn process(e: &mut Engine, bytes: &[u8], hook: Hook, ct: &CtTuples, now: Timestamp) -> Verdict {
    step(e, bytes, hook, now, &mut Always(found(*ct)), &mut Discard)
}

fn engine(max_sessions: usize) -> Engine {
    Engine::new(Config {
        control_ports: vec![21],
        policy: Policy {
            max_sessions,
            // The bench's clock does not advance: without this, the per-session announcement
            // budget would refuse the `port` path's PORTs after the first second's worth, and
            // the bench would measure refusals instead of rewrites.
            max_announce_per_second: u32::MAX,
            ..Policy::default()
        },
        hash_key: [0, 0],
    })
}

/// A control connection and the sender state of both directions (original sequence spaces).
struct Conn {
    ct: CtTuples,
    c_next: u32,
    s_next: u32,
    now: u64,
}

impl Conn {
    /// SYN, then SYN-ACK with the conntrack entry: the session is tracked from here.
    fn open(e: &mut Engine, k: u32) -> Conn {
        let ct = masq_ct(k);
        let now = Timestamp::from_secs(1000);
        let syn = packet(ct.original, C_ISN, 0, true, b"");
        process(e, &syn, Hook::PreConntrack, &ct, now);
        let synack = packet(ct.reply, S_ISN, C_ISN.wrapping_add(1), true, b"");
        let before = e.session_count();
        process(e, &synack, Hook::PreConntrack, &ct, now);
        assert_eq!(e.session_count(), before + 1, "session not created");
        Conn {
            ct,
            c_next: C_ISN.wrapping_add(1),
            s_next: S_ISN.wrapping_add(1),
            now: now.as_nanos(),
        }
    }

    fn tick(&mut self) -> Timestamp {
        self.now += 1_000;
        Timestamp(self.now)
    }

    /// Sends a prebuilt client segment (payload length `len`) with the next seq.
    fn client(&mut self, e: &mut Engine, pkt: &mut [u8], len: u32) -> Verdict {
        set_seq_ack(pkt, self.c_next, self.s_next);
        self.c_next = self.c_next.wrapping_add(len);
        let now = self.tick();
        process(e, pkt, Hook::PreConntrack, &self.ct, now)
    }

    fn server(&mut self, e: &mut Engine, pkt: &mut [u8], len: u32) -> Verdict {
        set_seq_ack(pkt, self.s_next, self.c_next);
        self.s_next = self.s_next.wrapping_add(len);
        let now = self.tick();
        process(e, pkt, Hook::PreConntrack, &self.ct, now)
    }
}

/// Prebuilt segments of one direction and their payload lengths.
struct Segs {
    pkts: Vec<(Vec<u8>, u32)>,
}

impl Segs {
    fn new(t: FlowTuple, payloads: &[String]) -> Segs {
        Segs {
            pkts: payloads
                .iter()
                .map(|p| (packet(t, 0, 0, false, p.as_bytes()), p.len() as u32))
                .collect(),
        }
    }
}

/// The dialogue as 10-line segments: client, server, client, ...
struct TenLine {
    conn: Conn,
    cmds: Segs,
    replies: Segs,
    i: usize,
}

impl TenLine {
    fn new(e: &mut Engine) -> Self {
        let conn = Conn::open(e, 0);
        let cmds = Segs::new(conn.ct.original, &[CMDS.concat()]);
        let replies = Segs::new(conn.ct.reply, &[REPLIES.concat()]);
        TenLine {
            conn,
            cmds,
            replies,
            i: 0,
        }
    }
    fn step(&mut self, e: &mut Engine) -> Verdict {
        self.i += 1;
        let v = if self.i % 2 == 1 {
            let (p, l) = &mut self.cmds.pkts[0];
            self.conn.client(e, p, *l)
        } else {
            let (p, l) = &mut self.replies.pkts[0];
            self.conn.server(e, p, *l)
        };
        debug_assert_eq!(v, Verdict::Accept);
        v
    }
}

/// The dialogue one line per segment: command, reply, command, reply, ...
struct OneLine {
    conn: Conn,
    cmds: Segs,
    replies: Segs,
    i: usize,
}

impl OneLine {
    fn new(e: &mut Engine) -> Self {
        let conn = Conn::open(e, 0);
        let cmds = Segs::new(
            conn.ct.original,
            &CMDS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        let replies = Segs::new(
            conn.ct.reply,
            &REPLIES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        OneLine {
            conn,
            cmds,
            replies,
            i: 0,
        }
    }
    fn step(&mut self, e: &mut Engine) -> Verdict {
        let j = self.i / 2 % 10;
        let v = if self.i % 2 == 0 {
            let (p, l) = &mut self.cmds.pkts[j];
            self.conn.client(e, p, *l)
        } else {
            let (p, l) = &mut self.replies.pkts[j];
            self.conn.server(e, p, *l)
        };
        self.i += 1;
        debug_assert_eq!(v, Verdict::Accept);
        v
    }
}

/// PORT lines from a client behind MASQUERADE, each announcing a new port: every one is
/// rewritten (10,0,0,2 -> 203,0,113,1), creates an expectation and evicts the previous one.
struct PortRewrite {
    conn: Conn,
    /// One prebuilt PORT packet per port (1024..=65535 cycles).
    pkts: Vec<(Vec<u8>, u32)>,
    i: usize,
}

impl PortRewrite {
    const PORTS: usize = 4096;
    fn new(e: &mut Engine) -> Self {
        // Only the client's PORT segments are sent, never the server's acknowledgements: with
        // the trust model's window check they would leave the server's window after about
        // 3000 lines and be refused. This path measures the rewrite, so the check is off here
        // (its cost is in the `one_line` and `ten_line` paths).
        let mut cfg = e.config().clone();
        cfg.policy.tcp_window_check = false;
        e.reconfigure(cfg);
        let conn = Conn::open(e, 0);
        let lines: Vec<String> = (0..Self::PORTS)
            .map(|i| {
                let port = 20000 + i as u16;
                format!("PORT 10,0,0,2,{},{}\r\n", port >> 8, port & 255)
            })
            .collect();
        let pkts = Segs::new(conn.ct.original, &lines).pkts;
        PortRewrite { conn, pkts, i: 0 }
    }
    fn step(&mut self, e: &mut Engine) -> Verdict {
        let (p, l) = &mut self.pkts[self.i % Self::PORTS];
        self.i += 1;
        let v = self.conn.client(e, p, *l);
        // every PORT is rewritten (a refused one would make the bench measure something else)
        assert_eq!(v, Verdict::AcceptModified);
        v
    }
}

/// The post-conntrack hook. `fixup`: the server's pure ACK, after the client's PORT lines were
/// rewritten, so its ack is mapped back (packet rebuilt with new checksums). Otherwise the
/// client's pure ACK (the server's stream was never rewritten: nothing to map).
struct PostAck {
    conn: Conn,
    pkt: Vec<u8>,
}

impl PostAck {
    fn new(e: &mut Engine, fixup: bool) -> Self {
        let mut pr = PortRewrite::new(e);
        for _ in 0..20 {
            pr.step(e);
        }
        let conn = pr.conn;
        let mid = conn.ct.mid();
        // Receiver's space: the server acknowledges what it received (rewritten, longer).
        let grown = 20 * 3;
        let pkt = if fixup {
            packet(
                mid.inverse(),
                conn.s_next,
                conn.c_next.wrapping_add(grown),
                false,
                b"",
            )
        } else {
            packet(mid, conn.c_next, conn.s_next, false, b"")
        };
        PostAck { conn, pkt }
    }
    fn step(&mut self, e: &mut Engine) -> Verdict {
        let now = self.conn.tick();
        process(e, &self.pkt, Hook::PostConntrack, &self.conn.ct, now)
    }
}

/// One-line packets ("NOOP") spread over `n` sessions, visited in a scattered order; with
/// `hot < n`, only `hot` of them (evenly spread) receive packets.
struct Scale {
    conns: Vec<Conn>,
    pkts: Vec<Vec<u8>>,
    hot: usize,
    i: usize,
}

impl Scale {
    const LINE: &'static [u8] = b"NOOP\r\n";
    fn new(e: &mut Engine, n: u32, hot: u32) -> Self {
        let mut conns = Vec::with_capacity(n as usize);
        let live0 = live_bytes();
        for k in 0..n {
            conns.push(Conn::open(e, k));
        }
        let live1 = live_bytes();
        assert_eq!(e.session_count(), n as usize);
        if n >= 100_000 {
            println!(
                "core/memory: {n} sessions: {:.0} heap bytes/session (engine tables, before any \
                 line; size_of Session {} B, DirState {} B, SeqAdj {} B)",
                (live1 - live0) as f64 / f64::from(n),
                std::mem::size_of::<ftpct_core::Session>(),
                std::mem::size_of::<ftpct_core::DirState>(),
                std::mem::size_of::<ftpct::seqadj::SeqAdj>(),
            );
        }
        let pkts = conns
            .iter()
            .map(|c| packet(c.ct.original, 0, 0, false, Self::LINE))
            .collect();
        Scale {
            conns,
            pkts,
            hot: hot as usize,
            i: 0,
        }
    }
    fn step(&mut self, e: &mut Engine) -> Verdict {
        let n = self.conns.len();
        // A stride coprime with n (odd, and not a multiple of 5): every (hot) session in turn,
        // neighbours in memory far apart.
        let k = self.i.wrapping_mul(7_919) % self.hot * (n / self.hot);
        self.i += 1;
        let len = Self::LINE.len() as u32;
        let v = self.conns[k].client(e, &mut self.pkts[k], len);
        debug_assert_eq!(v, Verdict::Accept);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation report

fn allocs_per_packet(
    name: &str,
    e: &mut Engine,
    want: Verdict,
    mut step: impl FnMut(&mut Engine) -> Verdict,
) {
    // Warm-up covers every session at least twice: the first line of a session allocates its
    // line buffer (once per session, not per packet).
    let warm = 20_000 + 2 * e.session_count();
    const N: usize = 200_000;
    for _ in 0..warm {
        assert_eq!(step(e), want, "{name}");
    }
    let (a0, b0) = alloc_counters();
    for _ in 0..N {
        black_box(step(e));
    }
    let (a1, b1) = alloc_counters();
    println!(
        "core/allocations {name}: {:.3} allocations/packet, {:.1} bytes/packet ({} in {N} packets)",
        (a1 - a0) as f64 / N as f64,
        (b1 - b0) as f64 / N as f64,
        a1 - a0,
    );
}

fn report_allocations() {
    let mut e = engine(1 << 20);
    let mut t = TenLine::new(&mut e);
    allocs_per_packet("track 10-line segments", &mut e, Verdict::Accept, |e| {
        t.step(e)
    });

    let mut e = engine(1 << 20);
    let mut t = OneLine::new(&mut e);
    allocs_per_packet("track one line per segment", &mut e, Verdict::Accept, |e| {
        t.step(e)
    });

    let mut e = engine(1 << 20);
    let mut t = PortRewrite::new(&mut e);
    allocs_per_packet("rewrite PORT", &mut e, Verdict::AcceptModified, |e| {
        t.step(e)
    });

    let mut e = engine(1 << 20);
    let mut t = PostAck::new(&mut e, true);
    allocs_per_packet("post ACK fix-up", &mut e, Verdict::AcceptModified, |e| {
        t.step(e)
    });

    let mut e = engine(1 << 20);
    let mut t = Scale::new(&mut e, 100_000, 100_000);
    allocs_per_packet("scale 100k sessions", &mut e, Verdict::Accept, |e| {
        t.step(e)
    });
}

// ---------------------------------------------------------------------------------------------
// Criterion

fn bench_parse(c: &mut Criterion) {
    let cmds: Vec<&[u8]> = CMDS.iter().map(|s| s.trim_end().as_bytes()).collect();
    let replies: Vec<&[u8]> = REPLIES.iter().map(|s| s.trim_end().as_bytes()).collect();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(10));
    g.bench_function("command_x10", |b| {
        b.iter(|| {
            for l in &cmds {
                black_box(parser::parse_command(black_box(l)).is_ok());
            }
        })
    });
    g.bench_function("reply_start_x10", |b| {
        b.iter(|| {
            for l in &replies {
                black_box(parser::parse_reply_start(black_box(l)));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    let port = b"PORT 10,0,0,2,195,80";
    g.bench_function("port", |b| {
        b.iter(|| black_box(parser::parse_command(black_box(port)).is_ok()))
    });
    let eprt = b"EPRT |2|fd77:1::2|50000|";
    g.bench_function("eprt_v6", |b| {
        b.iter(|| black_box(parser::parse_command(black_box(eprt)).is_ok()))
    });
    let r227 = b"227 Entering Passive Mode (10,1,0,2,195,80).";
    g.bench_function("227", |b| {
        b.iter(|| black_box(parser::parse_227(black_box(r227)).is_ok()))
    });
    let r229 = b"229 Entering Extended Passive Mode (|||50000|)";
    g.bench_function("229", |b| {
        b.iter(|| black_box(parser::parse_229(black_box(r229)).is_ok()))
    });
    g.finish();
}

fn bench_engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("track");
    g.throughput(Throughput::Elements(10));
    {
        let mut e = engine(1 << 20);
        let mut t = TenLine::new(&mut e);
        g.bench_function("10_lines_per_segment", |b| b.iter(|| t.step(&mut e)));
    }
    g.throughput(Throughput::Elements(1));
    {
        let mut e = engine(1 << 20);
        let mut t = OneLine::new(&mut e);
        g.bench_function("1_line_per_segment", |b| b.iter(|| t.step(&mut e)));
    }
    g.finish();

    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Elements(1));
    {
        let mut e = engine(1 << 20);
        let mut t = PortRewrite::new(&mut e);
        g.bench_function("port", |b| b.iter(|| t.step(&mut e)));
    }
    g.finish();

    let mut g = c.benchmark_group("post");
    g.throughput(Throughput::Elements(1));
    for (name, fixup) in [("ack_fixup", true), ("nothing_to_map", false)] {
        let mut e = engine(1 << 20);
        let mut t = PostAck::new(&mut e, fixup);
        let want = if fixup {
            Verdict::AcceptModified
        } else {
            Verdict::Accept
        };
        assert_eq!(t.step(&mut e), want, "post {name}");
        g.bench_function(name, |b| b.iter(|| t.step(&mut e)));
    }
    g.finish();

    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Elements(1));
    for (name, n, hot) in [
        ("1_session", 1, 1),
        ("1k_sessions", 1_000, 1_000),
        ("100k_sessions", 100_000, 100_000),
        ("100k_sessions_1k_hot", 100_000, 1_000),
    ] {
        let mut e = engine(1 << 20);
        let mut t = Scale::new(&mut e, n, hot);
        g.bench_function(name, |b| b.iter(|| t.step(&mut e)));
    }
    g.finish();
}

/// `FTPCT_BENCH_PROFILE=<path> [FTPCT_BENCH_PACKETS=n]`: runs only that path for n packets
/// (default 1 M) and exits, for `valgrind --tool=callgrind` or `perf record`, or to time one path
/// alone. Paths: `ten_line`, `one_line`, `port`, `post_fixup`, `post_nothing`, `scale_1`,
/// `scale_1k`, `scale_100k`, `scale_100k_1k_hot`.
fn profile(path: &str) {
    let n: usize = std::env::var("FTPCT_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut e = engine(1 << 20);
    let mut step: Box<dyn FnMut(&mut Engine) -> Verdict> = match path {
        "ten_line" => {
            let mut t = TenLine::new(&mut e);
            Box::new(move |e| t.step(e))
        }
        "one_line" => {
            let mut t = OneLine::new(&mut e);
            Box::new(move |e| t.step(e))
        }
        "port" => {
            let mut t = PortRewrite::new(&mut e);
            Box::new(move |e| t.step(e))
        }
        "post_fixup" => {
            let mut t = PostAck::new(&mut e, true);
            Box::new(move |e| t.step(e))
        }
        "post_nothing" => {
            let mut t = PostAck::new(&mut e, false);
            Box::new(move |e| t.step(e))
        }
        "scale_1" | "scale_1k" | "scale_100k" | "scale_100k_1k_hot" => {
            let (n, hot) = match path {
                "scale_1" => (1, 1),
                "scale_1k" => (1_000, 1_000),
                "scale_100k" => (100_000, 100_000),
                _ => (100_000, 1_000),
            };
            let mut t = Scale::new(&mut e, n, hot);
            // Every session has seen a line (its line buffer exists) before timing starts.
            for _ in 0..2 * n {
                t.step(&mut e);
            }
            Box::new(move |e| t.step(e))
        }
        other => panic!("unknown profile path {other}"),
    };
    let start = std::time::Instant::now();
    for _ in 0..n {
        black_box(step(&mut e));
    }
    let took = start.elapsed();
    println!(
        "profile {path}: {n} packets in {took:?} = {:.1} ns/packet",
        took.as_nanos() as f64 / n as f64
    );
}

fn main() {
    if let Ok(path) = std::env::var("FTPCT_BENCH_PROFILE") {
        profile(&path);
        return;
    }
    report_allocations();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    bench_parse(&mut c);
    bench_engine(&mut c);
    c.final_summary();
}
