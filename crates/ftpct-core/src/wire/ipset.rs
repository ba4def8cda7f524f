//! The ipset netlink messages for ftpct's `hash:ip,port` sets: protocol and type queries,
//! create, header listing, add/del/test of `address,tcp:port`, flush, destroy, and the parsers
//! of the answers. The netfilter crate's `ipset` module sends them and documents what the
//! kernel does with them.
//!
//! Wire format (include/uapi/linux/netfilter/ipset/ip_set.h): subsystem `NFNL_SUBSYS_IPSET`;
//! every command carries `IPSET_ATTR_PROTOCOL`; the set name is a NUL-terminated string of at
//! most 31 bytes; element data goes in the nested `IPSET_ATTR_DATA`, the address nested again
//! (`IPSET_ATTR_IP` { `IPSET_ATTR_IPADDR_IPV4|IPV6` }); 16/32-bit values carry
//! `NLA_F_NET_BYTEORDER` (the kernel answers `IPSET_ERR_PROTOCOL` otherwise).

use std::net::{IpAddr, SocketAddr};

use super::netlink::{
    get, nfnl_msg_type, Attr, MsgBuilder, NlMsg, WireError, IPPROTO_TCP, NFNL_SUBSYS_IPSET,
    NFPROTO_IPV4, NFPROTO_IPV6, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::rulespec::MAX_NAME_LEN;

/// Protocol version sent with every command.
pub const IPSET_PROTOCOL: u8 = 7;
/// The set type ftpct uses.
pub const SET_TYPE: &str = "hash:ip,port";
/// The kernel's default `maxelem` of a hash set created without one.
pub const KERNEL_DEFAULT_MAXELEM: u32 = 65536;

// enum ipset_cmd
const IPSET_CMD_PROTOCOL: u8 = 1;
const IPSET_CMD_CREATE: u8 = 2;
const IPSET_CMD_DESTROY: u8 = 3;
const IPSET_CMD_FLUSH: u8 = 4;
const IPSET_CMD_LIST: u8 = 7;
const IPSET_CMD_ADD: u8 = 9;
const IPSET_CMD_DEL: u8 = 10;
const IPSET_CMD_TEST: u8 = 11;
const IPSET_CMD_TYPE: u8 = 13;

// Command-level attributes
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_TYPENAME: u16 = 3;
const IPSET_ATTR_REVISION: u16 = 4;
const IPSET_ATTR_FAMILY: u16 = 5;
const IPSET_ATTR_FLAGS: u16 = 6;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_PROTOCOL_MIN: u16 = 10;
const IPSET_ATTR_REVISION_MIN: u16 = IPSET_ATTR_PROTOCOL_MIN;
const CMD_TABLE_LEN: usize = 11;
// CADT attributes (inside IPSET_ATTR_DATA)
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_PORT: u16 = 4;
const IPSET_ATTR_TIMEOUT: u16 = 6;
const IPSET_ATTR_PROTO: u16 = 7;
// Create-only attributes (inside IPSET_ATTR_DATA), and what the kernel adds to a listed header
const IPSET_ATTR_HASHSIZE: u16 = 18;
const IPSET_ATTR_MAXELEM: u16 = 19;
const IPSET_ATTR_ELEMENTS: u16 = 24;
const IPSET_ATTR_REFERENCES: u16 = 25;
const DATA_TABLE_LEN: usize = 27;
/// `IPSET_FLAG_LIST_HEADER` (`1 << IPSET_FLAG_BIT_LIST_HEADER`): list the header only.
const IPSET_FLAG_LIST_HEADER: u32 = 1 << 2;
// Inside IPSET_ATTR_IP
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;

/// `enum ipset_errno`: ipset's own error codes, above the kernel's errnos.
pub mod errno {
    /// `IPSET_ERR_PROTOCOL`: a malformed message (or an address of the other family).
    pub const IPSET_ERR_PROTOCOL: i32 = 4097;
    /// `IPSET_ERR_FIND_TYPE`: no such set type.
    pub const IPSET_ERR_FIND_TYPE: i32 = 4098;
    /// `IPSET_ERR_MAX_SETS`: the kernel's set limit is reached.
    pub const IPSET_ERR_MAX_SETS: i32 = 4099;
    /// `IPSET_ERR_BUSY`: the set is referenced by rules.
    pub const IPSET_ERR_BUSY: i32 = 4100;
    /// `IPSET_ERR_EXIST_SETNAME2`.
    pub const IPSET_ERR_EXIST_SETNAME2: i32 = 4101;
    /// `IPSET_ERR_TYPE_MISMATCH`.
    pub const IPSET_ERR_TYPE_MISMATCH: i32 = 4102;
    /// `IPSET_ERR_EXIST`: the set exists (create), the element does not (del, test).
    pub const IPSET_ERR_EXIST: i32 = 4103;
    /// `IPSET_ERR_INVALID_FAMILY`.
    pub const IPSET_ERR_INVALID_FAMILY: i32 = 4106;
    /// `IPSET_ERR_TIMEOUT`: the set has no timeout support.
    pub const IPSET_ERR_TIMEOUT: i32 = 4107;
    /// `IPSET_ERR_IPADDR_IPV4`.
    pub const IPSET_ERR_IPADDR_IPV4: i32 = 4109;
    /// `IPSET_ERR_IPADDR_IPV6`.
    pub const IPSET_ERR_IPADDR_IPV6: i32 = 4110;
    /// `IPSET_ERR_HASH_FULL` = `IPSET_ERR_TYPE_SPECIFIC`.
    pub const IPSET_ERR_HASH_FULL: i32 = 4352;
}

/// Address family of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetFamily {
    /// `family inet`.
    V4,
    /// `family inet6`.
    V6,
}

