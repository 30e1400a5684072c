//! The fabric driven with real frames: learning, flooding, the router as a port,
//! per-network DHCP, neighbour resolution and bounded queues.

use super::*;
use crate::config::Config;
use crate::router::dns::Upstreams;

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const MAC_C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
const BCAST: [u8; 6] = [0xff; 6];

fn cfg() -> Config {
    let mut cfg = Config {
        outbound: false,
        verify_checksums: false,
        ..Config::default()
    };
    cfg.dns_options.upstreams = Upstreams::Fixed(Vec::new());
    cfg
}

fn fabric_with(cfg: Config, router: bool) -> (Fabric, mio::Poll) {
    let poll = mio::Poll::new().unwrap();
    let reg = poll.registry().try_clone().unwrap();
    let stats = Arc::new(Stats::default());
    let now = Instant::now();
    let r = router.then(|| Router::new(cfg.clone(), stats.clone(), reg, None, now).unwrap());
    let f = Fabric::new(
        now,
        cfg.mtu,
        (cfg.network, cfg.prefix_len),
        cfg.gateway,
        r,
        stats,
    );
    (f, poll)
}

fn eth(dst: [u8; 6], src: [u8; 6], et: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&tpa);
    eth(BCAST, sha, 0x0806, &p)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = !smoltcp::wire::checksum::data(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A DHCP DISCOVER (`mt` 1) or REQUEST (`mt` 3, for `req`) from `mac`.
fn dhcp(mac: [u8; 6], mt: u8, req: Option<[u8; 4]>) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&[1, 2, 3, mac[5]]);
    b[28..34].copy_from_slice(&mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, mt]);
    if let Some(a) = req {
        b.extend_from_slice(&[50, 4]);
        b.extend_from_slice(&a);
        b.extend_from_slice(&[54, 4, 10, 0, 2, 2]);
    }
    b.push(255);
    let ip = ipv4([0; 4], [255; 4], 17, &udp(68, 67, &b));
    eth(BCAST, mac, 0x0800, &ip)
}

fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut e = vec![8, 0, 0, 0, 0, 1, 0, 1, b'h', b'i'];
    let c = !smoltcp::wire::checksum::data(&e);
    e[2..4].copy_from_slice(&c.to_be_bytes());
    eth(dst_mac, src_mac, 0x0800, &ipv4(src, dst, 1, &e))
}

/// Move the router's output to the queues and take every port's queue.
fn settle(f: &mut Fabric, now: Instant) -> HashMap<PortId, Vec<Vec<u8>>> {
    if let Some(r) = f.router.as_mut() {
        r.process(now);
    }
    f.drain_router(now);
    let mut out: HashMap<PortId, Vec<Vec<u8>>> = HashMap::new();
    for (k, p) in f.ports.iter_mut() {
        while let Some(fr) = p.q.front() {
            out.entry(k + 1).or_default().push(fr.to_vec());
            p.q.pop_front();
        }
    }
    f.to_write.clear();
    out
}

fn three_ports(f: &mut Fabric, now: Instant) -> [PortId; 3] {
    [1, 2, 3].map(|i| {
        f.add_port(now, None, PortKind::Virtual, format!("p{i}"))
            .unwrap()
    })
}

fn yiaddr(frame: &[u8]) -> [u8; 4] {
    frame[14 + 20 + 8 + 16..14 + 20 + 8 + 20]
        .try_into()
        .unwrap()
}

#[test]
fn broadcast_floods_to_every_other_port_and_the_router() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    // A asks who has 10.0.2.2: B and C hear it, the router answers A alone.
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    let out = settle(&mut f, now);
    assert_eq!(out[&b].len(), 1);
    assert_eq!(out[&c].len(), 1);
    let to_a = &out[&a];
    assert_eq!(to_a.len(), 1, "only the router's reply goes back to A");
    assert_eq!(&to_a[0][0..6], &MAC_A);
    assert_eq!(&to_a[0][6..12], &GATEWAY_MAC);
    assert_eq!(&to_a[0][20..22], &[0, 2]);
}

#[test]
fn learned_unicast_goes_to_one_port_and_unknown_unicast_floods() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    // Nobody knows B yet: flooded to B and C (never back to A, never to the router).
    let ping = icmp_echo(MAC_A, MAC_B, [10, 0, 2, 15], [10, 0, 2, 16]);
    f.from_port(now, a, &ping);
    let out = settle(&mut f, now);
    assert_eq!(out.get(&b).map(Vec::len), Some(1));
    assert_eq!(out.get(&c).map(Vec::len), Some(1));
    assert!(!out.contains_key(&a));
    // B speaks: learned. Now A's frame goes to B alone.
    f.from_port(
        now,
        b,
        &icmp_echo(MAC_B, MAC_A, [10, 0, 2, 16], [10, 0, 2, 15]),
    );
    let out = settle(&mut f, now);
    assert_eq!(
        out.get(&a).map(Vec::len),
        Some(1),
        "A was learned from its first frame"
    );
    assert!(!out.contains_key(&c));
    f.from_port(now, a, &ping);
    let out = settle(&mut f, now);
    assert_eq!(out.get(&b).map(Vec::len), Some(1));
    assert!(!out.contains_key(&c));
    assert_eq!(f.port(a).unwrap().mac, Some(MAC_A));
}

#[test]
fn a_frame_to_its_own_port_and_group_sources_are_dropped() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), false);
    // Two MACs behind one port (a bridge in the guest): only without anti-spoofing.
    f.set_policy(None, allow_spoofing());
    let [a, b, _c] = three_ports(&mut f, now);
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, MAC_B, [10, 0, 2, 15], [10, 0, 2, 16]),
    );
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_C, MAC_B, [10, 0, 2, 17], [10, 0, 2, 16]),
    );
    let _ = settle(&mut f, now);
    // C's MAC lives on port A now; a frame to C from A is reflected nowhere.
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, MAC_C, [10, 0, 2, 15], [10, 0, 2, 17]),
    );
    f.from_port(
        now,
        b,
        &icmp_echo(BCAST, MAC_A, [10, 0, 2, 16], [10, 0, 2, 15]),
    );
    f.from_port(now, b, &[0u8; 5]);
    let out = settle(&mut f, now);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(f.stats.drops(DropReason::SwitchFiltered), 2);
    assert_eq!(f.stats.drops(DropReason::FrameBadLength), 1);
    assert_eq!(f.port(b).unwrap().drops, 2);
}

