//! Encoding and decoding of one metadata slot.
//!
//! Version 1: `LVC_META=1`, `ID`, `IMAGE`, `PARENT`, `FORMAT`, `CAPACITY`, `ROLE`, `LEGALITY`,
//! `GENERATION`, `CTIME`, `DESCRIPTION`, then `CHECKSUM`. Version 2 adds the fence record
//! before `CHECKSUM`: `FENCED=<last generation a fence moved on, or empty>` and
//! `FENCES=<fences since the volume was created, or empty when unknown>`, and `PARTIAL=1` while
//! an operation that writes the volume's data (a copy) has begun and not completed. Both
//! versions are read; the version written is the domain's (a format-1 domain keeps version-1 slots, which
//! older lvchain reads).

use crate::format::ids::{Generation, ImageId, VolumeId};
use crate::units::Bytes;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Longest description accepted (bytes, as stored), so that a volume fits a 512-byte slot
/// whatever its numbers.
pub const MAX_DESCRIPTION: usize = 140;
/// The slot version this lvchain writes into domains of the current format.
pub const SLOT_VERSION: u32 = 2;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("slot {slot} is empty")]
    Empty { slot: u32 },
    #[error("slot {slot} is damaged: {reason}")]
    Damaged { slot: u32, reason: String },
    #[error("metadata of volume {id} does not fit a {size}-byte slot")]
    TooLarge { id: VolumeId, size: usize },
    #[error("I/O on the metadata LV {path} failed: {reason}")]
    Io { path: String, reason: String },
    #[error("slot {slot} is beyond the metadata area ({max} slots)")]
    OutOfRange { slot: u32, max: u32 },
}

macro_rules! text_enum {
    ($name:ident { $($var:ident = $s:literal),+ }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($var),+ }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$var => $s),+ })
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$var),)+
                    _ => Err(format!("{s:?} is not one of: {}", [$($s),+].join(", "))) }
            }
        }
    };
}

text_enum!(Format { Raw = "raw", Qcow2 = "qcow2" });
text_enum!(Role { Leaf = "leaf", Internal = "internal" });
text_enum!(Legality { Legal = "legal", Illegal = "illegal" });

/// What the metadata slot of one volume says. The metadata is the truth for the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeMeta {
    pub id: VolumeId,
    pub image: ImageId,
    pub parent: Option<VolumeId>,
    pub format: Format,
    pub capacity: Bytes,
    pub role: Role,
    pub legality: Legality,
    pub generation: Generation,
    pub ctime: u64,
    pub description: String,
    pub fence: FenceRecord,
    /// Its data may be partial: a data-writing operation began and has not completed (only
    /// version-2 slots record it).
    pub partial: bool,
}

/// Which generations fences skipped: a fence moves the generation from N to N+3, which three
/// successful operations do too; only this record tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct FenceRecord {
    /// The generation the last fence moved on from.
    pub last: Option<Generation>,
    /// How many fences the volume has had; `None` when unknown (a version-1 slot).
    pub count: Option<u64>,
}

impl FenceRecord {
    /// The record of a new volume: no fence, and the whole history known.
    pub const NONE: FenceRecord = FenceRecord {
        last: None,
        count: Some(0),
    };
}

/// Refuses a description that would not fit a slot, counted as the slot stores it (escaped:
/// a newline takes 2 bytes, a control character 6).
pub fn check_description(d: &str) -> Result<(), String> {
    let stored = escape(d).len();
    if stored > MAX_DESCRIPTION {
        return Err(format!(
            "the description takes {stored} bytes in the metadata (control characters and \
             newlines are escaped); at most {MAX_DESCRIPTION} fit"
        ));
    }
    Ok(())
}

