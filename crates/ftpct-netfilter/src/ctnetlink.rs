//! Conntrack through ctnetlink: look up the entry of a control connection, and create the
//! entry that admits an FTP data connection as RELATED (and translates it).
//!
//! What it is for: the daemon sees control packets in NFQUEUE and needs (1) the conntrack tuples
//! of their connection, to know the NAT (the gateway's public address is `reply.dst` of a
//! MASQUERADEd client) and the master tuple; (2) to create, when a data connection's first SYN is
//! queued, the conntrack entry the kernel then uses for that connection.
//!
//! Kernel facts relied on (include/uapi/linux/netfilter/nfnetlink_conntrack.h,
//! net/netfilter/nf_conntrack_netlink.c, and `shared/notes/kernel-mechanisms.md`, verified by
//! `tests/kernel_netns.rs`):
//! - `IPCTNL_MSG_CT_GET` looks the given tuple up in the conntrack hash, which holds both tuples
//!   of every entry: whether it is sent as `CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY` makes no
//!   difference, an original-direction and a reply-direction packet as they arrive are both
//!   found ([`Ctnetlink::lookup`]); `ENOENT` when there is none.
//! - Those two tuples are the only ones hashed. A reply packet of a source-NATed connection
//!   after conntrack (mangle POSTROUTING/INPUT, [`Hook::PostConntrack`](crate::types::Hook))
//!   carries the *de-NATed* tuple `server → private client`, which is neither; it is the
//!   inverse of the original tuple, as an original packet after DNAT is the inverse of the
//!   reply tuple. So [`Ctnetlink::get`] tries the packet's tuple, then its inverse (a second
//!   request only on a miss), and finds the entry at every hook ftpct queues in.
//! - `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE|NLM_F_EXCL` creates an entry; it needs both tuples and
//!   `CTA_TIMEOUT`. `CTA_TUPLE_MASTER` names the master by one of its tuples; the new entry gets
//!   `IPS_EXPECTED` and its first packet is classified RELATED. No master → `ENOENT`; the
//!   tuple already tracked → `EEXIST`.
//! - `CTA_NAT_DST` (min = max address and port) sets up DNAT; the REPLY tuple must then be sent
//!   un-NATed (the plain inverse of the original), otherwise no `IPS_DST_NAT` is set and the
//!   packet goes to the gateway itself. The kernel sets a null SNAT binding for the entry, so a
//!   MASQUERADE rule does not touch the data connection.
//! - The DNAT is only applied where a nat base chain exists for PREROUTING (see [`crate::rules`]).
//! - `CTA_PROTOINFO{TCP{STATE=NONE}}` + `CTA_TIMEOUT` are accepted; the SYN moves it on.
//!
//! Every request is built into a buffer reused across calls; answers are parsed in place.

use std::net::{IpAddr, SocketAddr};

use nix::libc;