#[test]
fn each_guest_gets_its_own_lease_and_replies_reach_only_it() {
    let now = Instant::now();
    let mut c = cfg();
    if let Some(d) = c.dhcp.as_mut() {
        d.reservations = vec![(MAC_C, std::net::Ipv4Addr::new(10, 0, 2, 40))];
    }
    let (mut f, _p) = fabric_with(c, true);
    let ports = three_ports(&mut f, now);
    let mut got = Vec::new();
    for (port, mac) in ports.into_iter().zip([MAC_A, MAC_B, MAC_C]) {
        f.from_port(now, port, &dhcp(mac, 1, None));
        let out = settle(&mut f, now);
        // The offer goes to the asker only (the other guests heard the broadcast).
        let offer = &out[&port]
            .iter()
            .find(|fr| fr[6..12] == GATEWAY_MAC)
            .unwrap();
        let addr = yiaddr(offer);
        for (&other, frames) in &out {
            if other != port {
                assert!(frames.iter().all(|fr| fr[6..12] != GATEWAY_MAC));
            }
        }
        f.from_port(now, port, &dhcp(mac, 3, Some(addr)));
        let out = settle(&mut f, now);
        let ack = out[&port]
            .iter()
            .find(|fr| fr[6..12] == GATEWAY_MAC)
            .unwrap();
        assert_eq!(yiaddr(ack), addr);
        got.push(addr);
    }
    assert_eq!(got, [[10, 0, 2, 15], [10, 0, 2, 16], [10, 0, 2, 40]]);
    let leases = f.router.as_ref().unwrap().leases();
    assert_eq!(leases.len(), 3);
}

#[test]
fn router_frames_find_their_guest_by_address() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    // B and C ping the gateway: each reply goes to its own port, with its own MAC.
    f.from_port(
        now,
        b,
        &icmp_echo(MAC_B, GATEWAY_MAC, [10, 0, 2, 16], [10, 0, 2, 2]),
    );
    f.from_port(
        now,
        c,
        &icmp_echo(MAC_C, GATEWAY_MAC, [10, 0, 2, 17], [10, 0, 2, 2]),
    );
    let out = settle(&mut f, now);
    assert!(!out.contains_key(&a));
    assert_eq!(&out[&b][0][0..6], &MAC_B);
    assert_eq!(&out[&c][0][0..6], &MAC_C);
    assert_eq!(out[&b][0][14 + 20], 0, "echo reply");
}

#[test]
fn an_unknown_destination_costs_an_arp_request() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    // The router sends toward 10.0.2.99, which nobody has claimed.
    {
        let r = f.router.as_mut().unwrap();
        let ctx = &mut r.ctx;
        assert!(ctx.emit.icmp(
            &mut ctx.txq,
            [10, 0, 2, 2].into(),
            [10, 0, 2, 99].into(),
            [0, 0, 0, 0, 0, 1, 0, 1],
            b"x"
        ));
    }
    let out = settle(&mut f, now);
    for p in [a, b] {
        let frames = &out[&p];
        assert_eq!(frames.len(), 1);
        assert_eq!(&frames[0][12..14], &[0x08, 0x06]);
        assert_eq!(
            &frames[0][38..42],
            &[10, 0, 2, 99],
            "ARP request for the address"
        );
    }
    assert_eq!(f.stats.drops(DropReason::NeighborUnresolved), 1);
}

#[test]
fn a_full_live_queue_holds_the_router_back_and_a_stalled_one_drops() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, _b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    let cap = f.port(a).unwrap().q.room();
    // Fill the router's queue with more echo replies than A's queue holds.
    for _ in 0..cap + 10 {
        f.from_port(
            now,
            a,
            &icmp_echo(MAC_A, GATEWAY_MAC, [10, 0, 2, 15], [10, 0, 2, 2]),
        );
    }
    f.drain_router(now);
    assert_eq!(f.port(a).unwrap().q.room(), 0);
    let left = f.router.as_mut().unwrap().txq().len();
    assert!(left > 0, "the rest waits in the router's queue");
    assert_eq!(f.stats.drops(DropReason::SwitchQueueFull), 0);
    // A took nothing for longer than PORT_STALL: its frames are dropped, counted.
    let later = now + PORT_STALL + Duration::from_millis(1);
    f.drain_router(later);
    assert!(f.router.as_mut().unwrap().txq().is_empty());
    assert_eq!(f.stats.drops(DropReason::SwitchQueueFull), left as u64);
}

#[test]
fn guest_to_guest_floods_are_bounded_per_port() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), false);
    let [a, b, _c] = three_ports(&mut f, now);
    let room = f.port(b).unwrap().q.room();
    let bc = icmp_echo(MAC_A, BCAST, [10, 0, 2, 15], [10, 0, 2, 255]);
    for _ in 0..room * 3 {
        f.from_port(now, a, &bc);
    }
    assert_eq!(f.port(b).unwrap().q.len(), room);
    assert!(f.port(b).unwrap().drops >= room as u64);
    // The sender's own queue is untouched.
    assert!(f.port(a).unwrap().q.is_empty());
}

#[test]
fn removing_a_port_forgets_its_macs_and_addresses() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    assert_eq!(f.switch.port_of(now, MAC_A), Some(a));
    assert_eq!(f.neighbors(), 1);
    assert!(f.remove_port(a).is_some());
    assert_eq!(f.switch.port_of(now, MAC_A), None);
    assert_eq!(f.neighbors(), 0);
    // Frames to the departed MAC flood to who is left.
    f.from_port(
        now,
        b,
        &icmp_echo(MAC_B, MAC_A, [10, 0, 2, 16], [10, 0, 2, 15]),
    );
    let out = settle(&mut f, now);
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        [_c],
        "flooded to C only, never back to B"
    );
}

#[test]
fn an_internal_network_router_serves_dhcp_only() {
    let now = Instant::now();
    let mut c = cfg();
    c.internal = true;
    c.enable_dns = false;
    if let Some(d) = c.dhcp.as_mut() {
        d.advertise_router = false;
    }
    let (mut f, _p) = fabric_with(c, true);
    let [a, _b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &dhcp(MAC_A, 1, None));
    let out = settle(&mut f, now);
    assert!(out[&a].iter().any(|fr| fr[6..12] == GATEWAY_MAC));
    // A ping to the gateway is not answered.
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, GATEWAY_MAC, [10, 0, 2, 15], [10, 0, 2, 2]),
    );
    let out = settle(&mut f, now);
    assert!(out.is_empty());
    assert_eq!(f.stats.drops(DropReason::InternalNetwork), 1);
}

