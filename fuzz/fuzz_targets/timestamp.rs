#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    modelpack_operator::verify::notation::fuzzing::timestamp(data);
});
