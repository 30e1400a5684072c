//! Fuzz targets of usernet: one per parser of guest- or user-controlled bytes, and one
//! for the whole frame pipeline.
//!
//! Each target is a thin wrapper over a `pub fn` in the crate that owns the parser, so
//! that the same function runs under libFuzzer (`cargo fuzz run NAME`, binaries in
//! `fuzz_targets/`, feature `libfuzzer`) and under plain `cargo test`, which replays
//! every file of `corpus/NAME/` (tests/corpus.rs).

/// A target's entry point.
pub type Entry = fn(&[u8]);

/// Every target: its name (the corpus directory and binary name) and entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("dhcpv4", usernet_dhcp::fuzz::dhcpv4),
    ("dhcpv6", usernet_dhcp::fuzz::dhcpv6),
    ("dns_message", usernet_dns::fuzz::dns_message),
    ("portfwd_rule", usernet_portfwd::fuzz::rule),
    ("api_request", usernet_portfwd::fuzz::api_request),
    ("filter_rule", usernet_portfwd::fuzz::filter_rule),
    ("frame_pipeline", usernet_engine::fuzz::frame_pipeline),
    ("network", usernet_engine::fuzz::network_pipeline),
    (
        "stream_decoder",
        usernet_engine::fuzz_stream::stream_decoder,
    ),
];

/// Look a target up by name.
pub fn target(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
