//! `ftpct replay`: captures built here packet by packet (pcap and pcapng, Ethernet, Linux cooked
//! v1/v2, raw IP), and real captures taken with tcpdump in the namespace lab with the kernel's
//! FTP helper doing the NAT traversal (masq PORT, DNAT PASV, IPv6 EPRT and EPSV; needs root, like
//! tests/e2e.rs), replayed by the library and by the `ftpct replay` binary run as `nobody`, in
//! text and JSON, also after conversion to pcapng with editcap.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use ftpct::replay::{self, Nat, OutputFormat, ReplayError, ReplayOptions, Summary};
use ftpct_testutil::Seg;
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Packets and conversations (as captured on one side of the gateway)

#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
}

fn tcp(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, f: Flags, payload: &[u8]) -> Vec<u8> {
    Seg {
        ack_flag: f.ack,
        syn: f.syn,
        fin: f.fin,
        window: 64240,
        ..Seg::new(src, dst, seq, ack, payload)
    }
    .bytes()
}

/// A TCP control connection seen from one point: every segment is acknowledged by the peer
/// in the receiver's own sequence space (what a capture on either side shows when the gateway's
/// ALG did its job).
struct Conv {
    c: SocketAddr,
    s: SocketAddr,
    cnext: u32,
    snext: u32,
    t: u64,
    pkts: Vec<(u64, Vec<u8>)>,
}

const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
};

impl Conv {
    /// Handshake at t = 1_700_000_000 s (client ISN near the wrap, to exercise it).
    fn open(c: &str, s: &str) -> Conv {
        let (c, s) = (sa(c), sa(s));
        let (cisn, sisn) = (0xffff_ff00u32, 0x1000_0000u32);
        let mut v = Conv {
            c,
            s,
            cnext: cisn.wrapping_add(1),
            snext: sisn.wrapping_add(1),
            t: 1_700_000_000_000_000_000,
            pkts: Vec::new(),
        };
        let syn = Flags {
            syn: true,
            ..Flags::default()
        };
        let synack = Flags {
            syn: true,
            ack: true,
            fin: false,
        };
        v.push(tcp(c, s, cisn, 0, syn, b""));
        v.push(tcp(s, c, sisn, v.cnext, synack, b""));
        v.push(tcp(c, s, v.cnext, v.snext, ACK, b""));
        v
    }

    fn push(&mut self, p: Vec<u8>) {
        self.pkts.push((self.t, p));
        self.t += 10_000_000; // 10 ms
    }

    fn wait(&mut self, secs: u64) {
        self.t += secs * 1_000_000_000;
    }

    /// The client sends `data` (one segment), the server acknowledges it.
    fn cli(&mut self, data: &str) {
        self.cli_no_ack(data);
        let p = tcp(self.s, self.c, self.snext, self.cnext, ACK, b"");
        self.push(p);
    }

    fn cli_no_ack(&mut self, data: &str) {
        let p = tcp(self.c, self.s, self.cnext, self.snext, ACK, data.as_bytes());
        self.push(p);
        self.cnext = self.cnext.wrapping_add(data.len() as u32);
    }

    /// The server sends `data`, the client acknowledges it.
    fn srv(&mut self, data: &str) {
        let p = tcp(self.s, self.c, self.snext, self.cnext, ACK, data.as_bytes());
        self.push(p);
        self.snext = self.snext.wrapping_add(data.len() as u32);
        let p = tcp(self.c, self.s, self.cnext, self.snext, ACK, b"");
        self.push(p);
    }

    /// A data connection's SYN.
    fn syn(&mut self, src: &str, dst: &str) {
        let f = Flags {
            syn: true,
            ..Flags::default()
        };
        let p = tcp(sa(src), sa(dst), 77, 0, f, b"");
        self.push(p);
    }

    fn close(&mut self) {
        let fin = Flags {
            syn: false,
            ack: true,
            fin: true,
        };
        let p = tcp(self.c, self.s, self.cnext, self.snext, fin, b"");
        self.push(p);
        self.cnext = self.cnext.wrapping_add(1);
        let p = tcp(self.s, self.c, self.snext, self.cnext, fin, b"");
        self.push(p);
        self.snext = self.snext.wrapping_add(1);
        let p = tcp(self.c, self.s, self.cnext, self.snext, ACK, b"");
        self.push(p);
    }
}

// ---------------------------------------------------------------------------------------------
// Link layers and capture files

const LT_ETHERNET: u32 = 1;
const LT_RAW: u32 = 101;
const LT_SLL: u32 = 113;
const LT_SLL2: u32 = 276;

fn ethertype(ip: &[u8]) -> [u8; 2] {
    if ip[0] >> 4 == 6 {
        [0x86, 0xdd]
    } else {
        [0x08, 0x00]
    }
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    v.extend_from_slice(&ethertype(ip));
    v.extend_from_slice(ip);
    // Ethernet minimum frame size: padding the IP layer must ignore
    while v.len() < 60 {
        v.push(0);
    }
    v
}

fn sll(ip: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    v.extend_from_slice(&ethertype(ip));
    v.extend_from_slice(ip);
    v
}

fn sll2(ip: &[u8]) -> Vec<u8> {
    let mut v = ethertype(ip).to_vec();
    v.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
    v.extend_from_slice(ip);
    v
}

fn link(lt: u32, ip: &[u8]) -> Vec<u8> {
    match lt {
        LT_ETHERNET => eth(ip),
        LT_SLL => sll(ip),
        LT_SLL2 => sll2(ip),
        LT_RAW => ip.to_vec(),
        _ => panic!("link type {lt}"),
    }
}

