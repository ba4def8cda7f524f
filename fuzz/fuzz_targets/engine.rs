//! The whole packet path: `Engine::handle_packet` / `handle_timeout`, driven like the daemon
//! drives it, on packets of a few fixed control connections (masquerade, DNAT, both, no NAT,
//! IPv6), data-connection SYNs and raw arbitrary bytes.
//!
//! The input is decoded into a policy (8 bytes) and then a sequence of events (see `run`): a
//! control packet at the pre-conntrack hook, at the post-conntrack hook, or through the whole
//! gateway (pre hook, DNAT, post hook); a handshake; a data SYN; raw bytes; a timeout; a clock
//! jump. Packets are built (ftpct-testutil `Seg`) from fuzz-chosen flags, sequence numbers (in order,
//! retransmitted from the sender's history, after a gap, or arbitrary), acknowledgements and a
//! payload made of FTP tokens and raw bytes. Timestamps are monotonic. Actions and events are
//! drained after each call.
//!
//! Invariants: never panics (overflow checks are on in fuzz builds); `AcceptModified` output
//! re-parses as TCP with the same tuple and valid checksums, changes only payload and seq at
//! the pre hook and only ack/SACK at the post hook; `Drop` only at the pre hook; packets on
//! neither control port are accepted unchanged; the conntrack table is asked at most once per
//! packet, for its own tuple, never for a malformed one; at most `max_sessions` sessions, `max_expectations` expectations,
//! `max_expect_per_session` per session, none whose session is gone; at most 4096 queued
//! actions / events; after `handle_timeout(now)` the next timeout is later than `now`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ftpct::engine::{Action, Config, CtLookup, Engine, NoConntrack, Verdict};
use ftpct::packet::{self, Edit, TcpPacket};
use ftpct::policy::Policy;
use ftpct::types::{CtTuples, Dir, FlowTuple, Hook, Timestamp};
use ftpct_fuzz::Reader;
use ftpct_testutil::drive::{drain, step, Record, SimConntrack};
use ftpct_testutil::{checksums_ok, Seg};
use libfuzzer_sys::fuzz_target;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

fn v6(last: u16, net: u16, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0xfd77, net, 0, 0, 0, 0, 0, last)),
        port,
    )
}

const KINDS: usize = 5;
const PER_KIND: usize = 4;
const N_FLOWS: usize = KINDS * PER_KIND;

/// Conntrack tuples of control connection `i`.
fn flow_ct(i: usize) -> CtTuples {
    let k = (i % PER_KIND) as u16;
    match i / PER_KIND {
        // client behind MASQUERADE
        0 => CtTuples {
            original: FlowTuple::new(v4(10, 0, 0, 2, 40000 + k), v4(198, 51, 100, 2, 21)),
            reply: FlowTuple::new(v4(198, 51, 100, 2, 21), v4(203, 0, 113, 1, 61000 + k)),
        },
        // server behind DNAT
        1 => CtTuples {
            original: FlowTuple::new(v4(198, 51, 100, 7, 40000 + k), v4(203, 0, 113, 1, 21)),
            reply: FlowTuple::new(v4(10, 1, 0, 2, 21), v4(198, 51, 100, 7, 40000 + k)),
        },
        // both (hairpin-like: SNAT and DNAT)
        2 => CtTuples {
            original: FlowTuple::new(v4(10, 0, 0, 2, 41000 + k), v4(203, 0, 113, 1, 21)),
            reply: FlowTuple::new(v4(10, 1, 0, 2, 21), v4(203, 0, 113, 9, 62000 + k)),
        },
        // no NAT
        3 => CtTuples::untranslated(FlowTuple::new(
            v4(192, 0, 2, 5, 40000 + k),
            v4(192, 0, 2, 6, 21),
        )),
        // IPv6, no NAT
        _ => CtTuples::untranslated(FlowTuple::new(v6(2, 1, 40000 + k), v6(2, 2, 21))),
    }
}

