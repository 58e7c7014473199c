#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pak::fuzzing::boot_names(data));
