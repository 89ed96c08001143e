//! An encounter as JSON, as `auxilio device log` and the HTTP API read it: parsed into
//! `schema::Encounter`, validated, and (when valid) written into a new Automerge document, which
//! must read back as the same record.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::encounter_json(input)
);
