//! Typed ids: a volume's id and an image's id are different types, so one can never be passed
//! where the other is meant. Both are UUIDs on disk (LV names, tags, slots) and in JSON.

use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of ", $what, " (a UUID).")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize,
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
