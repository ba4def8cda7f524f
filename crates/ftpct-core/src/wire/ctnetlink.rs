//! The ctnetlink messages ftpct sends (`IPCTNL_MSG_CT_GET`, `_NEW` to create a RELATED entry
//! with its NAT or to set mark bits, `_DELETE`, a dump) and the parser of the entries the
//! kernel answers with. What the kernel does with them is documented in the netfilter crate's
//! `ctnetlink` module, which sends them.
//!
//! Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a tuple is
//! `CTA_TUPLE_*` { `CTA_TUPLE_IP` { `CTA_IP_V4_SRC`/`DST` or `CTA_IP_V6_*` },
//! `CTA_TUPLE_PROTO` { `CTA_PROTO_NUM`, `CTA_PROTO_SRC_PORT`, `CTA_PROTO_DST_PORT` } }; a NAT
//! binding is `CTA_NAT_SRC`/`DST` { `CTA_NAT_V4_MINIP`/`MAXIP` or `_V6_`, `CTA_NAT_PROTO`
//! { `CTA_PROTONAT_PORT_MIN`/`MAX` } }; 16/32-bit values are big-endian.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::netlink::{
    get, nfnl_msg_type, Attr, AttrIter, MsgBuilder, NlMsg, WireError, IPPROTO_TCP,
    NFNL_SUBSYS_CTNETLINK, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::types::{l3proto, CtTuples, FlowTuple, RelatedEntry};

// enum cntl_msg_types
/// `IPCTNL_MSG_CT_NEW`: create or update an entry; also the type of every entry answered.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_NAT_DST: u16 = 13;
const CTA_TUPLE_MASTER: u16 = 14;
const CTA_MARK_MASK: u16 = 21;
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

/// `TCP_CONNTRACK_NONE`.
pub const TCP_CONNTRACK_NONE: u8 = 0;
/// `TCP_CONNTRACK_TIME_WAIT`.
pub const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
/// `TCP_CONNTRACK_CLOSE`.
pub const TCP_CONNTRACK_CLOSE: u8 = 8;

/// `enum ip_conntrack_status` bits (nf_conntrack_common.h) reported in [`CtEntry::status`].
pub mod status {
    /// `IPS_EXPECTED`.
    pub const IPS_EXPECTED: u32 = 1 << 0;
    /// `IPS_SEEN_REPLY`.
    pub const IPS_SEEN_REPLY: u32 = 1 << 1;
    /// `IPS_ASSURED`.
    pub const IPS_ASSURED: u32 = 1 << 2;
    /// `IPS_CONFIRMED`.
    pub const IPS_CONFIRMED: u32 = 1 << 3;
    /// `IPS_SRC_NAT`.
    pub const IPS_SRC_NAT: u32 = 1 << 4;
    /// `IPS_DST_NAT`.
    pub const IPS_DST_NAT: u32 = 1 << 5;
    /// `IPS_SRC_NAT_DONE`.
    pub const IPS_SRC_NAT_DONE: u32 = 1 << 7;
    /// `IPS_DST_NAT_DONE`.
    pub const IPS_DST_NAT_DONE: u32 = 1 << 8;
}

/// A conntrack entry with the fields ftpct looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `CTA_TUPLE_ORIG` and `CTA_TUPLE_REPLY`.
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

/// Why an entry the kernel answered with cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The attributes themselves do not parse.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// An attribute ftpct needs is missing, or the entry is not TCP.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Which tuple of an entry a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `CTA_TUPLE_ORIG`.
    Original,
    /// `CTA_TUPLE_REPLY`.
    Reply,
}

impl Which {
    fn attr(self) -> u16 {
        match self {
            Which::Original => CTA_TUPLE_ORIG,
            Which::Reply => CTA_TUPLE_REPLY,
        }
    }
}

/// The address family of a tuple (`NFPROTO_IPV4`/`IPV6`), `None` if it mixes the two.
pub fn family_of(t: &FlowTuple) -> Option<u8> {
    let f = l3proto(&t.src.ip());
    (f == l3proto(&t.dst.ip())).then_some(f)
}

fn start<'a>(buf: &'a mut Vec<u8>, cmd: u8, flags: u16, family: u8) -> MsgBuilder<'a> {
    MsgBuilder::new(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, cmd),
        flags,
        family,
        0,
    )
}

