//! The sealed identity vault: names and family contacts of a UASC or missing-person case,
//! encrypted on the device to the protection officers' public keys.
//!
//! A vault entry is an immutable envelope ([`SealedVault`]), kept apart from the encounter's
//! Automerge document: the document's history cannot forget, while an envelope can simply be
//! deleted, and the rest of the record (counts, place, services) stays readable for maps and
//! exports. Encryption is the `age` format with X25519 recipients (`age1...` public keys); the
//! server stores and syncs the ciphertext and holds no key that opens it. Only a protection
//! officer's identity (`AGE-SECRET-KEY-1...`) opens an envelope, and [`reseal`] re-encrypts one
//! to a new set of keys when keys are rotated.
//!
//! Plaintext exists only in memory: [`seal`] serialises the contents to JSON and encrypts them
//! in one step, and [`open`] decrypts into a bounded buffer.
//!
//! **A reseal cannot swap the contents.** [`seal`] commits to what it sealed: it draws a random
//! salt, encrypts it with the contents, and puts the envelope's `digest` in clear, SHA-256 of
//! the salt and the contents ([`SealedVault::digest`]). The salt keeps the digest from
//! confirming a guessed name; the server keeps the digest from the first upload and refuses a
//! reseal that carries another. [`open`] recomputes it from what it decrypted and refuses an
//! envelope whose contents do not match ([`VaultError::ContentsAltered`]): an officer who seals
//! other contents under the kept digest is caught by every officer who opens it. [`reseal`]
//! re-encrypts the same plaintext, so the digest stays. Envelopes sealed before digests existed
//! have none and open as they are.

use std::io::{Read, Write};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::EncounterId;
use crate::schema::{Encounter, Service};

/// The largest ciphertext an envelope may carry; an envelope is network input, and the contents
/// it seals are a few short fields.
pub const MAX_CIPHERTEXT_BYTES: usize = 64 * 1024;
/// The largest encoded envelope [`decode_sealed`] reads (ciphertext plus its few other fields).
pub const MAX_ENVELOPE_BYTES: usize = MAX_CIPHERTEXT_BYTES + 8 * 1024;
/// The most recipients one envelope is sealed to (the protection officers' keys).
pub const MAX_RECIPIENTS: usize = 32;
/// Length of an envelope id.
pub const ENVELOPE_ID_BYTES: usize = 16;

/// Bounds of the sealed contents, in characters.
pub const MAX_NAMES: usize = 8;
pub const MAX_FAMILY_CONTACTS: usize = 16;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_RELATION_CHARS: usize = 100;
pub const MAX_PHONE_CHARS: usize = 40;
pub const MAX_PLACE_CHARS: usize = 200;
pub const MAX_VAULT_NOTES_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the vault contents are invalid: {0}")]
    Invalid(String),
    #[error(
        "there is no protection officer's key to seal to: sync once so the device learns the protection officers' keys (an administrator adds them with `auxilio admin vault-key add`)"
    )]
    NoRecipients,
    #[error("`{key}` is not an age X25519 public key (age1...): {reason}")]
    BadRecipient { key: String, reason: String },
    #[error("the identity is not an age X25519 secret key (AGE-SECRET-KEY-1...): {0}")]
    BadIdentity(String),
    #[error(
        "this identity is not among the envelope's recipients ({recipients}); ask for the vault to be resealed to your key with `auxilio vault reseal`"
    )]
    NotARecipient { recipients: String },
    #[error("the envelope is damaged or was tampered with: {0}")]
    Damaged(String),
    #[error("the envelope is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the envelope is malformed: {0}")]
    Malformed(String),
    #[error(
        "WARNING: the contents of this envelope do not match what the phone sealed (their digest differs from the one the server kept at upload): someone resealed it with other contents. Do not act on them; the audit log's `vault.reseal` rows name who resealed it"
    )]
    ContentsAltered,
}

/// One family contact of the person.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyContact {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
}

/// What a vault seals: the identity data that must never be readable on the server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultContents {
    /// The person's names (the name given, other spellings, a nickname); at least one.
    pub names: Vec<String>,
    #[serde(default)]
    pub family_contacts: Vec<FamilyContact>,
    /// A short note for the protection officer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

fn check_length(field: &str, value: &str, max: usize) -> Result<(), VaultError> {
    let chars = value.chars().count();
    if chars > max {
        return Err(VaultError::Invalid(format!(
            "{field} has {chars} characters; at most {max}"
        )));
    }
    Ok(())
}

