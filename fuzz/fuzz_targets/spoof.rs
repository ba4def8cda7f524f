//! The trust model (docs/design.md): a real control session, with blind spoofed segments
//! interleaved, must end exactly as it ends without them.
//!
//! A client behind MASQUERADE (10.0.0.2:40000 -> 198.51.100.2:21, public 203.0.113.1:61000)
//! runs a fixed session through the engine's pre-conntrack hook: handshake, banner, USER,
//! PORT (rewritten, +3 bytes), PASV/227, EPRT (rewritten), QUIT, FIN both ways. Every segment is
//! acknowledged by its receiver, whose acknowledgement numbers are in the stream it received
//! (the rewritten one), as real endpoints' are.
//!
//! The input chooses, before each real segment, spoofed segments from either peer's address:
//! a sequence number at least 1 MiB away from the real one (a blind attacker knows only the
//! 4-tuple; windows here are 65000 bytes), or, for RSTs, inside the window but not the exact
//! one; any acknowledgement; any of RST, SYN-ACK, FIN, plain ACK; a payload of FTP tokens
//! (PORT/227 naming 8080) or raw bytes. It also chooses the clock steps, which both runs share.
//!
//! Invariant: the bytes each endpoint received, the expectations created (kind, destination,
//! NAT), the rewrites and the session count are the same as in the run without the spoofed
//! segments; no expectation ever names port 8080.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ftpct::engine::{Config, Engine, Event};
use ftpct::types::{CtTuples, FlowTuple, Hook, Timestamp};
use ftpct_fuzz::Reader;
use ftpct_testutil::drive::{passed, step, Record, SimConntrack};
use ftpct_testutil::Seg;
use libfuzzer_sys::fuzz_target;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

fn ct() -> CtTuples {
    CtTuples {
        original: FlowTuple::new(v4(10, 0, 0, 2, 40000), v4(198, 51, 100, 2, 21)),
        reply: FlowTuple::new(v4(198, 51, 100, 2, 21), v4(203, 0, 113, 1, 61000)),
    }
}

const CISN: u32 = 0xfff0_0000;
const SISN: u32 = 0x7000_0000;

/// The real session: (from the client?, line).
const SCRIPT: &[(bool, &[u8])] = &[
    (false, b"220 ready\r\n"),
    (true, b"USER anonymous\r\n"),
    (false, b"331 ok\r\n"),
    (true, b"PORT 10,0,0,2,195,80\r\n"),
    (false, b"200 ok\r\n"),
    (true, b"PASV\r\n"),
    (
        false,
        b"227 Entering Passive Mode (198,51,100,2,195,81)\r\n",
    ),
    (true, b"EPRT |1|10.0.0.2|50002|\r\n"),
    (false, b"200 ok\r\n"),
    (true, b"QUIT\r\n"),
    (false, b"221 bye\r\n"),
];

#[derive(Clone, Copy)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}

fn packet(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, f: Flags, data: &[u8]) -> Vec<u8> {
    assert!(src.is_ipv4() && dst.is_ipv4(), "IPv4 only");
    Seg {
        ack_flag: f.ack,
        syn: f.syn,
        fin: f.fin,
        rst: f.rst,
        ..Seg::new(src, dst, seq, ack, data)
    }
    .bytes()
}

/// One endpoint: what it sent (its own stream) and what it received.
#[derive(Default)]
struct End {
    sent: u32,
    got: Vec<u8>,
    fin_got: bool,
}

/// What a run ends with.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    client_got: Vec<u8>,
    server_got: Vec<u8>,
    expectations: Vec<String>,
    rewrites: u64,
    sessions: usize,
}

struct Run {
    engine: Engine,
    now: Timestamp,
    cli: End,
    srv: End,
    expectations: Vec<String>,
}

impl Run {
    fn new() -> Self {
        Run {
            engine: Engine::new(Config::default()),
            now: Timestamp::from_secs(100),
            cli: End::default(),
            srv: End::default(),
            expectations: Vec::new(),
        }
    }

    /// One packet through the pre hook, the way the daemon drives it.
    fn pre(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut conntrack = SimConntrack::table([ct()]);
        let mut seen = Record::default();
        let v = step(
            &mut self.engine,
            bytes,
            Hook::PreConntrack,
            self.now,
            &mut conntrack,
            &mut seen,
        );
        for e in seen.events {
            if let Event::ExpectCreated { exp, .. } = e {
                assert_ne!(exp.dst.port(), 8080, "a spoofed segment planted {exp:?}");
                self.expectations
                    .push(format!("{:?} {} {:?}", exp.kind, exp.dst, exp.nat_to));
            }
        }
        passed(&self.engine, bytes, v)
    }

    fn seq_of(&self, client: bool) -> u32 {
        let (isn, e) = if client {
            (CISN, &self.cli)
        } else {
            (SISN, &self.srv)
        };
        isn.wrapping_add(1).wrapping_add(e.sent)
    }

    /// What `client` (or the server) acknowledges: the stream it received.
    fn ack_of(&self, client: bool) -> u32 {
        let (isn, e) = if client {
            (SISN, &self.cli)
        } else {
            (CISN, &self.srv)
        };
        let fin = u32::from(e.fin_got);
        isn.wrapping_add(1)
            .wrapping_add(e.got.len() as u32)
            .wrapping_add(fin)
    }

    fn addrs(client: bool) -> (SocketAddr, SocketAddr) {
        let c = ct();
        if client {
            (c.original.src, c.original.dst)
        } else {
            (c.reply.src, c.reply.dst)
        }
    }

