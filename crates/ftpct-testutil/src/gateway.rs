//! A NAT gateway around the engine, simulated TCP endpoints, and a [`Lab`] of both.
//!
//! The gateway model ([`Gw::forward`]) runs each packet through: the engine at the
//! pre-conntrack hook, a model of conntrack's strict window check, DNAT / de-SNAT, the engine
//! at the post-conntrack hook, and SNAT / de-DNAT. Receivers ([`Endpoint::receive`]) assert
//! that every byte they get agrees with what they got before at the same position, senders
//! that no ACK acknowledges data they never sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ftpct_core::engine::{Action, Config, Engine, Event, Verdict};
use ftpct_core::types::{CtTuples, FlowTuple, Hook, RelatedEntry, Timestamp};

use crate::drive::{drain, passed, step, Record, SimConntrack};
use crate::seg::{sa, Seg};

/// A TCP endpoint, just enough TCP: a byte stream out, cumulative ACK and SACK back. It
/// asserts that every byte it receives agrees with what it got before at the same stream
/// position (one consistent stream), and that no ACK acknowledges data it never sent.
pub struct Endpoint {
    /// Address as the endpoint itself sees it.
    pub addr: SocketAddr,
    pub peer: SocketAddr,
    pub isn: u32,
    /// Everything the application wrote.
    pub out: Vec<u8>,
    pub snd_una: u32,
    /// Received bytes by offset from the peer's ISN+1.
    pub rcv: BTreeMap<u32, u8>,
    pub peer_isn: u32,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, peer: SocketAddr, isn: u32, peer_isn: u32) -> Self {
        Endpoint {
            addr,
            peer,
            isn,
            out: Vec::new(),
            snd_una: isn.wrapping_add(1),
            rcv: BTreeMap::new(),
            peer_isn,
        }
    }
    pub fn write(&mut self, data: &[u8]) -> (usize, usize) {
        let a = self.out.len();
        self.out.extend_from_slice(data);
        (a, self.out.len())
    }
    /// A segment carrying `out[a..b]`.
    pub fn seg(&self, a: usize, b: usize) -> Seg {
        Seg {
            src: self.addr,
            dst: self.peer,
            seq: self.isn.wrapping_add(1).wrapping_add(a as u32),
            ack: self.rcv_nxt(),
            ack_flag: true,
            payload: self.out[a..b].to_vec(),
            ..Default::default()
        }
    }
    pub fn rcv_nxt(&self) -> u32 {
        let mut n = 0u32;
        while self.rcv.contains_key(&n) {
            n += 1;
        }
        self.peer_isn.wrapping_add(1).wrapping_add(n)
    }
    pub fn received(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut n = 0u32;
        while let Some(b) = self.rcv.get(&n) {
            v.push(*b);
            n += 1;
        }
        v
    }
    pub fn snd_nxt(&self) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(self.out.len() as u32)
    }
    /// Takes a delivered packet; returns the ACK it would send (with SACK of what is above a hole).
    pub fn receive(&mut self, p: &Seg) -> Seg {
        assert_eq!(p.dst, self.addr, "delivered to the wrong address");
        let base = self.peer_isn.wrapping_add(1);
        for (i, b) in p.payload.iter().enumerate() {
            let off = p.seq.wrapping_sub(base).wrapping_add(i as u32);
            assert!(
                off < 1 << 24,
                "segment far outside the stream: seq {} base {}",
                p.seq,
                base
            );
            if let Some(old) = self.rcv.insert(off, *b) {
                assert_eq!(old, *b, "inconsistent byte at stream offset {off}");
            }
        }
        if p.ack_flag {
            let acked = p.ack.wrapping_sub(self.isn.wrapping_add(1));
            assert!(
                acked <= self.out.len() as u32,
                "peer acknowledged {} bytes but only {} were sent",
                acked,
                self.out.len()
            );
            if (p.ack.wrapping_sub(self.snd_una) as i32) > 0 {
                self.snd_una = p.ack;
            }
            for (l, r) in &p.sack {
                let (l, r) = (
                    l.wrapping_sub(self.isn.wrapping_add(1)),
                    r.wrapping_sub(self.isn.wrapping_add(1)),
                );
                assert!(
                    l <= r && r <= self.out.len() as u32,
                    "SACK block outside sent data"
                );
            }
        }
        let mut ack = Seg {
            src: self.addr,
            dst: self.peer,
            seq: self.snd_nxt(),
            ack: self.rcv_nxt(),
            ack_flag: true,
            ..Default::default()
        };
        // SACK the first block above the hole, if any
        let nxt = self.rcv_nxt().wrapping_sub(base);
        if let Some((&first, _)) = self.rcv.range(nxt..).next() {
            let mut end = first;
            while self.rcv.contains_key(&end) {
                end += 1;
            }
            ack.sack
                .push((base.wrapping_add(first), base.wrapping_add(end)));
        }
        ack
    }
}