impl VaultContents {
    /// Checks the contents are a usable vault: at least one name, every field bounded.
    pub fn validate(&self) -> Result<(), VaultError> {
        if !self.names.iter().any(|name| !name.trim().is_empty()) {
            return Err(VaultError::Invalid(
                "names must hold at least one non-empty name".into(),
            ));
        }
        if self.names.len() > MAX_NAMES {
            return Err(VaultError::Invalid(format!(
                "names has {} entries; at most {MAX_NAMES}",
                self.names.len()
            )));
        }
        for (index, name) in self.names.iter().enumerate() {
            check_length(&format!("names[{index}]"), name, MAX_NAME_CHARS)?;
        }
        if self.family_contacts.len() > MAX_FAMILY_CONTACTS {
            return Err(VaultError::Invalid(format!(
                "family_contacts has {} entries; at most {MAX_FAMILY_CONTACTS}",
                self.family_contacts.len()
            )));
        }
        for (index, contact) in self.family_contacts.iter().enumerate() {
            let field = |name: &str| format!("family_contacts[{index}].{name}");
            if contact.name.trim().is_empty() {
                return Err(VaultError::Invalid(format!("{} is empty", field("name"))));
            }
            check_length(&field("name"), &contact.name, MAX_NAME_CHARS)?;
            for (name, value, max) in [
                ("relation", &contact.relation, MAX_RELATION_CHARS),
                ("phone", &contact.phone, MAX_PHONE_CHARS),
                ("place", &contact.place, MAX_PLACE_CHARS),
            ] {
                if let Some(value) = value {
                    check_length(&field(name), value, max)?;
                }
            }
        }
        if let Some(notes) = &self.notes {
            check_length("notes", notes, MAX_VAULT_NOTES_CHARS)?;
        }
        Ok(())
    }
}

impl Encounter {
    /// Whether this encounter is a UASC or missing-person case, the only cases whose identity
    /// data may be sealed in a vault (and whose full record a protection officer reads): an
    /// unaccompanied or separated child is counted, a casualty has a UASC hand-over record, or
    /// the team located a missing person. Device and server both ask here, so they agree.
    pub fn is_protection_case(&self) -> bool {
        self.counts.uasc > 0
            || self
                .casualties
                .values()
                .any(|casualty| casualty.uasc.is_some() && casualty.withdrawn_at.is_none())
            || self.services.contains(&Service::LocatedMissing)
    }
}

/// Byte fields as lowercase hex in human-readable formats (JSON over HTTP), as bytes in CBOR.
mod hex_when_readable {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::ByteBuf;

    pub fn serialize<S: Serializer>(bytes: &ByteBuf, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&super::hex(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            super::unhex(&text)
                .map(ByteBuf::from)
                .ok_or_else(|| serde::de::Error::custom("not an even-length hex string"))
        } else {
            ByteBuf::deserialize(deserializer)
        }
    }
}

/// [`hex_when_readable`] for an optional field.
mod optional_hex_when_readable {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::ByteBuf;

    pub fn serialize<S: Serializer>(
        bytes: &Option<ByteBuf>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::hex_when_readable::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ByteBuf>, D::Error> {
        #[derive(Deserialize)]
        struct Bytes(#[serde(with = "super::hex_when_readable")] ByteBuf);
        Ok(Option::<Bytes>::deserialize(deserializer)?.map(|Bytes(bytes)| bytes))
    }
}

/// Length of an envelope's digest (SHA-256).
pub const DIGEST_BYTES: usize = 32;
/// Length of the random salt sealed with the contents.
const SALT_BYTES: usize = 32;

/// What [`seal`] encrypts: the contents and the salt of their digest. (Envelopes sealed before
/// digests existed hold the contents alone.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    vault: VaultContents,
    salt: String,
}

/// The digest an envelope carries for `contents` sealed with `salt`.
fn digest_of(salt: &[u8], contents: &VaultContents) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"auxilio vault contents v1\0");
    hasher.update(salt);
    hasher.update(serde_json::to_vec(contents).expect("vault contents serialise"));
    hasher.finalize().to_vec()
}

