#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| reseau_tests::fuzz::engine::run(data));
