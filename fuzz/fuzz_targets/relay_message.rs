//! Relay message bodies (phone to phone, over Bluetooth or Wi-Fi): `relay::decode_message` for
//! each of the four messages, as the receiving phone reads them.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: auxilio_fuzz::let_guarded_automerge_panics_unwind(),
    |input: &[u8]| auxilio_fuzz::relay_message(input)
);