/// Lowercase hex of `bytes` (envelope ids in URLs and JSON).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, or `None` if it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// A sealed vault: ciphertext and the little needed to route and reseal it. It is what the
/// device keeps until the server acknowledges it, what sync carries (CBOR) and what the server
/// stores; none of its fields reveals the contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedVault {
    /// 16 random bytes naming this envelope.
    #[serde(with = "hex_when_readable")]
    pub id: ByteBuf,
    pub encounter: EncounterId,
    /// When it was sealed, by the device's clock (RFC 3339).
    pub sealed_at: String,
    /// The age public keys (`age1...`) it is sealed to.
    pub recipients: Vec<String>,
    /// The contents as JSON, encrypted in the age binary format.
    #[serde(with = "hex_when_readable")]
    pub ciphertext: ByteBuf,
    /// SHA-256 of a random salt (sealed inside) and the contents: what the sealer committed to.
    /// The server keeps the first one it received and refuses a reseal with another; [`open`]
    /// refuses contents that do not match it. Absent on envelopes sealed before digests existed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_hex_when_readable"
    )]
    pub digest: Option<ByteBuf>,
}

fn parse_recipient(key: &str) -> Result<age::x25519::Recipient, VaultError> {
    age::x25519::Recipient::from_str(key.trim()).map_err(|reason| VaultError::BadRecipient {
        key: key.chars().take(80).collect(),
        reason: reason.to_string(),
    })
}

/// Checks that `key` is an age X25519 public key; returns it in its canonical form.
pub fn parse_public_key(key: &str) -> Result<String, VaultError> {
    Ok(parse_recipient(key)?.to_string())
}

fn parse_identity(identity: &str) -> Result<age::x25519::Identity, VaultError> {
    // An identity file may hold comment lines (as `age-keygen` writes them): the key is the
    // line that starts with the secret-key prefix.
    let key = identity
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("AGE-SECRET-KEY-1"))
        .ok_or_else(|| VaultError::BadIdentity("no line starts with AGE-SECRET-KEY-1".into()))?;
    age::x25519::Identity::from_str(key).map_err(|e| VaultError::BadIdentity(e.to_string()))
}

/// The public key (`age1...`) of an identity.
pub fn public_key_of(identity: &str) -> Result<String, VaultError> {
    Ok(parse_identity(identity)?.to_public().to_string())
}

/// A new protection officer's key pair: (secret identity `AGE-SECRET-KEY-1...`, public key
/// `age1...`). The secret never leaves the officer's machine.
pub fn generate_identity() -> (String, String) {
    let identity = age::x25519::Identity::generate();
    (
        identity.to_string().expose_secret().to_string(),
        identity.to_public().to_string(),
    )
}

fn encrypt_to(
    plaintext: &[u8],
    recipients: &[String],
) -> Result<(Vec<u8>, Vec<String>), VaultError> {
    if recipients.is_empty() {
        return Err(VaultError::NoRecipients);
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(VaultError::Invalid(format!(
            "{} recipients; at most {MAX_RECIPIENTS}",
            recipients.len()
        )));
    }
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|key| parse_recipient(key))
        .collect::<Result<_, _>>()?;
    let canonical = parsed.iter().map(ToString::to_string).collect();
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| VaultError::Invalid(e.to_string()))?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut ciphertext)
        .map_err(|e| VaultError::Invalid(e.to_string()))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| VaultError::Invalid(e.to_string()))?;
    if ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return Err(VaultError::TooLarge {
            limit: MAX_CIPHERTEXT_BYTES,
        });
    }
    Ok((ciphertext, canonical))
}

/// Seals `contents` of encounter `encounter` to `recipients` (age public keys). The contents
/// are validated first; the plaintext JSON exists only in memory.
pub fn seal(
    contents: &VaultContents,
    encounter: EncounterId,
    recipients: &[String],
) -> Result<SealedVault, VaultError> {
    contents.validate()?;
    let mut salt = vec![0; SALT_BYTES];
    getrandom::fill(&mut salt).expect("the operating system provides random bytes");
    let plaintext = serde_json::to_vec(&Sealed {
        vault: contents.clone(),
        salt: hex(&salt),
    })
    .expect("vault contents serialise");
    let (ciphertext, recipients) = encrypt_to(&plaintext, recipients)?;
    let mut id = vec![0; ENVELOPE_ID_BYTES];
    getrandom::fill(&mut id).expect("the operating system provides random bytes");
    Ok(SealedVault {
        id: ByteBuf::from(id),
        encounter,
        sealed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        recipients,
        ciphertext: ByteBuf::from(ciphertext),
        digest: Some(ByteBuf::from(digest_of(&salt, contents))),
    })
}