use crate::netlink::{
    nfnl_msg_type, Attr, AttrIter, MsgBuilder, NetlinkSocket, NlError, NFNL_SUBSYS_CTNETLINK,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::types::{l3proto, CtTuples, FlowTuple, RelatedEntry};

// enum cntl_msg_types
const IPCTNL_MSG_CT_NEW: u8 = 0;
const IPCTNL_MSG_CT_GET: u8 = 1;
const IPCTNL_MSG_CT_DELETE: u8 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const CTA_ID: u16 = 12;
const CTA_NAT_DST: u16 = 13;
const CTA_NAT_SRC: u16 = 6;
const CTA_TUPLE_MASTER: u16 = 14;
const CTA_TABLE_LEN: usize = 27;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
// enum ctattr_nat / ctattr_protonat
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

const IPPROTO_TCP: u8 = 6;
/// `TCP_CONNTRACK_NONE`.
pub const TCP_CONNTRACK_NONE: u8 = 0;
/// `TCP_CONNTRACK_TIME_WAIT`.
pub const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
/// `TCP_CONNTRACK_CLOSE`.
pub const TCP_CONNTRACK_CLOSE: u8 = 8;

/// `enum ip_conntrack_status` bits (nf_conntrack_common.h) reported in [`CtEntry::status`].
pub mod status {
    pub const IPS_EXPECTED: u32 = 1 << 0;
    pub const IPS_SEEN_REPLY: u32 = 1 << 1;
    pub const IPS_ASSURED: u32 = 1 << 2;
    pub const IPS_CONFIRMED: u32 = 1 << 3;
    pub const IPS_SRC_NAT: u32 = 1 << 4;
    pub const IPS_DST_NAT: u32 = 1 << 5;
    pub const IPS_SRC_NAT_DONE: u32 = 1 << 7;
    pub const IPS_DST_NAT_DONE: u32 = 1 << 8;
}

/// Errors of conntrack requests. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error(
        "ctnetlink: permission denied: ftpct needs CAP_NET_ADMIN (run it as root or grant the \
         capability)"
    )]
    PermissionDenied,
    #[error(
        "ctnetlink: a conntrack entry with this tuple already exists (the data connection is \
         already tracked); callers treat this as success"
    )]
    AlreadyExists,
    #[error(
        "ctnetlink: the master (control connection) entry {0} is gone: the control connection \
         closed or timed out, so the expectation is stale and can be dropped"
    )]
    MasterNotFound(FlowTuple),
    #[error(
        "ctnetlink: the conntrack table is full ({}): raise net.netfilter.nf_conntrack_max or \
         shed load", crate::netlink::errno_text(*.0)
    )]
    TableFull(i32),
    #[error("ctnetlink: the kernel does not support this request (operation not supported): {0}")]
    NotSupported(&'static str),
    #[error("ctnetlink: the kernel rejected the request as invalid (EINVAL): {0}")]
    Invalid(&'static str),
    #[error("ctnetlink: the tuple {0} mixes IPv4 and IPv6 addresses; this is a bug in the caller")]
    MixedFamilies(FlowTuple),
    #[error(
        "ctnetlink: {op} failed: {}; check that conntrack is loaded in this network namespace \
         (modules nf_conntrack and nf_conntrack_netlink) and that ftpct has CAP_NET_ADMIN there; \
         if it repeats, report it with this errno and the kernel version",
        crate::netlink::errno_text(*errno)
    )]
    Kernel { op: &'static str, errno: i32 },
    #[error(
        "ctnetlink: the kernel answered with an entry ftpct cannot read ({0}); please report \
         this as an ftpct bug with the kernel version"
    )]
    BadAnswer(&'static str),
    #[error("{}", netlink_text(.0))]
    Netlink(NlError),
}

/// The text of a netlink-layer error, with what to check where the netlink layer says nothing
/// about it (a failed receive, a refusal with an errno ctnetlink has no meaning for).
fn netlink_text(e: &NlError) -> String {
    match e {
        NlError::Recv(_) | NlError::Kernel { .. } => format!(
            "ctnetlink: {e}; check that conntrack is loaded (modules nf_conntrack and \
             nf_conntrack_netlink), that ftpct has CAP_NET_ADMIN, and the machine's free memory"
        ),
        other => other.to_string(),
    }
}

impl From<NlError> for CtError {
    fn from(e: NlError) -> Self {
        match e {
            NlError::Send(nix::errno::Errno::EPERM) | NlError::Open(nix::errno::Errno::EPERM) => {
                CtError::PermissionDenied
            }
            other => CtError::Netlink(other),
        }
    }
}

impl CtError {
    /// True for [`CtError::AlreadyExists`], which the daemon treats as success (a retransmitted
    /// SYN, or another instance created the same entry).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, CtError::AlreadyExists)
    }
}

/// A conntrack entry with the fields ftpct looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub tuples: CtTuples,
    /// `CTA_ID`.
    pub id: u32,
    /// `CTA_STATUS`, see [`status`].
    pub status: u32,
    /// `CTA_MARK` (0 if absent).
    pub mark: u32,
    /// `CTA_TIMEOUT`: seconds left.
    pub timeout_secs: u32,
    /// TCP conntrack state (`enum tcp_conntrack`), if reported.
    pub tcp_state: Option<u8>,
    /// A kernel conntrack helper is attached (`CTA_HELP`), e.g. by `-j CT --helper ftp`.
    pub helper: bool,
}