/// `IPCTNL_MSG_CT_GET` of the entry one of whose tuples is `t`, sent as `which`.
pub fn build_get(buf: &mut Vec<u8>, which: Which, t: &FlowTuple) -> Result<(), WireError> {
    let family = l3proto(&t.src.ip());
    let mut b = start(buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_ACK, family);
    put_tuple(&mut b, which.attr(), t);
    b.finish().map(|_| ())
}

/// A dump of every entry (all protocols, both families: `AF_UNSPEC`, no attribute).
pub fn build_dump(buf: &mut Vec<u8>) -> Result<(), WireError> {
    start(buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 0)
        .finish()
        .map(|_| ())
}

/// `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE|NLM_F_EXCL` of a data connection's entry:
/// `CTA_TUPLE_ORIG` = `e.original`, `CTA_TUPLE_REPLY` = its plain inverse, `CTA_TUPLE_MASTER`
/// = `e.master`, `CTA_NAT_SRC`/`CTA_NAT_DST` from `e.nat_src`/`e.nat_dst` if set,
/// `CTA_TIMEOUT`, `CTA_MARK`, TCP state NONE.
pub fn build_create_related(buf: &mut Vec<u8>, e: &RelatedEntry) -> Result<(), WireError> {
    let family = l3proto(&e.original.src.ip());
    let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
    let mut b = start(buf, IPCTNL_MSG_CT_NEW, flags, family);
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
    b.finish().map(|_| ())
}

/// An update (`IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE`) of the entry whose original tuple
/// is `original`: `CTA_MARK` = `CTA_MARK_MASK` = `bits`, which sets those bits and keeps the
/// others (the kernel computes `(mark & !mask) ^ mark`).
pub fn build_set_mark_bits(
    buf: &mut Vec<u8>,
    original: &FlowTuple,
    bits: u32,
) -> Result<(), WireError> {
    let family = l3proto(&original.src.ip());
    let mut b = start(buf, IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | NLM_F_ACK, family);
    put_tuple(&mut b, CTA_TUPLE_ORIG, original);
    b.put_be32(CTA_MARK, bits);
    b.put_be32(CTA_MARK_MASK, bits);
    b.finish().map(|_| ())
}

