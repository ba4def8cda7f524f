//! The ipset netlink protocol, for the `hash:ip,port` sets that select which SYNs are queued.
//!
//! What it is for: the rule `-t raw -A PREROUTING -p tcp --syn -m set --match-set SET dst,dst
//! -j NFQUEUE` (see [`crate::rules`]) queues only the data-connection SYNs that can match an
//! expectation. The daemon adds `address,tcp:port` of each expectation with a timeout as it
//! creates it, and deletes it when the expectation is used or withdrawn. That is on the packet
//! path, so [`Ipset::add`]/[`Ipset::del`] build into a reused buffer and allocate nothing
//! (except when reporting an error).
//!
//! Kernel facts relied on (include/uapi/linux/netfilter/ipset/ip_set.h,
//! net/netfilter/ipset/ip_set_core.c and ip_set_hash_ipport.c; checked against `ipset list` by
//! `tests/kernel_netns.rs`):
//! - subsystem `NFNL_SUBSYS_IPSET` (6); every command carries `IPSET_ATTR_PROTOCOL`; this kernel
//!   speaks protocol 7 (`IPSET_PROTOCOL`) and accepts 6 and up (`IPSET_PROTOCOL_MIN`);
//! - set name: NUL-terminated string of at most 31 bytes (`IPSET_MAXNAMELEN` 32);
//! - element data goes in the nested `IPSET_ATTR_DATA`; the address is nested again
//!   (`IPSET_ATTR_IP` { `IPSET_ATTR_IPADDR_IPV4|IPV6` }); 16/32-bit values (port, timeout) must
//!   carry `NLA_F_NET_BYTEORDER` or the kernel answers `IPSET_ERR_PROTOCOL`; nested attributes
//!   must carry `NLA_F_NESTED`;
//! - without `NLM_F_EXCL` the kernel applies `IPSET_FLAG_EXIST`: create of an identical existing
//!   set succeeds (a set of that name with another type or parameters gives `EEXIST`), add of an existing element replaces it (its timeout is reset), delete of a
//!   missing element succeeds; errors above 4096 are ipset's own (`enum ipset_errno`);
//! - `IPSET_CMD_TEST` answers 0 when the element is in the set and `IPSET_ERR_EXIST` when not.
//! - `maxelem` (`IPSET_ATTR_MAXELEM` in the create data, default 65536) bounds the elements; an
//!   add to a full set fails with `IPSET_ERR_HASH_FULL`. Create of an existing set compares
//!   `maxelem` too (`mtype_same_set`), so an older set with another `maxelem` makes create fail
//!   with `IPSET_ERR_EXIST`; [`Ipset::create_hash_ip_port`] then reads the set's header and
//!   accepts it if only `maxelem` (or the hash size) differs. The header with `maxelem`,
//!   timeout and element count comes from `IPSET_CMD_LIST` restricted to the set's name with
//!   `IPSET_FLAG_LIST_HEADER` ([`Ipset::info`]; `IPSET_CMD_HEADER` gives only type and family).

use std::net::{IpAddr, SocketAddr};

use nix::libc;

pub use crate::rulespec::{DEFAULT_SET4, DEFAULT_SET6, MAX_NAME_LEN};

