//! Who the other phone is, before a relay moves any record: each device holds an Ed25519 relay
//! signing key made on the device (it never leaves the store), registers its public half with
//! the server over its authenticated sync, and keeps the server's list of the current relay keys
//! of its team (active devices whose role syncs; a revoked device drops out at the next sync).
//!
//! The handshake, sans-IO (the caller carries the messages, see [`crate::relay`]):
//!
//! 1. each side sends a [`RelayHello`]: its device id, its team and a fresh random nonce;
//! 2. the initiator, then the responder, sends a [`RelayProof`]: its signature over a transcript
//!    of the protocol label, its role and both hellos (so a proof is good for this exchange,
//!    this direction and these two phones only);
//! 3. each side checks the other's signature against the key its store holds for the device the
//!    peer named, and refuses a device it does not know as a current teammate, a bad signature,
//!    and a peer claiming this phone's own device id.
//!
//! A phone that has never synced knows no keys and refuses to relay: "sync once with signal
//! first". No clock is read: the list is as fresh as the phone's last sync.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::{DeviceId, random_bytes};
use crate::store::{DeviceStore, StoreError, enrolment, put_setting, setting};

/// The label every signed transcript starts with.
const TRANSCRIPT_LABEL: &[u8] = b"auxilio relay v2 handshake\0";
/// The store setting holding this device's relay signing key (its 32-byte seed, hex).
const SIGNING_KEY_SETTING: &str = "relay_signing_key";
/// The store setting holding the team's current relay keys, as the server last sent them.
const TEAM_KEYS_SETTING: &str = "relay_team_keys";
/// The length of a hello's nonce.
pub const NONCE_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum RelayAuthError {
    #[error(
        "this phone does not know its team's relay keys yet: sync once with signal first, then relay (nothing was exchanged)"
    )]
    NotIntroduced,
    #[error(
        "device {device} is not a current device of team `{team}` as of this phone's last sync (not enrolled, revoked, or it has never synced): nothing was exchanged. Sync both phones with signal, then relay again"
    )]
    UnknownPeer { device: DeviceId, team: String },
    #[error(
        "the other phone claims to be device {device} but could not prove it holds that device's relay key: nothing was exchanged"
    )]
    BadProof { device: DeviceId },
    #[error(
        "the other phone claims to be this phone (device {device}): refused, nothing was exchanged"
    )]
    ClaimsOurId { device: DeviceId },
    #[error("the relay keys in this store are damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<StoreError> for RelayAuthError {
    fn from(err: StoreError) -> Self {
        RelayAuthError::Store(Box::new(err))
    }
}

/// A device's public relay key, as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayKey {
    pub device: DeviceId,
    /// The Ed25519 public key, 64 hex digits.
    pub key: String,
}

/// The body a device sends to `POST /v1/relay-keys`: its own relay public key (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayKeyRegistration {
    pub key: String,
}

/// The answer to `POST /v1/relay-keys`: the current relay keys of the device's team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRelayKeys {
    pub keys: Vec<RelayKey>,
}

/// The first message of each side: who it says it is, and a nonce that makes this exchange's
/// transcript unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHello {
    pub protocol: u32,
    pub team: String,
    pub device: DeviceId,
    pub nonce: ByteBuf,
}

/// A side's signature over the transcript of both hellos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayProof {
    pub protocol: u32,
    pub signature: ByteBuf,
}

/// Which side signs: the transcript names it, so one side's proof cannot be sent back as the
/// other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Initiator,
    Responder,
}

/// The bytes a side signs: the label, the signer, then both hellos (initiator's first), each
/// length-prefixed.
pub fn transcript(signer: Signer, initiator: &RelayHello, responder: &RelayHello) -> Vec<u8> {
    let mut out = TRANSCRIPT_LABEL.to_vec();
    out.push(match signer {
        Signer::Initiator => b'I',
        Signer::Responder => b'R',
    });
    for hello in [initiator, responder] {
        let bytes = crate::protocol::encode(hello);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `text` is an Ed25519 public key in the form [`RelayKey::key`] takes.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&unhex::<32>(text)?).ok()
}

fn signing_key(conn: &Connection) -> Result<Option<SigningKey>, RelayAuthError> {
    setting(conn, SIGNING_KEY_SETTING)?
        .map(|text| {
            unhex::<32>(&text)
                .map(|seed| SigningKey::from_bytes(&seed))
                .ok_or_else(|| RelayAuthError::Damaged("the relay signing key".into()))
        })
        .transpose()
}

/// Makes this device's relay signing key if it has none (called at enrolment, and by
/// [`DeviceStore::relay_public_key`] for stores enrolled before relay keys existed).
pub(crate) fn ensure_signing_key(conn: &Connection) -> Result<(), StoreError> {
    if setting(conn, SIGNING_KEY_SETTING)?.is_none() {
        put_setting(conn, SIGNING_KEY_SETTING, &hex(&random_bytes::<32>()))?;
    }
    Ok(())
}

fn team_keys(conn: &Connection) -> Result<Option<Vec<RelayKey>>, RelayAuthError> {
    setting(conn, TEAM_KEYS_SETTING)?
        .map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| RelayAuthError::Damaged(format!("the team's relay keys: {e}")))
        })
        .transpose()
}

impl DeviceStore {
    /// This device's public relay key (64 hex digits), made now if the store has none yet.
    pub fn relay_public_key(&mut self) -> Result<String, RelayAuthError> {
        ensure_signing_key(self.connection())?;
        let key = signing_key(self.connection())?.ok_or(RelayAuthError::NotIntroduced)?;
        Ok(hex(key.verifying_key().as_bytes()))
    }