impl SetFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => SetFamily::V4,
            IpAddr::V6(_) => SetFamily::V6,
        }
    }
    /// The `NFPROTO_*` value.
    pub fn nfproto(self) -> u8 {
        match self {
            SetFamily::V4 => NFPROTO_IPV4,
            SetFamily::V6 => NFPROTO_IPV6,
        }
    }
    /// The family of an `NFPROTO_*` value, if it is inet or inet6.
    pub fn from_nfproto(v: u8) -> Option<Self> {
        match v {
            NFPROTO_IPV4 => Some(SetFamily::V4),
            NFPROTO_IPV6 => Some(SetFamily::V6),
            _ => None,
        }
    }
    /// The `ipset` CLI's name of the family.
    pub fn cli_name(self) -> &'static str {
        match self {
            SetFamily::V4 => "inet",
            SetFamily::V6 => "inet6",
        }
    }
}

/// What a header listing says of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    /// `hash:ip,port`, ...
    pub type_name: String,
    /// `None` for a family other than inet/inet6.
    pub family: Option<SetFamily>,
    /// The most elements the set holds.
    pub maxelem: u32,
    /// Default timeout of its elements; `None` = created without timeout support.
    pub timeout: Option<u32>,
    /// `IPSET_ATTR_HASHSIZE`.
    pub hashsize: Option<u32>,
    /// Elements in the set now.
    pub elements: Option<u32>,
    /// Rules (and list sets) referring to it.
    pub references: Option<u32>,
}

impl SetInfo {
    /// Whether this is the set [`build_create`] makes, up to `maxelem` and the hash size: the
    /// type, the family and the default timeout are the same.
    pub fn is_like(&self, family: SetFamily, default_timeout: u32) -> bool {
        self.type_name == SET_TYPE
            && self.family == Some(family)
            && self.timeout == Some(default_timeout)
    }
}

/// Whether the kernel takes `name` as a set name: 1 to 31 bytes, no NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.contains('\0')
}

/// A command with `IPSET_ATTR_PROTOCOL`, flagged for an ACK.
fn start(buf: &mut Vec<u8>, cmd: u8) -> MsgBuilder<'_> {
    let mut b = MsgBuilder::new(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_IPSET, cmd),
        NLM_F_REQUEST | NLM_F_ACK,
        NFPROTO_IPV4, // what the ipset CLI sends; the kernel reads the family attribute
        0,
    );
    b.put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL);
    b
}