use crate::netlink::{
    nfnl_msg_type, Attr, MsgBuilder, NetlinkSocket, NlError, NlMsg, NFNL_SUBSYS_IPSET,
    NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

/// Protocol version sent with every command.
pub const IPSET_PROTOCOL: u8 = 7;
/// The set type ftpct uses.
pub const SET_TYPE: &str = "hash:ip,port";

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
/// `IPSET_FLAG_LIST_HEADER` (`1 << IPSET_FLAG_BIT_LIST_HEADER`): list the header only.
const IPSET_FLAG_LIST_HEADER: u32 = 1 << 2;
// Inside IPSET_ATTR_IP
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

// enum ipset_errno
const IPSET_ERR_PROTOCOL: i32 = 4097;
const IPSET_ERR_FIND_TYPE: i32 = 4098;
const IPSET_ERR_MAX_SETS: i32 = 4099;
const IPSET_ERR_BUSY: i32 = 4100;
const IPSET_ERR_EXIST_SETNAME2: i32 = 4101;
const IPSET_ERR_TYPE_MISMATCH: i32 = 4102;
const IPSET_ERR_EXIST: i32 = 4103;
const IPSET_ERR_INVALID_FAMILY: i32 = 4106;
const IPSET_ERR_TIMEOUT: i32 = 4107;
const IPSET_ERR_IPADDR_IPV4: i32 = 4109;
const IPSET_ERR_IPADDR_IPV6: i32 = 4110;
/// `IPSET_ERR_HASH_FULL` = `IPSET_ERR_TYPE_SPECIFIC`.
const IPSET_ERR_HASH_FULL: i32 = 4352;

/// The kernel's default `maxelem` of a hash set created without one.
pub const KERNEL_DEFAULT_MAXELEM: u32 = 65536;

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
    fn nfproto(self) -> u8 {
        match self {
            SetFamily::V4 => NFPROTO_IPV4,
            SetFamily::V6 => NFPROTO_IPV6,
        }
    }
    fn from_nfproto(v: u8) -> Option<Self> {
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

/// Errors of ipset requests. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    #[error(
        "ipset: invalid set name {0:?}: a name is 1 to {MAX_NAME_LEN} bytes without NUL; choose \
         another name"
    )]
    InvalidName(String),
    #[error(
        "ipset: permission denied: ftpct needs CAP_NET_ADMIN (run it as root or grant the \
         capability)"
    )]
    PermissionDenied,
    #[error(
        "ipset: set {0:?} does not exist: create it with `ftpct rules --apply` (or `ipset create \
         {0} hash:ip,port family inet timeout 120 maxelem N`, N = max_expectations)"
    )]
    SetNotFound(String),
    #[error(
        "ipset: a set named {0:?} already exists with another type or other parameters: destroy \
         it (`ipset destroy {0}`) or configure another set name"
    )]
    SetConflict(String),
    #[error(
        "ipset: set {0:?} is in use by iptables rules: remove ftpct's rules first (`ftpct rules \
         --delete`)"
    )]
    SetInUse(String),
    #[error(
        "ipset: set {0:?} has no timeout support (it was created without `timeout`): destroy it \
         and let ftpct create it"
    )]
    NoTimeout(String),
    #[error(
        "ipset: set {0:?} is full: raise its maxelem (destroy it and recreate) or lower the \
         expectation timeouts"
    )]
    SetFull(String),
    #[error(
        "ipset: set {0:?} refused the element: its address family does not match the set's \
         (IPv6 address for an IPv4 set or the reverse); this is a bug in the caller"
    )]
    FamilyMismatch(String),
    #[error(
        "ipset: the kernel has no {SET_TYPE} set type (enable CONFIG_IP_SET_HASH_IPPORT or load \
         ip_set_hash_ipport)"
    )]
    NoSetType,
    #[error("ipset: the kernel's set limit is reached: raise ip_set max_sets or destroy sets")]
    TooManySets,
    #[error(
        "ipset: the kernel refused the message as malformed (protocol error); this is an ftpct \
         bug, please report it with the kernel version"
    )]
    Protocol,
    #[error("ipset: {op} on set {name:?} failed: {}", crate::netlink::errno_text(*errno))]
    Kernel {
        op: &'static str,
        name: String,
        errno: i32,
    },
    #[error(transparent)]
    Netlink(#[from] NlError),
}

/// What [`Ipset::info`] reads of a set's header.
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
    pub hashsize: Option<u32>,
    /// Elements in the set now.
    pub elements: Option<u32>,
    /// Rules (and list sets) referring to it.
    pub references: Option<u32>,
}

impl SetInfo {
    /// Whether this is the set [`Ipset::create_hash_ip_port`] makes, up to `maxelem` and the
    /// hash size: the type, the family and the default timeout are the same.
    pub fn is_like(&self, family: SetFamily, default_timeout: u32) -> bool {
        self.type_name == SET_TYPE
            && self.family == Some(family)
            && self.timeout == Some(default_timeout)
    }
}