/// Escapes what may not stand in a `KEY=VALUE` line.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('u') => {
                let hex: String = it.by_ref().skip(1).take_while(|c| *c != '}').collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The slot image of `meta` (`size` bytes, zero padded) in slot version `version` (1 or 2;
/// version 1 has no fence record).
pub fn encode(meta: &VolumeMeta, size: usize, version: u32) -> Result<Vec<u8>, MetaError> {
    let parent = meta.parent.map(|p| p.to_string()).unwrap_or_default();
    let mut body = format!(
        "LVC_META={version}\nID={}\nIMAGE={}\nPARENT={parent}\nFORMAT={}\nCAPACITY={}\nROLE={}\n\
         LEGALITY={}\nGENERATION={}\nCTIME={}\nDESCRIPTION={}\n",
        meta.id,
        meta.image,
        meta.format,
        meta.capacity.0,
        meta.role,
        meta.legality,
        meta.generation,
        meta.ctime,
        escape(&meta.description)
    );
    if version >= 2 {
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        body.push_str(&format!(
            "FENCED={}\nFENCES={}\n",
            opt(meta.fence.last.map(Generation::get)),
            opt(meta.fence.count)
        ));
        if meta.partial {
            body.push_str("PARTIAL=1\n");
        }
    }
    let text = format!("{body}CHECKSUM={:08x}\n", crc32fast::hash(body.as_bytes()));
    if text.len() > size {
        return Err(MetaError::TooLarge { id: meta.id, size });
    }
    let mut out = text.into_bytes();
    out.resize(size, 0);
    Ok(out)
}

/// Decodes a slot image; an all-zero slot is [`MetaError::Empty`].
pub fn decode(slot: u32, bytes: &[u8]) -> Result<VolumeMeta, MetaError> {
    let damaged = |reason: String| MetaError::Damaged { slot, reason };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if end == 0 {
        return Err(MetaError::Empty { slot });
    }
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(damaged("bytes after the text".into()));
    }
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| damaged("not UTF-8".into()))?;
    let pos = text
        .rfind("CHECKSUM=")
        .ok_or_else(|| damaged("no checksum".into()))?;
    let (body, tail) = text.split_at(pos);
    let want = tail
        .trim_end()
        .strip_prefix("CHECKSUM=")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| damaged("malformed checksum".into()))?;
    if crc32fast::hash(body.as_bytes()) != want {
        return Err(damaged("checksum mismatch (torn or foreign write)".into()));
    }
    let mut kv = std::collections::HashMap::new();
    for line in body.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| damaged(format!("line {line:?}")))?;
        kv.insert(k, v);
    }
    let get = |k: &str| kv.get(k).copied().ok_or_else(|| damaged(format!("no {k}")));
    let num = |k: &str| -> Result<u64, MetaError> {
        get(k)?
            .parse()
            .map_err(|_| damaged(format!("{k} is not a number")))
    };
    let uuid = |k: &str| -> Result<Uuid, MetaError> {
        Uuid::parse_str(get(k)?).map_err(|_| damaged(format!("{k} is not a UUID")))
    };
    let version = num("LVC_META")?;
    if !(1..=u64::from(SLOT_VERSION)).contains(&version) {
        return Err(damaged(format!("unknown format {}", get("LVC_META")?)));
    }
    let opt_num = |k: &str| -> Result<Option<u64>, MetaError> {
        match get(k)? {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| damaged(format!("{k} is not a number"))),
        }
    };
    let fence = if version >= 2 {
        FenceRecord {
            last: opt_num("FENCED")?.map(Generation::new),
            count: opt_num("FENCES")?,
        }
    } else {
        FenceRecord {
            last: None,
            count: None,
        }
    };
    Ok(VolumeMeta {
        id: VolumeId::from_uuid(uuid("ID")?),
        image: ImageId::from_uuid(uuid("IMAGE")?),
        parent: match get("PARENT")? {
            "" => None,
            _ => Some(VolumeId::from_uuid(uuid("PARENT")?)),
        },
        format: get("FORMAT")?.parse().map_err(damaged)?,
        capacity: Bytes(num("CAPACITY")?),
        role: get("ROLE")?.parse().map_err(damaged)?,
        legality: get("LEGALITY")?.parse().map_err(damaged)?,
        generation: Generation::new(num("GENERATION")?),
        ctime: num("CTIME")?,
        description: unescape(get("DESCRIPTION")?),
        fence,
        partial: version >= 2 && kv.get("PARTIAL") == Some(&"1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeMeta {
        VolumeMeta {
            id: VolumeId::random(),
            image: ImageId::random(),
            parent: Some(VolumeId::random()),
            format: Format::Qcow2,
            capacity: Bytes(1 << 30),
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: Generation::new(7),
            ctime: 1_700_000_000,
            description: "line one\nback\\slash = ok \u{1}".into(),
            fence: FenceRecord {
                last: Some(Generation::new(3)),
                count: Some(1),
            },
            partial: true,
        }
    }

    #[test]
    fn round_trip_in_512_bytes() -> Result<(), MetaError> {
        let mut m = sample();
        m.description = "x".repeat(MAX_DESCRIPTION);
        let b = encode(&m, 512, SLOT_VERSION)?;
        assert_eq!(b.len(), 512);
        assert_eq!(decode(3, &b)?, m);
        let m = sample();
        let b = encode(&m, 512, SLOT_VERSION)?;
        assert_eq!(decode(3, &b)?, m);
        // Sizes are stored as plain byte counts (not `Bytes`'s human form).
        assert!(b.windows(20).any(|w| w == b"\nCAPACITY=1073741824"));
        Ok(())
    }

    #[test]
    fn detects_empty_torn_and_foreign() -> Result<(), MetaError> {
        assert_eq!(decode(1, &[0u8; 512]), Err(MetaError::Empty { slot: 1 }));
        let mut b = encode(&sample(), 512, SLOT_VERSION)?;
        b[20] ^= 1;
        assert!(matches!(decode(1, &b), Err(MetaError::Damaged { .. })));
        let mut b = encode(&sample(), 512, SLOT_VERSION)?;
        b[500] = 7;
        assert!(matches!(decode(1, &b), Err(MetaError::Damaged { .. })));
        assert!(matches!(
            decode(1, b"hello world"),
            Err(MetaError::Damaged { .. })
        ));
        Ok(())
    }

    #[test]
    fn the_largest_volume_fits_a_512_byte_slot() -> Result<(), MetaError> {
        let mut m = sample();
        // The longest description as stored, and every number at its widest.
        m.description = "x".repeat(MAX_DESCRIPTION);
        m.generation = Generation::new(u64::MAX);
        m.capacity = Bytes(u64::MAX);
        m.ctime = u64::MAX;
        m.fence = FenceRecord {
            last: Some(Generation::new(u64::MAX)),
            count: Some(u64::MAX),
        };
        assert!(check_description(&m.description).is_ok());
        assert_eq!(decode(0, &encode(&m, 512, SLOT_VERSION)?)?, m);
        Ok(())
    }

    #[test]
    fn version_1_slots_are_read_with_an_unknown_fence_history() -> Result<(), MetaError> {
        let m = sample();
        let v1 = encode(&m, 512, 1)?;
        assert!(v1.starts_with(b"LVC_META=1\n"));
        assert!(!v1.windows(7).any(|w| w == b"FENCED="));
        let back = decode(0, &v1)?;
        assert_eq!(
            back.fence,
            FenceRecord {
                last: None,
                count: None
            }
        );
        assert!(!back.partial, "version 1 records no partial data");
        assert_eq!(
            VolumeMeta {
                fence: m.fence,
                partial: m.partial,
                ..back
            },
            m
        );
        // A slot as lvchain 0.1 wrote it, byte for byte.
        let body = format!(
            "LVC_META=1\nID={}\nIMAGE={}\nPARENT=\nFORMAT=raw\nCAPACITY=4096\nROLE=leaf\n\
             LEGALITY=legal\nGENERATION=5\nCTIME=1\nDESCRIPTION=d\n",
            m.id, m.image
        );
        let old = format!("{body}CHECKSUM={:08x}\n", crc32fast::hash(body.as_bytes()));
        let mut bytes = old.into_bytes();
        bytes.resize(512, 0);
        let read = decode(1, &bytes)?;
        assert_eq!(
            (read.generation, read.fence.count),
            (Generation::new(5), None)
        );
        Ok(())
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut m = sample();
        m.description = "y".repeat(600);
        assert!(matches!(
            encode(&m, 512, SLOT_VERSION),
            Err(MetaError::TooLarge { .. })
        ));
    }

    #[test]
    fn descriptions_are_limited_as_stored() {
        assert!(check_description(&"x".repeat(MAX_DESCRIPTION)).is_ok());
        assert!(check_description(&"\t".repeat(MAX_DESCRIPTION)).is_err());
        assert!(check_description(&"\n".repeat(MAX_DESCRIPTION / 2 + 1)).is_err());
        // Whatever passes fits a 512-byte slot.
        let mut m = sample();
        m.description = "\u{1}".repeat(MAX_DESCRIPTION / 6);
        assert!(check_description(&m.description).is_ok());
        assert!(encode(&m, 512, SLOT_VERSION).is_ok());
    }
}
