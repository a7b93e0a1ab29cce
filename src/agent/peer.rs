//! Who may use the agent's socket: the peer's credentials (`SO_PEERCRED`, read when the
//! connection is accepted) must be root's, or name the configured group as the peer's group or
//! one of its user's groups.

use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::UnixStream;

/// The credentials of a connection's peer (None when the kernel would not tell).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Peer {
    /// The peer of an accepted connection (`SO_PEERCRED`).
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
            },
            Err(e) => {
                tracing::warn!("cannot read the peer's credentials: {e}");
                Peer {
                    uid: None,
                    gid: None,
                }
            }
        }
    }
}

/// The access rule: root, and the members of `group` when one is configured.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub group: Option<Gid>,
}

impl Access {
    /// The rule for the group named `name` (which must exist).
    pub fn for_group(name: Option<&str>) -> crate::error::Result<Access> {
        let Some(name) = name else {
            return Ok(Access::default());
        };
        let group = Group::from_name(name)
            .map_err(|e| crate::error::Error::Io {
                what: format!("looking up the group {name}"),
                source: std::io::Error::from(e),
            })?
            .ok_or_else(|| {
                crate::error::Error::InvalidInput(format!("group {name:?} does not exist"))
            })?;
        Ok(Access {
            group: Some(group.gid),
        })
    }

    pub fn allows(&self, peer: &Peer) -> bool {
        let (Some(uid), Some(gid)) = (peer.uid, peer.gid) else {
            return false;
        };
        if uid == 0 {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group.as_raw() || member(Uid::from_raw(uid), Gid::from_raw(gid), group)
    }
}

/// Whether the user `uid` (primary group `gid`) is in `group` (the group database).
fn member(uid: Uid, gid: Gid, group: Gid) -> bool {
    let Ok(Some(user)) = User::from_uid(uid) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, gid).is_ok_and(|groups| groups.contains(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_passes_others_only_with_the_group() {
        let root = Peer {
            uid: Some(0),
            gid: Some(0),
        };
        let nobody = Peer {
            uid: Some(65534),
            gid: Some(65534),
        };
        let unknown = Peer {
            uid: None,
            gid: None,
        };
        let none = Access::default();
        assert!(none.allows(&root));
        assert!(!none.allows(&nobody));
        assert!(!none.allows(&unknown));
        let group = Access {
            group: Some(Gid::from_raw(65534)),
        };
        assert!(group.allows(&nobody));
    }
}
