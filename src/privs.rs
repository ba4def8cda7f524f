//! Dropping privileges once the daemon's sockets are open.
//!
//! Every nfnetlink message (queue verdicts, ctnetlink, ipset) is checked by the kernel against
//! CAP_NET_ADMIN of the *sending task* (and of the socket's opener), so the daemon keeps exactly
//! that one capability: permitted and effective sets = {CAP_NET_ADMIN}, inheritable and ambient
//! empty, the bounding set reduced to it, and `no_new_privs` set. With `user = NAME` it also
//! switches to that user (keeping CAP_NET_ADMIN across the switch); the state file and socket
//! directories must then be writable by that user (systemd's `RuntimeDirectory=` does it).
//!
//! Without `user =`, a daemon started as root does not stay root: uid 0 keeps owning every
//! root-owned file even with CAP_NET_ADMIN only (no CAP_DAC_OVERRIDE is needed to write a
//! file one owns). It switches to [`DEFAULT_USERS`] (a dedicated `ftpct` user if there is
//! one, else `nobody`) when it can: it holds CAP_SETUID and CAP_SETGID, and the state file's
//! directory is, or can safely be made, writable by that user (see the daemon's
//! `choose_user`). `user = root` keeps uid 0 on purpose.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("unknown user '{0}' (create it, e.g. `adduser --system {0}`, or remove `user =`)")]
    NoUser(String),
    #[error("cannot switch to user '{user}': {source}")]
    Switch { user: String, source: nix::Error },
    #[error("cannot set capabilities: {0} (ftpct must start as root or with CAP_NET_ADMIN and CAP_SETPCAP)")]
    Caps(String),
}

/// What the daemon runs with after [`drop_privileges`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub effective: Vec<String>,
}

/// The users a daemon started as root switches to without `user =`, the first that exists.
pub const DEFAULT_USERS: [&str; 2] = ["ftpct", "nobody"];

/// The first of [`DEFAULT_USERS`] that the system knows.
pub fn default_user() -> Option<nix::unistd::User> {
    DEFAULT_USERS
        .iter()
        .find_map(|n| nix::unistd::User::from_name(n).ok().flatten())
}

/// Whether this process can switch users (CAP_SETUID and CAP_SETGID in its effective set).
pub fn can_switch_user() -> bool {
    [Capability::CAP_SETUID, Capability::CAP_SETGID]
        .iter()
        .all(|c| caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
}

/// Whether a process of `uid`/`gid` (no supplementary groups) may create, rename and remove
/// entries in a directory with this `mode` and owner (write and search permission; the
/// sticky bit also needs the entries to be its own, which the caller arranges for the state
/// file).
pub fn may_write_dir(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if owner == uid {
        mode >> 6
    } else if group == gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

fn only_net_admin() -> CapsHashSet {
    let mut s = CapsHashSet::new();
    s.insert(Capability::CAP_NET_ADMIN);
    s
}

/// Keeps CAP_NET_ADMIN only (and switches to `user` if given).
pub fn drop_privileges(user: Option<&str>) -> Result<Dropped, PrivError> {
    let caps_err = |e: caps::errors::CapsError| PrivError::Caps(e.to_string());
    if let Some(name) = user {
        let u = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| PrivError::NoUser(name.to_string()))?;
        let sw = |source| PrivError::Switch {
            user: name.to_string(),
            source,
        };
        // Keep the permitted set across setuid; the effective set is cleared and raised again.
        nix::sys::prctl::set_keepcaps(true).map_err(sw)?;
        nix::unistd::setgroups(&[]).map_err(sw)?;
        nix::unistd::setgid(u.gid).map_err(sw)?;
        nix::unistd::setuid(u.uid).map_err(sw)?;
        nix::sys::prctl::set_keepcaps(false).map_err(sw)?;
    }
    // Bounding set first. That needs CAP_SETPCAP: a daemon started as root has it; one
    // started by systemd as a non-root user with only CAP_NET_ADMIN does not, and there the
    // unit's CapabilityBoundingSet= has already reduced the set.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if cap != Capability::CAP_NET_ADMIN
                && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
            }
        }
    }
    // Only touch what holds more than CAP_NET_ADMIN: under systemd the unit already limited
    // the sets, and its SystemCallFilter= may refuse capset(2) altogether.
    let want = only_net_admin();
    let more = |set: CapSet| -> Result<bool, PrivError> {
        Ok(!caps::read(None, set).map_err(caps_err)?.is_subset(&want))
    };
    if more(CapSet::Ambient)? {
        caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
    }
    if more(CapSet::Inheritable)? {
        caps::clear(None, CapSet::Inheritable).map_err(caps_err)?;
    }
    if more(CapSet::Permitted)? || more(CapSet::Effective)? {
        caps::set(None, CapSet::Effective, &want).map_err(caps_err)?;
        caps::set(None, CapSet::Permitted, &want).map_err(caps_err)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| PrivError::Caps(e.to_string()))?;
    let mut effective: Vec<String> = caps::read(None, CapSet::Effective)
        .map_err(caps_err)?
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    effective.sort();
    Ok(Dropped {
        uid: nix::unistd::getuid().as_raw(),
        effective,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_write_permission_follows_owner_group_other() {
        // root-owned 0755: only root
        assert!(!may_write_dir(0o755, 0, 0, 65534, 65534));
        assert!(may_write_dir(0o755, 0, 0, 0, 0));
        // owned by the user
        assert!(may_write_dir(0o700, 65534, 65534, 65534, 65534));
        assert!(
            !may_write_dir(0o500, 65534, 0, 65534, 65534),
            "no write bit"
        );
        // group-writable with the user's group; the owner's bits win for the owner
        assert!(may_write_dir(0o770, 0, 100, 1000, 100));
        assert!(!may_write_dir(0o070, 1000, 100, 1000, 100));
        // /tmp: world-writable and sticky
        assert!(may_write_dir(0o1777, 0, 0, 65534, 65534));
        assert!(!may_write_dir(0o1776, 0, 0, 65534, 65534), "no search bit");
    }
}