#[test]
fn the_port_table_is_bounded() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), false);
    for i in 0..MAX_PORTS {
        assert!(
            f.add_port(now, None, PortKind::Virtual, format!("{i}"))
                .is_some()
        );
    }
    assert!(
        f.add_port(now, None, PortKind::Virtual, "one too many".into())
            .is_none()
    );
}

fn allow_spoofing() -> guard::Overrides {
    guard::Overrides {
        allow_spoofing: Some(true),
        ..guard::Overrides::default()
    }
}

fn arp_reply(sha: [u8; 6], spa: [u8; 4], to_mac: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 2];
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&to_mac);
    p.extend_from_slice(&tpa);
    eth(to_mac, sha, 0x0806, &p)
}

#[test]
fn isolated_guests_reach_the_gateway_but_not_each_other() {
    let now = Instant::now();
    // Static guests use addresses outside the DHCP pool (a lease always wins).
    let mut c = cfg();
    if let Some(d) = c.dhcp.as_mut() {
        d.pool_start = [10, 0, 2, 40].into();
    }
    let (mut f, _p) = fabric_with(c, true);
    f.set_policy(
        None,
        guard::Overrides {
            isolate: Some(true),
            ..guard::Overrides::default()
        },
    );
    let [a, b, c] = three_ports(&mut f, now);
    // ARP from A for B: neither B nor C hear it; the router does (and ignores it).
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 16]));
    let out = settle(&mut f, now);
    assert!(out.is_empty(), "{out:?}");
    // B is learned; A's unicast to B is still refused.
    f.from_port(
        now,
        b,
        &icmp_echo(MAC_B, GATEWAY_MAC, [10, 0, 2, 16], [10, 0, 2, 2]),
    );
    let out = settle(&mut f, now);
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        [b],
        "B's ping to the gateway is answered"
    );
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, MAC_B, [10, 0, 2, 15], [10, 0, 2, 16]),
    );
    assert!(settle(&mut f, now).is_empty());
    assert!(f.stats.drops(DropReason::GuestIsolated) >= 1);
    // DHCP still works for an isolated guest.
    f.from_port(now, c, &dhcp(MAC_C, 1, None));
    let out = settle(&mut f, now);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), [c]);
    // One guest let out of isolation still cannot reach an isolated one.
    f.set_policy(
        Some(GuestKey::Mac(MAC_A)),
        guard::Overrides {
            isolate: Some(false),
            ..guard::Overrides::default()
        },
    );
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, MAC_B, [10, 0, 2, 15], [10, 0, 2, 16]),
    );
    assert!(settle(&mut f, now).is_empty());
    // With both out of isolation, it passes.
    f.set_policy(
        Some(GuestKey::Addr([10, 0, 2, 16].into())),
        guard::Overrides {
            isolate: Some(false),
            ..guard::Overrides::default()
        },
    );
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, MAC_B, [10, 0, 2, 15], [10, 0, 2, 16]),
    );
    assert_eq!(settle(&mut f, now).keys().copied().collect::<Vec<_>>(), [b]);
}

#[test]
fn a_spoofer_cannot_poison_arp_or_steal_traffic() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    // A and B lease 10.0.2.15 and .16.
    for (port, mac) in [(a, MAC_A), (b, MAC_B)] {
        f.from_port(now, port, &dhcp(mac, 1, None));
        let out = settle(&mut f, now);
        let offer = out[&port]
            .iter()
            .find(|fr| fr[6..12] == GATEWAY_MAC)
            .unwrap();
        let addr = yiaddr(offer);
        f.from_port(now, port, &dhcp(mac, 3, Some(addr)));
        let _ = settle(&mut f, now);
    }
    // C (MAC_C) claims B's address to A, and the gateway's, and forges B's MAC.
    let forged = [
        arp_reply(MAC_C, [10, 0, 2, 16], MAC_A, [10, 0, 2, 15]),
        arp_reply(MAC_C, [10, 0, 2, 2], MAC_A, [10, 0, 2, 15]),
        icmp_echo(MAC_C, MAC_A, [10, 0, 2, 16], [10, 0, 2, 15]),
        icmp_echo(MAC_B, MAC_A, [10, 0, 2, 16], [10, 0, 2, 15]),
        dhcp(MAC_C, 1, None)
            .into_iter()
            .enumerate()
            .map(|(i, b)| if i == 14 + 20 + 1 { 67 } else { b })
            .collect(),
    ];
    for fr in &forged {
        f.from_port(now, c, fr);
    }
    let out = settle(&mut f, now);
    assert!(out.is_empty(), "a forged frame got through: {out:?}");
    let p = f.port(c).unwrap();
    assert_eq!(p.spoofed[guard::Spoof::Arp as usize], 2);
    assert!(p.spoofed[guard::Spoof::Ipv4 as usize] + p.spoofed[guard::Spoof::Mac as usize] >= 2);
    assert_eq!(f.stats.drops(DropReason::Spoofed), forged.len() as u64);
    // B's MAC still lives on B's port: traffic to B is not stolen.
    assert_eq!(f.switch.port_of(now, MAC_B), Some(b));
    // With --allow-spoofing for C, the same frames pass (the checks were the reason).
    f.set_policy(Some(GuestKey::Mac(MAC_C)), allow_spoofing());
    f.from_port(now, c, &forged[2]);
    assert!(!settle(&mut f, now).is_empty());
}

#[test]
fn a_configured_identity_is_pinned() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), false);
    let [a, b, _c] = three_ports(&mut f, now);
    f.configure_identity(a, Some(MAC_A), Some([10, 0, 2, 20].into()));
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, BCAST, [10, 0, 2, 21], [10, 0, 2, 255]),
    );
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_C, BCAST, [10, 0, 2, 20], [10, 0, 2, 255]),
    );
    assert!(settle(&mut f, now).is_empty());
    f.from_port(
        now,
        a,
        &icmp_echo(MAC_A, BCAST, [10, 0, 2, 20], [10, 0, 2, 255]),
    );
    assert!(settle(&mut f, now).contains_key(&b));
}

