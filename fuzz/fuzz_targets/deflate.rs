//! `Content-Encoding: deflate` bodies, inflated under a limit as the server and the device do:
//! `protocol::decompress`, and the streaming reader a device reads a cut response through.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::deflate(input)
);
