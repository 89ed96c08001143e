//! CBOR (RFC 8949), the binary form of every message the crate defines: writing a message, and
//! saying in words what is wrong with one that does not read. Below [`crate::protocol`] and
//! [`crate::vault`], which both use it.

use serde::Serialize;

/// The binary form of a request (or of any single-item message).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(message, &mut out).expect("writing CBOR into memory cannot fail");
    out
}

/// Says what is wrong with a body in words, not in the CBOR reader's internal terms.
pub(crate) fn describe_cbor_error<E: std::fmt::Debug>(err: ciborium::de::Error<E>) -> String {
    match err {
        ciborium::de::Error::Io(_) => "the body ends too early (truncated or empty)".to_string(),
        ciborium::de::Error::Syntax(offset) => format!("not CBOR (invalid at byte {offset})"),
        ciborium::de::Error::Semantic(offset, message) => match offset {
            Some(offset) => format!("{message} (at byte {offset})"),
            None => message,
        },
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_string(),
    }
}