#[test]
fn a_second_port_cannot_take_a_pinned_mac() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    // B speaks first with A's MAC, C with the gateway's: neither is pinned.
    f.from_port(now, b, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    f.from_port(now, c, &arp(1, GATEWAY_MAC, [10, 0, 2, 2], [10, 0, 2, 15]));
    assert!(settle(&mut f, now).is_empty());
    assert_eq!(f.port(b).unwrap().spoofed[guard::Spoof::Mac as usize], 1);
    assert_eq!(f.port(c).unwrap().spoofed[guard::Spoof::Mac as usize], 1);
    assert_eq!(f.port(b).unwrap().mac, None);
    // A's traffic still goes to A: the switch did not move its MAC.
    assert_eq!(f.switch.port_of(now, MAC_A), Some(a));
    // B with its own MAC is fine.
    f.from_port(now, b, &arp(1, MAC_B, [10, 0, 2, 16], [10, 0, 2, 2]));
    assert!(settle(&mut f, now).contains_key(&b));
    assert_eq!(f.port(b).unwrap().mac, Some(MAC_B));
    // Once A has left, its MAC is free again.
    f.remove_port(a);
    f.from_port(now, c, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    assert!(settle(&mut f, now).contains_key(&c));
}

/// A UDP datagram in an IPv4 packet in an Ethernet frame.
fn udp4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        0x0800,
        &ipv4(src, dst, 17, &udp(sport, dport, payload)),
    )
}

/// A TCP SYN in an IPv4 packet in an Ethernet frame.
fn syn4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        0x0800,
        &ipv4(src, dst, 6, &tcp_syn(sport, dport)),
    )
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t
}

#[test]
fn filter_rules_apply_to_guest_to_guest_flows_once_per_flow() {
    use usernet_portfwd::filter::parse_filter;
    let now = Instant::now();
    // An internal network without DHCP: no router, the switch holds the policy.
    let (mut f, _p) = fabric_with(cfg(), false);
    let [a, b, _c] = three_ports(&mut f, now);
    f.policy_mut().set_network(
        vec![
            parse_filter("deny:tcp:10.0.2.16/32:22").unwrap(),
            parse_filter("deny:udp:10.0.2.16/32:53").unwrap(),
            parse_filter("deny:icmp:10.0.2.16/32").unwrap(),
        ],
        None,
    );
    let (ip_a, ip_b) = ([10, 0, 2, 15], [10, 0, 2, 16]);
    f.from_port(now, b, &arp(1, MAC_B, ip_b, ip_a));
    f.from_port(now, a, &arp(2, MAC_A, ip_a, ip_b));
    let _ = settle(&mut f, now);
    // A SYN to B:22 never reaches B; A gets a RST from 10.0.2.16:22, B's MAC.
    f.from_port(now, a, &syn4(MAC_A, MAC_B, ip_a, ip_b, 40000, 22));
    let out = settle(&mut f, now);
    assert!(!out.contains_key(&b), "{out:?}");
    let rst = &out[&a][0];
    assert_eq!(&rst[6..12], &MAC_B);
    assert_eq!(&rst[26..30], &ip_b);
    assert_eq!(rst[14 + 9], 6);
    assert_eq!(u16::from_be_bytes([rst[34], rst[35]]), 22);
    assert_eq!(rst[34 + 13] & 0x04, 0x04, "RST");
    assert_eq!(
        u32::from_be_bytes(rst[42..46].try_into().unwrap()),
        1001,
        "acks the SYN"
    );
    // Port 80 is not denied; the segments after a SYN are never asked about.
    f.from_port(now, a, &syn4(MAC_A, MAC_B, ip_a, ip_b, 40001, 80));
    assert_eq!(settle(&mut f, now).keys().copied().collect::<Vec<_>>(), [b]);
    // UDP to B:53 is refused with ICMP administratively prohibited (3/13) from B.
    for _ in 0..3 {
        f.from_port(now, a, &udp4(MAC_A, MAC_B, ip_a, ip_b, 5000, 53, b"q"));
    }
    let out = settle(&mut f, now);
    assert!(!out.contains_key(&b));
    assert_eq!(out[&a].len(), 3);
    assert_eq!((out[&a][0][14 + 20], out[&a][0][14 + 21]), (3, 13));
    assert_eq!(&out[&a][0][26..30], &ip_b);
    // UDP to B:5353 passes, and so does B's reply (the same flow, reversed).
    f.from_port(now, a, &udp4(MAC_A, MAC_B, ip_a, ip_b, 5000, 5353, b"q"));
    f.from_port(now, b, &udp4(MAC_B, MAC_A, ip_b, ip_a, 5353, 5000, b"r"));
    let out = settle(&mut f, now);
    assert!(out.contains_key(&a) && out.contains_key(&b), "{out:?}");
    // An echo request to B is dropped without an answer.
    f.from_port(now, a, &icmp_echo(MAC_A, MAC_B, ip_a, ip_b));
    assert!(settle(&mut f, now).is_empty());
    // Each rule was asked once per flow: the three datagrams to :53 are one flow.
    let hits = &f.policy().network.hits;
    assert_eq!(hits[..], [1, 1, 1]);
    assert_eq!(
        f.policy().default_hits,
        2,
        "the SYN to :80 and the flow to :5353"
    );
    assert_eq!(f.stats.drops(DropReason::FlowDenied), 5);
    // Rules changed at run time apply to the next datagram of a cached flow.
    f.policy_mut().set_network(Vec::new(), None);
    f.from_port(now, a, &udp4(MAC_A, MAC_B, ip_a, ip_b, 5000, 53, b"q"));
    assert!(settle(&mut f, now).contains_key(&b));
}