/// The tuple a packet of `dir` carries at `hook` (at the post hook, after DNAT, before SNAT).
fn hook_tuple(ct: &CtTuples, dir: Dir, hook: Hook) -> FlowTuple {
    match (hook, dir) {
        (Hook::PreConntrack, Dir::Original) => ct.original,
        (Hook::PreConntrack, Dir::Reply) => ct.reply,
        (Hook::PostConntrack, Dir::Original) => ct.mid(),
        (Hook::PostConntrack, Dir::Reply) => ct.mid().inverse(),
    }
}

const TOKENS: &[&[u8]] = &[
    b"USER anonymous\r\n",
    b"PASS x\r\n",
    b"PORT 10,0,0,2,195,80\r\n",
    b"PORT 10,1,0,2,195,81\r\n",
    b"PORT 192,0,2,5,200,1\r\n",
    b"EPRT |1|10.0.0.2|50000|\r\n",
    b"EPRT |2|fd77:1::2|50001|\r\n",
    b"PASV\r\n",
    b"EPSV\r\n",
    b"AUTH TLS\r\n",
    b"227 Entering Passive Mode (10,1,0,2,195,80).\r\n",
    b"227 Entering Passive Mode (0,0,0,0,195,82).\r\n",
    b"227 Entering Passive Mode (192,0,2,6,195,83).\r\n",
    b"227-Entering Passive Mode (10,1,0,2,195,84)\r\n",
    b"229 Entering Extended Passive Mode (|||50000|)\r\n",
    b"229-x\r\n",
    b"234 AUTH TLS OK\r\n",
    b"200 ok\r\n",
    b"150 Here it comes\r\n",
    b"220 ready\r\n",
    b"PORT ",
    b"10,0,0,2,",
    b"195,80",
    b"\r\n",
    b"\n",
    b"227 ",
    b"229 ",
    b"PORT 10,0,0,2,0,21\r\n",
    b"PORT 8,8,8,8,195,80\r\n",
];

/// Sender state of one direction of one control connection.
#[derive(Clone, Default)]
struct Side {
    isn: u32,
    /// The original stream (from isn+1), bounded.
    hist: Vec<u8>,
    /// Highest sequence end delivered to the receiver (receiver's space).
    delivered: Option<u32>,
}

const MAX_HIST: usize = 16 * 1024;

struct Harness {
    engine: Engine,
    policy: Policy,
    now: Timestamp,
    sides: Vec<[Side; 2]>,
    watched: Vec<SocketAddr>,
    out: Vec<u8>,
}

/// What the fuzzed conntrack table answers for a packet's lookup.
type HintMode = CtLookup;

fn is_control(t: &FlowTuple) -> bool {
    t.src.port() == 21 || t.dst.port() == 21
}

impl Harness {
    /// Checks the tables, and what the engine queued: `seen` (what the last packet queued) and
    /// whatever is still in the engine's queues.
    fn check_tables(&mut self, mut seen: Record) {
        let p = &self.policy;
        assert!(self.engine.session_count() <= p.max_sessions.max(1));
        let exp = self.engine.expectations();
        assert!(exp.len() <= p.max_expectations);
        let per = p.max_expect_per_session.max(1);
        let mut n = 0;
        for (_, e) in exp.iter() {
            n += 1;
            assert!(
                self.engine.sessions().any(|s| s.id == e.master),
                "expectation of a gone session: {e:?}"
            );
        }
        assert_eq!(n, exp.len());
        for s in self.engine.sessions() {
            assert!(exp.master_len(s.id) <= per);
        }
        drain(&mut self.engine, &mut seen);
        for a in &seen.actions {
            if let Action::WatchDst { dst, .. } = a {
                if self.watched.len() < 64 {
                    self.watched.push(*dst);
                }
            }
        }
        if debug() {
            for e in &seen.events {
                eprintln!("  {e:?}");
            }
        }
        assert!(seen.actions.len() <= 4096 && seen.events.len() <= 4096);
    }

