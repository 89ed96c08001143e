//! `auxilio-core`: everything a field device and the server share.
//!
//! An encounter is an Automerge document. This crate owns its typed schema ([`schema`]), the rules
//! that make a record acceptable ([`validation`]), the mapping between the typed record and the
//! document ([`document`]), field edits by path ([`edit`]), the device-side store ([`store`]), the
//! sync protocol messages ([`protocol`]), the device's half of a sync with no I/O ([`session`]),
//! the phone-to-phone relay ([`relay`]) and the sealed identity vault ([`vault`]). It opens no
//! connection and has no async API: the relay reads and writes a stream the caller hands it, and
//! the same code runs inside the phone app and inside the server.

pub mod cbor;
pub mod document;
pub mod edit;
pub mod id;
pub mod private_files;
pub mod protocol;
pub mod relay;
pub mod relay_auth;
pub mod schema;
pub mod session;
pub mod store;
pub mod validation;
pub mod vault;

pub use document::{Conflict, EncounterDocument};
pub use id::{DeviceId, EncounterId};
pub use schema::{Encounter, SCHEMA_VERSION};
pub use store::DeviceStore;