/// `IPCTNL_MSG_CT_DELETE` of the entry whose original tuple is `original`.
pub fn build_delete(buf: &mut Vec<u8>, original: &FlowTuple) -> Result<(), WireError> {
    let family = l3proto(&original.src.ip());
    let mut b = start(buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family);
    put_tuple(&mut b, CTA_TUPLE_ORIG, original);
    b.finish().map(|_| ())
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

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Whether `m` carries a conntrack entry (the kernel answers gets and dumps with
/// `IPCTNL_MSG_CT_NEW` messages).
pub fn is_entry(m: &NlMsg<'_>) -> bool {
    m.is(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW)
}

/// The entry of a message of an answer; `Ok(None)` for a message that is not an entry.
pub fn parse_entry_msg(m: &NlMsg<'_>) -> Result<Option<CtEntry>, EntryError> {
    if !is_entry(m) {
        return Ok(None);
    }
    let (_, attrs) = m.nfgen()?;
    parse_entry(attrs).map(Some)
}

/// Parses the attributes of a conntrack entry as the kernel answers a lookup.
pub fn parse_entry(attrs: AttrIter<'_>) -> Result<CtEntry, EntryError> {
    let t: [Option<Attr>; CTA_TABLE_LEN] = attrs.table()?;
    let tuple = |k, missing| get(&t, k).ok_or(EntryError::Incomplete(missing));
    let original = parse_tuple(tuple(CTA_TUPLE_ORIG, "no CTA_TUPLE_ORIG")?)?;
    let reply = parse_tuple(tuple(CTA_TUPLE_REPLY, "no CTA_TUPLE_REPLY")?)?;
    let u32_of = |k: u16| -> Result<u32, WireError> { get(&t, k).map_or(Ok(0), |a| a.be32()) };
    let tcp_state = match get(&t, CTA_PROTOINFO) {
        Some(pi) => tcp_state(pi)?,
        None => None,
    };
    Ok(CtEntry {
        tuples: CtTuples { original, reply },
        id: u32_of(CTA_ID)?,
        status: u32_of(CTA_STATUS)?,
        mark: u32_of(CTA_MARK)?,
        timeout_secs: u32_of(CTA_TIMEOUT)?,
        tcp_state,
        helper: get(&t, CTA_HELP).is_some(),
    })
}

/// `CTA_PROTOINFO` { `CTA_PROTOINFO_TCP` { `CTA_PROTOINFO_TCP_STATE` } }, the last one seen.
fn tcp_state(pi: Attr<'_>) -> Result<Option<u8>, WireError> {
    let mut state = None;
    for a in pi.nested() {
        let a = a?;
        if a.kind() == CTA_PROTOINFO_TCP {
            for s in a.nested() {
                let s = s?;
                if s.kind() == CTA_PROTOINFO_TCP_STATE {
                    state = Some(s.u8()?);
                }
            }
        }
    }
    Ok(state)
}

fn parse_tuple(a: Attr<'_>) -> Result<FlowTuple, EntryError> {
    let t: [Option<Attr>; 4] = a.nested().table()?;
    let ip = get(&t, CTA_TUPLE_IP).ok_or(EntryError::Incomplete("tuple without CTA_TUPLE_IP"))?;
    let proto =
        get(&t, CTA_TUPLE_PROTO).ok_or(EntryError::Incomplete("tuple without CTA_TUPLE_PROTO"))?;
    let ipt: [Option<Attr>; 5] = ip.nested().table()?;
    let (src, dst): (IpAddr, IpAddr) = match (
        get(&ipt, CTA_IP_V4_SRC),
        get(&ipt, CTA_IP_V4_DST),
        get(&ipt, CTA_IP_V6_SRC),
        get(&ipt, CTA_IP_V6_DST),
    ) {
        (Some(s), Some(d), _, _) => (s.ipv4()?.into(), d.ipv4()?.into()),
        (_, _, Some(s), Some(d)) => (s.ipv6()?.into(), d.ipv6()?.into()),
        _ => return Err(EntryError::Incomplete("tuple without addresses")),
    };
    let pt: [Option<Attr>; 4] = proto.nested().table()?;
    let num = get(&pt, CTA_PROTO_NUM)
        .ok_or(EntryError::Incomplete("tuple without CTA_PROTO_NUM"))?
        .u8()?;
    if num != IPPROTO_TCP {
        return Err(EntryError::Incomplete("entry is not TCP"));
    }
    let port = |k: u16| -> Result<u16, EntryError> {
        Ok(get(&pt, k)
            .ok_or(EntryError::Incomplete("tuple without port"))?
            .be16()?)
    };
    Ok(FlowTuple::new(
        SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?),
        SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{NlMsgIter, NLA_F_NESTED, NLMSG_HDRLEN};
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn one(buf: &[u8]) -> NlMsg<'_> {
        NlMsgIter::new(buf).next().unwrap().unwrap()
    }

    /// An entry as the kernel answers it, built with the request's own tuple writer.
    fn entry_msg(t: &FlowTuple, extra: impl FnOnce(&mut MsgBuilder<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = start(&mut buf, IPCTNL_MSG_CT_NEW, 0, family_of(t).unwrap());
        put_tuple(&mut b, CTA_TUPLE_ORIG, t);
        put_tuple(&mut b, CTA_TUPLE_REPLY, &t.inverse());
        extra(&mut b);
        b.finish().unwrap();
        buf
    }

    #[test]
    fn tuple_roundtrip_v4_v6() {
        for t in [
            FlowTuple::new(sa("10.0.0.2:40000"), sa("192.0.2.1:21")),
            FlowTuple::new(sa("[2001:db8::2]:40000"), sa("[2001:db8::1]:21")),
        ] {
            let buf = entry_msg(&t, |_| {});
            let e = parse_entry_msg(&one(&buf)).unwrap().unwrap();
            assert_eq!(e.tuples.original, t);
            assert_eq!(e.tuples.reply, t.inverse());
            assert_eq!(e.tcp_state, None);
            assert!(!e.helper);
        }
    }

    #[test]
    fn entry_fields() {
        let t = FlowTuple::new(sa("10.0.0.2:40000"), sa("192.0.2.1:21"));
        let buf = entry_msg(&t, |b| {
            b.put_be32(CTA_ID, 77)
                .put_be32(CTA_STATUS, status::IPS_EXPECTED | status::IPS_DST_NAT)
                .put_be32(CTA_MARK, 0x10)
                .put_be32(CTA_TIMEOUT, 120);
            let h = b.nest_start(CTA_HELP);
            b.put_cstr(1, "ftp");
            b.nest_end(h);
            let pi = b.nest_start(CTA_PROTOINFO);
            let tcp = b.nest_start(CTA_PROTOINFO_TCP);
            b.put_u8(CTA_PROTOINFO_TCP_STATE, TCP_CONNTRACK_TIME_WAIT);
            b.nest_end(tcp);
            b.nest_end(pi);
        });
        let e = parse_entry_msg(&one(&buf)).unwrap().unwrap();
        assert_eq!(
            (e.id, e.status, e.mark, e.timeout_secs),
            (77, status::IPS_EXPECTED | status::IPS_DST_NAT, 0x10, 120)
        );
        assert_eq!(e.tcp_state, Some(TCP_CONNTRACK_TIME_WAIT));
        assert!(e.helper);
    }

    #[test]
    fn incomplete_entries() {
        let mut buf = Vec::new();
        start(&mut buf, IPCTNL_MSG_CT_NEW, 0, 2).finish().unwrap();
        assert_eq!(
            parse_entry_msg(&one(&buf)),
            Err(EntryError::Incomplete("no CTA_TUPLE_ORIG"))
        );
        // A UDP entry.
        let mut b = start(&mut buf, IPCTNL_MSG_CT_NEW, 0, 2);
        for which in [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY] {
            let tu = b.nest_start(which);
            let ip = b.nest_start(CTA_TUPLE_IP);
            b.put(CTA_IP_V4_SRC, &[1, 2, 3, 4])
                .put(CTA_IP_V4_DST, &[1, 2, 3, 5]);
            b.nest_end(ip);
            let p = b.nest_start(CTA_TUPLE_PROTO);
            b.put_u8(CTA_PROTO_NUM, 17)
                .put_be16(CTA_PROTO_SRC_PORT, 1)
                .put_be16(CTA_PROTO_DST_PORT, 2);
            b.nest_end(p);
            b.nest_end(tu);
        }
        b.finish().unwrap();
        assert_eq!(
            parse_entry_msg(&one(&buf)),
            Err(EntryError::Incomplete("entry is not TCP"))
        );
        // Another message type is not an entry.
        start(&mut buf, IPCTNL_MSG_CT_DELETE, 0, 2)
            .finish()
            .unwrap();
        assert_eq!(parse_entry_msg(&one(&buf)), Ok(None));
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
    fn create_related_carries_master_nat_mark_timeout_and_state() {
        let e = RelatedEntry {
            original: FlowTuple::new(sa("198.51.100.2:40000"), sa("203.0.113.1:50000")),
            nat_src: Some("203.0.113.1".parse().unwrap()),
            nat_dst: Some(sa("10.0.0.2:50000")),
            master: FlowTuple::new(sa("198.51.100.2:39999"), sa("203.0.113.1:21")),
            mark: 0x20,
            timeout_secs: 30,
        };
        let mut buf = Vec::new();
        build_create_related(&mut buf, &e).unwrap();
        let m = one(&buf);
        assert!(is_entry(&m));
        assert_eq!(
            m.flags,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
        );
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.family, 2);
        let t: [Option<Attr>; CTA_TABLE_LEN] = attrs.clone().table().unwrap();
        assert_eq!(
            parse_tuple(t[CTA_TUPLE_MASTER as usize].unwrap()).unwrap(),
            e.master
        );
        let nat: [Option<Attr>; 6] = t[CTA_NAT_SRC as usize].unwrap().nested().table().unwrap();
        assert_eq!(nat[1].unwrap().ipv4().unwrap().octets(), [203, 0, 113, 1]);
        let p: [Option<Attr>; 3] = nat[3].unwrap().nested().table().unwrap();
        assert_eq!(p[1].unwrap().be16().unwrap(), 40000);
        assert!(t[CTA_NAT_DST as usize].is_some());
        let parsed = parse_entry(attrs).unwrap();
        assert_eq!(parsed.tuples.original, e.original);
        assert_eq!(parsed.tuples.reply, e.original.inverse());
        assert_eq!((parsed.mark, parsed.timeout_secs), (0x20, 30));
        assert_eq!(parsed.tcp_state, Some(TCP_CONNTRACK_NONE));
        // Without NAT: neither binding.
        build_create_related(
            &mut buf,
            &RelatedEntry {
                nat_src: None,
                nat_dst: None,
                ..e
            },
        )
        .unwrap();
        let (_, attrs) = one(&buf).nfgen().unwrap();
        let t: [Option<Attr>; CTA_TABLE_LEN] = attrs.table().unwrap();
        assert!(t[CTA_NAT_SRC as usize].is_none() && t[CTA_NAT_DST as usize].is_none());
    }

    #[test]
    fn mark_delete_get_and_dump_requests() {
        let t = FlowTuple::new(sa("[2001:db8::2]:1"), sa("[2001:db8::1]:21"));
        let mut buf = Vec::new();
        build_set_mark_bits(&mut buf, &t, 0x40).unwrap();
        let m = one(&buf);
        assert_eq!(m.cmd(), IPCTNL_MSG_CT_NEW);
        assert_eq!(m.flags & NLM_F_CREATE, 0);
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.family, 10);
        let a: [Option<Attr>; CTA_TABLE_LEN] = attrs.table().unwrap();
        assert_eq!(a[CTA_MARK as usize].unwrap().be32().unwrap(), 0x40);
        assert_eq!(a[CTA_MARK_MASK as usize].unwrap().be32().unwrap(), 0x40);
        build_delete(&mut buf, &t).unwrap();
        assert_eq!(one(&buf).cmd(), IPCTNL_MSG_CT_DELETE);
        build_get(&mut buf, Which::Reply, &t).unwrap();
        let m = one(&buf);
        assert_eq!(m.cmd(), IPCTNL_MSG_CT_GET);
        let (_, attrs) = m.nfgen().unwrap();
        let a: [Option<Attr>; 3] = attrs.table().unwrap();
        assert_eq!(
            parse_tuple(a[CTA_TUPLE_REPLY as usize].unwrap()).unwrap(),
            t
        );
        build_dump(&mut buf).unwrap();
        let m = one(&buf);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(m.nfgen().unwrap().0.family, 0);
        assert_eq!(buf.len(), NLMSG_HDRLEN + 4);
    }

    #[test]
    fn mixed_families() {
        let t = FlowTuple::new(sa("10.0.0.2:1"), sa("[2001:db8::1]:2"));
        assert_eq!(family_of(&t), None);
        // Written v4-mapped rather than panicking; the kernel refuses it.
        let mut buf = Vec::new();
        build_delete(&mut buf, &t).unwrap();
        assert_eq!(
            family_of(&FlowTuple::new(sa("10.0.0.2:1"), sa("10.0.0.1:2"))),
            Some(2)
        );
    }

    fn any_addr() -> impl Strategy<Value = (IpAddr, IpAddr)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>())
                .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
            (any::<[u8; 16]>(), any::<[u8; 16]>())
                .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
        ]
    }

    proptest! {
        /// Encode a tuple and an entry's fields, decode: the same values.
        #[test]
        fn entry_round_trip(
            (s, d) in any_addr(), sp in any::<u16>(), dp in any::<u16>(),
            id in any::<u32>(), st in any::<u32>(), mark in any::<u32>(), to in any::<u32>(),
            state in proptest::option::of(any::<u8>()),
        ) {
            let t = FlowTuple::new(SocketAddr::new(s, sp), SocketAddr::new(d, dp));
            let buf = entry_msg(&t, |b| {
                b.put_be32(CTA_ID, id).put_be32(CTA_STATUS, st).put_be32(CTA_MARK, mark)
                    .put_be32(CTA_TIMEOUT, to);
                if let Some(v) = state {
                    let pi = b.nest_start(CTA_PROTOINFO);
                    let tcp = b.nest_start(CTA_PROTOINFO_TCP);
                    b.put_u8(CTA_PROTOINFO_TCP_STATE, v);
                    b.nest_end(tcp);
                    b.nest_end(pi);
                }
            });
            let e = parse_entry_msg(&one(&buf)).unwrap().unwrap();
            prop_assert_eq!(e, CtEntry {
                tuples: CtTuples { original: t, reply: t.inverse() },
                id, status: st, mark, timeout_secs: to, tcp_state: state, helper: false,
            });
        }

        /// Arbitrary attribute bytes never make the entry parser panic.
        #[test]
        fn arbitrary_attributes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_entry(AttrIter::new(&data));
        }
    }
}