    /// One packet through one hook, as the daemon does it: the conntrack table answers
    /// `hint`, is asked at most once, with the packet's own tuple, and never for a packet that
    /// does not parse.
    fn hook(&mut self, bytes: &[u8], hook: Hook, hint: HintMode) -> Option<Vec<u8>> {
        let mut conntrack = SimConntrack::answering(hint);
        let mut seen = Record::default();
        let v = step(
            &mut self.engine,
            bytes,
            hook,
            self.now,
            &mut conntrack,
            &mut seen,
        );
        let asked = conntrack.asked;
        assert!(asked.len() <= 1, "conntrack asked twice for one packet");
        if let Some((t, _)) = asked.first() {
            let parsed = TcpPacket::parse(bytes).expect("conntrack asked for a malformed packet");
            assert_eq!(*t, parsed.tuple, "conntrack asked for another tuple");
        }
        let parsed = TcpPacket::parse(bytes);
        if let Ok(p) = &parsed {
            if !is_control(&p.tuple) {
                assert_eq!(v, Verdict::Accept, "non-control packet not accepted as is");
            }
        }
        let res = match v {
            Verdict::Accept => Some(bytes.to_vec()),
            Verdict::Drop => {
                assert_eq!(hook, Hook::PreConntrack, "Drop at the post hook");
                None
            }
            Verdict::AcceptModified => {
                let p = parsed.expect("a malformed packet was modified");
                let out = self.engine.modified_packet();
                let q = TcpPacket::parse(out).expect("modified packet does not parse");
                assert_eq!(q.tuple, p.tuple, "modified packet changed the tuple");
                assert!(checksums_ok(out), "modified packet has bad checksums");
                assert_eq!(q.flags.syn, p.flags.syn);
                assert_eq!(q.flags.rst, p.flags.rst);
                assert_eq!(q.flags.ack, p.flags.ack);
                match hook {
                    Hook::PreConntrack => {
                        assert_eq!(q.ack, p.ack, "pre hook changed ack");
                        assert!(!q.flags.fin || p.flags.fin);
                    }
                    Hook::PostConntrack => {
                        assert_eq!(q.seq, p.seq, "post hook changed seq");
                        assert_eq!(q.payload(), p.payload(), "post hook changed payload");
                        assert_eq!(q.flags.fin, p.flags.fin);
                    }
                }
                Some(out.to_vec())
            }
        };
        self.check_tables(seen);
        res
    }

    /// DNAT (original direction) / un-SNAT (reply direction) as the kernel does between hooks.
    fn nat(&mut self, bytes: &[u8], to: SocketAddr) -> Option<Vec<u8>> {
        let p = TcpPacket::parse(bytes).ok()?;
        let mut b = bytes[..p.payload_end].to_vec();
        match to.ip() {
            IpAddr::V4(a) if !p.tuple.is_ipv6() => b[16..20].copy_from_slice(&a.octets()),
            IpAddr::V6(a) if p.tuple.is_ipv6() => b[24..40].copy_from_slice(&a.octets()),
            _ => return None,
        }
        b[p.tcp_off + 2..p.tcp_off + 4].copy_from_slice(&to.port().to_be_bytes());
        let q = TcpPacket::parse(&b).ok()?;
        let edit = Edit {
            seq: q.seq,
            ack: q.ack,
            payload: None,
            sack: None,
            clear_fin: false,
        };
        packet::build(&q, &edit, &mut self.out).ok()?;
        Some(self.out.clone())
    }

    fn tick(&mut self, tb: u8) {
        let d = if tb < 200 {
            Duration::from_millis(u64::from(tb))
        } else {
            Duration::from_secs(5 * u64::from(tb - 200))
        };
        self.now = self.now.plus(d);
    }

    fn hint_mode(&self, hb: u8, flow: usize) -> HintMode {
        let ct = flow_ct(flow);
        let other = flow_ct((flow + 1 + usize::from(hb >> 4)) % N_FLOWS);
        let found = |tuples| CtLookup::Found {
            tuples,
            id: (hb & 8 != 0).then_some(u32::from(hb)),
        };
        match hb % 3 {
            0 => found(ct),
            1 => CtLookup::Missing,
            _ => found(other),
        }
    }

