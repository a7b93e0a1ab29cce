//! Typed ids: a volume's id and an image's id are different types, so one can never be passed
//! where the other is meant. Both are UUIDs on disk (LV names, tags, slots) and in JSON. Also
//! a domain's VG name ([`VgName`], checked against lvm's rules when it is made) and a volume's
//! generation.

use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of ", $what, " (a UUID).")]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Default,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                $name(Uuid::new_v4())
            }

            pub const fn from_uuid(u: Uuid) -> Self {
                $name(u)
            }

            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| format!("{s:?} is not a UUID"))
            }
        }
    };
}

id_type!(VolumeId, "a volume");
id_type!(ImageId, "an image");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_print_as_uuids() {
        let v = VolumeId::random();
        assert_eq!(v.to_string().parse::<VolumeId>(), Ok(v));
        assert_eq!(serde_json::to_string(&v).ok(), Some(format!("\"{v}\"")));
        assert!("nope".parse::<ImageId>().is_err());
    }
}

/// How far a fence moves a volume's generation (a late runner then finds one it did not
/// expect).
pub const FENCE_STEP: u64 = 3;

/// A volume's generation: moved on by one by every operation that completes, by
/// [`FENCE_STEP`] by a fence. Moving it on is checked: it never wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Generation(u64);

impl Generation {
    /// The highest generation an operation or a fence may start at (its end must still count).
    pub const MAX_START: Generation = Generation(u64::MAX - FENCE_STEP);

    pub const fn new(g: u64) -> Self {
        Generation(g)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The generation a completed operation leaves (None: out of range).
    pub fn next(self) -> Option<Generation> {
        self.0.checked_add(1).map(Generation)
    }

    /// The generation a fence leaves (None: out of range).
    pub fn fenced(self) -> Option<Generation> {
        self.0.checked_add(FENCE_STEP).map(Generation)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    #[test]
    fn generations_move_on_checked() {
        assert_eq!(Generation::new(4).next(), Some(Generation::new(5)));
        assert_eq!(Generation::new(4).fenced(), Some(Generation::new(7)));
        assert_eq!(Generation::new(u64::MAX).next(), None);
        assert!(Generation::MAX_START.fenced().is_some());
        assert_eq!(Generation::new(u64::MAX - 2).fenced(), None);
    }
}

/// A volume group name that lvm accepts (lvm(8), "VALID NAMES"): 1 to [`VgName::MAX_LEN`]
/// characters of `A-Z a-z 0-9 + _ . -`, not beginning with a hyphen, not `.` or `..`. Checked
/// when it is made, so a bad name is refused before any lvm command. (lvm also refuses a new
/// VG named like an entry of `/dev`: that depends on the host and is left to `vgcreate`.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct VgName(String);

/// Why a string is not a [`VgName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadVgName {
    #[error("a volume group name cannot be empty")]
    Empty,
    #[error("{name:?} is not a valid volume group name: {len} characters, lvm takes at most {max}", max = VgName::MAX_LEN)]
    TooLong { name: String, len: usize },
    #[error("{name:?} is not a valid volume group name: {c:?} is not one of the letters, digits, + _ . -")]
    Character { name: String, c: char },
    #[error("{name:?} is not a valid volume group name: it cannot begin with a hyphen")]
    Hyphen { name: String },
    #[error("{name:?} is not a valid volume group name: lvm reserves it")]
    Reserved { name: String },
}

impl VgName {
    /// The longest name lvm takes (its `NAME_LEN` of 128 bytes holds the terminating NUL).
    pub const MAX_LEN: usize = 127;

    /// Checks `name` against lvm's rules.
    pub fn new(name: &str) -> Result<VgName, BadVgName> {
        let owned = || name.to_string();
        if name.is_empty() {
            return Err(BadVgName::Empty);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "+_.-".contains(*c)))
        {
            return Err(BadVgName::Character { name: owned(), c });
        }
        if name.len() > VgName::MAX_LEN {
            return Err(BadVgName::TooLong {
                name: owned(),
                len: name.len(),
            });
        }
        if name.starts_with('-') {
            return Err(BadVgName::Hyphen { name: owned() });
        }
        if name == "." || name == ".." {
            return Err(BadVgName::Reserved { name: owned() });
        }
        Ok(VgName(owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for VgName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VgName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for VgName {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl PartialEq<str> for VgName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for VgName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for VgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl VgName {
    /// A file domain's directory as the domain argument (any path containing a `/`); never a
    /// VG name, so no lvm command ever gets it.
    pub fn file_domain(path: &str) -> Option<VgName> {
        (path.contains('/') && !path.contains('\0')).then(|| VgName(path.to_string()))
    }

    /// Whether this names a file domain (a directory) rather than a VG.
    pub fn is_file_domain(&self) -> bool {
        self.0.contains('/')
    }
}

/// How a domain argument is parsed: a path (containing a `/`) is a file domain, anything else
/// must be a VG name lvm accepts.
impl FromStr for VgName {
    type Err = BadVgName;
    fn from_str(s: &str) -> Result<Self, BadVgName> {
        VgName::file_domain(s).map_or_else(|| VgName::new(s), Ok)
    }
}

#[cfg(test)]
mod vg_name_tests {
    use super::*;

    #[test]
    fn lvm_vg_names_are_accepted() {
        let longest = "v".repeat(VgName::MAX_LEN);
        for name in [
            "vg0",
            "A+b_c.d-e",
            "...",
            ".a",
            "9",
            longest.as_str(),
            "snapshot",
        ] {
            let vg = VgName::new(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(vg.as_str(), name);
            assert_eq!(vg.to_string(), name);
            assert_eq!(name.parse::<VgName>().as_ref(), Ok(&vg));
        }
    }

    #[test]
    fn names_lvm_refuses_are_refused_with_the_reason() {
        let long = "v".repeat(VgName::MAX_LEN + 1);
        let cases = [
            ("", BadVgName::Empty),
            (
                long.as_str(),
                BadVgName::TooLong {
                    name: long.clone(),
                    len: 128,
                },
            ),
            ("-vg", BadVgName::Hyphen { name: "-vg".into() }),
            (".", BadVgName::Reserved { name: ".".into() }),
            ("..", BadVgName::Reserved { name: "..".into() }),
            (
                "a/b",
                BadVgName::Character {
                    name: "a/b".into(),
                    c: '/',
                },
            ),
            (
                "a b",
                BadVgName::Character {
                    name: "a b".into(),
                    c: ' ',
                },
            ),
            (
                "vg\u{e9}",
                BadVgName::Character {
                    name: "vg\u{e9}".into(),
                    c: '\u{e9}',
                },
            ),
            (
                "a*",
                BadVgName::Character {
                    name: "a*".into(),
                    c: '*',
                },
            ),
        ];
        for (name, want) in cases {
            assert_eq!(VgName::new(name), Err(want), "{name:?}");
        }
        let e = VgName::new("a/b")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("not a valid volume group name") && e.contains("'/'"),
            "{e}"
        );
    }
}
