//! `auxilio-core`: everything a field device and the server share.
//!
//! An encounter is an Automerge document. This crate owns its typed schema ([`schema`]), the rules
//! that make a record acceptable ([`validation`]), the mapping between the typed record and the
//! document ([`document`]), field edits by path ([`edit`]), the device-side store ([`store`]) and
//! the sync protocol messages ([`protocol`]). It does no network IO and has no async API: the same
//! code runs inside the phone app and inside the server.

pub mod document;
pub mod edit;
pub mod id;
pub mod protocol;
pub mod schema;
pub mod store;
pub mod validation;

pub use document::{Conflict, EncounterDocument};
pub use id::{DeviceId, EncounterId};
pub use schema::{Encounter, SCHEMA_VERSION};
pub use store::DeviceStore;