    /// Sends a control packet of `flow` in `dir` through `hook` (or both hooks, `forward`).
    fn control(&mut self, r: &mut Reader<'_>, hook: Option<Hook>) {
        let fb = r.u8();
        let fl = r.u8();
        let hb = r.u8();
        let tb = r.u8();
        let param = r.u16();
        let flow = usize::from(fb & 0x7f) % N_FLOWS;
        let dir = if fb & 0x80 != 0 {
            Dir::Reply
        } else {
            Dir::Original
        };
        let (syn, ackf, fin, rst) = (fl & 1 != 0, fl & 2 == 0, fl & 4 != 0, fl & 8 != 0);
        let seq_mode = (fl >> 4) & 3;
        let ack_mode = fl >> 6;
        let arb_seq = if seq_mode == 3 { r.u32() } else { 0 };
        let arb_ack = if ack_mode == 3 { r.u32() } else { 0 };
        let ntok = usize::from(r.u8() % 8);
        let mut fresh = Vec::new();
        for _ in 0..ntok {
            let t = usize::from(r.u8());
            match TOKENS.get(t) {
                Some(tok) => fresh.extend_from_slice(tok),
                None => {
                    let n = usize::from(r.u8() % 64);
                    fresh.extend_from_slice(r.bytes(n));
                }
            }
        }
        self.tick(tb);

        let ct = flow_ct(flow);
        let di = dir.index();
        let side = &mut self.sides[flow][di];
        let hist_len = side.hist.len();
        let (seq, payload) = match seq_mode {
            // in order, or a retransmission from the history (plus new data)
            0 | 1 => {
                let back = if seq_mode == 1 && hist_len > 0 {
                    1 + usize::from(param) % hist_len
                } else {
                    0
                };
                let start = hist_len - back;
                let mut payload = side.hist[start..].to_vec();
                if side.hist.len() + fresh.len() <= MAX_HIST {
                    side.hist.extend_from_slice(&fresh);
                }
                payload.extend_from_slice(&fresh);
                let seq = if syn {
                    side.isn
                } else {
                    side.isn.wrapping_add(1).wrapping_add(start as u32)
                };
                (seq, payload)
            }
            // after a gap
            2 => (
                side.isn
                    .wrapping_add(1)
                    .wrapping_add(hist_len as u32)
                    .wrapping_add(1 + u32::from(param % 2000)),
                fresh,
            ),
            _ => (arb_seq, fresh),
        };
        let peer = &self.sides[flow][1 - di];
        let realistic = peer.delivered.unwrap_or_else(|| peer.isn.wrapping_add(1));
        let ack = match ack_mode {
            0 => realistic,
            1 => realistic.wrapping_sub(u32::from(param >> 8)),
            2 => peer
                .isn
                .wrapping_add(1)
                .wrapping_add(peer.hist.len() as u32),
            _ => arb_ack,
        };
        let sack = (hb & 0x80 != 0).then(|| {
            let l = ack.wrapping_add(u32::from(param & 0xff));
            (l, l.wrapping_add(1 + u32::from(param >> 12)))
        });
        let hint = self.hint_mode(hb, flow);

        let hooks: &[Hook] = match hook {
            Some(Hook::PreConntrack) => &[Hook::PreConntrack],
            Some(Hook::PostConntrack) => &[Hook::PostConntrack],
            None => &[Hook::PreConntrack, Hook::PostConntrack],
        };
        let t0 = hook_tuple(&ct, dir, hooks[0]);
        let mut bytes = build_packet(t0, seq, ackf.then_some(ack), syn, fin, rst, sack, &payload);
        for (i, &h) in hooks.iter().enumerate() {
            if i > 0 {
                // between the hooks: DNAT / un-SNAT of the destination
                let to = hook_tuple(&ct, dir, h).dst;
                match self.nat(&bytes, to) {
                    Some(b) => bytes = b,
                    None => return,
                }
            }
            let Some(out) = self.hook(&bytes, h, hint) else {
                return;
            };
            if h == Hook::PreConntrack {
                if let Ok(q) = TcpPacket::parse(&out) {
                    let end = q.seq_end();
                    let side = &mut self.sides[flow][di];
                    match side.delivered {
                        Some(d) if (end.wrapping_sub(d) as i32) <= 0 => {}
                        _ => side.delivered = Some(end),
                    }
                }
            }
            bytes = out;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_packet(
    t: FlowTuple,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    sack: Option<(u32, u32)>,
    payload: &[u8],
) -> Vec<u8> {
    Seg {
        src: t.src,
        dst: t.dst,
        seq,
        ack: ack.unwrap_or(0),
        ack_flag: ack.is_some(),
        syn,
        fin,
        rst,
        window: 64000,
        sack: sack.into_iter().collect(),
        payload: payload.to_vec(),
        ..Seg::default()
    }
    .bytes()
}

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let b: Vec<u8> = (0..8).map(|_| r.u8()).collect();
    let small_ports = b[3] & 4 != 0;
    let policy = Policy {
        allow_third_party: b[3] & 1 != 0,
        allow_privileged_ports: b[3] & 2 != 0,
        max_expect_per_session: usize::from(b[2] % 4),
        max_expectations: usize::from(b[1] % 9),
        expect_timeout: Duration::from_secs(1 + u64::from(b[5])),
        nat_port_min: if small_ports { 50000 } else { 1024 },
        nat_port_max: if small_ports { 50002 } else { 65535 },
        max_line: if b[3] & 8 != 0 { 40 } else { 1024 },
        hold_timeout: Duration::from_secs(1 + u64::from(b[4] % 4)),
        hold_timeout_action: if b[4] & 4 != 0 {
            ftpct::policy::HoldTimeoutAction::Pass
        } else {
            ftpct::policy::HoldTimeoutAction::Keep
        },
        max_sessions: 1 + usize::from(b[0] % 8),
        session_idle_timeout: Duration::from_secs(1 + u64::from(b[6])),
        session_close_linger: Duration::from_secs(u64::from(b[7] % 16)),
        data_mark: 0x4654,
        pickup_at_segment_start: b[3] & 16 != 0,
        // off for half the inputs: with it on, most arbitrary segments are refused early
        tcp_window_check: b[3] & 32 == 0,
        max_announce_per_segment: 1 + u32::from((b[4] >> 2) & 7),
        max_announce_per_second: 1 + u32::from(b[4] >> 5) * 8,
        log_events_per_second: 1 + u16::from(b[7] >> 4),
    };
    let cfg = Config {
        control_ports: vec![21],
        policy: policy.clone(),
        hash_key: [u64::from(b[0]), 7],
    };
    let mut h = Harness {
        engine: Engine::new(cfg),
        policy,
        now: Timestamp::from_secs(1000),
        sides: (0..N_FLOWS)
            .map(|i| {
                let base = 0xffff_f000u32.wrapping_add(0x0100_0000 * i as u32);
                [
                    Side {
                        isn: base,
                        ..Default::default()
                    },
                    Side {
                        isn: base ^ 0x8000_0000,
                        ..Default::default()
                    },
                ]
            })
            .collect(),
        watched: Vec::new(),
        out: Vec::new(),
    };

    let mut events = 0;
    while !r.is_empty() && events < 400 {
        events += 1;
        match r.u8() % 8 {
            0 => h.control(&mut r, Some(Hook::PreConntrack)),
            1 => h.control(&mut r, Some(Hook::PostConntrack)),
            2 => h.control(&mut r, None),
            3 => {
                // handshake: SYN, then SYN-ACK, both through the whole gateway
                let flow = usize::from(r.u8()) % N_FLOWS;
                let hb = r.u8();
                h.tick(r.u8());
                let ct = flow_ct(flow);
                let hint = h.hint_mode(hb, flow);
                let (ci, si) = (h.sides[flow][0].isn, h.sides[flow][1].isn);
                let syn = build_packet(ct.original, ci, None, true, false, false, None, &[]);
                if h.hook(&syn, Hook::PreConntrack, hint).is_some() {
                    let sa = build_packet(
                        ct.reply,
                        si,
                        Some(ci.wrapping_add(1)),
                        true,
                        false,
                        false,
                        None,
                        &[],
                    );
                    if let Some(out) = h.hook(&sa, Hook::PreConntrack, hint) {
                        let to = ct.original.src;
                        if let Some(b) = h.nat(&out, to) {
                            h.hook(&b, Hook::PostConntrack, hint);
                        }
                    }
                }
            }
            4 => {
                // a data connection's SYN
                let sb = r.u8();
                let db = r.u8();
                let port = r.u16();
                h.tick(r.u8());
                let dst = if db & 1 != 0 && !h.watched.is_empty() {
                    h.watched[usize::from(db >> 1) % h.watched.len()]
                } else {
                    let mut d = [
                        v4(203, 0, 113, 1, 0),
                        v4(10, 0, 0, 2, 0),
                        v4(192, 0, 2, 5, 0),
                        v6(2, 1, 0),
                        v4(203, 0, 113, 9, 0),
                        v4(10, 1, 0, 2, 0),
                    ][usize::from(db >> 1) % 6];
                    d.set_port(port);
                    d
                };
                let srcs = [
                    v4(198, 51, 100, 2, 20),
                    v4(198, 51, 100, 7, port),
                    v4(192, 0, 2, 6, 20),
                    v6(2, 2, 20),
                    v4(10, 0, 0, 2, port),
                    v4(10, 1, 0, 2, 20),
                ];
                let mut src = srcs[usize::from(sb) % srcs.len()];
                if src.is_ipv6() != dst.is_ipv6() {
                    src = if dst.is_ipv6() { srcs[3] } else { srcs[0] };
                }
                let t = FlowTuple::new(src, dst);
                let syn = build_packet(t, r.u32(), None, true, false, false, None, &[]);
                let mut seen = Record::default();
                let v = step(
                    &mut h.engine,
                    &syn,
                    Hook::PreConntrack,
                    h.now,
                    &mut NoConntrack,
                    &mut seen,
                );
                if !is_control(&t) {
                    assert_eq!(v, Verdict::Accept);
                }
                for a in &seen.actions {
                    if let Action::CreateRelated(e) = a {
                        assert_eq!(e.original, t, "related entry for another flow");
                        assert_eq!(e.nat_src.is_some(), e.nat_dst.is_some());
                    }
                }
                h.check_tables(seen);
            }
            5 => {
                // raw bytes
                let hb = r.u8();
                let n = usize::from(r.u8());
                let bytes = r.bytes(n).to_vec();
                let hook = if hb & 1 != 0 {
                    Hook::PostConntrack
                } else {
                    Hook::PreConntrack
                };
                let hint = h.hint_mode(hb >> 1, usize::from(hb >> 3) % N_FLOWS);
                h.hook(&bytes, hook, hint);
            }
            6 => {
                // timers
                let m = r.u8();
                if m & 1 != 0 {
                    if let Some(t) = h.engine.poll_timeout() {
                        h.now = h.now.max(t);
                    }
                } else {
                    h.now = h.now.plus(Duration::from_secs(u64::from(m)));
                }
                h.engine.handle_timeout(h.now);
                if let Some(t) = h.engine.poll_timeout() {
                    assert!(
                        t > h.now,
                        "poll_timeout {t:?} not after handle_timeout({:?})",
                        h.now
                    );
                }
                h.check_tables(Record::default());
            }
            _ => {
                let s = u64::from(r.u16());
                h.now = h.now.plus(Duration::from_secs(s));
            }
        }
    }
    if debug() {
        eprintln!(
            "{events} events, {} sessions, {} expectations, {:?}",
            h.engine.session_count(),
            h.engine.expectations().len(),
            h.engine.stats()
        );
    }
}

/// `FTPCT_FUZZ_DEBUG=1` prints the engine's counters after each input (to check what a seed
/// reaches).
fn debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FTPCT_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| run(data));
