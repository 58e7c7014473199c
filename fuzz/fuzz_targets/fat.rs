#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pak::fuzzing::fat(data));
