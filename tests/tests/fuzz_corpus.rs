//! Every committed fuzz input (the seeds in `fuzz/corpus/<target>/`, and any input that once
//! crashed a target, kept there as a regression seed) goes through the same checks as the
//! libFuzzer targets, on the stable toolchain, in every test run. `scripts/fuzz.sh` explores
//! further; this keeps what it found fixed.

use std::path::PathBuf;

#[path = "../../fuzz/src/lib.rs"]
mod checks;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    // As under libFuzzer: Automerge's panics that our code catches stay quiet.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(checks::let_guarded_automerge_panics_unwind);
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    for input in &inputs {
        let bytes = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(outcome.is_ok(), "{} crashes {target}", input.display());
    }
    assert!(!inputs.is_empty(), "no seeds for {target}");
    inputs.len()
}

#[test]
fn sync_request_inputs_decode_or_are_refused() {
    replay("sync_request", checks::sync_request);
}

#[test]
fn sync_response_inputs_read_or_are_refused() {
    replay("sync_response", checks::sync_response);
}

#[test]
fn deflate_inputs_inflate_within_the_limit_or_are_refused() {
    replay("deflate", checks::deflate);
}

#[test]
fn relay_message_inputs_decode_or_are_refused() {
    replay("relay_message", checks::relay_message);
}

#[test]
fn bearer_token_inputs_parse_or_are_refused() {
    replay("bearer_token", checks::bearer_token);
}

#[test]
fn encounter_json_inputs_round_trip_through_a_document_or_are_refused() {
    replay("encounter_json", checks::encounter_json);
}

#[test]
fn automerge_changes_inputs_merge_or_are_refused() {
    replay("automerge_changes", checks::automerge_changes);
}