/// A ctnetlink socket with a reused request buffer.
#[derive(Debug)]
pub struct Ctnetlink {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// Opens a ctnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, CtError> {
        Ok(Ctnetlink {
            sock: NetlinkSocket::open()?,
            buf: Vec::with_capacity(512),
        })
    }

    /// The conntrack entry (TCP) that a packet with this tuple belongs to, whichever direction
    /// the packet is and whether it is seen before or after NAT (see the module doc: the
    /// tuple, then its inverse). `Ok(None)` if there is none.
    pub fn get(&mut self, packet: &FlowTuple) -> Result<Option<CtTuples>, CtError> {
        Ok(self.get_entry(packet)?.map(|e| e.tuples))
    }

    /// Like [`Ctnetlink::get`], with the entry's id, status, mark, timeout and TCP state.
    pub fn get_entry(&mut self, packet: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        if let Some(e) = self.query(CTA_TUPLE_ORIG, packet)? {
            return Ok(Some(e));
        }
        // A packet after conntrack whose addresses were translated back: as the reply of the
        // original tuple, or as the original of the reply tuple.
        self.query(CTA_TUPLE_REPLY, &packet.inverse())
    }

    /// The entry one of whose two tuples is exactly `tuple` (a single request).
    pub fn lookup(&mut self, tuple: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        self.query(CTA_TUPLE_ORIG, tuple)
    }

    fn query(&mut self, which: u16, t: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        let family = family_of(t)?;
        let mut b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET),
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            0,
        );
        put_tuple(&mut b, which, t);
        let msg = b.finish()?;
        let mut found: Option<Result<CtEntry, CtError>> = None;
        let r = self.sock.transact(msg, |m| {
            if m.subsys() == NFNL_SUBSYS_CTNETLINK && m.cmd() == IPCTNL_MSG_CT_NEW {
                let (_, attrs) = m.nfgen()?;
                found = Some(parse_entry(attrs));
            }
            Ok::<(), CtError>(())
        });
        match r {
            Ok(()) => found.transpose(),
            Err(e) => match kernel_errno(&e) {
                Some(libc::ENOENT) => Ok(None),
                Some(errno) => Err(map_errno("get", errno, None)),
                None => Err(e),
            },
        }
    }

    /// Creates the conntrack entry of a data connection (see the module doc):
    /// `CTA_TUPLE_ORIG` = `e.original`, `CTA_TUPLE_REPLY` = its plain inverse,
    /// `CTA_TUPLE_MASTER` = `e.master`, `CTA_NAT_SRC`/`CTA_NAT_DST` = `e.nat_src`/`e.nat_dst` if any, `CTA_MARK`,
    /// `CTA_TIMEOUT`, TCP state NONE.
    pub fn create_related(&mut self, e: &RelatedEntry) -> Result<(), CtError> {
        let family = family_of(&e.original)?;
        if family_of(&e.master)? != family {
            return Err(CtError::MixedFamilies(e.master));
        }
        if let Some(to) = e.nat_dst {
            if l3proto(&to.ip()) != family {
                return Err(CtError::MixedFamilies(FlowTuple::new(e.original.src, to)));
            }
        }
        let mut b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            family,
            0,
        );
        put_tuple(&mut b, CTA_TUPLE_ORIG, &e.original);
        put_tuple(&mut b, CTA_TUPLE_REPLY, &e.original.inverse());
        put_tuple(&mut b, CTA_TUPLE_MASTER, &e.master);
        // Both or neither: a missing one would get a null binding from the kernel.
        if let Some(from) = e.nat_src {
            put_nat(
                &mut b,
                CTA_NAT_SRC,
                SocketAddr::new(from, e.original.src.port()),
            );
        }
        if let Some(to) = e.nat_dst {
            put_nat(&mut b, CTA_NAT_DST, to);
        }
        b.put_be32(CTA_TIMEOUT, e.timeout_secs);
        b.put_be32(CTA_MARK, e.mark);
        let pi = b.nest_start(CTA_PROTOINFO);
        let tcp = b.nest_start(CTA_PROTOINFO_TCP);
        b.put_u8(CTA_PROTOINFO_TCP_STATE, TCP_CONNTRACK_NONE);
        b.nest_end(tcp);
        b.nest_end(pi);
        let msg = b.finish()?;
        self.sock.request_ack(msg).map_err(|err| match err.errno() {
            Some(errno) => map_errno("create", errno, Some(e.master)),
            None => err.into(),
        })
    }

    /// Sets the bits `bits` in the mark of the entry whose original tuple is `original`, leaving
    /// its other bits as they are (an update: `CTA_MARK` = `CTA_MARK_MASK` = `bits`; the kernel
    /// computes `(mark & !bits) ^ bits`). `Ok(false)` if there is no such entry.
    pub fn set_mark_bits(&mut self, original: &FlowTuple, bits: u32) -> Result<bool, CtError> {
        let family = family_of(original)?;
        let mut b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW),
            // no NLM_F_CREATE: update an existing entry only
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            0,
        );
        put_tuple(&mut b, CTA_TUPLE_ORIG, original);
        b.put_be32(CTA_MARK, bits);
        b.put_be32(CTA_MARK_MASK, bits);
        let msg = b.finish()?;
        request_on_entry(&mut self.sock, msg, "mark")
    }

    /// Deletes the entry whose original tuple is `original`. `Ok(false)` if there was none.
    pub fn delete(&mut self, original: &FlowTuple) -> Result<bool, CtError> {
        let family = family_of(original)?;
        let mut b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE),
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            0,
        );
        put_tuple(&mut b, CTA_TUPLE_ORIG, original);
        let msg = b.finish()?;
        request_on_entry(&mut self.sock, msg, "delete")
    }

    /// Number of conntrack entries (all protocols, both families) in this network namespace,
    /// by a dump. Meant for tests and diagnostics, not for the packet path.
    pub fn dump_count(&mut self) -> Result<usize, CtError> {
        // No attribute and family AF_UNSPEC: every entry.
        let b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET),
            NLM_F_REQUEST | NLM_F_DUMP,
            0,
            0,
        );
        let msg = b.finish()?;
        let mut n = 0usize;
        self.sock
            .transact(msg, |m| {
                if m.subsys() == NFNL_SUBSYS_CTNETLINK && m.cmd() == IPCTNL_MSG_CT_NEW {
                    n += 1;
                }
                Ok::<(), CtError>(())
            })
            .map_err(|e| match kernel_errno(&e) {
                Some(errno) => map_errno("dump", errno, None),
                None => e,
            })?;
        Ok(n)
    }
}

