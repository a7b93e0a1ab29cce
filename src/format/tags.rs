//! The LV and VG tags of the on-disk format (format version [`FORMAT_VERSION`]).
//!
//! Volume LVs carry `LVC_IMAGE=<uuid>`, `LVC_PARENT=<uuid>` (not on a base), `LVC_SLOT=<n>`;
//! transaction markers `LVC_CREATING` / `LVC_REMOVING`; special LVs `LVC_SPECIAL`.
//! The domain VG carries `LVC_DOMAIN_UNREADY` while formatting, then `LVC_DOMAIN`, plus
//! `LVC_FORMAT=<n>`, `LVC_LOCK=local|sanlock` (the [`LockKind`]), `LVC_SLOT_SIZE=<bytes>`, `LVC_MAX_VOLUMES=<n>`.
//! This module only names and parses tags; it never decides when they change.

use crate::format::ids::{ImageId, VolumeId};
use crate::lock::{LockKind, UnknownLockKind};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Version of the on-disk format written by this lvchain into new domains. Format 2 writes
/// version-2 metadata slots (with the fence record); format 1 (read and changed as it is, with
/// version-1 slots) is still served.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest domain format this lvchain serves.
pub const OLDEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tag {
    Image(ImageId),
    Parent(VolumeId),
    Slot(u32),
    Creating,
    Removing,
    Special,
    Domain,
    DomainUnready,
    Format(u32),
    Lock(LockKind),
    SlotSize(u32),
    MaxVolumes(u32),
    /// Wipe policy of removed volumes: on the VG, the domain's; on an LV, that volume's.
    Wipe(Wipe),
    /// A tag lvchain does not own (kept, never interpreted).
    Other(String),
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tag::Image(u) => write!(f, "LVC_IMAGE={u}"),
            Tag::Parent(u) => write!(f, "LVC_PARENT={u}"),
            Tag::Slot(n) => write!(f, "LVC_SLOT={n}"),
            Tag::Creating => f.write_str("LVC_CREATING"),
            Tag::Removing => f.write_str("LVC_REMOVING"),
            Tag::Special => f.write_str("LVC_SPECIAL"),
            Tag::Domain => f.write_str("LVC_DOMAIN"),
            Tag::DomainUnready => f.write_str("LVC_DOMAIN_UNREADY"),
            Tag::Format(n) => write!(f, "LVC_FORMAT={n}"),
            Tag::Lock(k) => write!(f, "LVC_LOCK={k}"),
            Tag::SlotSize(n) => write!(f, "LVC_SLOT_SIZE={n}"),
            Tag::MaxVolumes(n) => write!(f, "LVC_MAX_VOLUMES={n}"),
            Tag::Wipe(w) => write!(f, "LVC_WIPE={w}"),
            Tag::Other(s) => f.write_str(s),
        }
    }
}

impl Tag {
    /// Parses one tag; malformed `LVC_*` tags are errors (they mean a damaged domain).
    pub fn parse(s: &str) -> Result<Tag, String> {
        let bad = || format!("malformed lvchain tag {s:?}");
        let uuid = |v: &str| Uuid::parse_str(v).map_err(|_| bad());
        let num = |v: &str| v.parse::<u32>().map_err(|_| bad());
        Ok(match s.split_once('=') {
            Some(("LVC_IMAGE", v)) => Tag::Image(ImageId::from_uuid(uuid(v)?)),
            Some(("LVC_PARENT", v)) => Tag::Parent(VolumeId::from_uuid(uuid(v)?)),
            Some(("LVC_SLOT", v)) => Tag::Slot(num(v)?),
            Some(("LVC_FORMAT", v)) => Tag::Format(num(v)?),
            Some(("LVC_LOCK", v)) => Tag::Lock(
                v.parse()
                    .map_err(|e: UnknownLockKind| format!("{s}: {e}"))?,
            ),
            Some(("LVC_SLOT_SIZE", v)) => Tag::SlotSize(num(v)?),
            Some(("LVC_MAX_VOLUMES", v)) => Tag::MaxVolumes(num(v)?),
            Some(("LVC_WIPE", v)) => Tag::Wipe(v.parse().map_err(|_| bad())?),
            Some((k, _)) if k.starts_with("LVC_") => return Err(bad()),
            _ => match s {
                "LVC_CREATING" => Tag::Creating,
                "LVC_REMOVING" => Tag::Removing,
                "LVC_SPECIAL" => Tag::Special,
                "LVC_DOMAIN" => Tag::Domain,
                "LVC_DOMAIN_UNREADY" => Tag::DomainUnready,
                other if other.starts_with("LVC_") => return Err(bad()),
                other => Tag::Other(other.to_string()),
            },
        })
    }

    /// Whether the tag is a transaction marker.
    pub fn is_marker(&self) -> bool {
        matches!(self, Tag::Creating | Tag::Removing)
    }
}

/// What a removal does with a volume's data before its extents are freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wipe {
    /// Zero every byte (the default: the next volume on these extents reads zeroes).
    #[default]
    Zero,
    /// Leave the data as it is (faster removal; the next volume may read it).
    None,
}

impl fmt::Display for Wipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wipe::Zero => "zero",
            Wipe::None => "none",
        })
    }
}

impl FromStr for Wipe {
    type Err = String;
    fn from_str(s: &str) -> Result<Wipe, String> {
        match s {
            "zero" => Ok(Wipe::Zero),
            "none" => Ok(Wipe::None),
            other => Err(format!("{other:?} is not a wipe policy (zero or none)")),
        }
    }
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Tag, String> {
        Tag::parse(s)
    }
}

/// Renders tags as the strings lvm takes.
pub fn strings(tags: &[Tag]) -> Vec<String> {
    tags.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() -> Result<(), String> {
        let u = Uuid::new_v4();
        for t in [
            Tag::Image(ImageId::from_uuid(u)),
            Tag::Parent(VolumeId::from_uuid(u)),
            Tag::Slot(7),
            Tag::Creating,
            Tag::Removing,
            Tag::Special,
            Tag::Domain,
            Tag::DomainUnready,
            Tag::Format(1),
            Tag::Lock(LockKind::Local),
            Tag::Lock(LockKind::Sanlock),
            Tag::SlotSize(512),
            Tag::MaxVolumes(2048),
            Tag::Wipe(Wipe::Zero),
            Tag::Wipe(Wipe::None),
            Tag::Other("foreign_tag".into()),
        ] {
            assert_eq!(Tag::parse(&t.to_string())?, t);
        }
        assert_eq!(Tag::Wipe(Wipe::None).to_string(), "LVC_WIPE=none");
        Ok(())
    }

    #[test]
    fn rejects_malformed() {
        assert!(Tag::parse("LVC_IMAGE=nope").is_err());
        assert!(Tag::parse("LVC_SLOT=-1").is_err());
        assert!(Tag::parse("LVC_WHATEVER").is_err());
        assert!(Tag::parse("LVC_WIPE=").is_err());
        assert!(Tag::parse("LVC_WIPE=shred").is_err());
        assert_eq!(
            Tag::parse("LVC_LOCK=dlm"),
            Err(
                "LVC_LOCK=dlm: unknown lock manager \"dlm\" (this lvchain knows local and sanlock)"
                    .to_string()
            )
        );
        assert!(Tag::parse("LVC_LOCK=").is_err());
    }
}