/// Opens an envelope with a protection officer's identity (`AGE-SECRET-KEY-1...`, or the text of
/// an identity file), and checks the contents against the envelope's digest: contents that do
/// not match it are refused ([`VaultError::ContentsAltered`]), never shown as the case's.
pub fn open(sealed: &SealedVault, identity: &str) -> Result<VaultContents, VaultError> {
    let plaintext = decrypt(sealed, identity)?;
    checked_contents(sealed, &plaintext)
}

/// The contents of a decrypted envelope, checked against its digest.
fn checked_contents(sealed: &SealedVault, plaintext: &[u8]) -> Result<VaultContents, VaultError> {
    let not_a_vault = |e: serde_json::Error| {
        VaultError::Damaged(format!("the sealed contents are not a vault: {e}"))
    };
    let Some(digest) = &sealed.digest else {
        // Sealed before digests existed: the contents alone.
        return serde_json::from_slice(plaintext).map_err(not_a_vault);
    };
    let Ok(Sealed { vault, salt }) = serde_json::from_slice::<Sealed>(plaintext) else {
        return Err(VaultError::ContentsAltered);
    };
    let salt = unhex(&salt).ok_or(VaultError::ContentsAltered)?;
    if digest_of(&salt, &vault) != digest.as_slice() {
        return Err(VaultError::ContentsAltered);
    }
    Ok(vault)
}

/// Decrypts an envelope's ciphertext into a bounded buffer.
fn decrypt(sealed: &SealedVault, identity: &str) -> Result<Vec<u8>, VaultError> {
    let identity = parse_identity(identity)?;
    if sealed.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return Err(VaultError::TooLarge {
            limit: MAX_CIPHERTEXT_BYTES,
        });
    }
    let decryptor = age::Decryptor::new(sealed.ciphertext.as_slice())
        .map_err(|e| VaultError::Damaged(e.to_string()))?;
    let reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => VaultError::NotARecipient {
                recipients: sealed.recipients.join(", "),
            },
            other => VaultError::Damaged(other.to_string()),
        })?;
    let mut plaintext = Vec::new();
    reader
        .take(MAX_CIPHERTEXT_BYTES as u64)
        .read_to_end(&mut plaintext)
        .map_err(|e| VaultError::Damaged(e.to_string()))?;
    Ok(plaintext)
}

/// Re-encrypts an envelope to `recipients` (key rotation): opened with `identity` and checked
/// against its digest, the same plaintext sealed again under the same id, encounter, sealing
/// time and digest.
pub fn reseal(
    sealed: &SealedVault,
    identity: &str,
    recipients: &[String],
) -> Result<SealedVault, VaultError> {
    let plaintext = decrypt(sealed, identity)?;
    checked_contents(sealed, &plaintext)?;
    let (ciphertext, recipients) = encrypt_to(&plaintext, recipients)?;
    Ok(SealedVault {
        recipients,
        ciphertext: ByteBuf::from(ciphertext),
        ..sealed.clone()
    })
}

impl SealedVault {
    /// Checks an envelope received from the network without decrypting it: id length, bounded
    /// size, recipients that are age public keys, and a ciphertext that starts with a readable
    /// age header.
    pub fn check(&self) -> Result<(), VaultError> {
        if self.id.len() != ENVELOPE_ID_BYTES {
            return Err(VaultError::Malformed(format!(
                "the id is {} bytes; it must be {ENVELOPE_ID_BYTES}",
                self.id.len()
            )));
        }
        if self.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
            return Err(VaultError::TooLarge {
                limit: MAX_CIPHERTEXT_BYTES,
            });
        }
        if self.recipients.is_empty() || self.recipients.len() > MAX_RECIPIENTS {
            return Err(VaultError::Malformed(format!(
                "{} recipients; 1 to {MAX_RECIPIENTS} expected",
                self.recipients.len()
            )));
        }
        for key in &self.recipients {
            parse_recipient(key)?;
        }
        if let Some(digest) = &self.digest
            && digest.len() != DIGEST_BYTES
        {
            return Err(VaultError::Malformed(format!(
                "the digest is {} bytes; it must be {DIGEST_BYTES}",
                digest.len()
            )));
        }
        if self.sealed_at.len() > 64 {
            return Err(VaultError::Malformed("sealed_at is too long".into()));
        }
        age::Decryptor::new(self.ciphertext.as_slice())
            .map_err(|e| VaultError::Malformed(format!("not an age file: {e}")))?;
        Ok(())
    }

    /// The envelope in its binary form (CBOR), as the device keeps it.
    pub fn to_cbor(&self) -> Vec<u8> {
        crate::cbor::encode(self)
    }
}

