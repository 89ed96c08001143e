//! Sync response bodies as a device reads them, whole or cut off: `protocol::read_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::sync_response(input)
);
