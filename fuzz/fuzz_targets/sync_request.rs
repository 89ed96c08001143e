//! `POST /v1/sync` bodies as the server reads them: `protocol::decode_request`, then the
//! ledger's `decode` (request id and resume bounds, every change parsed as an Automerge change).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::sync_request(input)
);
