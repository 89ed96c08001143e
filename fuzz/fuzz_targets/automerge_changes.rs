//! Uploaded change bytes as the server handles each of them: `Change::from_bytes`, applied to an
//! encounter's document, then the document read as a record, its conflicts and its JSON (what
//! the index derives its columns from).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::automerge_changes(input)
);