#[test]
fn a_guests_own_rules_follow_it_and_broadcasts_are_asked_once() {
    use usernet_portfwd::filter::parse_filter;
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, c] = three_ports(&mut f, now);
    assert!(f.set_guest_filters(
        GuestKey::Mac(MAC_A),
        vec![parse_filter("deny:udp:10.0.2.0/24").unwrap()],
    ));
    let (ip_a, ip_b, ip_c) = ([10, 0, 2, 15], [10, 0, 2, 16], [10, 0, 2, 17]);
    f.from_port(now, b, &arp(1, MAC_B, ip_b, [10, 0, 2, 2]));
    f.from_port(now, c, &arp(1, MAC_C, ip_c, [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    // A's subnet broadcast reaches neither guest, and gets no answer.
    let bc = eth(
        BCAST,
        MAC_A,
        0x0800,
        &ipv4(ip_a, [10, 0, 2, 255], 17, &udp(7, 9999, b"x")),
    );
    f.from_port(now, a, &bc);
    let out = settle(&mut f, now);
    assert!(
        !out.contains_key(&b) && !out.contains_key(&c) && !out.contains_key(&a),
        "{out:?}"
    );
    assert_eq!(f.policy().guests[&a].hits, [1]);
    // B has no such rule: its unicast to C passes.
    f.from_port(now, b, &udp4(MAC_B, MAC_C, ip_b, ip_c, 7, 9999, b"x"));
    assert!(settle(&mut f, now).contains_key(&c));
    // Nor does the rule cover A's flows through the gateway to the outside.
    assert_eq!(f.policy().guests[&a].hits, [1]);
}

#[test]
fn a_slow_port_cannot_hold_up_the_others() {
    let now = Instant::now();
    let (mut f, _p) = fabric_with(cfg(), true);
    let [a, b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &arp(1, MAC_A, [10, 0, 2, 15], [10, 0, 2, 2]));
    f.from_port(now, b, &arp(1, MAC_B, [10, 0, 2, 16], [10, 0, 2, 2]));
    let _ = settle(&mut f, now);
    // A takes nothing (but is not stalled yet): its queue fills, then 300 more
    // replies wait for it in the router's queue (more than one scan's worth).
    let ping_a = icmp_echo(MAC_A, GATEWAY_MAC, [10, 0, 2, 15], [10, 0, 2, 2]);
    let room = f.port(a).unwrap().q.room();
    for _ in 0..room + 300 {
        f.from_port(now, a, &ping_a);
        f.drain_router(now);
    }
    assert_eq!(f.port(a).unwrap().q.room(), 0);
    assert_eq!(
        f.router.as_mut().unwrap().txq().len(),
        300,
        "A alone: backpressure"
    );
    assert_eq!(f.stats.drops(DropReason::SwitchQueueFull), 0);
    // B's ping: its reply is not held up behind A's; A's frames ahead of it give way.
    f.from_port(
        now,
        b,
        &icmp_echo(MAC_B, GATEWAY_MAC, [10, 0, 2, 16], [10, 0, 2, 2]),
    );
    f.drain_router(now);
    f.drain_router(now);
    assert_eq!(f.port(b).unwrap().q.len(), 1, "B's echo reply went through");
    assert_eq!(f.stats.drops(DropReason::SwitchQueueFull), 300);
    assert_eq!(f.port(a).unwrap().drops, 300);
    assert!(f.router.as_mut().unwrap().txq().is_empty());
}

const MAC_D: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0d];

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 255];
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn icmp6(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t, 0, 0, 0];
    m.extend_from_slice(body);
    m
}

/// An NDP message of type `t` (133 RS, 135 NS, 136 NA) for `target`, with a
/// link-layer address option for `lla`.
fn ndp(t: u8, target: Ipv6Addr, lla: Option<[u8; 6]>) -> Vec<u8> {
    let mut b = vec![if t == 136 { 0x20 } else { 0 }, 0, 0, 0];
    if t != 133 {
        b.extend_from_slice(&target.octets());
    }
    if let Some(m) = lla {
        b.extend_from_slice(&[if t == 136 { 2 } else { 1 }, 1]);
        b.extend_from_slice(&m);
    }
    icmp6(t, &b)
}

/// `l4` (protocol `next`) behind extension header `kind`: 0 Hop-by-Hop, 60
/// Destination Options, 43 Routing, 44 a first fragment, 45 a later fragment.
fn behind(kind: u8, next: u8, l4: &[u8]) -> (u8, Vec<u8>) {
    let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
    let proto = match kind {
        44 => {
            h[3] = 1;
            44
        }
        45 => {
            h[2..4].copy_from_slice(&(3u16 << 3).to_be_bytes());
            44
        }
        k => k,
    };
    h.extend_from_slice(l4);
    (proto, h)
}

fn vlan(tpid: u16, inner: &[u8]) -> Vec<u8> {
    let mut f = inner[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&[0, 7]);
    f.extend_from_slice(&inner[12..]);
    f
}

/// A DHCP client message (`mt` 1 DISCOVER, 3 REQUEST for `req`) with BOOTP `op` and
/// `chaddr`, from `src`.
fn dhcp_msg(mac: [u8; 6], src: [u8; 4], op: u8, chaddr: [u8; 6], mt: u8, req: [u8; 4]) -> Vec<u8> {
    let mut f = dhcp(chaddr, mt, (mt == 3).then_some(req));
    f[6..12].copy_from_slice(&mac);
    f[14 + 12..14 + 16].copy_from_slice(&src);
    f[14 + 20 + 8] = op;
    f
}

/// What a frame claims, read without the checker's code: the addresses and MACs it
/// speaks for, and whether it is a message only a router or server sends.
#[derive(Debug, Default)]
struct Claims {
    src_mac: [u8; 6],
    /// IPv4 source, ARP sender (0.0.0.0 left out).
    v4: Vec<Ipv4Addr>,
    /// IPv6 source, neighbour advertisement target (:: left out).
    v6: Vec<Ipv6Addr>,
    /// ARP sender MAC, NDP link-layer address options, DHCP chaddr.
    macs: Vec<[u8; 6]>,
    /// A DHCP or DHCPv6 server message, a router advertisement, a redirect.
    server: bool,
}

