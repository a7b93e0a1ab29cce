//! Typed ids: a volume's id and an image's id are different types, so one can never be passed
//! where the other is meant. Both are UUIDs on disk (LV names, tags, slots) and in JSON.

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