/// A NAT gateway around the engine: each packet goes through the engine at the
/// pre-conntrack hook, a model of conntrack's strict window check, DNAT / de-SNAT, the engine
/// at the post-conntrack hook, and SNAT / de-DNAT.
pub struct Gw {
    pub engine: Engine,
    /// The control connection's conntrack entry.
    pub ct: CtTuples,
    pub now: Timestamp,
    /// Highest sequence end seen by "conntrack" per direction (0 = original).
    pub td_end: [Option<u32>; 2],
    /// The actions and events of every packet so far.
    pub seen: Record,
}

impl Gw {
    pub fn new(cfg: Config, ct: CtTuples) -> Self {
        Gw {
            engine: Engine::new(cfg),
            ct,
            now: Timestamp::from_secs(1000),
            td_end: [None, None],
            seen: Record::default(),
        }
    }

    /// One packet through one hook of the engine, with a conntrack table that has the control
    /// connection's entry; the packet as it leaves (`None`: dropped).
    pub fn hook(&mut self, bytes: Vec<u8>, hook: Hook) -> Option<Vec<u8>> {
        let mut conntrack = SimConntrack::table([self.ct]);
        let v = step(
            &mut self.engine,
            &bytes,
            hook,
            self.now,
            &mut conntrack,
            &mut self.seen,
        );
        match v {
            Verdict::Accept => Some(bytes),
            _ => passed(&self.engine, &bytes, v),
        }
    }

    /// Runs the engine's timers when they are due at `now`, keeping the events.
    pub fn timers(&mut self) {
        if let Some(due) = self.engine.poll_timeout() {
            if due <= self.now {
                self.engine.handle_timeout(self.now);
                drain(&mut self.engine, &mut self.seen);
            }
        }
    }

    /// Conntrack's window check, reduced to the part a wrong sequence space breaks: an ACK must
    /// not acknowledge data conntrack has not seen (nf_conntrack_proto_tcp "ACK is over upper
    /// bound"), and seq must not jump far beyond what was seen.
    pub fn conntrack(&mut self, p: &Seg, dir: usize) {
        let end = p
            .seq
            .wrapping_add(p.payload.len() as u32)
            .wrapping_add(p.syn as u32 + p.fin as u32);
        if let Some(prev) = self.td_end[dir] {
            if (end.wrapping_sub(prev) as i32) > 0 {
                assert!(end.wrapping_sub(prev) < 1 << 20, "seq far ahead");
                self.td_end[dir] = Some(end);
            }
        } else {
            self.td_end[dir] = Some(end);
        }
        if p.ack_flag {
            if let Some(other) = self.td_end[1 - dir] {
                let over = p.ack.wrapping_sub(other) as i32;
                assert!(
                    over <= 0,
                    "conntrack would mark INVALID: ack {} beyond seen data {}",
                    p.ack,
                    other
                );
            }
        }
    }

    /// One packet through the gateway. `Some(packet as delivered)` or `None` if dropped.
    pub fn forward(&mut self, p: &Seg) -> Option<Seg> {
        let bytes = p.bytes();
        let pre = self.hook(bytes, Hook::PreConntrack)?;
        let mut q = Seg::parse_checked(&pre);
        let t = FlowTuple::new(q.src, q.dst);
        let dir = if t == self.ct.original {
            0
        } else if t == self.ct.reply {
            1
        } else {
            // not a control packet (data SYN): deliver unchanged
            return Some(q);
        };
        self.conntrack(&q, dir);
        // PREROUTING NAT: DNAT (original) or un-SNAT (reply) rewrites the destination
        if dir == 0 {
            q.dst = self.ct.reply.src;
        } else {
            q.dst = self.ct.original.src;
        }
        let post = self.hook(q.bytes(), Hook::PostConntrack)?;
        let mut r = Seg::parse_checked(&post);
        // POSTROUTING NAT: SNAT (original) or un-DNAT (reply) rewrites the source
        if dir == 0 {
            r.src = self.ct.reply.dst;
        } else {
            r.src = self.ct.original.dst;
        }
        Some(r)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.seen.actions)
    }
}

/// A client, a server and the gateway, with the control connection established.
pub struct Lab {
    pub gw: Gw,
    pub cli: Endpoint,
    pub srv: Endpoint,
}

pub const CLI: &str = "10.0.0.2:40000";
pub const GW_PUB: &str = "203.0.113.1:61000";
pub const SRV: &str = "198.51.100.2:21";

impl Lab {
    /// Client behind MASQUERADE: orig C -> S, reply S -> G.
    pub fn masq(cfg: Config) -> Lab {
        let ct = CtTuples {
            original: FlowTuple::new(sa(CLI), sa(SRV)),
            reply: FlowTuple::new(sa(SRV), sa(GW_PUB)),
        };
        Self::with(cfg, ct, sa(CLI), sa(SRV), sa(SRV), sa(GW_PUB))
    }

