//! Encoding and decoding of one metadata slot (format version 1).

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Longest description accepted (bytes), so that a volume fits a 512-byte slot.
pub const MAX_DESCRIPTION: usize = 160;
const VERSION: u32 = 1;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("slot {slot} is empty")]
    Empty { slot: u32 },
    #[error("slot {slot} is damaged: {reason}")]
    Damaged { slot: u32, reason: String },
    #[error("metadata of volume {id} does not fit a {size}-byte slot")]
    TooLarge { id: Uuid, size: usize },
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
    pub id: Uuid,
    pub image: Uuid,
    pub parent: Option<Uuid>,
    pub format: Format,
    pub capacity: u64,
    pub role: Role,
    pub legality: Legality,
    pub generation: u64,
    pub ctime: u64,
    pub description: String,
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

/// The slot image of `meta` (`size` bytes, zero padded).
pub fn encode(meta: &VolumeMeta, size: usize) -> Result<Vec<u8>, MetaError> {
    let parent = meta.parent.map(|p| p.to_string()).unwrap_or_default();
    let body = format!(
        "LVC_META={VERSION}\nID={}\nIMAGE={}\nPARENT={parent}\nFORMAT={}\nCAPACITY={}\nROLE={}\n\
         LEGALITY={}\nGENERATION={}\nCTIME={}\nDESCRIPTION={}\n",
        meta.id,
        meta.image,
        meta.format,
        meta.capacity,
        meta.role,
        meta.legality,
        meta.generation,
        meta.ctime,
        escape(&meta.description)
    );
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
    if num("LVC_META")? != u64::from(VERSION) {
        return Err(damaged(format!("unknown format {}", get("LVC_META")?)));
    }
    Ok(VolumeMeta {
        id: uuid("ID")?,
        image: uuid("IMAGE")?,
        parent: match get("PARENT")? {
            "" => None,
            _ => Some(uuid("PARENT")?),
        },
        format: get("FORMAT")?.parse().map_err(damaged)?,
        capacity: num("CAPACITY")?,
        role: get("ROLE")?.parse().map_err(damaged)?,
        legality: get("LEGALITY")?.parse().map_err(damaged)?,
        generation: num("GENERATION")?,
        ctime: num("CTIME")?,
        description: unescape(get("DESCRIPTION")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeMeta {
        VolumeMeta {
            id: Uuid::new_v4(),
            image: Uuid::new_v4(),
            parent: Some(Uuid::new_v4()),
            format: Format::Qcow2,
            capacity: 1 << 30,
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: 7,
            ctime: 1_700_000_000,
            description: "line one\nback\\slash = ok \u{1}".into(),
        }
    }

    #[test]
    fn round_trip_in_512_bytes() -> Result<(), MetaError> {
        let mut m = sample();
        m.description = "x".repeat(MAX_DESCRIPTION);
        let b = encode(&m, 512)?;
        assert_eq!(b.len(), 512);
        assert_eq!(decode(3, &b)?, m);
        let m = sample();
        assert_eq!(decode(3, &encode(&m, 512)?)?, m);
        Ok(())
    }

    #[test]
    fn detects_empty_torn_and_foreign() -> Result<(), MetaError> {
        assert_eq!(decode(1, &[0u8; 512]), Err(MetaError::Empty { slot: 1 }));
        let mut b = encode(&sample(), 512)?;
        b[20] ^= 1;
        assert!(matches!(decode(1, &b), Err(MetaError::Damaged { .. })));
        let mut b = encode(&sample(), 512)?;
        b[500] = 7;
        assert!(matches!(decode(1, &b), Err(MetaError::Damaged { .. })));
        assert!(matches!(
            decode(1, b"hello world"),
            Err(MetaError::Damaged { .. })
        ));
        Ok(())
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut m = sample();
        m.description = "y".repeat(600);
        assert!(matches!(encode(&m, 512), Err(MetaError::TooLarge { .. })));
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
        assert!(encode(&m, 512).is_ok());
    }
}