/// `IPSET_CMD_PROTOCOL`: the kernel's protocol range.
pub fn build_protocol(buf: &mut Vec<u8>) -> Result<(), WireError> {
    start(buf, IPSET_CMD_PROTOCOL).finish().map(|_| ())
}

/// The answer to [`build_protocol`]: (`IPSET_ATTR_PROTOCOL`, `IPSET_ATTR_PROTOCOL_MIN`).
pub fn parse_protocol(m: &NlMsg<'_>) -> Result<(Option<u8>, Option<u8>), WireError> {
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; CMD_TABLE_LEN] = attrs.table()?;
    let u8_of = |k| get(&t, k).map(|a| a.u8()).transpose();
    Ok((u8_of(IPSET_ATTR_PROTOCOL)?, u8_of(IPSET_ATTR_PROTOCOL_MIN)?))
}

/// `IPSET_CMD_TYPE` of [`SET_TYPE`] for `family`: its newest revision.
pub fn build_type(buf: &mut Vec<u8>, family: SetFamily) -> Result<(), WireError> {
    let mut b = start(buf, IPSET_CMD_TYPE);
    b.put_cstr(IPSET_ATTR_TYPENAME, SET_TYPE)
        .put_u8(IPSET_ATTR_FAMILY, family.nfproto());
    b.finish().map(|_| ())
}

/// The revision in an answer to [`build_type`] (`IPSET_ATTR_REVISION`, else
/// `IPSET_ATTR_REVISION_MIN`).
pub fn parse_type_revision(m: &NlMsg<'_>) -> Result<Option<u8>, WireError> {
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; CMD_TABLE_LEN] = attrs.table()?;
    match get(&t, IPSET_ATTR_REVISION).or(get(&t, IPSET_ATTR_REVISION_MIN)) {
        Some(a) => a.u8().map(Some),
        None => Ok(None),
    }
}

/// `IPSET_CMD_CREATE` of a `hash:ip,port` set with timeout support (`default_timeout`
/// seconds) holding at most `maxelem` elements.
pub fn build_create(
    buf: &mut Vec<u8>,
    name: &str,
    family: SetFamily,
    revision: u8,
    default_timeout: u32,
    maxelem: u32,
) -> Result<(), WireError> {
    let mut b = start(buf, IPSET_CMD_CREATE);
    b.put_cstr(IPSET_ATTR_SETNAME, name)
        .put_cstr(IPSET_ATTR_TYPENAME, SET_TYPE)
        .put_u8(IPSET_ATTR_REVISION, revision)
        .put_u8(IPSET_ATTR_FAMILY, family.nfproto());
    let data = b.nest_start(IPSET_ATTR_DATA);
    b.put_be32(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, default_timeout)
        .put_be32(IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER, maxelem);
    b.nest_end(data);
    b.finish().map(|_| ())
}

/// `IPSET_CMD_LIST` (a dump) of the header of set `name` only.
pub fn build_list_header(buf: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let mut b = MsgBuilder::new(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST),
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_IPV4,
        0,
    );
    b.put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
        .put_cstr(IPSET_ATTR_SETNAME, name)
        .put_be32(
            IPSET_ATTR_FLAGS | NLA_F_NET_BYTEORDER,
            IPSET_FLAG_LIST_HEADER,
        );
    b.finish().map(|_| ())
}