    /// Server behind DNAT: orig C -> G:21, reply S_priv:21 -> C.
    pub fn dnat(cfg: Config) -> Lab {
        let ct = CtTuples {
            original: FlowTuple::new(sa("198.51.100.7:40000"), sa("203.0.113.1:21")),
            reply: FlowTuple::new(sa("10.1.0.2:21"), sa("198.51.100.7:40000")),
        };
        Self::with(
            cfg,
            ct,
            sa("198.51.100.7:40000"),
            sa("203.0.113.1:21"),
            sa("10.1.0.2:21"),
            sa("198.51.100.7:40000"),
        )
    }

    pub fn v6(cfg: Config) -> Lab {
        let ct = CtTuples::untranslated(FlowTuple::new(
            sa("[fd77:1::2]:40000"),
            sa("[fd77:2::2]:21"),
        ));
        Self::with(
            cfg,
            ct,
            sa("[fd77:1::2]:40000"),
            sa("[fd77:2::2]:21"),
            sa("[fd77:2::2]:21"),
            sa("[fd77:1::2]:40000"),
        )
    }

    pub fn with(
        cfg: Config,
        ct: CtTuples,
        c_addr: SocketAddr,
        c_peer: SocketAddr,
        s_addr: SocketAddr,
        s_peer: SocketAddr,
    ) -> Lab {
        let (cisn, sisn) = (0xfffff000u32, 0x7000_0000u32);
        let mut lab = Lab {
            gw: Gw::new(cfg, ct),
            cli: Endpoint::new(c_addr, c_peer, cisn, sisn),
            srv: Endpoint::new(s_addr, s_peer, sisn, cisn),
        };
        // handshake
        let syn = Seg {
            src: c_addr,
            dst: c_peer,
            seq: cisn,
            syn: true,
            ..Default::default()
        };
        let d = lab.gw.forward(&syn).expect("syn passes");
        assert!(d.syn);
        let synack = Seg {
            src: s_addr,
            dst: s_peer,
            seq: sisn,
            ack: cisn.wrapping_add(1),
            syn: true,
            ack_flag: true,
            ..Default::default()
        };
        lab.gw.forward(&synack).expect("syn-ack passes");
        lab
    }

    /// Client sends out[a..b]; returns whether it was delivered; the server's ACK goes back.
    pub fn c2s(&mut self, a: usize, b: usize) -> bool {
        let p = self.cli.seg(a, b);
        match self.gw.forward(&p) {
            Some(d) => {
                let ack = self.srv.receive(&d);
                if let Some(back) = self.gw.forward(&ack) {
                    self.cli.receive(&back);
                }
                true
            }
            None => false,
        }
    }

    pub fn s2c(&mut self, a: usize, b: usize) -> bool {
        let p = self.srv.seg(a, b);
        match self.gw.forward(&p) {
            Some(d) => {
                let ack = self.cli.receive(&d);
                if let Some(back) = self.gw.forward(&ack) {
                    self.srv.receive(&back);
                }
                true
            }
            None => false,
        }
    }

    pub fn client_says(&mut self, line: &str) {
        let (a, b) = self.cli.write(line.as_bytes());
        assert!(self.c2s(a, b), "client segment dropped: {line:?}");
    }

    pub fn server_says(&mut self, line: &str) {
        let (a, b) = self.srv.write(line.as_bytes());
        assert!(self.s2c(a, b), "server segment dropped: {line:?}");
    }

    pub fn server_got(&self) -> String {
        String::from_utf8(self.srv.received()).unwrap()
    }

    pub fn client_got(&self) -> String {
        String::from_utf8(self.cli.received()).unwrap()
    }

    pub fn all_acked(&self) {
        assert_eq!(
            self.cli.snd_una,
            self.cli.snd_nxt(),
            "client data not fully acknowledged"
        );
        assert_eq!(
            self.srv.snd_una,
            self.srv.snd_nxt(),
            "server data not fully acknowledged"
        );
    }

    /// A data SYN arriving at the gateway; returns the conntrack entry the engine asks for.
    pub fn data_syn(&mut self, src: &str, dst: &str) -> Option<RelatedEntry> {
        let syn = Seg {
            src: sa(src),
            dst: sa(dst),
            seq: 1,
            syn: true,
            ..Default::default()
        };
        let out = self
            .gw
            .hook(syn.bytes(), Hook::PreConntrack)
            .expect("SYN accepted");
        assert_eq!(out, syn.bytes(), "a data SYN is never modified");
        self.gw.take_actions().into_iter().find_map(|a| match a {
            Action::CreateRelated(e) => Some(e),
            _ => None,
        })
    }

    pub fn events(&self) -> &[Event] {
        &self.gw.seen.events
    }
}