fn kernel_errno(e: &CtError) -> Option<i32> {
    match e {
        CtError::Netlink(NlError::Kernel { errno }) => Some(*errno),
        _ => None,
    }
}

/// Sends a request about one existing entry: `Ok(false)` when the kernel has no such entry.
fn request_on_entry(
    sock: &mut NetlinkSocket,
    msg: &mut [u8],
    op: &'static str,
) -> Result<bool, CtError> {
    match sock.request_ack(msg) {
        Ok(()) => Ok(true),
        Err(err) => match err.errno() {
            Some(libc::ENOENT) => Ok(false),
            Some(errno) => Err(map_errno(op, errno, None)),
            None => Err(err.into()),
        },
    }
}

fn map_errno(op: &'static str, errno: i32, master: Option<FlowTuple>) -> CtError {
    match errno {
        libc::EPERM | libc::EACCES => CtError::PermissionDenied,
        libc::EEXIST => CtError::AlreadyExists,
        libc::ENOENT => match master {
            Some(m) => CtError::MasterNotFound(m),
            None => CtError::Kernel { op, errno },
        },
        libc::ENOMEM | libc::ENOSPC => CtError::TableFull(errno),
        libc::EOPNOTSUPP => CtError::NotSupported(
            "the kernel lacks conntrack or NAT support for this family/protocol \
             (check CONFIG_NF_CONNTRACK, CONFIG_NF_NAT and CONFIG_NF_CT_NETLINK)",
        ),
        libc::EINVAL => CtError::Invalid(
            "check that all tuples are TCP and of one address family, that the NAT target \
             matches that family, and that the kernel has NAT for it (CONFIG_NF_NAT)",
        ),
        _ => CtError::Kernel { op, errno },
    }
}

fn family_of(t: &FlowTuple) -> Result<u8, CtError> {
    let f = l3proto(&t.src.ip());
    if f != l3proto(&t.dst.ip()) {
        return Err(CtError::MixedFamilies(*t));
    }
    Ok(f)
}

fn put_tuple(b: &mut MsgBuilder<'_>, which: u16, t: &FlowTuple) {
    let tuple = b.nest_start(which);
    let ip = b.nest_start(CTA_TUPLE_IP);
    match (t.src.ip(), t.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.put_ipv4(CTA_IP_V4_SRC, s).put_ipv4(CTA_IP_V4_DST, d);
        }
        // Callers check the family first; a mix is written as IPv6 (v4-mapped) and refused
        // by the kernel rather than panicking here.
        (s, d) => {
            b.put_ipv6(CTA_IP_V6_SRC, to_v6(s))
                .put_ipv6(CTA_IP_V6_DST, to_v6(d));
        }
    }
    b.nest_end(ip);
    let proto = b.nest_start(CTA_TUPLE_PROTO);
    b.put_u8(CTA_PROTO_NUM, IPPROTO_TCP)
        .put_be16(CTA_PROTO_SRC_PORT, t.src.port())
        .put_be16(CTA_PROTO_DST_PORT, t.dst.port());
    b.nest_end(proto);
    b.nest_end(tuple);
}

