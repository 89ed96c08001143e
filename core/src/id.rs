//! Identifiers: 16 random bytes made where the thing is born, shown as bs58check.
//!
//! The text form is the one automerge-repo uses for document ids (base58 with a 4-byte
//! double-SHA-256 checksum and no version byte), so an encounter id can later be opened by an
//! automerge-repo client as a document URL `automerge:<id>`. A typo in an id is caught by the
//! checksum instead of silently naming another record.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text or byte form is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("not a valid id (expected bs58check text of 16 bytes): {0}")]
    NotBase58Check(String),
    #[error("an id is 16 bytes, this one is {0}")]
    WrongLength(usize),
}

/// Fresh random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random generator is unavailable");
    bytes
}

macro_rules! sixteen_byte_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(random_bytes())
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                let array: [u8; 16] =
                    bytes.try_into().map_err(|_| IdError::WrongLength(bytes.len()))?;
                Ok(Self(array))
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&bs58::encode(self.0).with_check().into_string())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                let bytes = bs58::decode(text.trim())
                    .with_check(None)
                    .into_vec()
                    .map_err(|e| IdError::NotBase58Check(match e {
                        bs58::decode::Error::InvalidChecksum { .. } => {
                            "its checksum does not match (a typo?)".to_string()
                        }
                        bs58::decode::Error::InvalidCharacter { character, .. } => {
                            format!("`{character}` is not a base58 character")
                        }
                        other => other.to_string(),
                    }))?;
                Self::from_slice(&bytes)
            }
        }

        /// Human-readable formats (JSON) get the bs58check text; binary formats (CBOR) the bytes.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_string())
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
                    Self::from_slice(&bytes).map_err(serde::de::Error::custom)
                }
            }
        }
    };
}

sixteen_byte_id!(
    /// One encounter, and so one Automerge document. Made on the device that logs it.
    EncounterId
);
sixteen_byte_id!(
    /// One enrolled device. Made by the server at enrolment; it prefixes every Automerge actor id
    /// the device writes with, so the server can check who wrote a change.
    DeviceId
);

/// Length of an actor id: the device id followed by 8 random bytes for the store that writes.
///
/// Two stores on one device (a reinstall, a second profile) must never share an actor id, or
/// their changes would collide; the random suffix keeps them apart while the prefix still names
/// the device.
pub const ACTOR_ID_LEN: usize = 24;

/// A fresh actor id for a store of `device`.
pub fn new_actor_id(device: DeviceId) -> automerge::ActorId {
    let mut bytes = Vec::with_capacity(ACTOR_ID_LEN);
    bytes.extend_from_slice(device.as_bytes());
    bytes.extend_from_slice(&random_bytes::<8>());
    automerge::ActorId::from(bytes)
}

/// The device an actor id belongs to, if it has the Auxilio actor id shape.
pub fn device_of_actor(actor: &automerge::ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    if bytes.len() != ACTOR_ID_LEN {
        return None;
    }
    DeviceId::from_slice(&bytes[..16]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encounter_id_round_trips_through_text() {
        let id = EncounterId::random();
        let text = id.to_string();
        assert_eq!(text.parse::<EncounterId>().unwrap(), id);
    }

    #[test]
    fn text_form_matches_automerge_repo_bs58check() {
        // automerge-repo shows the 16 bytes of a document id with bs58check: base58 of the bytes
        // followed by the first 4 bytes of sha256(sha256(bytes)).
        let id = EncounterId::from_bytes([0u8; 16]);
        let text = id.to_string();
        let decoded = bs58::decode(&text).into_vec().unwrap();
        assert_eq!(decoded.len(), 20);
        assert_eq!(&decoded[..16], &[0u8; 16]);
    }

    #[test]
    fn a_typo_in_an_id_is_rejected_by_the_checksum() {
        let text = EncounterId::random().to_string();
        let mut chars: Vec<char> = text.chars().collect();
        chars[3] = if chars[3] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert!(matches!(
            typo.parse::<EncounterId>(),
            Err(IdError::NotBase58Check(_))
        ));
    }

    #[test]
    fn wrong_length_is_rejected() {
        let text = bs58::encode([1u8; 12]).with_check().into_string();
        assert_eq!(text.parse::<EncounterId>(), Err(IdError::WrongLength(12)));
    }

    #[test]
    fn actor_ids_name_their_device_and_differ_per_store() {
        let device = DeviceId::random();
        let first = new_actor_id(device);
        let second = new_actor_id(device);
        assert_ne!(first, second);
        assert_eq!(device_of_actor(&first), Some(device));
        assert_eq!(device_of_actor(&automerge::ActorId::random()), None);
    }
}