/// Parses one message of a header listing; `None` for a message about another set (or none).
pub fn parse_header(m: &NlMsg<'_>, name: &str) -> Result<Option<SetInfo>, WireError> {
    if !m.is(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST) {
        return Ok(None);
    }
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; CMD_TABLE_LEN] = attrs.table()?;
    match get(&t, IPSET_ATTR_SETNAME) {
        Some(a) if a.str()? == name => {}
        _ => return Ok(None),
    }
    let type_name = match get(&t, IPSET_ATTR_TYPENAME) {
        Some(a) => a.str()?.to_string(),
        None => return Err(WireError::Malformed("ipset header without a type name")),
    };
    let family = match get(&t, IPSET_ATTR_FAMILY) {
        Some(a) => SetFamily::from_nfproto(a.u8()?),
        None => None,
    };
    let Some(data) = get(&t, IPSET_ATTR_DATA) else {
        return Err(WireError::Malformed("ipset header without its data"));
    };
    let d: [Option<Attr>; DATA_TABLE_LEN] = data.nested().table()?;
    let be32 = |k: u16| get(&d, k).map(|a| a.be32()).transpose();
    Ok(Some(SetInfo {
        type_name,
        family,
        // Hash sets always report it; the kernel's default if some set type does not.
        maxelem: be32(IPSET_ATTR_MAXELEM)?.unwrap_or(KERNEL_DEFAULT_MAXELEM),
        timeout: be32(IPSET_ATTR_TIMEOUT)?,
        hashsize: be32(IPSET_ATTR_HASHSIZE)?,
        elements: be32(IPSET_ATTR_ELEMENTS)?,
        references: be32(IPSET_ATTR_REFERENCES)?,
    }))
}

/// What to do with one element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementCmd {
    /// `IPSET_CMD_ADD`.
    Add,
    /// `IPSET_CMD_DEL`.
    Del,
    /// `IPSET_CMD_TEST`.
    Test,
}

/// `IPSET_CMD_ADD`/`DEL`/`TEST` of `address,tcp:port` in set `name`, with its own timeout
/// when given. Allocates nothing once `buf` has grown (it is on the packet path).
pub fn build_element(
    buf: &mut Vec<u8>,
    cmd: ElementCmd,
    name: &str,
    dst: SocketAddr,
    timeout: Option<u32>,
) -> Result<(), WireError> {
    let cmd = match cmd {
        ElementCmd::Add => IPSET_CMD_ADD,
        ElementCmd::Del => IPSET_CMD_DEL,
        ElementCmd::Test => IPSET_CMD_TEST,
    };
    let mut b = start(buf, cmd);
    b.put_cstr(IPSET_ATTR_SETNAME, name);
    let data = b.nest_start(IPSET_ATTR_DATA);
    let ip = b.nest_start(IPSET_ATTR_IP);
    match dst.ip() {
        IpAddr::V4(a) => b.put(IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets()),
        IpAddr::V6(a) => b.put(IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets()),
    };
    b.nest_end(ip);
    b.put_be16(IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, dst.port())
        .put_u8(IPSET_ATTR_PROTO, IPPROTO_TCP);
    if let Some(t) = timeout {
        b.put_be32(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, t);
    }
    b.nest_end(data);
    b.finish().map(|_| ())
}

/// `IPSET_CMD_FLUSH` of set `name`.
pub fn build_flush(buf: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let mut b = start(buf, IPSET_CMD_FLUSH);
    b.put_cstr(IPSET_ATTR_SETNAME, name);
    b.finish().map(|_| ())
}

/// `IPSET_CMD_DESTROY` of set `name`.
pub fn build_destroy(buf: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let mut b = start(buf, IPSET_CMD_DESTROY);
    b.put_cstr(IPSET_ATTR_SETNAME, name);
    b.finish().map(|_| ())
}

