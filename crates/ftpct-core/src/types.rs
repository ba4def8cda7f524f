//! Small value types shared by the core modules and the I/O shell.
//!
//! Nothing here does I/O or reads a clock: time is a [`Timestamp`] the caller passes in.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A monotonic instant in nanoseconds, supplied by the caller.
///
/// The daemon uses `CLOCK_MONOTONIC`, which keeps counting across a daemon restart (not a reboot),
/// so timestamps written to the state file stay meaningful after `kill -9` and restart.
/// Tests use any origin they like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch of the caller's clock.
    pub const ZERO: Timestamp = Timestamp(0);

    /// `s` seconds after the epoch (saturating).
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1_000_000_000))
    }
    /// `ms` milliseconds after the epoch (saturating).
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms.saturating_mul(1_000_000))
    }
    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Direction of a packet relative to the conntrack entry of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The direction of the first packet (client → server for a control connection).
    Original,
    /// The other direction.
    Reply,
}

impl Dir {
    /// For event lines, replay output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Dir::Original => "original",
            Dir::Reply => "reply",
        }
    }

    /// The other direction.
    pub fn flip(self) -> Dir {
        match self {
            Dir::Original => Dir::Reply,
            Dir::Reply => Dir::Original,
        }
    }
    /// 0 for the original direction, 1 for the reply (index into per-direction arrays).
    pub fn index(self) -> usize {
        match self {
            Dir::Original => 0,
            Dir::Reply => 1,
        }
    }
}

/// Where in the netfilter pipeline the packet was queued.
///
/// ftpct queues each control packet twice (see docs/design.md, "Sequence spaces"):
/// - [`Hook::PreConntrack`] (raw PREROUTING / raw OUTPUT): before conntrack and NAT. The payload
///   is parsed and rewritten here and the packet's own sequence number is shifted, so conntrack's
///   window tracking sees the sequence space the receiver sees.
/// - [`Hook::PostConntrack`] (mangle POSTROUTING / mangle INPUT): after conntrack and DNAT,
///   before SNAT. Only the acknowledgement number and SACK blocks are shifted back into the
///   sender's space here, after conntrack has checked them in the receiver's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Before conntrack (raw table, PREROUTING/OUTPUT): sequence numbers are mapped here.
    PreConntrack,
    /// After conntrack (mangle POSTROUTING/INPUT): acknowledgements are mapped back here.
    PostConntrack,
}

impl Hook {
    /// For event lines, replay output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Hook::PreConntrack => "pre_conntrack",
            Hook::PostConntrack => "post_conntrack",
        }
    }
}

/// A TCP connection endpoint pair as seen in one packet: source → destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowTuple {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

impl FlowTuple {
    /// The tuple `src` → `dst`.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        FlowTuple { src, dst }
    }
    /// The same flow seen from the other end (`dst` → `src`).
    pub fn inverse(self) -> Self {
        FlowTuple {
            src: self.dst,
            dst: self.src,
        }
    }
    /// True for an IPv6 flow.
    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }
}

impl fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

/// The two tuples of a kernel conntrack entry (TCP), as ctnetlink reports them.
///
/// For a client behind MASQUERADE: `original` = private client → server,
/// `reply` = server → public address of the gateway. Without NAT, `reply == original.inverse()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtTuples {
    /// The client's direction, as the connection's first packet had it (before NAT).
    pub original: FlowTuple,
    /// The server's answers, as they arrive (after NAT: to the gateway's public address).
    pub reply: FlowTuple,
}

impl CtTuples {
    /// Entry of a connection that is not translated.
    pub fn untranslated(original: FlowTuple) -> Self {
        CtTuples {
            original,
            reply: original.inverse(),
        }
    }
    /// True when the source of the original direction is rewritten (SNAT/MASQUERADE).
    pub fn is_src_nat(&self) -> bool {
        self.reply.dst != self.original.src
    }
    /// True when the destination of the original direction is rewritten (DNAT).
    pub fn is_dst_nat(&self) -> bool {
        self.reply.src != self.original.dst
    }
    /// The tuple of an original-direction packet after DNAT and before SNAT
    /// (what [`Hook::PostConntrack`] sees). A reply-direction packet there has the inverse.
    pub fn mid(&self) -> FlowTuple {
        FlowTuple {
            src: self.original.src,
            dst: self.reply.src,
        }
    }
}

/// Identifier of a tracked control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}", self.0)
    }
}

/// Returns the address family number used by the kernel (`AF_INET` = 2, `AF_INET6` = 10).
pub fn l3proto(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => crate::wire::netlink::NFPROTO_IPV4,
        IpAddr::V6(_) => crate::wire::netlink::NFPROTO_IPV6,
    }
}

/// A conntrack entry the shell must create through ctnetlink so that a data connection is
/// admitted as RELATED (and translated) by the kernel. See `shared` notes / docs/design.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelatedEntry {
    /// The data connection's SYN as it arrives at the gateway (before NAT).
    pub original: FlowTuple,
    /// SNAT of the data connection (`CTA_NAT_SRC`, address only), when it is translated.
    /// `nat_src` and `nat_dst` are both set or both `None` (then the nat table's rules apply).
    pub nat_src: Option<IpAddr>,
    /// DNAT of the data connection (`CTA_NAT_DST`, address and port), when it is translated.
    pub nat_dst: Option<SocketAddr>,
    /// Original tuple of the control connection's conntrack entry (`CTA_TUPLE_MASTER`).
    pub master: FlowTuple,
    /// `CTA_MARK` of the new entry.
    pub mark: u32,
    /// `CTA_TIMEOUT` of the new entry in seconds (until the SYN moves it on).
    pub timeout_secs: u32,
}
