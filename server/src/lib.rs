//! `auxilio-server`: the sync server and the `auxilio` command.
//!
//! The server authenticates devices ([`directory`]), takes their changes in sync requests,
//! stores every change durably and merges it into the encounter's document ([`ledger`]),
//! keeps query indexes ([`index`]) and answers over HTTP ([`http`]), with audited exports
//! ([`export`]), and keeps sealed identity vaults it cannot read ([`vault`]). [`client`] is the
//! device side of the HTTP transport, used by `auxilio device` and the tests. [`link_simulator`]
//! is a flaky-link TCP proxy that puts a slow, dropping 2G link between a device and the server, for
//! the tests and simulations; [`simulation`] runs a whole simulated deployment through it
//! (`auxilio sim`, `auxilio demo`). Only this crate knows HTTP.

pub mod access;
pub mod audit;
pub mod audit_key;
pub mod changes;
pub mod cli;
pub mod client;
pub mod database;
pub mod device_time;
pub mod directory;
pub mod error;
pub mod export;
#[cfg(test)]
mod house_rules;
pub mod http;
pub mod index;
pub mod ledger;
pub mod link_simulator;
pub mod purge;
pub mod rate_limit;
pub mod redaction;
pub mod relay_keys;
pub mod retention;
pub mod simulation;
pub mod vault;

pub use database::Database;
pub use http::{AppState, ServerConfig, app, serve};
