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

use std::net::{IpAddr, SocketAddr};

use nix::libc;

use crate::netlink::{
    nfnl_msg_type, Attr, MsgBuilder, NetlinkSocket, NlError, NFNL_SUBSYS_IPSET,
    NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_REQUEST,
};

/// Protocol version sent with every command.
pub const IPSET_PROTOCOL: u8 = 7;
/// Longest set name, without the NUL.
pub const MAX_NAME_LEN: usize = 31;
/// The set type ftpct uses.
pub const SET_TYPE: &str = "hash:ip,port";
/// Default name of the IPv4 set.
pub const DEFAULT_SET4: &str = "ftpct4";
/// Default name of the IPv6 set.
pub const DEFAULT_SET6: &str = "ftpct6";

// enum ipset_cmd
const IPSET_CMD_PROTOCOL: u8 = 1;
const IPSET_CMD_CREATE: u8 = 2;
const IPSET_CMD_DESTROY: u8 = 3;
const IPSET_CMD_FLUSH: u8 = 4;
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
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_PROTOCOL_MIN: u16 = 10;
const IPSET_ATTR_REVISION_MIN: u16 = IPSET_ATTR_PROTOCOL_MIN;
// CADT attributes (inside IPSET_ATTR_DATA)
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_PORT: u16 = 4;
const IPSET_ATTR_TIMEOUT: u16 = 6;
const IPSET_ATTR_PROTO: u16 = 7;
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
         {0} hash:ip,port family inet timeout 120`)"
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
    /// added without one). An identical existing set is fine; a set of the same name with
    /// another type or other parameters gives [`IpsetError::SetConflict`].
    pub fn create_hash_ip_port(
        &mut self,
        name: &str,
        family: SetFamily,
        default_timeout: u32,
    ) -> Result<(), IpsetError> {
        check_name(name)?;
        let revision = self.type_revision(family)?;
        let mut b = Self::start(&mut self.buf, IPSET_CMD_CREATE);
        b.put_cstr(IPSET_ATTR_SETNAME, name)
            .put_cstr(IPSET_ATTR_TYPENAME, SET_TYPE)
            .put_u8(IPSET_ATTR_REVISION, revision)
            .put_u8(IPSET_ATTR_FAMILY, family.nfproto());
        let data = b.nest_start(IPSET_ATTR_DATA);
        b.put_be32(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, default_timeout);
        b.nest_end(data);
        b.finish()?;
        self.ack("create", name)
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