    fn handshake(&mut self) {
        let (c, s) = Self::addrs(true);
        let f = |syn, ack| Flags {
            syn,
            ack,
            fin: false,
            rst: false,
        };
        self.pre(&packet(c, s, CISN, 0, f(true, false), b""))
            .expect("syn");
        let (s2, g) = Self::addrs(false);
        self.pre(&packet(
            s2,
            g,
            SISN,
            CISN.wrapping_add(1),
            f(true, true),
            b"",
        ))
        .expect("syn-ack");
        self.pre(&packet(
            c,
            s,
            CISN.wrapping_add(1),
            SISN.wrapping_add(1),
            f(false, true),
            b"",
        ))
        .expect("ack");
    }

    /// A real segment from one side, delivered (retransmitted while the engine drops it), and
    /// the receiver's acknowledgement.
    fn send(&mut self, client: bool, data: &[u8], fin: bool) {
        let (src, dst) = Self::addrs(client);
        let flags = Flags {
            syn: false,
            ack: true,
            fin,
            rst: false,
        };
        let seq = self.seq_of(client);
        let ack = self.ack_of(client);
        let bytes = packet(src, dst, seq, ack, flags, data);
        let mut delivered = None;
        for _ in 0..8 {
            delivered = self.pre(&bytes);
            if delivered.is_some() {
                break;
            }
        }
        let out = delivered.expect("a real segment is never dropped for good");
        let (payload, fin_out) = payload_of(&out);
        let (me, peer) = if client {
            (&mut self.cli, &mut self.srv)
        } else {
            (&mut self.srv, &mut self.cli)
        };
        me.sent += data.len() as u32 + u32::from(fin);
        peer.got.extend_from_slice(&payload);
        peer.fin_got |= fin_out;
        // the receiver's acknowledgement
        let (psrc, pdst) = Self::addrs(!client);
        let ack_flags = Flags {
            syn: false,
            ack: true,
            fin: false,
            rst: false,
        };
        let pkt = packet(
            psrc,
            pdst,
            self.seq_of(!client),
            self.ack_of(!client),
            ack_flags,
            b"",
        );
        self.pre(&pkt);
    }

    fn outcome(self) -> Outcome {
        Outcome {
            client_got: self.cli.got,
            server_got: self.srv.got,
            expectations: self.expectations,
            rewrites: self.engine.stats().rewrites,
            sessions: self.engine.session_count(),
        }
    }
}

fn payload_of(bytes: &[u8]) -> (Vec<u8>, bool) {
    let p = ftpct::packet::TcpPacket::parse(bytes).expect("engine output parses");
    (p.payload().to_vec(), p.flags.fin)
}

const TOKENS: &[&[u8]] = &[
    b"PORT 10,0,0,2,31,144\r\n",
    b"x\r\nPORT 10,0,0,2,31,144\r\n",
    b"227 Entering Passive Mode (198,51,100,2,31,144)\r\n",
    b"EPRT |1|10.0.0.2|8080|\r\n",
    b"229 Entering Extended Passive Mode (|||8080|)\r\n",
    b"\r\n",
    b"PORT 10,0,0,2,31,",
];

/// A spoofed segment decoded from the input (decoding does not depend on the run's state, so
/// the clean run can skip the same bytes).
struct Spoof {
    client: bool,
    offset: u32,
    ack: u32,
    flags: Flags,
    data: Vec<u8>,
}

fn decode_spoof(r: &mut Reader<'_>) -> Spoof {
    let client = r.bool();
    let kind = r.u8() % 4;
    let far = 1u32 << 20;
    let offset = match kind {
        // an RST may be inside the window, but never exact
        0 if r.bool() => 1 + u32::from(r.u16() % 60000),
        _ => far + r.u32() % (u32::MAX - 2 * far),
    };
    let ack = r.u32();
    let flags = Flags {
        syn: kind == 1,
        ack: kind != 0 || r.bool(),
        fin: kind == 2,
        rst: kind == 0,
    };
    let mut data = Vec::new();
    if kind >= 2 {
        for _ in 0..(r.u8() % 4) {
            match r.u8() {
                t if (t as usize) < TOKENS.len() => data.extend_from_slice(TOKENS[t as usize]),
                _ => {
                    let n = usize::from(r.u8() % 64);
                    data.extend_from_slice(r.bytes(n));
                }
            }
        }
    }
    Spoof {
        client,
        offset,
        ack,
        flags,
        data,
    }
}

/// Sends a spoofed segment through the engine (its verdict does not matter: whatever it passes
/// on, the real endpoints discard, being out of their windows).
fn spoof(run: &mut Run, s: &Spoof) {
    let (src, dst) = Run::addrs(s.client);
    let seq = run.seq_of(s.client).wrapping_add(s.offset);
    run.pre(&packet(src, dst, seq, s.ack, s.flags, &s.data));
}

fn play(input: &[u8], with_spoofs: bool) -> Outcome {
    let mut r = Reader::new(input);
    let mut run = Run::new();
    run.handshake();
    let steps = SCRIPT.len() + 2;
    for step in 0..steps {
        let n = r.u8() % 4;
        let dt = Duration::from_millis(u64::from(r.u16() % 20_000));
        run.now = run.now.plus(dt);
        for _ in 0..n {
            let s = decode_spoof(&mut r);
            if with_spoofs {
                spoof(&mut run, &s);
            }
        }
        match SCRIPT.get(step) {
            Some((client, line)) => run.send(*client, line, false),
            None => run.send(step == SCRIPT.len(), b"", true),
        }
    }
    run.outcome()
}

fuzz_target!(|input: &[u8]| {
    let clean = play(input, false);
    let spoofed = play(input, true);
    assert_eq!(
        clean, spoofed,
        "spoofed segments changed the session's outcome"
    );
});