/// Builds the create request of a `hash:ip,port` set into `buf`.
fn build_create(
    buf: &mut Vec<u8>,
    name: &str,
    family: SetFamily,
    revision: u8,
    default_timeout: u32,
    maxelem: u32,
) -> Result<(), NlError> {
    let mut b = Ipset::start(buf, IPSET_CMD_CREATE);
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

/// Builds the request listing only the header of set `name` into `buf`.
fn build_list_header(buf: &mut Vec<u8>, name: &str) -> Result<(), NlError> {
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
/// Public for the `netlink` fuzz target.
pub fn parse_header(m: &NlMsg<'_>, name: &str) -> Result<Option<SetInfo>, NlError> {
    if m.subsys() != NFNL_SUBSYS_IPSET || m.cmd() != IPSET_CMD_LIST {
        return Ok(None);
    }
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; 11] = attrs.table()?;
    match t[IPSET_ATTR_SETNAME as usize] {
        Some(a) if a.str()? == name => {}
        _ => return Ok(None),
    }
    let type_name = match t[IPSET_ATTR_TYPENAME as usize] {
        Some(a) => a.str()?.to_string(),
        None => return Err(NlError::Malformed("ipset header without a type name")),
    };
    let family = match t[IPSET_ATTR_FAMILY as usize] {
        Some(a) => SetFamily::from_nfproto(a.u8()?),
        None => None,
    };
    let Some(data) = t[IPSET_ATTR_DATA as usize] else {
        return Err(NlError::Malformed("ipset header without its data"));
    };
    let d: [Option<Attr>; 27] = data.nested().table()?;
    let be32 = |k: u16| d[k as usize].map(|a| a.be32()).transpose();
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

/// An ipset netlink socket with a reused request buffer.
#[derive(Debug)]
pub struct Ipset {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

fn check_name(name: &str) -> Result<(), IpsetError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(IpsetError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn map_errno(op: &'static str, name: &str, errno: i32) -> IpsetError {
    let n = || name.to_string();
    match errno {
        libc::EPERM | libc::EACCES => IpsetError::PermissionDenied,
        libc::ENOENT => IpsetError::SetNotFound(n()),
        // An IPv6 address sent to an IPv4 set lacks the IPv4 attribute the kernel looks for,
        // which it reports as a protocol error.
        IPSET_ERR_PROTOCOL if matches!(op, "add" | "del" | "test") => {
            IpsetError::FamilyMismatch(n())
        }
        IPSET_ERR_PROTOCOL => IpsetError::Protocol,
        IPSET_ERR_FIND_TYPE => IpsetError::NoSetType,
        IPSET_ERR_MAX_SETS => IpsetError::TooManySets,
        IPSET_ERR_BUSY => IpsetError::SetInUse(n()),
        IPSET_ERR_EXIST_SETNAME2 | IPSET_ERR_TYPE_MISMATCH => IpsetError::SetConflict(n()),
        IPSET_ERR_EXIST | libc::EEXIST if op == "create" => IpsetError::SetConflict(n()),
        IPSET_ERR_TIMEOUT => IpsetError::NoTimeout(n()),
        IPSET_ERR_HASH_FULL => IpsetError::SetFull(n()),
        IPSET_ERR_INVALID_FAMILY | IPSET_ERR_IPADDR_IPV4 | IPSET_ERR_IPADDR_IPV6 => {
            IpsetError::FamilyMismatch(n())
        }
        _ => IpsetError::Kernel {
            op,
            name: n(),
            errno,
        },
    }
}

impl Ipset {
    /// Opens an ipset socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, IpsetError> {
        Ok(Ipset {
            sock: NetlinkSocket::open()?,
            buf: Vec::with_capacity(256),
        })
    }

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

    fn ack(&mut self, op: &'static str, name: &str) -> Result<(), IpsetError> {
        let len = self.buf.len();
        let msg = &mut self.buf[..len];
        self.sock.request_ack(msg).map_err(|e| match e.errno() {
            Some(errno) => map_errno(op, name, errno),
            None => e.into(),
        })
    }

    /// The kernel's ipset protocol version range `(min, max)`.
    pub fn protocol(&mut self) -> Result<(u8, u8), IpsetError> {
        let b = Self::start(&mut self.buf, IPSET_CMD_PROTOCOL);
        let msg = b.finish()?;
        let mut out = (0u8, 0u8);
        self.sock.transact(msg, |m| {
            let (_, attrs) = m.nfgen()?;
            let t: [Option<Attr>; 11] = attrs.table()?;
            if let Some(a) = t[IPSET_ATTR_PROTOCOL as usize] {
                out.1 = a.u8()?;
                out.0 = out.1;
            }
            if let Some(a) = t[IPSET_ATTR_PROTOCOL_MIN as usize] {
                out.0 = a.u8()?;
            }
            Ok::<(), IpsetError>(())
        })?;
        Ok(out)
    }

    /// The newest revision of `hash:ip,port` the kernel has for `family`.
    fn type_revision(&mut self, family: SetFamily) -> Result<u8, IpsetError> {
        let mut b = Self::start(&mut self.buf, IPSET_CMD_TYPE);
        b.put_cstr(IPSET_ATTR_TYPENAME, SET_TYPE)
            .put_u8(IPSET_ATTR_FAMILY, family.nfproto());
        let msg = b.finish()?;
        let mut rev = None;
        let r = self.sock.transact(msg, |m| {
            let (_, attrs) = m.nfgen()?;
            let t: [Option<Attr>; 11] = attrs.table()?;
            if let Some(a) = t[IPSET_ATTR_REVISION as usize] {
                rev = Some(a.u8()?);
            } else if let Some(a) = t[IPSET_ATTR_REVISION_MIN as usize] {
                rev = Some(a.u8()?);
            }
            Ok::<(), IpsetError>(())
        });
        match r {
            Ok(()) => rev.ok_or(IpsetError::NoSetType),
            Err(IpsetError::Netlink(NlError::Kernel { errno })) => {
                Err(map_errno("type", SET_TYPE, errno))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a `hash:ip,port` set with timeout support (`default_timeout` seconds for elements
    /// added without one) holding at most `maxelem` elements. An existing set of the same type,
    /// family and default timeout is fine, whatever its `maxelem` (see [`Ipset::info`] to
    /// compare it); a set of the same name with another type or other parameters gives
    /// [`IpsetError::SetConflict`].
    pub fn create_hash_ip_port(
        &mut self,
        name: &str,
        family: SetFamily,
        default_timeout: u32,
        maxelem: u32,
    ) -> Result<(), IpsetError> {
        check_name(name)?;
        let revision = self.type_revision(family)?;
        build_create(
            &mut self.buf,
            name,
            family,
            revision,
            default_timeout,
            maxelem,
        )?;
        match self.ack("create", name) {
            Err(IpsetError::SetConflict(n)) => match self.info(name) {
                Ok(i) if i.is_like(family, default_timeout) => Ok(()),
                _ => Err(IpsetError::SetConflict(n)),
            },
            r => r,
        }
    }

    /// The header of set `name`: type, family, `maxelem`, default timeout, element count.
    pub fn info(&mut self, name: &str) -> Result<SetInfo, IpsetError> {
        check_name(name)?;
        build_list_header(&mut self.buf, name)?;
        let len = self.buf.len();
        let msg = &mut self.buf[..len];
        let mut out = None;
        let r = self.sock.transact(msg, |m| {
            if out.is_none() {
                out = parse_header(m, name)?;
            }
            Ok::<(), NlError>(())
        });
        match r {
            Ok(()) => out.ok_or(IpsetError::SetNotFound(name.to_string())),
            Err(NlError::Kernel { errno }) => Err(map_errno("list", name, errno)),
            Err(e) => Err(e.into()),
        }
    }

    fn element(&mut self, cmd: u8, name: &str, dst: SocketAddr, timeout: Option<u32>) {
        let mut b = Self::start(&mut self.buf, cmd);
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
        // Messages this small cannot overflow the length fields.
        let _ = b.finish();
    }

    /// Adds `address,tcp:port` with a timeout; an existing element is replaced (its timeout
    /// restarts).
    pub fn add(
        &mut self,
        name: &str,
        dst: SocketAddr,
        timeout_secs: u32,
    ) -> Result<(), IpsetError> {
        check_name(name)?;
        self.element(IPSET_CMD_ADD, name, dst, Some(timeout_secs));
        self.ack("add", name)
    }

    /// Deletes `address,tcp:port`; a missing element is fine.
    pub fn del(&mut self, name: &str, dst: SocketAddr) -> Result<(), IpsetError> {
        check_name(name)?;
        self.element(IPSET_CMD_DEL, name, dst, None);
        match self.ack("del", name) {
            Err(IpsetError::Kernel {
                errno: IPSET_ERR_EXIST,
                ..
            }) => Ok(()),
            r => r,
        }
    }

    /// True if `address,tcp:port` is in the set.
    pub fn test(&mut self, name: &str, dst: SocketAddr) -> Result<bool, IpsetError> {
        check_name(name)?;
        self.element(IPSET_CMD_TEST, name, dst, None);
        match self.ack("test", name) {
            Ok(()) => Ok(true),
            Err(IpsetError::Kernel {
                errno: IPSET_ERR_EXIST,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes every element of the set.
    pub fn flush(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        let mut b = Self::start(&mut self.buf, IPSET_CMD_FLUSH);
        b.put_cstr(IPSET_ATTR_SETNAME, name);
        b.finish()?;
        self.ack("flush", name)
    }

    /// Destroys the set; a missing set is fine. A set still used by a rule gives
    /// [`IpsetError::SetInUse`].
    pub fn destroy(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        let mut b = Self::start(&mut self.buf, IPSET_CMD_DESTROY);
        b.put_cstr(IPSET_ATTR_SETNAME, name);
        b.finish()?;
        match self.ack("destroy", name) {
            Err(IpsetError::SetNotFound(_)) => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NlMsgIter, NLA_F_NESTED};

    #[test]
    fn names() {
        assert!(check_name("ftpct4").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(32)).is_err());
        assert!(check_name(&"x".repeat(31)).is_ok());
        assert!(check_name("a\0b").is_err());
    }

    #[test]
    fn element_layout() {
        // Build without a socket: reuse the builder code through a fake Ipset-less path.
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(
            &mut buf,
            nfnl_msg_type(NFNL_SUBSYS_IPSET, IPSET_CMD_ADD),
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_IPV4,
            0,
        );
        b.put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL);
        b.put_cstr(IPSET_ATTR_SETNAME, "ftpct4");
        let data = b.nest_start(IPSET_ATTR_DATA);
        let ip = b.nest_start(IPSET_ATTR_IP);
        b.put(
            IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER,
            &[192, 0, 2, 1],
        );
        b.nest_end(ip);
        b.put_be16(IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, 2121);
        b.nest_end(data);
        let msg = b.finish().unwrap();
        let m = NlMsgIter::new(msg).next().unwrap().unwrap();
        assert_eq!(m.subsys(), NFNL_SUBSYS_IPSET);
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 8] = attrs.table().unwrap();
        assert_eq!(
            t[IPSET_ATTR_SETNAME as usize].unwrap().str().unwrap(),
            "ftpct4"
        );
        let d = t[IPSET_ATTR_DATA as usize].unwrap();
        assert!(d.is_nested());
        let dt: [Option<Attr>; 8] = d.nested().table().unwrap();
        assert_eq!(dt[IPSET_ATTR_PORT as usize].unwrap().be16().unwrap(), 2121);
        let _ = NLA_F_NESTED;
    }

    #[test]
    fn create_carries_timeout_and_maxelem() {
        let mut buf = Vec::new();
        build_create(&mut buf, "ftpct6", SetFamily::V6, 5, 120, 1 << 20).unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
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
            seen.push((a.kind(), a.be32().unwrap()));
        }
        assert_eq!(
            seen,
            [(IPSET_ATTR_TIMEOUT, 120), (IPSET_ATTR_MAXELEM, 1 << 20)]
        );
        let raw_types: Vec<u16> = buf[buf.len() - 16..]
            .chunks(8)
            .map(|c| u16::from_ne_bytes([c[2], c[3]]))
            .collect();
        assert!(raw_types.iter().all(|t| t & NLA_F_NET_BYTEORDER != 0));
    }

    /// A reply to the header listing, as the kernel builds it (ip_set_dump_do + mtype_head).
    fn header_reply(name: &str, family: u8, timeout: Option<u32>, maxelem: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(
            &mut buf,
            nfnl_msg_type(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST),
            crate::netlink::NLM_F_MULTI,
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
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.cmd(), IPSET_CMD_LIST);
        assert_eq!(m.flags & NLM_F_DUMP, NLM_F_DUMP);
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 11] = attrs.table().unwrap();
        assert_eq!(
            t[IPSET_ATTR_FLAGS as usize].unwrap().be32().unwrap(),
            IPSET_FLAG_LIST_HEADER
        );

        let reply = header_reply("ftpct4", NFPROTO_IPV4, Some(120), 65536);
        let m = NlMsgIter::new(&reply).next().unwrap().unwrap();
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
        let m = NlMsgIter::new(&no_timeout).next().unwrap().unwrap();
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
    fn errno_mapping() {
        assert!(matches!(
            map_errno("destroy", "s", IPSET_ERR_BUSY),
            IpsetError::SetInUse(_)
        ));
        assert!(matches!(
            map_errno("create", "s", IPSET_ERR_EXIST),
            IpsetError::SetConflict(_)
        ));
        assert!(matches!(
            map_errno("add", "s", libc::ENOENT),
            IpsetError::SetNotFound(_)
        ));
        assert!(map_errno("add", "s", libc::EPERM)
            .to_string()
            .contains("CAP_NET_ADMIN"));
    }
}
