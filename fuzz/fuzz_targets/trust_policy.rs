#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    modelpack_operator::verify::notation::fuzzing::trust_policy(data);
});