/// Reads an envelope from bytes (CBOR), refusing more than [`MAX_ENVELOPE_BYTES`] before
/// parsing, and checks it ([`SealedVault::check`]).
pub fn decode_sealed(bytes: &[u8]) -> Result<SealedVault, VaultError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(VaultError::TooLarge {
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    let sealed: SealedVault = ciborium::from_reader(bytes)
        .map_err(|e| VaultError::Malformed(crate::cbor::describe_cbor_error(e)))?;
    sealed.check()?;
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> VaultContents {
        VaultContents {
            names: vec!["Zenaida Quispe-Huarachi".into()],
            family_contacts: vec![FamilyContact {
                name: "Rosa Huarachi".into(),
                relation: Some("mother".into()),
                phone: Some("+51 984 555 0199".into()),
                place: Some("Cusco".into()),
            }],
            notes: Some("travelling with a cousin".into()),
        }
    }

    #[test]
    fn a_sealed_vault_opens_with_the_officers_identity_and_hides_the_name() {
        let (secret, public) = generate_identity();
        assert!(secret.starts_with("AGE-SECRET-KEY-1") && public.starts_with("age1"));
        assert_eq!(public_key_of(&secret).unwrap(), public);
        let id = EncounterId::random();
        let sealed = seal(&contents(), id, std::slice::from_ref(&public)).unwrap();
        assert_eq!(sealed.encounter, id);
        assert_eq!(sealed.recipients, [public]);
        let bytes = sealed.to_cbor();
        let needle = b"Zenaida";
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        let decoded = decode_sealed(&bytes).unwrap();
        assert_eq!(open(&decoded, &secret).unwrap(), contents());
        // An identity file with comments opens it too.
        let file = format!("# created: now\n# public key: x\n{secret}\n");
        assert_eq!(open(&decoded, &file).unwrap(), contents());
    }

    #[test]
    fn any_one_of_several_recipients_opens_it_and_another_key_does_not() {
        let (a_secret, a_public) = generate_identity();
        let (b_secret, b_public) = generate_identity();
        let (c_secret, _) = generate_identity();
        let sealed = seal(&contents(), EncounterId::random(), &[a_public, b_public]).unwrap();
        assert_eq!(open(&sealed, &a_secret).unwrap(), contents());
        assert_eq!(open(&sealed, &b_secret).unwrap(), contents());
        assert!(matches!(
            open(&sealed, &c_secret),
            Err(VaultError::NotARecipient { .. })
        ));
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let (secret, public) = generate_identity();
        let sealed = seal(&contents(), EncounterId::random(), &[public]).unwrap();
        let mut tampered = sealed.clone();
        let last = tampered.ciphertext.len() - 5;
        tampered.ciphertext[last] ^= 0x01;
        assert!(matches!(
            open(&tampered, &secret),
            Err(VaultError::Damaged(_))
        ));
        let mut cut = sealed;
        let length = cut.ciphertext.len();
        cut.ciphertext.truncate(length - 20);
        assert!(open(&cut, &secret).is_err());
    }

    #[test]
    fn oversize_and_malformed_envelopes_are_refused() {
        let (_, public) = generate_identity();
        let sealed = seal(&contents(), EncounterId::random(), &[public]).unwrap();
        let mut oversize = sealed.clone();
        oversize.ciphertext = ByteBuf::from(vec![0; MAX_CIPHERTEXT_BYTES + 1]);
        assert!(matches!(
            decode_sealed(&oversize.to_cbor()),
            Err(VaultError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_sealed(&vec![0; MAX_ENVELOPE_BYTES + 1]),
            Err(VaultError::TooLarge { .. })
        ));
        let mut short_id = sealed.clone();
        short_id.id = ByteBuf::from(vec![1, 2]);
        assert!(matches!(short_id.check(), Err(VaultError::Malformed(_))));
        let mut not_age = sealed.clone();
        not_age.ciphertext = ByteBuf::from(b"Zenaida in plain text".to_vec());
        assert!(matches!(not_age.check(), Err(VaultError::Malformed(_))));
        let mut bad_key = sealed;
        bad_key.recipients = vec!["age1notakey".into()];
        assert!(matches!(
            bad_key.check(),
            Err(VaultError::BadRecipient { .. })
        ));
        assert!(matches!(
            decode_sealed(b"\xff\x00"),
            Err(VaultError::Malformed(_))
        ));
    }

    #[test]
    fn contents_are_validated_before_sealing() {
        let (_, public) = generate_identity();
        let seal_it =
            |c: &VaultContents| seal(c, EncounterId::random(), std::slice::from_ref(&public));
        assert!(matches!(
            seal_it(&VaultContents::default()),
            Err(VaultError::Invalid(_))
        ));
        let mut long = contents();
        long.names[0] = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(seal_it(&long).unwrap_err().to_string().contains("names[0]"));
        let mut long_phone = contents();
        long_phone.family_contacts[0].phone = Some("1".repeat(MAX_PHONE_CHARS + 1));
        assert!(
            seal_it(&long_phone)
                .unwrap_err()
                .to_string()
                .contains("family_contacts[0].phone")
        );
        assert_eq!(
            seal(&contents(), EncounterId::random(), &[]),
            Err(VaultError::NoRecipients)
        );
        assert!(serde_json::from_str::<VaultContents>(r#"{"names":["a"],"ssn":"1"}"#).is_err());
    }

    #[test]
    fn resealing_moves_the_vault_to_the_new_keys() {
        let (a_secret, a_public) = generate_identity();
        let (b_secret, b_public) = generate_identity();
        let sealed = seal(&contents(), EncounterId::random(), &[a_public]).unwrap();
        let resealed = reseal(&sealed, &a_secret, std::slice::from_ref(&b_public)).unwrap();
        assert_eq!(resealed.id, sealed.id);
        assert_eq!(resealed.recipients, [b_public]);
        assert_eq!(open(&resealed, &b_secret).unwrap(), contents());
        assert!(matches!(
            open(&resealed, &a_secret),
            Err(VaultError::NotARecipient { .. })
        ));
    }

    #[test]
    fn contents_sealed_under_another_envelopes_digest_are_refused_on_open_and_on_reseal() {
        let (secret, public) = generate_identity();
        let id = EncounterId::random();
        let original = seal(&contents(), id, std::slice::from_ref(&public)).unwrap();
        let mut other = contents();
        other.family_contacts[0].phone = Some("+52 662 555 0000".into());
        let forged = SealedVault {
            digest: original.digest.clone(),
            ..seal(&other, id, std::slice::from_ref(&public)).unwrap()
        };
        assert_eq!(open(&forged, &secret), Err(VaultError::ContentsAltered));
        assert_eq!(
            reseal(&forged, &secret, std::slice::from_ref(&public)),
            Err(VaultError::ContentsAltered)
        );
        let resealed = reseal(&original, &secret, std::slice::from_ref(&public)).unwrap();
        assert_eq!(resealed.digest, original.digest);
        assert_eq!(open(&resealed, &secret).unwrap(), contents());
        // An envelope sealed before digests existed opens as it is.
        let (legacy, _) = encrypt_to(&serde_json::to_vec(&contents()).unwrap(), &[public]).unwrap();
        let legacy = SealedVault {
            ciphertext: ByteBuf::from(legacy),
            digest: None,
            ..original
        };
        assert_eq!(open(&legacy, &secret).unwrap(), contents());
    }

    #[test]
    fn protection_cases_are_uasc_counts_handovers_or_located_missing() {
        let case = |json: &str| serde_json::from_str::<Encounter>(json).unwrap();
        assert!(!case(r#"{"services":["rescue"]}"#).is_protection_case());
        assert!(case(r#"{"counts":{"uasc":1}}"#).is_protection_case());
        assert!(case(r#"{"services":["located_missing"]}"#).is_protection_case());
        assert!(case(r#"{"casualties":{"p1":{"uasc":{}}}}"#).is_protection_case());
    }

    #[test]
    fn envelopes_read_as_hex_in_json() {
        let (_, public) = generate_identity();
        let sealed = seal(&contents(), EncounterId::random(), &[public]).unwrap();
        let json = serde_json::to_value(&sealed).unwrap();
        assert_eq!(json["id"], hex(&sealed.id));
        let back: SealedVault = serde_json::from_value(json).unwrap();
        assert_eq!(back, sealed);
        assert_eq!(unhex("0aff"), Some(vec![10, 255]));
        assert_eq!(unhex("0af"), None);
    }
}