/// The element of an `IPSET_CMD_ADD`/`DEL`/`TEST` message: the command, the set name, the
/// address and port, the timeout. The decoder of [`build_element`], for tests and the fuzz
/// target's round trips.
#[allow(clippy::type_complexity)]
pub fn parse_element<'a>(
    m: &NlMsg<'a>,
) -> Result<Option<(ElementCmd, &'a str, SocketAddr, Option<u32>)>, WireError> {
    let cmd = match (m.subsys(), m.cmd()) {
        (NFNL_SUBSYS_IPSET, IPSET_CMD_ADD) => ElementCmd::Add,
        (NFNL_SUBSYS_IPSET, IPSET_CMD_DEL) => ElementCmd::Del,
        (NFNL_SUBSYS_IPSET, IPSET_CMD_TEST) => ElementCmd::Test,
        _ => return Ok(None),
    };
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; CMD_TABLE_LEN] = attrs.table()?;
    let name = get(&t, IPSET_ATTR_SETNAME)
        .ok_or(WireError::Malformed("ipset element without a set name"))?
        .str()?;
    let data =
        get(&t, IPSET_ATTR_DATA).ok_or(WireError::Malformed("ipset element without its data"))?;
    let d: [Option<Attr>; DATA_TABLE_LEN] = data.nested().table()?;
    let ip = get(&d, IPSET_ATTR_IP).ok_or(WireError::Malformed("ipset element without IP"))?;
    let a: [Option<Attr>; 3] = ip.nested().table()?;
    let addr: IpAddr = match (
        get(&a, IPSET_ATTR_IPADDR_IPV4),
        get(&a, IPSET_ATTR_IPADDR_IPV6),
    ) {
        (Some(v4), _) => v4.ipv4()?.into(),
        (None, Some(v6)) => v6.ipv6()?.into(),
        (None, None) => return Err(WireError::Malformed("ipset element without an address")),
    };
    let port = get(&d, IPSET_ATTR_PORT)
        .ok_or(WireError::Malformed("ipset element without a port"))?
        .be16()?;
    let timeout = get(&d, IPSET_ATTR_TIMEOUT).map(|a| a.be32()).transpose()?;
    Ok(Some((cmd, name, SocketAddr::new(addr, port), timeout)))
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{NlMsgIter, NLA_F_NESTED, NLM_F_MULTI};
    use super::*;
    use proptest::prelude::*;

    fn one(buf: &[u8]) -> NlMsg<'_> {
        NlMsgIter::new(buf).next().unwrap().unwrap()
    }

    #[test]
    fn names() {
        assert!(valid_name("ftpct4"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(32)));
        assert!(valid_name(&"x".repeat(31)));
        assert!(!valid_name("a\0b"));
    }

    #[test]
    fn element_layout() {
        let mut buf = Vec::new();
        build_element(
            &mut buf,
            ElementCmd::Add,
            "ftpct4",
            "192.0.2.1:2121".parse().unwrap(),
            Some(300),
        )
        .unwrap();
        let m = one(&buf);
        assert_eq!(m.subsys(), NFNL_SUBSYS_IPSET);
        assert_eq!(m.cmd(), IPSET_CMD_ADD);
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 8] = attrs.table().unwrap();
        assert_eq!(t[IPSET_ATTR_PROTOCOL as usize].unwrap().u8().unwrap(), 7);
        assert_eq!(
            t[IPSET_ATTR_SETNAME as usize].unwrap().str().unwrap(),
            "ftpct4"
        );
        let d = t[IPSET_ATTR_DATA as usize].unwrap();
        assert!(d.is_nested());
        let dt: [Option<Attr>; 8] = d.nested().table().unwrap();
        let port = dt[IPSET_ATTR_PORT as usize].unwrap();
        assert_eq!(port.be16().unwrap(), 2121);
        assert_ne!(port.raw_type() & NLA_F_NET_BYTEORDER, 0);
        assert_eq!(dt[IPSET_ATTR_PROTO as usize].unwrap().u8().unwrap(), 6);
        let ip = dt[IPSET_ATTR_IP as usize].unwrap();
        assert_ne!(ip.raw_type() & NLA_F_NESTED, 0);
        assert_eq!(
            parse_element(&m).unwrap(),
            Some((
                ElementCmd::Add,
                "ftpct4",
                "192.0.2.1:2121".parse().unwrap(),
                Some(300)
            ))
        );
        // Other commands are not elements.
        build_flush(&mut buf, "ftpct4").unwrap();
        assert_eq!(parse_element(&one(&buf)).unwrap(), None);
        assert_eq!(one(&buf).cmd(), IPSET_CMD_FLUSH);
        build_destroy(&mut buf, "ftpct4").unwrap();
        assert_eq!(one(&buf).cmd(), IPSET_CMD_DESTROY);
    }

    #[test]
    fn create_carries_timeout_and_maxelem() {
        let mut buf = Vec::new();
        build_create(&mut buf, "ftpct6", SetFamily::V6, 5, 120, 1 << 20).unwrap();
        let m = one(&buf);
        assert_eq!(m.subsys(), NFNL_SUBSYS_IPSET);
        assert_eq!(m.cmd(), IPSET_CMD_CREATE);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 11] = attrs.table().unwrap();
        assert_eq!(t[IPSET_ATTR_PROTOCOL as usize].unwrap().u8().unwrap(), 7);
        assert_eq!(
            t[IPSET_ATTR_SETNAME as usize].unwrap().str().unwrap(),
            "ftpct6"
        );
        assert_eq!(
            t[IPSET_ATTR_TYPENAME as usize].unwrap().str().unwrap(),
            "hash:ip,port"
        );
        assert_eq!(t[IPSET_ATTR_REVISION as usize].unwrap().u8().unwrap(), 5);
        assert_eq!(
            t[IPSET_ATTR_FAMILY as usize].unwrap().u8().unwrap(),
            NFPROTO_IPV6
        );
        let data = t[IPSET_ATTR_DATA as usize].unwrap();
        assert!(data.is_nested());
        // Both values in network byte order, flagged so (the kernel refuses them otherwise).
        let mut seen = vec![];
        for a in data.nested() {
            let a = a.unwrap();
            assert_eq!(a.payload().len(), 4);
            assert_ne!(a.raw_type() & NLA_F_NET_BYTEORDER, 0);
            seen.push((a.kind(), a.be32().unwrap()));
        }
        assert_eq!(
            seen,
            [(IPSET_ATTR_TIMEOUT, 120), (IPSET_ATTR_MAXELEM, 1 << 20)]
        );
    }

    /// A reply to the header listing, as the kernel builds it (ip_set_dump_do + mtype_head).
    fn header_reply(name: &str, family: u8, timeout: Option<u32>, maxelem: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(
            &mut buf,
            nfnl_msg_type(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST),
            NLM_F_MULTI,
            NFPROTO_IPV4,
            0,
        );
        b.put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
            .put_cstr(IPSET_ATTR_SETNAME, name)
            .put_cstr(IPSET_ATTR_TYPENAME, SET_TYPE)
            .put_u8(IPSET_ATTR_FAMILY, family)
            .put_u8(IPSET_ATTR_REVISION, 6);
        let d = b.nest_start(IPSET_ATTR_DATA);
        b.put_be32(IPSET_ATTR_HASHSIZE | NLA_F_NET_BYTEORDER, 1024)
            .put_be32(IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER, maxelem);
        if let Some(t) = timeout {
            b.put_be32(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, t);
        }
        b.put_be32(IPSET_ATTR_REFERENCES | NLA_F_NET_BYTEORDER, 1)
            .put_be32(IPSET_ATTR_ELEMENTS | NLA_F_NET_BYTEORDER, 3);
        b.nest_end(d);
        b.finish().unwrap();
        buf
    }

    #[test]
    fn header_listing_request_and_reply() {
        let mut buf = Vec::new();
        build_list_header(&mut buf, "ftpct4").unwrap();
        let m = one(&buf);
        assert_eq!(m.cmd(), IPSET_CMD_LIST);
        assert_eq!(m.flags & NLM_F_DUMP, NLM_F_DUMP);
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 11] = attrs.table().unwrap();
        assert_eq!(
            t[IPSET_ATTR_FLAGS as usize].unwrap().be32().unwrap(),
            IPSET_FLAG_LIST_HEADER
        );

        let reply = header_reply("ftpct4", NFPROTO_IPV4, Some(120), 65536);
        let m = one(&reply);
        let info = parse_header(&m, "ftpct4").unwrap().unwrap();
        assert_eq!(
            info,
            SetInfo {
                type_name: SET_TYPE.into(),
                family: Some(SetFamily::V4),
                maxelem: 65536,
                timeout: Some(120),
                hashsize: Some(1024),
                elements: Some(3),
                references: Some(1),
            }
        );
        assert!(info.is_like(SetFamily::V4, 120));
        assert!(!info.is_like(SetFamily::V6, 120));
        assert!(!info.is_like(SetFamily::V4, 300));
        assert!(parse_header(&m, "ftpct6").unwrap().is_none());
        let no_timeout = header_reply("s", NFPROTO_IPV6, None, 10);
        let m = one(&no_timeout);
        let info = parse_header(&m, "s").unwrap().unwrap();
        assert_eq!((info.family, info.timeout), (Some(SetFamily::V6), None));
        assert!(!info.is_like(SetFamily::V6, 120));
        // Truncated replies are errors or nothing, never a panic.
        for cut in 0..reply.len() {
            if let Some(Ok(m)) = NlMsgIter::new(&reply[..cut]).next() {
                let _ = parse_header(&m, "ftpct4");
            }
        }
    }

    #[test]
    fn protocol_and_type_answers() {
        let mut buf = Vec::new();
        build_protocol(&mut buf).unwrap();
        assert_eq!(parse_protocol(&one(&buf)).unwrap(), (Some(7), None));
        let mut b = start(&mut buf, IPSET_CMD_PROTOCOL);
        b.put_u8(IPSET_ATTR_PROTOCOL_MIN, 6);
        b.finish().unwrap();
        assert_eq!(parse_protocol(&one(&buf)).unwrap(), (Some(7), Some(6)));
        build_type(&mut buf, SetFamily::V6).unwrap();
        let m = one(&buf);
        assert_eq!(m.cmd(), IPSET_CMD_TYPE);
        assert_eq!(parse_type_revision(&m).unwrap(), None);
        let mut b = start(&mut buf, IPSET_CMD_TYPE);
        b.put_u8(IPSET_ATTR_REVISION_MIN, 2);
        b.finish().unwrap();
        assert_eq!(parse_type_revision(&one(&buf)).unwrap(), Some(2));
        let mut b = start(&mut buf, IPSET_CMD_TYPE);
        b.put_u8(IPSET_ATTR_REVISION_MIN, 2)
            .put_u8(IPSET_ATTR_REVISION, 7);
        b.finish().unwrap();
        assert_eq!(parse_type_revision(&one(&buf)).unwrap(), Some(7));
    }

    fn cmd() -> impl Strategy<Value = ElementCmd> {
        prop_oneof![
            Just(ElementCmd::Add),
            Just(ElementCmd::Del),
            Just(ElementCmd::Test)
        ]
    }

    proptest! {
        /// Encode an element, decode it: the same command, set, address, port and timeout.
        #[test]
        fn element_round_trip(
            c in cmd(), name in "[a-z0-9_]{1,31}", v6 in any::<bool>(),
            a4 in any::<[u8; 4]>(), a6 in any::<[u8; 16]>(), port in any::<u16>(),
            timeout in proptest::option::of(any::<u32>()),
        ) {
            let ip: IpAddr = if v6 { a6.into() } else { a4.into() };
            let dst = SocketAddr::new(ip, port);
            let mut buf = Vec::new();
            build_element(&mut buf, c, &name, dst, timeout).unwrap();
            prop_assert_eq!(
                parse_element(&one(&buf)).unwrap(),
                Some((c, name.as_str(), dst, timeout))
            );
        }

        /// A header round trip, and arbitrary bytes in the message never panic.
        #[test]
        fn header_round_trip_and_noise(
            name in "[a-z0-9]{1,31}", timeout in proptest::option::of(any::<u32>()),
            maxelem in any::<u32>(), noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let reply = header_reply(&name, NFPROTO_IPV6, timeout, maxelem);
            let info = parse_header(&one(&reply), &name).unwrap().unwrap();
            prop_assert_eq!((info.timeout, info.maxelem), (timeout, maxelem));
            for m in NlMsgIter::new(&noise).flatten() {
                let _ = (parse_header(&m, &name), parse_element(&m), parse_protocol(&m));
                let _ = parse_type_revision(&m);
            }
        }
    }
}
