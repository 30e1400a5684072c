#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(f) = usernet_fuzz::target("filter_rule") {
        f(data);
    }
});