    /// Replaces the team's current relay keys with the server's list (keys that do not parse
    /// are left out).
    pub fn set_team_relay_keys(&mut self, keys: &[RelayKey]) -> Result<(), RelayAuthError> {
        let valid: Vec<&RelayKey> = keys
            .iter()
            .filter(|k| parse_public_key(&k.key).is_some())
            .collect();
        put_setting(
            self.connection(),
            TEAM_KEYS_SETTING,
            &serde_json::to_string(&valid).expect("serialisable"),
        )?;
        Ok(())
    }

    /// The team's relay keys the server last sent (`None` before the first sync that got them).
    pub fn team_relay_keys(&self) -> Result<Option<Vec<RelayKey>>, RelayAuthError> {
        team_keys(self.connection())
    }

    /// This side's hello, with a fresh nonce. Refused on a phone that has never learnt its
    /// team's keys: it could not check the other phone.
    pub fn relay_hello(&self, protocol: u32) -> Result<RelayHello, RelayAuthError> {
        let conn = self.connection();
        let enrolled = enrolment(conn)?.ok_or(StoreError::NotEnrolled)?;
        if signing_key(conn)?.is_none() || team_keys(conn)?.is_none() {
            return Err(RelayAuthError::NotIntroduced);
        }
        Ok(RelayHello {
            protocol,
            team: enrolled.team,
            device: enrolled.device_id,
            nonce: ByteBuf::from(random_bytes::<NONCE_BYTES>().to_vec()),
        })
    }

    /// This side's proof for the exchange of `initiator` and `responder`'s hellos.
    pub fn relay_proof(
        &self,
        signer: Signer,
        initiator: &RelayHello,
        responder: &RelayHello,
    ) -> Result<RelayProof, RelayAuthError> {
        let key = signing_key(self.connection())?.ok_or(RelayAuthError::NotIntroduced)?;
        let signature = key.sign(&transcript(signer, initiator, responder));
        Ok(RelayProof {
            protocol: initiator.protocol,
            signature: ByteBuf::from(signature.to_bytes().to_vec()),
        })
    }

    /// Checks that the peer's hello names a current teammate that is not this device (done
    /// before any proof is exchanged). The team itself is checked by the caller.
    pub fn check_relay_peer(&self, peer: &RelayHello) -> Result<VerifyingKey, RelayAuthError> {
        let conn = self.connection();
        let enrolled = enrolment(conn)?.ok_or(StoreError::NotEnrolled)?;
        if peer.device == enrolled.device_id {
            return Err(RelayAuthError::ClaimsOurId {
                device: peer.device,
            });
        }
        let keys = team_keys(conn)?.ok_or(RelayAuthError::NotIntroduced)?;
        keys.iter()
            .find(|k| k.device == peer.device)
            .and_then(|k| parse_public_key(&k.key))
            .ok_or_else(|| RelayAuthError::UnknownPeer {
                device: peer.device,
                team: enrolled.team,
            })
    }

    /// Checks the peer's proof for the exchange of `initiator` and `responder`'s hellos; the
    /// peer is the side `signer` names.
    pub fn verify_relay_proof(
        &self,
        signer: Signer,
        initiator: &RelayHello,
        responder: &RelayHello,
        proof: &RelayProof,
    ) -> Result<(), RelayAuthError> {
        let peer = match signer {
            Signer::Initiator => initiator,
            Signer::Responder => responder,
        };
        let key = self.check_relay_peer(peer)?;
        let bad = || RelayAuthError::BadProof {
            device: peer.device,
        };
        let signature = Signature::from_slice(&proof.signature).map_err(|_| bad())?;
        key.verify(&transcript(signer, initiator, responder), &signature)
            .map_err(|_| bad())
    }
}

/// Stores for the unit tests of this crate that relay.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Makes every store in `stores` know every other's relay key, as syncing does.
    pub(crate) fn introduce(stores: &mut [&mut DeviceStore]) {
        let mut keys = Vec::new();
        for store in stores.iter_mut() {
            keys.push(RelayKey {
                device: store.enrolment().unwrap().unwrap().device_id,
                key: store.relay_public_key().unwrap(),
            });
        }
        for store in stores.iter_mut() {
            store.set_team_relay_keys(&keys).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_good_only_for_its_signer_and_its_two_hellos() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = crate::store::test_support::enrolled_store(&dir, "a.db", "sonora");
        let mut b = crate::store::test_support::enrolled_store(&dir, "b.db", "sonora");
        test_support::introduce(&mut [&mut a, &mut b]);
        let (hello_a, hello_b) = (a.relay_hello(2).unwrap(), b.relay_hello(2).unwrap());
        let proof = a
            .relay_proof(Signer::Initiator, &hello_a, &hello_b)
            .unwrap();
        b.verify_relay_proof(Signer::Initiator, &hello_a, &hello_b, &proof)
            .unwrap();
        let replayed = b.verify_relay_proof(Signer::Responder, &hello_b, &hello_a, &proof);
        assert!(matches!(replayed, Err(RelayAuthError::BadProof { .. })));
        let fresh = b.relay_hello(2).unwrap();
        let other_exchange = b.verify_relay_proof(Signer::Initiator, &hello_a, &fresh, &proof);
        assert!(matches!(
            other_exchange,
            Err(RelayAuthError::BadProof { .. })
        ));
    }
}