fn claims(f: &[u8]) -> Claims {
    let be = |b: &[u8], i: usize| b.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mac6 = |b: &[u8]| <[u8; 6]>::try_from(b).ok();
    let mut c = Claims::default();
    c.src_mac.copy_from_slice(&f[6..12]);
    let mut at = 12;
    // Read through VLAN tags: what matters is what the frame carries.
    while matches!(be(f, at), Some(0x8100 | 0x88a8 | 0x9100)) {
        at += 4;
    }
    let et = be(f, at);
    let p = f.get(at + 2..).unwrap_or(&[]);
    match et {
        Some(0x0806) if p.len() >= 28 => {
            c.macs.extend(mac6(&p[8..14]));
            let a = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
            if !a.is_unspecified() {
                c.v4.push(a);
            }
        }
        Some(0x0800) if p.len() >= 20 => {
            let a = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            if !a.is_unspecified() {
                c.v4.push(a);
            }
            let ihl = usize::from(p[0] & 15) * 4;
            let first = be(p, 6).is_some_and(|v| v & 0x1fff == 0);
            let l4 = p.get(ihl..).unwrap_or(&[]);
            if first && p[9] == 17 {
                let (sport, dport) = (be(l4, 0), be(l4, 2));
                c.server |= sport == Some(67) || dport == Some(68);
                if dport == Some(67) {
                    c.server |= l4.get(8) == Some(&2);
                    c.macs.extend(l4.get(36..42).and_then(mac6));
                }
            }
            c.server |= first && p[9] == 1 && l4.first() == Some(&5);
        }
        Some(0x86dd) if p.len() >= 40 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&p[8..24]);
            let src = Ipv6Addr::from(b);
            if !src.is_unspecified() {
                c.v6.push(src);
            }
            let mut next = p[6];
            let mut at = 40;
            let mut upper = true;
            for _ in 0..32 {
                let Some(h) = p.get(at..at + 8) else {
                    upper = false;
                    break;
                };
                let len = match next {
                    0 | 43 | 60 => (usize::from(h[1]) + 1) * 8,
                    51 => (usize::from(h[1]) + 2) * 4,
                    44 => {
                        upper &= u16::from_be_bytes([h[2], h[3]]) & 0xfff8 == 0;
                        8
                    }
                    _ => break,
                };
                next = h[0];
                at += len;
            }
            let l4 = p.get(at..).unwrap_or(&[]);
            if upper && next == 17 {
                c.server |= be(l4, 0) == Some(547) || be(l4, 2) == Some(546);
            }
            if upper && next == 58 {
                let t = l4.first().copied();
                c.server |= matches!(t, Some(134 | 137));
                if t == Some(136)
                    && let Some(b) = l4.get(8..24)
                {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    c.v6.push(Ipv6Addr::from(a));
                }
                let opts = match t {
                    Some(133) => 8,
                    Some(135 | 136) => 24,
                    _ => l4.len(),
                };
                let mut o = l4.get(opts..).unwrap_or(&[]);
                while o.len() >= 8 && o[1] != 0 {
                    if matches!(o[0], 1 | 2) {
                        c.macs.extend(mac6(&o[2..8]));
                    }
                    o = o.get(usize::from(o[1]) * 8..).unwrap_or(&[]);
                }
            }
        }
        _ => {}
    }
    c
}

fn v4_choice(i: usize) -> [u8; 4] {
    [
        [10, 0, 2, 15], // A's lease
        [10, 0, 2, 16], // B's lease
        [10, 0, 2, 17], // free in the pool
        [10, 0, 2, 18], // free in the pool
        [10, 0, 2, 30],
        [10, 0, 2, 31],
        [10, 0, 2, 40], // D's configured address
        [10, 0, 2, 2],  // the gateway
        [10, 0, 2, 3],  // DNS
        [10, 0, 2, 255],
        [0, 0, 0, 0],
        [192, 0, 2, 1],
    ][i % 12]
}

