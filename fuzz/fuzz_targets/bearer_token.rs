//! `Authorization: Bearer` tokens as the server reads them before any database look-up:
//! `directory::parse_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::bearer_token(input)
);