fn put_nat(b: &mut MsgBuilder<'_>, which: u16, to: SocketAddr) {
    let nat = b.nest_start(which);
    match to.ip() {
        IpAddr::V4(a) => {
            b.put_ipv4(CTA_NAT_V4_MINIP, a)
                .put_ipv4(CTA_NAT_V4_MAXIP, a);
        }
        IpAddr::V6(a) => {
            b.put_ipv6(CTA_NAT_V6_MINIP, a)
                .put_ipv6(CTA_NAT_V6_MAXIP, a);
        }
    }
    let p = b.nest_start(CTA_NAT_PROTO);
    b.put_be16(CTA_PROTONAT_PORT_MIN, to.port())
        .put_be16(CTA_PROTONAT_PORT_MAX, to.port());
    b.nest_end(p);
    b.nest_end(nat);
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Parses the attributes of a conntrack entry as the kernel answers a lookup (public for the
/// `netlink` fuzz target: the bytes come from the kernel, but are checked like any input).
pub fn parse_entry(attrs: AttrIter<'_>) -> Result<CtEntry, CtError> {
    let t: [Option<Attr>; CTA_TABLE_LEN] = attrs.table()?;
    let original =
        parse_tuple(t[CTA_TUPLE_ORIG as usize].ok_or(CtError::BadAnswer("no CTA_TUPLE_ORIG"))?)?;
    let reply =
        parse_tuple(t[CTA_TUPLE_REPLY as usize].ok_or(CtError::BadAnswer("no CTA_TUPLE_REPLY"))?)?;
    let u32_of = |k: u16| -> Result<u32, CtError> {
        match t[k as usize] {
            Some(a) => Ok(a.be32()?),
            None => Ok(0),
        }
    };
    let mut tcp_state = None;
    if let Some(pi) = t[CTA_PROTOINFO as usize] {
        for a in pi.nested() {
            let a = a?;
            if a.kind() == CTA_PROTOINFO_TCP {
                for s in a.nested() {
                    let s = s?;
                    if s.kind() == CTA_PROTOINFO_TCP_STATE {
                        tcp_state = Some(s.u8()?);
                    }
                }
            }
        }
    }
    Ok(CtEntry {
        tuples: CtTuples { original, reply },
        id: u32_of(CTA_ID)?,
        status: u32_of(CTA_STATUS)?,
        mark: u32_of(CTA_MARK)?,
        timeout_secs: u32_of(CTA_TIMEOUT)?,
        tcp_state,
        helper: t[CTA_HELP as usize].is_some(),
    })
}

fn parse_tuple(a: Attr<'_>) -> Result<FlowTuple, CtError> {
    let t: [Option<Attr>; 4] = a.nested().table()?;
    let ip = t[CTA_TUPLE_IP as usize].ok_or(CtError::BadAnswer("tuple without CTA_TUPLE_IP"))?;
    let proto =
        t[CTA_TUPLE_PROTO as usize].ok_or(CtError::BadAnswer("tuple without CTA_TUPLE_PROTO"))?;
    let ipt: [Option<Attr>; 5] = ip.nested().table()?;
    let (src, dst): (IpAddr, IpAddr) = match (
        ipt[CTA_IP_V4_SRC as usize],
        ipt[CTA_IP_V4_DST as usize],
        ipt[CTA_IP_V6_SRC as usize],
        ipt[CTA_IP_V6_DST as usize],
    ) {
        (Some(s), Some(d), _, _) => (s.ipv4()?.into(), d.ipv4()?.into()),
        (_, _, Some(s), Some(d)) => (s.ipv6()?.into(), d.ipv6()?.into()),
        _ => return Err(CtError::BadAnswer("tuple without addresses")),
    };
    let pt: [Option<Attr>; 4] = proto.nested().table()?;
    let num = pt[CTA_PROTO_NUM as usize]
        .ok_or(CtError::BadAnswer("tuple without CTA_PROTO_NUM"))?
        .u8()?;
    if num != IPPROTO_TCP {
        return Err(CtError::BadAnswer("entry is not TCP"));
    }
    let port = |k: u16| -> Result<u16, CtError> {
        Ok(pt[k as usize]
            .ok_or(CtError::BadAnswer("tuple without port"))?
            .be16()?)
    };
    Ok(FlowTuple::new(
        SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?),
        SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NlMsgIter, NLA_F_NESTED};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tuple_roundtrip_v4_v6() {
        for t in [
            FlowTuple::new(sa("10.0.0.2:40000"), sa("192.0.2.1:21")),
            FlowTuple::new(sa("[2001:db8::2]:40000"), sa("[2001:db8::1]:21")),
        ] {
            let mut buf = Vec::new();
            let mut b = MsgBuilder::new(&mut buf, 0x100, 0, family_of(&t).unwrap(), 0);
            put_tuple(&mut b, CTA_TUPLE_ORIG, &t);
            put_tuple(&mut b, CTA_TUPLE_REPLY, &t.inverse());
            let msg = b.finish().unwrap();
            let m = NlMsgIter::new(msg).next().unwrap().unwrap();
            let (_, attrs) = m.nfgen().unwrap();
            let e = parse_entry(attrs).unwrap();
            assert_eq!(e.tuples.original, t);
            assert_eq!(e.tuples.reply, t.inverse());
            assert_eq!(e.tcp_state, None);
        }
    }

    #[test]
    fn nat_attribute_layout() {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(&mut buf, 0x100, 0, 2, 0);
        put_nat(&mut b, CTA_NAT_DST, sa("10.0.0.2:4242"));
        let msg = b.finish().unwrap();
        let m = NlMsgIter::new(msg).next().unwrap().unwrap();
        let (_, mut attrs) = m.nfgen().unwrap();
        let nat = attrs.next().unwrap().unwrap();
        assert_eq!(nat.kind(), CTA_NAT_DST);
        assert!(nat.is_nested());
        let t: [Option<Attr>; 6] = nat.nested().table().unwrap();
        assert_eq!(t[1].unwrap().ipv4().unwrap().octets(), [10, 0, 0, 2]);
        assert_eq!(t[2].unwrap().ipv4().unwrap().octets(), [10, 0, 0, 2]);
        let p: [Option<Attr>; 3] = t[3].unwrap().nested().table().unwrap();
        assert_eq!(p[1].unwrap().be16().unwrap(), 4242);
        assert_eq!(p[2].unwrap().be16().unwrap(), 4242);
        // Raw check of the nested flag on the wire.
        assert_eq!(
            u16::from_ne_bytes(msg[22..24].try_into().unwrap()),
            CTA_NAT_DST | NLA_F_NESTED
        );
    }

    #[test]
    fn mixed_families_rejected() {
        let t = FlowTuple::new(sa("10.0.0.2:1"), sa("[2001:db8::1]:2"));
        assert!(matches!(family_of(&t), Err(CtError::MixedFamilies(_))));
    }

    #[test]
    fn errno_mapping() {
        let m = FlowTuple::new(sa("10.0.0.2:1"), sa("10.0.0.1:21"));
        assert!(map_errno("create", libc::EEXIST, Some(m)).is_already_exists());
        assert!(matches!(
            map_errno("create", libc::ENOENT, Some(m)),
            CtError::MasterNotFound(_)
        ));
        assert!(matches!(
            map_errno("create", libc::ENOSPC, None),
            CtError::TableFull(_)
        ));
        assert!(matches!(
            map_errno("create", libc::EPERM, None),
            CtError::PermissionDenied
        ));
        let msg = CtError::PermissionDenied.to_string();
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
    }

    #[test]
    fn every_error_says_what_to_do() {
        let m = FlowTuple::new(sa("10.0.0.2:1"), sa("10.0.0.1:21"));
        let all = [
            CtError::PermissionDenied,
            CtError::AlreadyExists,
            CtError::MasterNotFound(m),
            map_errno("create", libc::ENOSPC, None),
            map_errno("create", libc::EOPNOTSUPP, None),
            map_errno("create", libc::EINVAL, None),
            CtError::MixedFamilies(m),
            map_errno("get", libc::EBUSY, None),
            CtError::BadAnswer("x"),
            CtError::Netlink(NlError::Recv(nix::errno::Errno::ENOMEM)),
            CtError::Netlink(NlError::Kernel { errno: libc::EBUSY }),
            CtError::Netlink(NlError::Timeout(std::time::Duration::from_secs(5))),
        ];
        for e in all {
            let t = e.to_string();
            assert!(
                ["check", "raise", "report", "bug", "grant", "treat", "dropped"]
                    .iter()
                    .any(|w| t.contains(w)),
                "no fix in: {t}"
            );
        }
        let t = map_errno("get", libc::EBUSY, None).to_string();
        assert!(t.starts_with("ctnetlink: get failed: "), "{t}");
        assert!(t.contains("nf_conntrack_netlink"), "{t}");
    }
}