fn v6_choice(i: usize) -> Ipv6Addr {
    let s = [
        "fe80::a",
        "fe80::b",
        "fe80::c",
        "fd00::a",
        "fd00::b",
        "fe80::5055:aff:fe00:202", // the router's link-local address
        "fd00::2",
        "fd00::3",
        "fd00::",
        "2001:db8::1",
        "::",
        "fd00::c",
    ][i % 12];
    s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// One generated frame: `(port, mac, kind, a, b, c, bits)`.
type Gen = (usize, usize, u8, usize, usize, usize, u8);

/// The frame a [`Gen`] stands for from a port whose MAC is `own`: `mac` picks the
/// source MAC (`macs`, else `own`).
fn gen_frame(g: Gen, macs: &[[u8; 6]; 5], own: [u8; 6]) -> Vec<u8> {
    let (from, mac_i, kind, a, b, c, bits) = g;
    let mac = macs.get(mac_i).copied().unwrap_or(own);
    // Past the shared choices, the generator's guess at the port's own addresses.
    let v4_choice = |i: usize| match i {
        0..12 => v4_choice(i),
        _ => [
            [10, 0, 2, 15],
            [10, 0, 2, 16],
            [10, 0, 2, 30],
            [10, 0, 2, 40],
        ][from % 4],
    };
    let v6_choice = |i: usize| match i {
        0..12 => v6_choice(i),
        12 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xa + from as u16),
        _ => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xa + from as u16),
    };
    let other = macs[b % 5];
    let dsts = [
        MAC_A,
        MAC_B,
        MAC_C,
        MAC_D,
        BCAST,
        GATEWAY_MAC,
        [0x33, 0x33, 0, 0, 0, 1],
    ];
    let dst = dsts[c % dsts.len()];
    let src4 = v4_choice(a);
    let src6 = v6_choice(a);
    let all_nodes: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let ports = [
        (1000, 2000),
        (68, 67),
        (67, 68),
        (5000, 68),
        (546, 547),
        (547, 546),
    ];
    let lla = [None, Some(mac), Some(other)][usize::from(bits) % 3];
    let ext = [0u8, 60, 43, 44, 45][usize::from(bits >> 2) % 5];
    match kind % 14 {
        0 => {
            let (s, d) = ports[c % 4];
            eth(
                dst,
                mac,
                0x0800,
                &ipv4(src4, v4_choice(b), 17, &udp(s, d, b"x")),
            )
        }
        1 => {
            let t = if bits & 1 == 1 { 5 } else { 8 };
            eth(
                dst,
                mac,
                0x0800,
                &ipv4(src4, v4_choice(b), 1, &[t, 0, 0, 0, 0, 1, 0, 1]),
            )
        }
        2 => {
            let mut f = arp(1, mac, src4, v4_choice(b));
            f[22..28].copy_from_slice(&[mac, other][usize::from(bits & 1)]);
            f
        }
        3 => arp_reply(mac, src4, dst, v4_choice(b)),
        4 => arp(1, mac, src4, src4),
        5 => {
            let src = if bits & 1 == 1 { src4 } else { [0; 4] };
            let op = if bits & 2 == 2 { 2 } else { 1 };
            let mt = if bits & 4 == 4 { 3 } else { 1 };
            let chaddr = if bits & 8 == 8 { other } else { mac };
            dhcp_msg(mac, src, op, chaddr, mt, v4_choice(b))
        }
        6 => {
            let (s, d) = ports[[0, 4, 5][c % 3]];
            eth(
                dst,
                mac,
                0x86dd,
                &ipv6(src6, all_nodes, 17, &udp(s, d, b"x")),
            )
        }
        7 => eth(
            dst,
            mac,
            0x86dd,
            &ipv6(src6, all_nodes, 58, &ndp(136, v6_choice(b), lla)),
        ),
        8 => eth(
            dst,
            mac,
            0x86dd,
            &ipv6(src6, all_nodes, 58, &ndp(135, v6_choice(b), lla)),
        ),
        9 => {
            let t = if bits & 1 == 1 { 137 } else { 134 };
            eth(
                dst,
                mac,
                0x86dd,
                &ipv6(src6, all_nodes, 58, &icmp6(t, &[0; 36])),
            )
        }
        10 => eth(
            dst,
            mac,
            0x86dd,
            &ipv6(src6, all_nodes, 58, &ndp(133, src6, lla)),
        ),
        11 => {
            let inner = gen_frame((from, mac_i, (c % 10) as u8, a, b, c / 2, bits), macs, own);
            let tpid = [0x8100, 0x88a8, 0x9100][usize::from(bits) % 3];
            let f = vlan(tpid, &inner);
            if bits & 0x80 != 0 {
                vlan(0x8100, &f)
            } else {
                f
            }
        }
        12 => {
            let l4 = match c % 4 {
                0 => ndp(136, v6_choice(b), lla),
                1 => icmp6(134, &[0; 12]),
                2 => udp(547, 546, b"x"),
                _ => udp(1000, 2000, b"x"),
            };
            let next = if c % 4 >= 2 { 17 } else { 58 };
            let (proto, payload) = behind(ext, next, &l4);
            eth(dst, mac, 0x86dd, &ipv6(src6, all_nodes, proto, &payload))
        }
        _ => {
            // An MLD report behind Hop-by-Hop (as Linux sends them, also from ::).
            let (proto, payload) = behind(0, 58, &icmp6(143, &[0; 4]));
            eth(
                [0x33, 0x33, 0, 0, 0, 0x16],
                mac,
                0x86dd,
                &ipv6(
                    src6,
                    "ff02::16".parse().unwrap_or(all_nodes),
                    proto,
                    &payload,
                ),
            )
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Whatever guests send (IPv4 from leased, unleased, configured, foreign and
    /// router addresses and 0.0.0.0, DHCP client messages with any chaddr and BOOTP
    /// op, ARP requests, replies and gratuitous ARP, IPv6 from link-local, in-prefix,
    /// off-prefix, router addresses and ::, NDP with link-layer address options, RA and
    /// redirects, DHCPv6 server messages, extension headers and fragments, VLAN and
    /// QinQ tags, with any source MAC), no frame from a port with anti-spoofing on
    /// leaves the switch (to another port's queue, or to the router) with a source the
    /// port does not own. The oracle reads each frame that left on its own (`claims`)
    /// and keeps its own books: (a) every MAC the frame speaks for (source, ARP sender,
    /// NDP options, DHCP chaddr) is the port's first MAC; (b) no address leaves from
    /// two ports (unless DHCP leased it to the second since); (c) the gateway's and DNS
    /// addresses (IPv4 and IPv6) never leave from a guest, nor addresses outside the
    /// subnet or the prefix and link-local; (d) a leased address leaves only from its
    /// holder's MAC, and a port holding a lease or a configured address speaks for
    /// those only; no server or router message leaves; no guest's MAC moves to another
    /// port in the switch.
    #[test]
    fn no_forged_source_ever_leaves_the_switch(
        frames in proptest::collection::vec(
            (0usize..4, 0usize..16, 0u8..14, 0usize..16, 0usize..16, 0usize..12, proptest::prelude::any::<u8>()),
            1..80,
        )
    ) {
        let now = Instant::now();
        let mut c = cfg();
        c.ipv6 = Some(crate::config::Ipv6Config::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 64));
        if let Some(d) = c.dhcp.as_mut() {
            d.pool_start = [10, 0, 2, 15].into();
            d.pool_end = [10, 0, 2, 18].into();
        }
        let (mut f, _p) = fabric_with(c, true);
        let ports = [
            f.add_port(now, None, PortKind::Virtual, "a".into()).unwrap(),
            f.add_port(now, None, PortKind::Virtual, "b".into()).unwrap(),
            f.add_port(now, None, PortKind::Virtual, "c".into()).unwrap(),
            f.add_port(now, None, PortKind::Virtual, "d".into()).unwrap(),
        ];
        let first = [MAC_A, MAC_B, MAC_C, MAC_D];
        let macs = [MAC_A, MAC_B, MAC_C, MAC_D, GATEWAY_MAC];
        // A and B lease .15 and .16; C configures itself; D is configured (.40).
        for i in 0..2 {
            f.from_port(now, ports[i], &dhcp(first[i], 1, None));
            let out = settle(&mut f, now);
            let offer = out[&ports[i]].iter().find(|fr| fr[6..12] == GATEWAY_MAC).unwrap();
            let addr = yiaddr(offer);
            f.from_port(now, ports[i], &dhcp(first[i], 3, Some(addr)));
            let _ = settle(&mut f, now);
        }
        f.from_port(now, ports[2], &arp(1, MAC_C, [0; 4], [10, 0, 2, 2]));
        f.configure_identity(ports[3], Some(MAC_D), Some([10, 0, 2, 40].into()));
        // D uses its address at once: until then nothing tells the other ports it is
        // taken (`configure_identity` does not note it as a neighbour).
        f.from_port(now, ports[3], &arp(1, MAC_D, [10, 0, 2, 40], [10, 0, 2, 2]));
        let _ = settle(&mut f, now);
        let leases = f.router.as_ref().unwrap().leases();
        proptest::prop_assert_eq!(leases.len(), 2);

        let ours4 = [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)];
        let ours6 = [
            crate::config::GATEWAY_LINK_LOCAL,
            "fd00::2".parse::<Ipv6Addr>().unwrap(),
            "fd00::3".parse::<Ipv6Addr>().unwrap(),
        ];
        let mut owner4: HashMap<Ipv4Addr, PortId> = HashMap::new();
        let mut owner6: HashMap<Ipv6Addr, PortId> = HashMap::new();
        use std::sync::atomic::Ordering::Relaxed;
        for g in frames {
            let from = g.0;
            let port = ports[from];
            let frame = gen_frame(g, &macs, first[from]);
            // The lease table as the frame found it.
            let leases = f.router.as_ref().unwrap().leases();
            let before = f.stats.rx_frames.load(Relaxed);
            f.from_port(now, port, &frame);
            let to_router = f.stats.rx_frames.load(Relaxed) > before;
            let out = settle(&mut f, now);
            let to_port = out
                .iter()
                .any(|(&dest, frs)| dest != port && frs.contains(&frame));
            proptest::prop_assert!(
                !out.get(&port).is_some_and(|frs| frs.contains(&frame)),
                "a frame came back to its own port"
            );
            if !(to_router || to_port) {
                continue;
            }
            let c = claims(&frame);
            let me = first[from];
            proptest::prop_assert_eq!(c.src_mac, me, "source MAC of {:02x?}", frame);
            for m in &c.macs {
                proptest::prop_assert_eq!(*m, me, "a MAC claimed by {:02x?}", frame);
            }
            proptest::prop_assert!(!c.server, "a server's message left: {:02x?}", frame);
            // A port with a bound lease or a configured address speaks for those only.
            let configured = (from == 3).then_some(Ipv4Addr::new(10, 0, 2, 40));
            let bound = leases.iter().any(|l| {
                l.mac == me
                    && matches!(
                        l.state,
                        usernet_dhcp::LeaseState::Bound | usernet_dhcp::LeaseState::Reserved
                    )
            });
            for a in &c.v4 {
                proptest::prop_assert!(!ours4.contains(a), "{} left from port {}", a, port);
                let o = a.octets();
                proptest::prop_assert!(
                    o[..3] == [10, 0, 2] && o[3] != 0 && o[3] != 255,
                    "{} is nobody's",
                    a
                );
                if bound || configured.is_some() {
                    let mine = Some(*a) == configured
                        || leases.iter().any(|l| l.addr == *a && l.mac == me);
                    proptest::prop_assert!(mine, "{} left from port {} holding a lease", a, port);
                }
                let lease = leases
                    .iter()
                    .find(|l| l.addr == *a && l.state != usernet_dhcp::LeaseState::Declined);
                if let Some(l) = lease {
                    proptest::prop_assert_eq!(l.mac, me, "leased {} left from port {}", a, port);
                }
                match owner4.insert(*a, port) {
                    Some(p) if p != port => proptest::prop_assert!(
                        lease.is_some(),
                        "{} left from ports {} and {}",
                        a,
                        p,
                        port
                    ),
                    _ => {}
                }
            }
            for a in &c.v6 {
                proptest::prop_assert!(!ours6.contains(a), "{} left from port {}", a, port);
                let s = a.segments();
                proptest::prop_assert!(
                    s[0] & 0xffc0 == 0xfe80 || s[..4] == [0xfd00, 0, 0, 0],
                    "{} is nobody's",
                    a
                );
                let prev = owner6.insert(*a, port);
                proptest::prop_assert!(
                    prev.is_none_or(|p| p == port),
                    "{} left from ports {:?} and {}",
                    a,
                    prev,
                    port
                );
            }
            // Nobody else's MAC was pulled to this port: traffic is not stolen.
            for (i, m) in first.iter().enumerate() {
                let at = f.switch.port_of(now, *m);
                proptest::prop_assert!(at.is_none() || at == Some(ports[i]), "{:02x?} on {:?}", m, at);
            }
        }
    }
}

