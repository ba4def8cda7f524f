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

use std::net::SocketAddr;

use nix::libc;

pub use crate::rulespec::{DEFAULT_SET4, DEFAULT_SET6, MAX_NAME_LEN};
pub use ftpct_core::wire::ipset::{
    SetFamily, SetInfo, IPSET_PROTOCOL, KERNEL_DEFAULT_MAXELEM, SET_TYPE,
};

use crate::netlink::{NetlinkSocket, NlError, NlMsg, WireError};
use ftpct_core::wire::ipset::errno::*;
use ftpct_core::wire::ipset::{self as wire, ElementCmd};

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

impl From<WireError> for IpsetError {
    fn from(e: WireError) -> Self {
        IpsetError::Netlink(e.into())
    }
}

/// Parses one message of a header listing; `None` for a message about another set (or none).
/// The core's [`ftpct_core::wire::ipset::parse_header`] with this crate's errors.
pub fn parse_header(m: &NlMsg<'_>, name: &str) -> Result<Option<SetInfo>, NlError> {
    wire::parse_header(m, name).map_err(NlError::from)
}

/// An ipset netlink socket with a reused request buffer.
#[derive(Debug)]
pub struct Ipset {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

fn check_name(name: &str) -> Result<(), IpsetError> {
    if !wire::valid_name(name) {
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

    fn ack(&mut self, op: &'static str, name: &str) -> Result<(), IpsetError> {
        self.sock
            .request_ack(&mut self.buf)
            .map_err(|e| match e.errno() {
                Some(errno) => map_errno(op, name, errno),
                None => e.into(),
            })
    }

    /// The kernel's ipset protocol version range `(min, max)`.
    pub fn protocol(&mut self) -> Result<(u8, u8), IpsetError> {
        wire::build_protocol(&mut self.buf)?;
        let mut out = (0u8, 0u8);
        self.sock.transact(&mut self.buf, |m| {
            let (max, min) = wire::parse_protocol(m)?;
            if let Some(p) = max {
                out = (p, p);
            }
            if let Some(p) = min {
                out.0 = p;
            }
            Ok::<(), IpsetError>(())
        })?;
        Ok(out)
    }

    /// The newest revision of `hash:ip,port` the kernel has for `family`.
    fn type_revision(&mut self, family: SetFamily) -> Result<u8, IpsetError> {
        wire::build_type(&mut self.buf, family)?;
        let mut rev = None;
        let r = self.sock.transact(&mut self.buf, |m| {
            if let Some(v) = wire::parse_type_revision(m)? {
                rev = Some(v);
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
        wire::build_create(
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
        wire::build_list_header(&mut self.buf, name)?;
        let mut out = None;
        let r = self.sock.transact(&mut self.buf, |m| {
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

    /// Adds `address,tcp:port` with a timeout; an existing element is replaced (its timeout
    /// restarts).
    pub fn add(
        &mut self,
        name: &str,
        dst: SocketAddr,
        timeout_secs: u32,
    ) -> Result<(), IpsetError> {
        check_name(name)?;
        wire::build_element(
            &mut self.buf,
            ElementCmd::Add,
            name,
            dst,
            Some(timeout_secs),
        )?;
        self.ack("add", name)
    }

    /// Deletes `address,tcp:port`; a missing element is fine.
    pub fn del(&mut self, name: &str, dst: SocketAddr) -> Result<(), IpsetError> {
        check_name(name)?;
        wire::build_element(&mut self.buf, ElementCmd::Del, name, dst, None)?;
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
        wire::build_element(&mut self.buf, ElementCmd::Test, name, dst, None)?;
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
        wire::build_flush(&mut self.buf, name)?;
        self.ack("flush", name)
    }

    /// Destroys the set; a missing set is fine. A set still used by a rule gives
    /// [`IpsetError::SetInUse`].
    pub fn destroy(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        wire::build_destroy(&mut self.buf, name)?;
        match self.ack("destroy", name) {
            Err(IpsetError::SetNotFound(_)) => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("ftpct4").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(32)).is_err());
        assert!(check_name(&"x".repeat(31)).is_ok());
        assert!(check_name("a\0b").is_err());
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
