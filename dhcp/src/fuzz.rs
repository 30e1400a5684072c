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

/// Feeds `data` to a stateful DHCPv6 server (pool of 256, lifetimes 600 s) several
/// times with time moving on, and checks that nothing panics, every reply fits the
/// buffer and [`MAX_REPLY_LEN`](crate::v6::MAX_REPLY_LEN) and starts as an Advertise
/// or Reply with the client's transaction id, and the lease table stays consistent.
///
/// `data` is used whole, then split at every `0xff 0xff 0xff 0xff` marker into further
/// messages, each 97 s after the last so advertisements (60 s) and bindings (600 s)
/// expire along the way. Each message goes in as it is and again with any DUID-LL
/// server identifier patched to name this server (so seeds captured against another
/// server reach the Request, Renew and Release paths), each also into a short buffer.
pub fn dhcpv6(data: &[u8]) {
    use crate::v6::{MAX_REPLY_LEN, Outcome6, Server6, Server6Config};
    const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    let mut cfg = Server6Config::default_for(
        std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
        64,
        SERVER_MAC,
    );
    cfg.preferred_lifetime = Duration::from_secs(300);
    cfg.valid_lifetime = Duration::from_secs(600);
    cfg.search = vec!["example.test".into()];
    let Ok(mut server) = Server6::new(cfg) else {
        panic!("the fuzz configuration is valid");
    };
    let mut out = vec![0u8; 1500];
    let mut messages = vec![data];
    messages.extend(split_at_marker(data));
    let mut now = Instant::now();
    for (i, msg) in messages.iter().enumerate() {
        let src_mac = [0x52, 0x54, 0, 0x12, 0x34, (i % 4) as u8];
        let mut ours = msg.to_vec();
        if let Some(at) = ours.windows(8).position(|w| w == [0, 2, 0, 10, 0, 3, 0, 1])
            && let Some(mac) = ours.get_mut(at + 8..at + 14)
        {
            mac.copy_from_slice(&SERVER_MAC);
        }
        for m in [&msg[..], &ours[..]] {
            let outcome = server.handle(now, src_mac, m, &mut out);
            check6(&server, outcome, m, &out, MAX_REPLY_LEN);
            let short = out.get_mut(..m.len() % 200).unwrap_or_default();
            let outcome = server.handle(now, src_mac, m, short);
            let limit = short.len();
            check6(&server, outcome, m, short, limit);
            if let Outcome6::Reply { len, .. } = outcome {
                assert!(len <= limit);
            }
        }
        now += Duration::from_secs(97);
    }
    server.expire(now + Duration::from_secs(24 * 60 * 60));
    assert_eq!(server.leases().count(), 0, "everything expires eventually");
    assert_eq!(server.poll_at(), None);
}

fn check6(
    server: &crate::v6::Server6,
    outcome: crate::v6::Outcome6,
    msg: &[u8],
    out: &[u8],
    limit: usize,
) {
    use crate::v6::{MessageType6, Outcome6};
    if let Outcome6::Reply { len, kind } = outcome {
        assert!(
            len <= out.len() && len <= limit,
            "reply longer than the buffer"
        );
        assert!(matches!(
            kind,
            MessageType6::Advertise | MessageType6::Reply
        ));
        let reply = out.get(..len).unwrap_or_default();
        assert_eq!(reply.first(), Some(&(kind as u8)));
        assert_eq!(reply.get(1..4), msg.get(1..4), "transaction id echoed");
    }
    if let Err(e) = server.check_invariants() {
        panic!("DHCPv6 lease table inconsistent: {e}");
    }
    let addrs: Vec<_> = server.leases().map(|l| l.addr).collect();
    assert!(
        addrs.windows(2).all(|w| w[0] < w[1]),
        "leases sorted and unique"
    );
    assert!(addrs.len() <= 256, "lease table bounded by the pool");
    assert_eq!(server.poll_at().is_some(), !addrs.is_empty());
}
