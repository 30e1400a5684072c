//! Fuzz entry points, called by the workspace's `fuzz` crate and replayed over the
//! seed corpus by plain `cargo test`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::{Outcome, Server, ServerConfig};

/// Offsets that make arbitrary bytes look like a client message, so the fuzzer
/// spends its time past the header checks: `op`, `htype`, `hlen` and the cookie.
const PATCHES: [(usize, u8); 7] = [
    (0, 1),
    (1, 1),
    (2, 6),
    (236, 99),
    (237, 130),
    (238, 83),
    (239, 99),
];

/// Feeds `data` to a default slirp-layout server several times, with time moving on,
/// and checks that nothing panics, every reply fits the buffer and parses as a DHCP
/// reply, and the lease table stays consistent.
///
/// `data` is used whole, then with the BOOTP header patched into a client message,
/// then split at every `0xff 0xff 0xff 0xff` marker into further messages (each also
/// patched), each 97 s after the last so offers (60 s) and leases (600 s) expire
/// along the way.
pub fn dhcpv4(data: &[u8]) {
    let mut cfg = ServerConfig::slirp_default(Ipv4Addr::new(10, 0, 2, 0), 24);
    cfg.lease_time = Duration::from_secs(600);
    cfg.mtu = Some(1500);
    cfg.search = vec!["example.test".into()];
    cfg.classless_routes = vec![(
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        Ipv4Addr::new(10, 0, 2, 2),
    )];
    cfg.reservations = vec![([0x52, 0x54, 0, 0, 0, 0x42], Ipv4Addr::new(10, 0, 2, 42))];
    let Ok(mut server) = Server::new(cfg) else {
        panic!("the fuzz configuration is valid");
    };
    let start = Instant::now();
    let mut out = vec![0u8; 1500];
    let mut patched = data.to_vec();
    patch(&mut patched);
    let mut messages = vec![data.to_vec(), patched];
    for part in split_at_marker(data) {
        let mut msg = part.to_vec();
        patch(&mut msg);
        messages.push(msg);
    }
    let mut now = start;
    for (i, msg) in messages.iter().enumerate() {
        let src_mac = [0x52, 0x54, 0, 0x12, 0x34, (i % 4) as u8];
        let outcome = server.handle(now, src_mac, msg, &mut out);
        check(&server, outcome, &out);
        // Short buffers must be refused, not overrun.
        let short = out.get_mut(..msg.len() % 400).unwrap_or_default();
        let outcome = server.handle(now, src_mac, msg, short);
        check(&server, outcome, short);
        now += Duration::from_secs(97);
    }
    server.expire(now + Duration::from_secs(24 * 60 * 60));
    assert_eq!(server.leases().count(), 0, "everything expires eventually");
    assert_eq!(server.poll_at(), None);
}

fn patch(msg: &mut [u8]) {
    for (at, byte) in PATCHES {
        if let Some(b) = msg.get_mut(at) {
            *b = byte;
        }
    }
}

fn check(server: &Server, outcome: Outcome, out: &[u8]) {
    if let Outcome::Reply(r) = outcome {
        assert!(r.len <= out.len(), "reply longer than the buffer");
        assert!(r.len >= 300, "reply shorter than the BOOTP minimum");
        let msg = out.get(..r.len).unwrap_or_default();
        assert_eq!(msg.first(), Some(&2), "a reply is a BOOTREPLY");
    }
    if let Err(e) = server.check_invariants() {
        panic!("lease table inconsistent: {e}");
    }
    let addrs: Vec<Ipv4Addr> = server.leases().map(|l| l.addr).collect();
    assert!(
        addrs.windows(2).all(|w| w[0] < w[1]),
        "leases sorted and unique"
    );
    assert!(addrs.len() <= 256, "lease table bounded by the pool");
    assert_eq!(server.poll_at().is_some(), !addrs.is_empty());
}

/// `data` cut at every four-byte `0xff` marker (the marker itself dropped).
fn split_at_marker(data: &[u8]) -> Vec<&[u8]> {
    const MARKER: [u8; 4] = [0xff; 4];
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(4).position(|w| w == MARKER) {
        parts.push(rest.get(..i).unwrap_or_default());
        rest = rest.get(i + 4..).unwrap_or_default();
    }
    parts.push(rest);
    parts
}