/// A classic pcap file (little-endian; microsecond or nanosecond timestamps).
fn pcap(lt: u32, nanos: bool, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    v.extend_from_slice(&magic.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&0i32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&262_144u32.to_le_bytes());
    v.extend_from_slice(&lt.to_le_bytes());
    for (ts, data) in frames {
        let secs = (ts / 1_000_000_000) as u32;
        let frac = if nanos {
            ts % 1_000_000_000
        } else {
            ts % 1_000_000_000 / 1000
        } as u32;
        v.extend_from_slice(&secs.to_le_bytes());
        v.extend_from_slice(&frac.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
    }
    v
}

fn ng_block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    let mut body = body.to_vec();
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let len = (body.len() + 12) as u32;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A pcapng file with one interface; `tsresol` is the if_tsresol option (default 6 = µs).
fn pcapng(lt: u16, tsresol: Option<u8>, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    ng_block(&mut v, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&lt.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&262_144u32.to_le_bytes());
    if let Some(r) = tsresol {
        idb.extend_from_slice(&9u16.to_le_bytes());
        idb.extend_from_slice(&1u16.to_le_bytes());
        idb.extend_from_slice(&[r, 0, 0, 0]);
        idb.extend_from_slice(&[0, 0, 0, 0]);
    }
    ng_block(&mut v, 1, &idb);
    let units: u64 = 10u64.pow(u32::from(tsresol.unwrap_or(6)));
    for (ts, data) in frames {
        let t = (u128::from(*ts) * u128::from(units) / 1_000_000_000) as u64;
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((t >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(t as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        ng_block(&mut v, 6, &epb);
    }
    v
}

fn frames(lt: u32, pkts: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    pkts.iter().map(|(t, p)| (*t, link(lt, p))).collect()
}

// ---------------------------------------------------------------------------------------------
// Running replay

fn opts(nat: Nat, format: OutputFormat) -> ReplayOptions {
    let mut o = ReplayOptions::new("-");
    o.nat = nat;
    o.format = format;
    o
}

fn replay_with(cap: &[u8], o: &ReplayOptions) -> (Result<Summary, ReplayError>, String) {
    let mut out = Vec::new();
    let r = replay::replay(Cursor::new(cap.to_vec()), o, &mut out);
    (r, String::from_utf8(out).expect("output is UTF-8"))
}

#[track_caller]
fn replay_ok(cap: &[u8], nat: Nat, format: OutputFormat) -> (Summary, String) {
    let (r, out) = replay_with(cap, &opts(nat, format));
    match r {
        Ok(s) => (s, out),
        Err(e) => panic!("replay failed: {e}\n{out}"),
    }
}

#[track_caller]
fn has(out: &str, want: &str) {
    assert!(out.contains(want), "output lacks {want:?}:\n{out}");
}

#[track_caller]
fn lacks(out: &str, unwanted: &str) {
    assert!(!out.contains(unwanted), "output has {unwanted:?}:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader, to check that every JSON line is valid and to read its fields.

#[derive(Clone, Debug, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(BTreeMap<String, J>),
}

impl J {
    fn get(&self, k: &str) -> &J {
        match self {
            J::Obj(m) => m.get(k).unwrap_or(&J::Null),
            _ => &J::Null,
        }
    }
    fn str(&self) -> &str {
        match self {
            J::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
    fn num(&self) -> f64 {
        match self {
            J::Num(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }
}

struct P<'a>(&'a [u8], usize);

impl P<'_> {
    fn ws(&mut self) {
        while self.1 < self.0.len() && b" \t\r\n".contains(&self.0[self.1]) {
            self.1 += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(
            self.0.get(self.1),
            Some(&c),
            "JSON: expected {:?} at {}",
            c as char,
            self.1
        );
        self.1 += 1;
    }
    fn peek(&mut self) -> u8 {
        self.ws();
        *self.0.get(self.1).expect("JSON: unexpected end")
    }
    fn value(&mut self) -> J {
        match self.peek() {
            b'{' => {
                self.eat(b'{');
                let mut m = BTreeMap::new();
                if self.peek() == b'}' {
                    self.eat(b'}');
                    return J::Obj(m);
                }
                loop {
                    let J::Str(k) = self.value() else {
                        panic!("JSON: key is not a string")
                    };
                    self.eat(b':');
                    let v = self.value();
                    assert!(m.insert(k.clone(), v).is_none(), "JSON: duplicate key {k}");
                    if self.peek() == b',' {
                        self.eat(b',');
                    } else {
                        self.eat(b'}');
                        return J::Obj(m);
                    }
                }
            }
            b'[' => {
                self.eat(b'[');
                let mut a = Vec::new();
                if self.peek() == b']' {
                    self.eat(b']');
                    return J::Arr(a);
                }
                loop {
                    a.push(self.value());
                    if self.peek() == b',' {
                        self.eat(b',');
                    } else {
                        self.eat(b']');
                        return J::Arr(a);
                    }
                }
            }
            b'"' => {
                self.eat(b'"');
                let mut s = String::new();
                loop {
                    let c = self.0[self.1];
                    self.1 += 1;
                    match c {
                        b'"' => return J::Str(s),
                        b'\\' => {
                            let e = self.0[self.1];
                            self.1 += 1;
                            match e {
                                b'"' => s.push('"'),
                                b'\\' => s.push('\\'),
                                b'/' => s.push('/'),
                                b'n' => s.push('\n'),
                                b'r' => s.push('\r'),
                                b't' => s.push('\t'),
                                b'u' => {
                                    let h =
                                        std::str::from_utf8(&self.0[self.1..self.1 + 4]).unwrap();
                                    self.1 += 4;
                                    s.push(
                                        char::from_u32(u32::from_str_radix(h, 16).unwrap())
                                            .unwrap(),
                                    );
                                }
                                _ => panic!("JSON: bad escape"),
                            }
                        }
                        c if c < 0x20 => panic!("JSON: raw control character in a string"),
                        _ => {
                            // copy one UTF-8 sequence
                            let start = self.1 - 1;
                            let mut end = self.1;
                            while end < self.0.len() && (self.0[end] & 0xc0) == 0x80 {
                                end += 1;
                            }
                            s.push_str(std::str::from_utf8(&self.0[start..end]).unwrap());
                            self.1 = end;
                        }
                    }
                }
            }
            b't' | b'f' | b'n' => {
                for (w, v) in [
                    (&b"true"[..], J::Bool(true)),
                    (b"false", J::Bool(false)),
                    (b"null", J::Null),
                ] {
                    if self.0[self.1..].starts_with(w) {
                        self.1 += w.len();
                        return v;
                    }
                }
                panic!("JSON: bad literal at {}", self.1)
            }
            _ => {
                let start = self.1;
                while self.1 < self.0.len() && b"-+.eE0123456789".contains(&self.0[self.1]) {
                    self.1 += 1;
                }
                let t = std::str::from_utf8(&self.0[start..self.1]).unwrap();
                J::Num(
                    t.parse()
                        .unwrap_or_else(|_| panic!("JSON: bad number {t:?}")),
                )
            }
        }
    }
}

/// Every line must be one JSON object with a string `type`.
fn json_lines(out: &str) -> Vec<J> {
    out.lines()
        .map(|l| {
            let mut p = P(l.as_bytes(), 0);
            let v = p.value();
            p.ws();
            assert_eq!(p.1, l.len(), "trailing bytes after the JSON object: {l}");
            assert!(matches!(v.get("type"), J::Str(_)), "no type: {l}");
            v
        })
        .collect()
}

fn of_type<'a>(v: &'a [J], ty: &str) -> Vec<&'a J> {
    v.iter().filter(|o| o.get("type").str() == ty).collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const CLI: &str = "10.77.100.102:40000";
const SRV: &str = "203.0.113.2:21";
const PUB: &str = "203.0.113.1";

/// Client behind MASQUERADE, captured on its side: PORT then EPRT, each used by the server.
fn masq_session() -> Conv {
    let mut v = Conv::open(CLI, SRV);
    v.srv("220 (vsFTPd 3.0.3)\r\n");
    v.cli("USER anonymous\r\n");
    v.srv("230 Login successful.\r\n");
    v.cli("PORT 10,77,100,102,156,65\r\n");
    v.srv("200 PORT command successful. Consider using PASV.\r\n");
    v.cli("RETR small.txt\r\n");
    v.syn("203.0.113.2:20", "10.77.100.102:40001");
    v.srv("150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n");
    v.cli("EPRT |1|10.77.100.102|40002|\r\n");
    v.srv("200 EPRT command successful. Consider using EPSV.\r\n");
    v.cli("RETR small.txt\r\n");
    v.syn("203.0.113.2:20", "10.77.100.102:40002");
    v.srv("150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n");
    v.cli("QUIT\r\n");
    v.srv("221 Goodbye.\r\n");
    v.close();
    v
}

#[test]
fn masq_port_and_eprt_with_snat_show_rewrites_and_expectations() {
    let v = masq_session();
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(&out, "capture pcap, nat snat 203.0.113.1, control ports 21");
    has(
        &out,
        "0.010000 [NEW] session S1 client=10.77.100.102:40000 server=203.0.113.2:21 reply=203.0.113.2:21 -> 203.0.113.1:40000 nat=\"snat\" public=203.0.113.1",
    );
    has(
        &out,
        "[MESSAGE] session S1 original port line=\"PORT 10,77,100,102,156,65\"",
    );
    has(
        &out,
        "[REWRITE] session S1 port 10.77.100.102:40001 -> 203.0.113.1:40001 line=\"PORT 10,77,100,102,156,65\" new_line=\"PORT 203,0,113,1,156,65\"",
    );
    has(
        &out,
        "[NEW] 300 l3proto = 2 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=40001 ftp session=S1 expect=E1 kind=\"port\" nat_to=10.77.100.102:40001",
    );
    has(
        &out,
        "[USED] session S1 data=203.0.113.2:20 -> 203.0.113.1:40001 (expected dst=203.0.113.1:40001) expect=E1 nat_src=203.0.113.2 nat_dst=10.77.100.102:40001",
    );
    has(
        &out,
        "[MESSAGE] session S1 original eprt line=\"EPRT |1|10.77.100.102|40002|\"",
    );
    has(
        &out,
        "[REWRITE] session S1 eprt 10.77.100.102:40002 -> 203.0.113.1:40002 line=\"EPRT |1|10.77.100.102|40002|\" new_line=\"EPRT |1|203.0.113.1|40002|\"",
    );
    has(
        &out,
        "[USED] session S1 data=203.0.113.2:20 -> 203.0.113.1:40002 (expected dst=203.0.113.1:40002) expect=E2",
    );
    // each rewrite shortens the line by 2: the client's later bytes move back 4 in the end
    has(
        &out,
        "S1 seq offsets: original -4 (2 rewrites), reply +0 (0 rewrites)",
    );
    lacks(&out, "pending");
    assert_eq!(sum.sessions, 1);
    assert_eq!(sum.messages, 2);
    assert_eq!(sum.rewrites, 2);
    assert_eq!(sum.expect_created, 2);
    assert_eq!(sum.expect_used, 2);
    assert_eq!(sum.refusals, 0);
    assert_eq!(sum.parse_failures, 0);
    assert_eq!(sum.dropped, 0);
    assert_eq!(sum.packets_read, v.pkts.len() as u64);
    assert_eq!(sum.packets_skipped(), 0);
    // every client packet after the first PORT has its seq moved (and the PORT and EPRT their
    // payload); every server ACK after it has its ack mapped back
    assert!(sum.seq_adjusted >= 10, "{sum:?}");
    assert!(sum.ack_adjusted >= 10, "{sum:?}");
    has(
        &out,
        &format!("summary: {} packets read, 0 skipped", v.pkts.len()),
    );
    has(&out, "0 dropped; closing");
    // deterministic
    let (_, again) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    assert_eq!(out, again);
}

#[test]
fn masq_without_nat_only_expects() {
    let v = masq_session();
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::None, OutputFormat::Text);
    has(&out, "nat=\"none\" public=-");
    has(
        &out,
        "[MESSAGE] session S1 original port line=\"PORT 10,77,100,102,156,65\"",
    );
    lacks(&out, "[REWRITE]");
    has(
        &out,
        "[NEW] 300 l3proto = 2 proto=6 src=203.0.113.2 dst=10.77.100.102 sport=0 dport=40001 ftp session=S1 expect=E1 kind=\"port\" nat_to=-",
    );
    has(
        &out,
        "[USED] session S1 data=203.0.113.2:20 -> 10.77.100.102:40001 (expected dst=10.77.100.102:40001) expect=E1 nat_src=- nat_dst=-",
    );
    has(&out, "S1 seq offsets: original +0 (0 rewrites), reply +0 (0 rewrites); 0 packets seq/payload adjusted, 0 acks adjusted");
    assert_eq!(
        (sum.rewrites, sum.expect_created, sum.expect_used),
        (0, 2, 2)
    );
    assert_eq!((sum.seq_adjusted, sum.ack_adjusted), (0, 0));
}

#[test]
fn masq_json_lines() {
    let v = masq_session();
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (_, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Json);
    let recs = json_lines(&out);
    assert_eq!(recs[0].get("type").str(), "capture");
    assert_eq!(recs[0].get("public").str(), PUB);
    let start = of_type(&recs, "session_start");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].get("original").get("src").str(), CLI);
    assert_eq!(start[0].get("reply").get("dst").str(), "203.0.113.1:40000");
    assert_eq!(start[0].get("nat").str(), "snat");
    let msgs = of_type(&recs, "message");
    let lines: Vec<&str> = msgs.iter().map(|m| m.get("line").str()).collect();
    assert_eq!(
        lines,
        ["PORT 10,77,100,102,156,65", "EPRT |1|10.77.100.102|40002|"]
    );
    assert!(msgs.iter().all(|m| m.get("dir").str() == "original"));
    let rw = of_type(&recs, "rewrite");
    assert_eq!(rw.len(), 2);
    assert_eq!(rw[0].get("from").str(), "10.77.100.102:40001");
    assert_eq!(rw[0].get("to").str(), "203.0.113.1:40001");
    assert_eq!(rw[0].get("new_line").str(), "PORT 203,0,113,1,156,65");
    assert_eq!(rw[1].get("new_line").str(), "EPRT |1|203.0.113.1|40002|");
    let created = of_type(&recs, "expect_created");
    assert_eq!(created[0].get("expect").str(), "E1");
    assert_eq!(created[0].get("src").str(), "203.0.113.2");
    assert_eq!(created[0].get("dst").str(), "203.0.113.1:40001");
    assert_eq!(created[0].get("nat_to").str(), "10.77.100.102:40001");
    let used = of_type(&recs, "expect_used");
    assert_eq!(used[1].get("nat_dst").str(), "10.77.100.102:40002");
    let seq = of_type(&recs, "seq");
    assert_eq!(seq[0].get("original_offset").num(), -4.0);
    let sum = of_type(&recs, "summary");
    assert_eq!(sum.len(), 1);
    assert_eq!(sum[0].get("rewrites").num(), 2.0);
    assert_eq!(sum[0].get("complete"), &J::Bool(true));
    assert_eq!(recs.last().unwrap().get("type").str(), "summary");
    // times are seconds since the first packet, non-decreasing
    let ts: Vec<f64> = recs
        .iter()
        .filter_map(|r| match r.get("t") {
            J::Num(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
}

/// Server behind DNAT, captured on its side: PASV/227 is rewritten, EPSV/229 keeps its port.
fn dnat_session() -> Conv {
    let mut v = Conv::open("198.51.100.7:50000", "10.1.0.2:21");
    v.srv("220 ready\r\n");
    v.cli("USER anonymous\r\n");
    v.srv("230 ok\r\n");
    v.cli("PASV\r\n");
    v.srv("227 Entering Passive Mode (10,1,0,2,117,48).\r\n");
    v.syn("198.51.100.7:50001", "10.1.0.2:30000");
    v.cli("RETR a\r\n");
    v.srv("150 go\r\n226 done\r\n");
    v.cli("EPSV\r\n");
    v.srv("229 Entering Extended Passive Mode (|||30001|)\r\n");
    v.syn("198.51.100.7:50002", "10.1.0.2:30001");
    v.cli("RETR a\r\n");
    v.srv("150 go\r\n226 done\r\n");
    v.close();
    v
}

#[test]
fn dnat_227_and_229() {
    let v = dnat_session();
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::Dnat(ip(PUB)), OutputFormat::Text);
    has(
        &out,
        "[NEW] session S1 client=198.51.100.7:50000 server=203.0.113.1:21 reply=10.1.0.2:21 -> 198.51.100.7:50000 nat=\"dnat\" public=203.0.113.1",
    );
    has(&out, "[MESSAGE] session S1 original pasv line=\"PASV\"");
    has(
        &out,
        "[MESSAGE] session S1 reply 227 line=\"227 Entering Passive Mode (10,1,0,2,117,48).\"",
    );
    has(
        &out,
        "[REWRITE] session S1 227 10.1.0.2:30000 -> 203.0.113.1:30000 line=\"227 Entering Passive Mode (10,1,0,2,117,48).\" new_line=\"227 Entering Passive Mode (203,0,113,1,117,48).\"",
    );
    has(
        &out,
        "[NEW] 300 l3proto = 2 proto=6 src=198.51.100.7 dst=203.0.113.1 sport=0 dport=30000 ftp session=S1 expect=E1 kind=\"227\" nat_to=10.1.0.2:30000",
    );
    has(
        &out,
        "[USED] session S1 data=198.51.100.7:50001 -> 203.0.113.1:30000 (expected dst=203.0.113.1:30000) expect=E1 nat_src=198.51.100.7 nat_dst=10.1.0.2:30000",
    );
    has(&out, "[MESSAGE] session S1 original epsv line=\"EPSV\"");
    has(
        &out,
        "[MESSAGE] session S1 reply 229 line=\"229 Entering Extended Passive Mode (|||30001|)\"",
    );
    // the port is free: 229 carries no address, nothing to rewrite
    lacks(&out, "[REWRITE] session S1 229");
    has(
        &out,
        "[NEW] 300 l3proto = 2 proto=6 src=198.51.100.7 dst=203.0.113.1 sport=0 dport=30001 ftp session=S1 expect=E2 kind=\"229\" nat_to=10.1.0.2:30001",
    );
    has(
        &out,
        "[USED] session S1 data=198.51.100.7:50002 -> 203.0.113.1:30001 (expected dst=203.0.113.1:30001) expect=E2",
    );
    // "10,1,0,2" became "203,0,113,1": the server's later bytes move on by 3
    has(
        &out,
        "S1 seq offsets: original +0 (0 rewrites), reply +3 (1 rewrites)",
    );
    assert_eq!(sum.messages, 4);
    assert_eq!(
        (sum.rewrites, sum.expect_created, sum.expect_used),
        (1, 2, 2)
    );
    assert!(sum.seq_adjusted > 0 && sum.ack_adjusted > 0, "{sum:?}");
}

#[test]
fn pcapng_and_cooked_captures_replay_the_same() {
    let v = masq_session();
    let nat = Nat::Snat(ip(PUB));
    let (_, reference) = replay_ok(
        &pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts)),
        nat,
        OutputFormat::Text,
    );
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("pcap sll ns", pcap(LT_SLL, true, &frames(LT_SLL, &v.pkts))),
        ("pcap sll2", pcap(LT_SLL2, false, &frames(LT_SLL2, &v.pkts))),
        ("pcap raw", pcap(LT_RAW, false, &frames(LT_RAW, &v.pkts))),
        ("pcapng eth", pcapng(1, None, &frames(LT_ETHERNET, &v.pkts))),
        (
            "pcapng sll µs",
            pcapng(113, Some(6), &frames(LT_SLL, &v.pkts)),
        ),
        (
            "pcapng sll2 ns",
            pcapng(276, Some(9), &frames(LT_SLL2, &v.pkts)),
        ),
        (
            "pcapng ipv4",
            pcapng(228, Some(9), &frames(LT_RAW, &v.pkts)),
        ),
    ];
    for (name, cap) in variants {
        let (sum, out) = replay_ok(&cap, nat, OutputFormat::Text);
        assert_eq!(body(&out), body(&reference), "{name}");
        assert_eq!(sum.packets_skipped(), 0, "{name}");
        if name.starts_with("pcapng") {
            has(&out, "capture pcapng, nat snat 203.0.113.1");
        }
    }
}

#[test]
fn ipv6_eprt_without_nat() {
    let mut v = Conv::open("[fd77:1::2]:40000", "[fd77:2::2]:21");
    v.srv("220 hi\r\n");
    v.cli("EPRT |2|fd77:1::2|40001|\r\n");
    v.srv("200 ok\r\n");
    v.syn("[fd77:2::2]:20", "[fd77:1::2]:40001");
    v.close();
    let cap = pcapng(1, None, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::None, OutputFormat::Text);
    has(
        &out,
        "[MESSAGE] session S1 original eprt line=\"EPRT |2|fd77:1::2|40001|\"",
    );
    // the kernel's expectation line writes IPv6 addresses in full
    has(
        &out,
        "[NEW] 300 l3proto = 10 proto=6 src=fd77:0002:0000:0000:0000:0000:0000:0002 dst=fd77:0001:0000:0000:0000:0000:0000:0002 sport=0 dport=40001 ftp session=S1 expect=E1 kind=\"eprt\" nat_to=-",
    );
    has(
        &out,
        "[USED] session S1 data=[fd77:2::2]:20 -> [fd77:1::2]:40001 (expected dst=[fd77:1::2]:40001) expect=E1",
    );
    assert_eq!((sum.expect_created, sum.expect_used), (1, 1));
    // --snat with an IPv4 address cannot apply to an IPv6 session: replayed without NAT, said so
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(&out, "S1 warning: the --snat address is of another family");
    assert_eq!((sum.rewrites, sum.expect_used), (0, 1));
}

#[test]
fn public_side_capture_is_replayed_without_nat_with_a_warning() {
    // captured between the gateway and the server: the client already is the public address
    let mut v = Conv::open("203.0.113.1:40000", SRV);
    v.cli("PORT 203,0,113,1,156,65\r\n");
    v.srv("200 ok\r\n");
    let cap = pcap(LT_RAW, false, &v.pkts);
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(
        &out,
        "S1 warning: the client already has the --snat address",
    );
    assert_eq!((sum.rewrites, sum.expect_created), (0, 1));
}

#[test]
fn refusals_and_parse_failures_are_reported_with_the_line() {
    let mut v = Conv::open(CLI, SRV);
    v.srv("220 hi\r\n");
    v.cli("PORT 10,77,100,99,156,65\r\n"); // another host: bounce
    v.srv("500 no\r\n");
    v.cli("PORT 10,77,100,102,0,80\r\n"); // privileged port
    v.srv("500 no\r\n");
    v.cli("PORT 10,77,100\r\n"); // three fields only
    v.srv("501 no\r\n");
    v.close();
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(
        &out,
        "[MESSAGE] session S1 original port line=\"PORT 10,77,100,99,156,65\"",
    );
    has(
        &out,
        "[REFUSED] session S1 port 10.77.100.99:40001: address 10.77.100.99 is not the control peer 10.77.100.102 (possible FTP bounce attack; set allow_third_party to permit) line=\"PORT 10,77,100,99,156,65\"",
    );
    has(
        &out,
        "[REFUSED] session S1 port 10.77.100.102:80: privileged data port 80 (set allow_privileged_ports to permit) line=\"PORT 10,77,100,102,0,80\"",
    );
    has(
        &out,
        "[WARN] session S1 original port: unparseable (wrong number of fields) line=\"PORT 10,77,100\"",
    );
    assert_eq!((sum.refusals, sum.parse_failures, sum.rewrites), (2, 1, 0));
    let (_, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Json);
    let recs = json_lines(&out);
    let refused = of_type(&recs, "refused");
    assert_eq!(refused[0].get("reason").str(), "bounce");
    assert_eq!(refused[0].get("line").str(), "PORT 10,77,100,99,156,65");
    assert_eq!(refused[1].get("reason").str(), "privileged_port");
    let failed = of_type(&recs, "parse_failed");
    assert_eq!(failed[0].get("error").str(), "field_count");
    assert_eq!(failed[0].get("line").str(), "PORT 10,77,100");
}

#[test]
fn expectations_expire_with_capture_time_and_pending_ones_are_listed() {
    let mut v = Conv::open(CLI, SRV);
    v.srv("220 hi\r\n");
    v.cli("PORT 10,77,100,102,156,65\r\n");
    v.srv("200 ok\r\n");
    v.wait(301);
    v.cli("NOOP\r\n");
    v.cli("PORT 10,77,100,102,156,66\r\n");
    v.srv("200 ok\r\n");
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(
        &out,
        "[DESTROY] reason=expired 0 l3proto = 2 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=40001 ftp session=S1 expect=E1",
    );
    has(
        &out,
        "S1 expect E2 port still pending at the end: from 203.0.113.2 to 203.0.113.1:40002, 299s left",
    );
    has(&out, "S1 seq offsets: original -4 (2 rewrites)");
    has(&out, "; open");
    assert_eq!((sum.expect_created, sum.expect_expired), (2, 1));
}

#[test]
fn port_split_over_two_segments_is_held_then_rewritten() {
    let mut v = Conv::open(CLI, SRV);
    v.srv("220 hi\r\n");
    v.cli_no_ack("PORT 10,77,");
    v.cli("100,102,156,65\r\n");
    v.srv("200 ok\r\n");
    let cap = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    has(
        &out,
        "[MESSAGE] session S1 original port line=\"PORT 10,77,100,102,156,65\"",
    );
    has(
        &out,
        "[REWRITE] session S1 port 10.77.100.102:40001 -> 203.0.113.1:40001 line=\"PORT 10,77,100,102,156,65\" new_line=\"PORT 203,0,113,1,156,65\"",
    );
    // the first piece goes out up to the address ("PORT "), the address is held and merged
    // into the second: nothing is dropped
    has(&out, "0 dropped; open");
    assert_eq!(sum.dropped, 0);
    assert!(sum.seq_adjusted >= 2, "{out}");
}

#[test]
fn other_control_ports() {
    let mut v = Conv::open("10.77.100.102:40000", "203.0.113.2:2121");
    v.cli("PORT 10,77,100,102,156,65\r\n");
    v.srv("200 ok\r\n");
    let cap = pcap(LT_RAW, false, &v.pkts);
    let (sum, _) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    assert_eq!(sum.sessions, 0, "2121 is not a control port by default");
    let mut o = opts(Nat::Snat(ip(PUB)), OutputFormat::Text);
    o.ports = vec![21, 2121];
    let (r, out) = replay_with(&cap, &o);
    let sum = r.unwrap();
    assert_eq!((sum.sessions, sum.rewrites), (1, 1), "{out}");
    has(&out, "control ports 21,2121");
}

#[test]
fn non_tcp_non_ip_and_malformed_frames_are_skipped_and_counted() {
    let v = masq_session();
    let mut fr = frames(LT_ETHERNET, &v.pkts);
    let t = fr[0].0;
    // ARP
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    fr.insert(1, (t, arp));
    // UDP
    let mut udp = Vec::new();
    PacketBuilder::ipv4([10, 77, 100, 102], [203, 0, 113, 2], 64)
        .udp(5353, 53)
        .write(&mut udp, b"x")
        .unwrap();
    fr.insert(2, (t, eth(&udp)));
    // a TCP packet cut short (snap length) and a runt frame
    let mut cut = eth(&v.pkts[5].1);
    cut.truncate(14 + 30);
    fr.insert(3, (t, cut));
    fr.insert(4, (t, vec![0x02, 0, 0]));
    let cap = pcap(LT_ETHERNET, false, &fr);
    let (sum, out) = replay_ok(&cap, Nat::Snat(ip(PUB)), OutputFormat::Text);
    assert_eq!(sum.skipped_non_ip, 1);
    assert_eq!(sum.skipped_non_tcp, 1);
    assert_eq!(sum.skipped_malformed, 2);
    assert_eq!(sum.packets_read, v.pkts.len() as u64 + 4);
    assert_eq!(sum.rewrites, 2);
    has(
        &out,
        "4 skipped (link 0, non-IP 1, non-TCP 1, fragments 0, malformed 2)",
    );

    // a link type replay does not know: every frame skipped, said once
    let cap = pcap(147, false, &frames(LT_RAW, &v.pkts));
    let (sum, out) = replay_ok(&cap, Nat::None, OutputFormat::Text);
    assert_eq!(sum.skipped_link, v.pkts.len() as u64);
    assert_eq!(out.matches("link type 147 is not supported").count(), 1);
}

#[test]
fn broken_captures_give_clear_errors() {
    let v = masq_session();
    let good = pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts));
    let o = opts(Nat::Snat(ip(PUB)), OutputFormat::Text);

    let (r, _) = replay_with(&[], &o);
    assert!(matches!(r, Err(ReplayError::Empty)), "{r:?}");
    let (r, _) = replay_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &o);
    let e = r.unwrap_err();
    assert!(matches!(e, ReplayError::NotACapture), "{e:?}");
    assert_eq!(
        e.to_string(),
        "not a pcap or pcapng capture (unrecognised file header)"
    );
    let (r, _) = replay_with(&good[..2], &o);
    assert!(matches!(r, Err(ReplayError::ShortHeader(2))), "{r:?}");
    let (r, _) = replay_with(b"ab\n", &o);
    assert!(matches!(r, Err(ReplayError::NotACapture)), "{r:?}");
    let (r, _) = replay_with(&good[..20], &o);
    assert!(matches!(r, Err(ReplayError::ShortHeader(_))), "{r:?}");

    // cut inside a record (what a killed tcpdump leaves): the packets before it are replayed,
    // then the error
    let cut = good.len() - 30;
    let (r, out) = replay_with(&good[..cut], &o);
    let e = r.unwrap_err();
    match e {
        ReplayError::Truncated { offset, packets } => {
            assert_eq!(packets, v.pkts.len() as u64 - 1);
            assert!(offset > 24 && (offset as usize) < cut);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("the capture is truncated"), "{e}");
    has(&out, "warning: the capture is truncated");
    has(&out, "[REWRITE] session S1 port");
    has(&out, "summary:");
    let (r, out) = replay_with(&good[..cut], &opts(Nat::None, OutputFormat::Json));
    assert!(r.is_err());
    let recs = json_lines(&out);
    assert_eq!(
        of_type(&recs, "summary")[0].get("complete"),
        &J::Bool(false)
    );
    assert_eq!(of_type(&recs, "warning").len(), 1);

    // pcapng: a block whose two lengths disagree, and a packet for an undeclared interface
    let ng = pcapng(1, None, &frames(LT_ETHERNET, &v.pkts));
    let mut bad = ng.clone();
    let last = bad.len() - 4;
    bad[last] ^= 0x40;
    let (r, _) = replay_with(&bad, &o);
    assert!(
        matches!(
            r,
            Err(ReplayError::Corrupt { .. }) | Err(ReplayError::Truncated { .. })
        ),
        "{r:?}"
    );
    let mut undeclared = Vec::new();
    let shb_len = 28;
    undeclared.extend_from_slice(&ng[..shb_len]);
    let mut epb = Vec::new();
    epb.extend_from_slice(&0u32.to_le_bytes());
    epb.extend_from_slice(&[0; 8]);
    epb.extend_from_slice(&4u32.to_le_bytes());
    epb.extend_from_slice(&4u32.to_le_bytes());
    epb.extend_from_slice(&[0x45, 0, 0, 0]);
    ng_block(&mut undeclared, 6, &epb);
    let (r, _) = replay_with(&undeclared, &o);
    let e = r.unwrap_err();
    assert!(
        e.to_string()
            .contains("interface 0 which was not described"),
        "{e}"
    );

    // a classic pcap record claiming 1 GiB
    let mut huge = good[..24].to_vec();
    huge.extend_from_slice(&[0; 8]);
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    huge.extend_from_slice(&[0; 64]);
    let (r, _) = replay_with(&huge, &o);
    assert!(
        matches!(
            r,
            Err(ReplayError::Corrupt { .. }) | Err(ReplayError::Truncated { .. })
        ),
        "{r:?}"
    );
}

#[test]
fn run_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("ftpct-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("masq.pcapng");
    let v = masq_session();
    std::fs::write(&path, pcapng(113, Some(9), &frames(LT_SLL, &v.pkts))).unwrap();
    let mut o = ReplayOptions::new(&path);
    o.nat = Nat::Snat(ip(PUB));
    let mut out = Vec::new();
    let sum = replay::run(&o, &mut out).unwrap();
    assert_eq!(sum.rewrites, 2);
    let missing = dir.join("nope.pcap");
    let e = replay::run(&ReplayOptions::new(&missing), &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("nope.pcap: cannot open"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Damaged captures (cut anywhere, bytes flipped anywhere) never panic: they replay or fail
    /// with an error.
    #[test]
    fn damaged_captures_never_panic(
        ng in any::<bool>(),
        cut in 0usize..4000,
        flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..6),
        json in any::<bool>(),
    ) {
        let v = masq_session();
        let mut cap = if ng {
            pcapng(276, Some(9), &frames(LT_SLL2, &v.pkts))
        } else {
            pcap(LT_ETHERNET, false, &frames(LT_ETHERNET, &v.pkts))
        };
        for (at, x) in flips {
            if !cap.is_empty() {
                let i = at % cap.len();
                cap[i] ^= x;
            }
        }
        let cut = cut.min(cap.len());
        let cap = &cap[..cap.len() - cut];
        let fmt = if json { OutputFormat::Json } else { OutputFormat::Text };
        let (_, out) = replay_with(cap, &opts(Nat::Snat(ip(PUB)), fmt));
        if json {
            json_lines(&out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// End to end: a real capture from the lab (root)

/// tcpdump in a lab namespace, stopped (SIGINT, so it flushes) when dropped.
struct Tcpdump {
    child: Child,
    log: std::path::PathBuf,
}

impl Tcpdump {
    fn start(lab: &common::Lab, which: &str, file: &std::path::Path, filter: &str) -> Tcpdump {
        let log = lab.state_dir().join(format!("tcpdump-{which}.log"));
        let logf = std::fs::File::create(&log).expect("tcpdump log");
        let child = Command::new(common::LAB_SH)
            .args([
                "exec",
                lab.prefix(),
                which,
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                // every packet to the file as it arrives: no buffering in the kernel ring
                // (TPACKET_V3 hands over blocks only after a timeout) nor in the file
                "--immediate-mode",
                "-U",
                "-Z",
                "root",
                "-w",
            ])
            .arg(file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start tcpdump");
        // lab.sh down kills what the state dir records, too
        let _ = std::fs::write(
            lab.state_dir().join(format!("tcpdump-{which}.pid")),
            format!("{}\n", child.id()),
        );
        let t = Tcpdump { child, log };
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&t.log).unwrap_or_default();
            if text.contains("listening on") {
                return t;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tcpdump did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lets the last packets reach the file, then stops tcpdump (SIGINT: it flushes and exits).
    fn stop(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return std::fs::read_to_string(&self.log).unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.stop();
        }
    }
}

fn lab_env(lab: &common::Lab) -> BTreeMap<String, String> {
    let r = lab.sh("env", &[]);
    r.assert_ok();
    r.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A lab with the kernel helper doing the real NAT traversal: tcpdump in namespace `side`
/// (`cli` or `srv`) with `filter` around one ftplib download in `mode`. Returns the lab (for its
/// server log; dropped = torn down), its variables and the capture file.
fn lab_capture(
    test: &str,
    topo: common::Topology,
    side: &str,
    filter: &str,
    mode: common::Mode,
) -> (common::Lab, BTreeMap<String, String>, std::path::PathBuf) {
    lab_capture_modes(test, topo, side, filter, &[mode])
}

/// [`lab_capture`] with one ftplib download per mode, one after the other, in the same capture.
fn lab_capture_modes(
    test: &str,
    topo: common::Topology,
    side: &str,
    filter: &str,
    modes: &[common::Mode],
) -> (common::Lab, BTreeMap<String, String>, std::path::PathBuf) {
    common::require_root_and_tools();
    assert!(
        Command::new("tcpdump").arg("--version").output().is_ok(),
        "tcpdump is needed (tests/lab/requirements.txt)"
    );
    let lab = common::Lab::up(test, topo);
    let env = lab_env(&lab);
    if topo != common::Topology::V6 {
        assert_eq!(env["GW_PUBLIC_IP"], "203.0.113.1");
    }
    lab.server();
    lab.kernel_helper(true);
    let file = lab.state_dir().join(format!("{side}.pcap"));
    let mut dump = Tcpdump::start(&lab, side, &file, filter);
    let runs: Vec<common::Run> = modes
        .iter()
        .map(|m| lab.fetch(common::Client::Ftplib, *m, "small.txt"))
        .collect();
    let dump_log = dump.stop();
    for r in runs {
        assert!(r.ok(), "[{test}] fetch failed: {r}");
    }
    let len = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("no capture ({e}): {dump_log}"))
        .len();
    eprintln!("[{test}] capture: {len} bytes; {dump_log}");
    (lab, env, file)
}

/// `ftpct replay ARGS... FILE`: the crate's binary, run as a subprocess by user `nobody` (the
/// replay needs no privilege), from a copy in the lab's state directory (so that `nobody` can
/// run it wherever the build directory is). Asserts exit status 0 and nothing on stderr;
/// returns stdout.
fn bin_replay(lab: &common::Lab, file: &std::path::Path, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let bin = lab.state_dir().join("ftpct-replay-bin");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_ftpct"), &bin).expect("copy the ftpct binary");
    }
    let out = Command::new(&bin)
        .arg("replay")
        .args(args)
        .arg(file)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run ftpct replay");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "ftpct replay {args:?} {}: {}\n{stderr}\n{stdout}",
        file.display(),
        out.status
    );
    stdout
}

/// An IPv6 address as the kernel's expectation line writes it (every group, four digits).
fn kernel_ip(ip: &str) -> String {
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:04x}")).collect();
    groups.join(":")
}

/// The `--snat`/`--dnat` arguments of `nat`.
fn nat_args(nat: Nat) -> Vec<String> {
    match nat {
        Nat::Snat(ip) => vec!["--snat".into(), ip.to_string()],
        Nat::Dnat(ip) => vec!["--dnat".into(), ip.to_string()],
        Nat::None => vec![],
    }
}

/// Replays `file` with the `ftpct replay` binary in text and with `--json`, and checks that
/// the library ([`replay::run`]) prints exactly the same.
fn lab_replay_bin(lab: &common::Lab, file: &std::path::Path, nat: Nat) -> (String, Vec<J>) {
    let args = nat_args(nat);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = bin_replay(lab, file, &args);
    args.push("--json");
    let json = bin_replay(lab, file, &args);
    let (_, lib_text, _) = lab_replay(file, nat);
    assert_eq!(text, lib_text, "binary and library text differ");
    let mut o = ReplayOptions::new(file);
    o.nat = nat;
    o.format = OutputFormat::Json;
    let mut lib_json = Vec::new();
    replay::run(&o, &mut lib_json).expect("library replay");
    assert_eq!(
        json,
        String::from_utf8(lib_json).unwrap(),
        "binary and library JSON differ"
    );
    let recs = json_lines(&json);
    (text, recs)
}

/// Replays `file` in text (through [`replay::run`], as the CLI does) and in JSON.
fn lab_replay(file: &std::path::Path, nat: Nat) -> (Summary, String, Vec<J>) {
    let mut o = ReplayOptions::new(file);
    o.nat = nat;
    let mut text = Vec::new();
    let sum = replay::run(&o, &mut text).unwrap_or_else(|e| panic!("replay failed: {e}"));
    let text = String::from_utf8(text).unwrap();
    eprintln!("{text}");
    o.format = OutputFormat::Json;
    let mut json = Vec::new();
    let sum2 = replay::run(&o, &mut json).unwrap_or_else(|e| panic!("replay failed: {e}"));
    assert_eq!(sum, sum2);
    let json = String::from_utf8(json).unwrap();
    eprintln!("{json}");
    let recs = json_lines(&json);
    (sum, text, recs)
}

/// Client behind MASQUERADE, kernel helper doing the real NAT traversal, capture of the control
/// connection on the client's side: replay with `--snat` shows the PORT from the private address
/// rewritten to the gateway's public address with its port, and the expectation from the server.
#[test]
fn lab_masq_port_capture_replays_with_snat() {
    let test = "lab_masq_port_capture_replays_with_snat";
    let (lab, env, file) = lab_capture(
        test,
        common::Topology::Masq,
        "cli",
        "tcp port 21",
        common::Mode::Port,
    );
    let (cli_ip, srv_ip, public) = (&env["CLI_IP"], &env["SRV_IP"], &env["GW_PUBLIC_IP"]);
    let (sum, text, recs) = lab_replay(&file, Nat::Snat(public.parse().unwrap()));
    // the binary (`ftpct replay --snat`) prints exactly the same
    lab_replay_bin(&lab, &file, Nat::Snat(public.parse().unwrap()));

    // the PORT as the client sent it, from its private address
    let port_msgs: Vec<&J> = of_type(&recs, "message")
        .into_iter()
        .filter(|m| m.get("kind").str() == "port")
        .collect();
    assert_eq!(port_msgs.len(), 1, "{text}");
    let line = port_msgs[0].get("line").str();
    assert!(
        line.starts_with(&format!("PORT {},", cli_ip.replace('.', ","))),
        "{line}"
    );
    // rewritten to the gateway's public address, same port
    let rw = of_type(&recs, "rewrite");
    assert_eq!(rw.len(), 1, "{text}");
    let from: SocketAddr = rw[0].get("from").str().parse().unwrap();
    let to: SocketAddr = rw[0].get("to").str().parse().unwrap();
    assert_eq!(from.ip().to_string(), *cli_ip);
    assert_eq!(to.ip().to_string(), *public);
    assert_eq!(from.port(), to.port());
    let new_line = rw[0].get("new_line").str();
    assert_eq!(
        new_line,
        format!(
            "PORT {},{},{}",
            public.replace('.', ","),
            to.port() >> 8,
            to.port() & 0xff
        )
    );
    // what the server really received (vsftpd's protocol log) is that line
    let slog = lab.server_log();
    assert!(
        slog.contains(new_line),
        "server log lacks {new_line}:\n{slog}"
    );
    // the expectation: from the server's address to the public address and port
    let created = of_type(&recs, "expect_created");
    assert_eq!(created.len(), 1, "{text}");
    assert_eq!(created[0].get("src").str(), srv_ip.as_str());
    assert_eq!(created[0].get("dst").str(), to.to_string());
    assert_eq!(created[0].get("nat_to").str(), from.to_string());
    // the text report says the same
    assert!(
        text.contains(&format!(
            "[REWRITE] session S1 port {from} -> {to} line=\"{line}\" new_line=\"{new_line}\""
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "[NEW] 300 l3proto = 2 proto=6 src={srv_ip} dst={} sport=0 dport={} ftp session=S1 \
             expect=E1 kind=\"port\" nat_to={from}",
            to.ip(),
            to.port()
        )),
        "{text}"
    );
    assert_eq!((sum.sessions, sum.rewrites, sum.expect_created), (1, 1, 1));
    assert_eq!((sum.refusals, sum.parse_failures, sum.dropped), (0, 0, 0));
    assert_eq!(sum.packets_skipped(), 0);
    // the kernel helper shortened the line by 2 as well: the client's later segments and the
    // server's acknowledgements needed the fix-ups
    assert!(
        text.contains("seq offsets: original -2 (1 rewrites)"),
        "{text}"
    );
    assert!(sum.seq_adjusted > 0 && sum.ack_adjusted > 0, "{sum:?}");
}

/// Server behind DNAT, everything captured on the server's side (control and data): replay with
/// `--dnat` rewrites the 227 to the public address, and the client's data connection (seen
/// after DNAT in the capture) uses the expectation. Checked on the output of the `ftpct replay`
/// binary (text and `--json`), which must equal the library's, and again after conversion of
/// the capture to pcapng.
#[test]
fn lab_dnat_pasv_capture_replays_with_dnat() {
    let test = "lab_dnat_pasv_capture_replays_with_dnat";
    let (lab, env, file) = lab_capture(
        test,
        common::Topology::Dnat,
        "srv",
        "tcp",
        common::Mode::Pasv,
    );
    let (cli_ip, srv_ip, public) = (&env["CLI_IP"], &env["SRV_IP"], &env["GW_PUBLIC_IP"]);
    let nat = Nat::Dnat(public.parse().unwrap());
    // the `ftpct replay --dnat` binary, in text and JSON (equal to the library's output)
    let (text, recs) = lab_replay_bin(&lab, &file, nat);
    let (sum, _, _) = lab_replay(&file, nat);
    // the same capture converted to pcapng replays the same
    pcapng_replays_the_same(&lab, &file, nat, &text);
    drop(lab);

    let start = of_type(&recs, "session_start");
    assert_eq!(start.len(), 1, "{text}");
    assert_eq!(
        start[0].get("original").get("dst").str(),
        format!("{public}:21")
    );
    assert_eq!(
        start[0].get("reply").get("src").str(),
        format!("{srv_ip}:21")
    );
    let kinds: Vec<&str> = of_type(&recs, "message")
        .iter()
        .map(|m| m.get("kind").str())
        .collect();
    assert_eq!(kinds, ["pasv", "227"], "{text}");
    let rw = of_type(&recs, "rewrite");
    assert_eq!(rw.len(), 1, "{text}");
    assert_eq!(rw[0].get("dir").str(), "reply");
    let from: SocketAddr = rw[0].get("from").str().parse().unwrap();
    let to: SocketAddr = rw[0].get("to").str().parse().unwrap();
    assert_eq!(from.ip().to_string(), *srv_ip);
    assert_eq!(to, SocketAddr::new(public.parse().unwrap(), from.port()));
    assert!(
        rw[0].get("line").str().contains(&srv_ip.replace('.', ",")),
        "{text}"
    );
    assert!(
        rw[0].get("new_line").str().contains(&format!(
            "({},{},{})",
            public.replace('.', ","),
            to.port() >> 8,
            to.port() & 0xff
        )),
        "{text}"
    );
    let used = of_type(&recs, "expect_used");
    assert_eq!(used.len(), 1, "{text}");
    assert_eq!(used[0].get("data").get("dst").str(), to.to_string());
    assert!(
        used[0]
            .get("data")
            .get("src")
            .str()
            .starts_with(&format!("{cli_ip}:")),
        "{text}"
    );
    assert_eq!(used[0].get("nat_dst").str(), from.to_string());
    // the data connection's other packets are TCP too: nothing skipped
    assert_eq!(sum.packets_skipped(), 0);
    assert_eq!(
        (
            sum.sessions,
            sum.rewrites,
            sum.expect_created,
            sum.expect_used
        ),
        (1, 1, 1, 1)
    );
    // "10,77,2,2" became "203,0,113,1": the server's later bytes move on by 2 (as with the
    // kernel helper, which the capture's acknowledgements followed)
    assert!(
        text.contains("seq offsets: original +0 (0 rewrites), reply +2 (1 rewrites)"),
        "{text}"
    );
}

/// `editcap -F pcapng` of a lab capture (Debian's wireshark-common: tcpdump 4.99 writes no
/// pcapng), replayed by the binary: the same output as the pcap but for the capture format
/// named in the first line and in the summary.
fn pcapng_replays_the_same(lab: &common::Lab, pcap: &std::path::Path, nat: Nat, pcap_text: &str) {
    let ng = pcap.with_extension("pcapng");
    let out = Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(pcap)
        .arg(&ng)
        .output()
        .expect("editcap is needed (apt wireshark-common, tests/lab/requirements.txt)");
    assert!(
        out.status.success(),
        "editcap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read(&ng).expect("pcapng file");
    assert_eq!(
        head[..4],
        [0x0a, 0x0d, 0x0d, 0x0a],
        "not a pcapng section header"
    );
    let args = nat_args(nat);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = bin_replay(lab, &ng, &args);
    let first = pcap_text.lines().next().unwrap_or_default();
    assert!(first.starts_with("capture pcap,"), "{first}");
    assert_eq!(
        text,
        pcap_text.replacen("capture pcap,", "capture pcapng,", 1),
        "pcapng and pcap replays differ"
    );
    args.push("--json");
    let recs = json_lines(&bin_replay(lab, &ng, &args));
    assert_eq!(of_type(&recs, "capture")[0].get("format").str(), "pcapng");
    assert_eq!(of_type(&recs, "summary")[0].get("format").str(), "pcapng");
}

/// IPv6, routed (no NAT), the kernel helper admitting the data connections: one EPRT and one
/// EPSV download captured on the client's side (control and data), replayed by the
/// `ftpct replay` binary in text and JSON, and after conversion to pcapng: the EPRT with its
/// address as the server received it, the 229 with its port, two expectations (server to the
/// client's EPRT port, client to the server's EPSV port) both used by the captured data
/// connections, nothing rewritten.
#[test]
fn lab_v6_eprt_epsv_capture_replays_with_the_binary() {
    let test = "lab_v6_eprt_epsv_capture_replays_with_the_binary";
    let (lab, env, file) = lab_capture_modes(
        test,
        common::Topology::V6,
        "cli",
        "tcp",
        &[common::Mode::Eprt, common::Mode::Epsv],
    );
    let (cli_ip, srv_ip) = (&env["CLI_IP"], &env["SRV_IP"]);
    assert_eq!(
        (cli_ip.as_str(), srv_ip.as_str()),
        ("fd77:1::2", "fd77:2::2")
    );
    let (text, recs) = lab_replay_bin(&lab, &file, Nat::None);
    pcapng_replays_the_same(&lab, &file, Nat::None, &text);
    let server_log = lab.server_log();
    drop(lab);

    let starts = of_type(&recs, "session_start");
    assert_eq!(starts.len(), 2, "{text}");
    for st in &starts {
        assert_eq!(
            st.get("original").get("dst").str(),
            format!("[{srv_ip}]:21")
        );
        assert!(
            st.get("original")
                .get("src")
                .str()
                .starts_with(&format!("[{cli_ip}]:")),
            "{text}"
        );
        assert_eq!(st.get("nat").str(), "none", "{text}");
    }
    let msgs = of_type(&recs, "message");
    let kinds: Vec<&str> = msgs.iter().map(|m| m.get("kind").str()).collect();
    assert_eq!(kinds, ["eprt", "epsv", "229"], "{text}");
    // the EPRT as the client sent it, and as the server logged it (no NAT: unchanged)
    let eprt = msgs[0].get("line").str();
    let eport: u16 = eprt
        .strip_prefix(&format!("EPRT |2|{cli_ip}|"))
        .and_then(|r| r.strip_suffix('|'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("EPRT line {eprt:?}"));
    assert!(
        server_log.contains(&format!("\"{eprt}\"")),
        "server log lacks {eprt}:\n{server_log}"
    );
    let l229 = msgs[2].get("line").str();
    let pport: u16 = l229
        .split("(|||")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("229 line {l229:?}"));
    assert_eq!(msgs[2].get("dir").str(), "reply", "{text}");
    assert!(of_type(&recs, "rewrite").is_empty(), "{text}");

    let created = of_type(&recs, "expect_created");
    assert_eq!(created.len(), 2, "{text}");
    assert_eq!(created[0].get("kind").str(), "eprt");
    assert_eq!(created[0].get("src").str(), srv_ip.as_str());
    assert_eq!(created[0].get("dst").str(), format!("[{cli_ip}]:{eport}"));
    // an EPSV's expectation is created by (and named after) the server's 229
    assert_eq!(created[1].get("kind").str(), "229");
    assert_eq!(created[1].get("src").str(), cli_ip.as_str());
    assert_eq!(created[1].get("dst").str(), format!("[{srv_ip}]:{pport}"));
    for c in &created {
        assert!(matches!(c.get("nat_to"), J::Null), "{text}");
    }
    let used = of_type(&recs, "expect_used");
    assert_eq!(used.len(), 2, "{text}");
    assert_eq!(
        used[0].get("data").get("dst").str(),
        format!("[{cli_ip}]:{eport}")
    );
    assert_eq!(
        used[0].get("data").get("src").str(),
        format!("[{srv_ip}]:20")
    );
    assert_eq!(
        used[1].get("data").get("dst").str(),
        format!("[{srv_ip}]:{pport}")
    );
    assert!(used[1]
        .get("data")
        .get("src")
        .str()
        .starts_with(&format!("[{cli_ip}]:")));

    let sum = of_type(&recs, "summary");
    assert_eq!(sum.len(), 1, "{text}");
    for (k, v) in [
        ("sessions", 2.0),
        ("messages", 3.0),
        ("rewrites", 0.0),
        ("expect_created", 2.0),
        ("expect_used", 2.0),
        ("expect_expired", 0.0),
        ("refusals", 0.0),
        ("parse_failures", 0.0),
        ("packets_skipped", 0.0),
        ("dropped", 0.0),
    ] {
        assert_eq!(sum[0].get(k).num(), v, "summary {k}: {text}");
    }
    assert_eq!(sum[0].get("format").str(), "pcap");
    // the text report says the same (the kernel's expectation line writes IPv6 in full)
    let (s1, s2) = (
        created[0].get("session").str(),
        created[1].get("session").str(),
    );
    let (kcli, ksrv) = (kernel_ip(cli_ip), kernel_ip(srv_ip));
    for want in [
        format!(
            "[NEW] 300 l3proto = 10 proto=6 src={ksrv} dst={kcli} sport=0 dport={eport} ftp \
             session={s1} expect=E1 kind=\"eprt\" nat_to=-"
        ),
        format!(
            "[NEW] 300 l3proto = 10 proto=6 src={kcli} dst={ksrv} sport=0 dport={pport} ftp \
             session={s2} expect=E2 kind=\"229\" nat_to=-"
        ),
        // vsftpd connects from port 20 (connect_from_port_20=YES)
        format!(
            "data=[{srv_ip}]:20 -> [{cli_ip}]:{eport} (expected dst=[{cli_ip}]:{eport}) \
             expect=E1 nat_src=- nat_dst=-"
        ),
        format!(
            "-> [{srv_ip}]:{pport} (expected dst=[{srv_ip}]:{pport}) expect=E2 nat_src=- nat_dst=-"
        ),
        "2 sessions, 3 messages, 0 rewrites; expectations 2 created, 2 used".to_string(),
    ] {
        assert!(text.contains(&want), "text lacks {want:?}:\n{text}");
    }
}