/// The other side of the property above: what guests send in the ordinary course
/// (their lease, a pinned or configured address, link-local and in-prefix IPv6, DAD,
/// MLD behind Hop-by-Hop, neighbour advertisements with their own MAC, DHCP from
/// 0.0.0.0) still leaves the switch.
#[test]
fn ordinary_guest_frames_still_leave() {
    let now = Instant::now();
    let mut c = cfg();
    c.ipv6 = Some(crate::config::Ipv6Config::new(
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
        64,
    ));
    let (mut f, _p) = fabric_with(c, true);
    let [a, b, _c] = three_ports(&mut f, now);
    f.from_port(now, a, &dhcp(MAC_A, 1, None));
    let out = settle(&mut f, now);
    let offer = out[&a].iter().find(|fr| fr[6..12] == GATEWAY_MAC).unwrap();
    let lease = yiaddr(offer);
    f.from_port(now, a, &dhcp(MAC_A, 3, Some(lease)));
    let _ = settle(&mut f, now);
    let all: Ipv6Addr = "ff02::1".parse().unwrap();
    let ll: Ipv6Addr = "fe80::a".parse().unwrap();
    let global: Ipv6Addr = "fd00::a".parse().unwrap();
    let (hbh, mld) = behind(0, 58, &icmp6(143, &[0; 4]));
    let frames = [
        (a, dhcp(MAC_A, 1, None)),
        (a, icmp_echo(MAC_A, BCAST, lease, [10, 0, 2, 255])),
        (a, arp(1, MAC_A, lease, lease)),
        (b, arp(1, MAC_B, [10, 0, 2, 30], [10, 0, 2, 30])),
        (b, icmp_echo(MAC_B, BCAST, [10, 0, 2, 30], [10, 0, 2, 255])),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(Ipv6Addr::UNSPECIFIED, all, 58, &ndp(135, ll, None)),
            ),
        ),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(Ipv6Addr::UNSPECIFIED, all, hbh, &mld),
            ),
        ),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(ll, all, 58, &ndp(133, ll, Some(MAC_A))),
            ),
        ),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(ll, all, 58, &ndp(136, ll, Some(MAC_A))),
            ),
        ),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(global, all, 17, &udp(1000, 2000, b"x")),
            ),
        ),
        (
            a,
            eth(
                BCAST,
                MAC_A,
                0x86dd,
                &ipv6(ll, all, 58, &ndp(136, global, Some(MAC_A))),
            ),
        ),
    ];
    for (i, (port, fr)) in frames.iter().enumerate() {
        f.from_port(now, *port, fr);
        let out = settle(&mut f, now);
        assert!(
            out.iter().any(|(&d, frs)| d != *port && frs.contains(fr)),
            "frame {i} did not leave: {:?}",
            f.port(*port).map(|p| p.spoofed)
        );
    }
    for p in [a, b] {
        assert_eq!(f.port(p).unwrap().spoofed, [0; guard::Spoof::ALL.len()]);
    }
}
