//! Fuzz entry point for the whole frame pipeline: arbitrary guest frames through the
//! real classifier, reassembly, NAT tables, smoltcp and the DHCP/DNS services, with a
//! fake clock. It never opens a socket toward the host or the outside
//! (`Config::outbound` is off and the DNS relay has no upstream), so it is safe to run
//! anywhere, and `cargo test` replays its corpus.
//!
//! Input format: a sequence of records, each a 2-byte big-endian length and that many
//! bytes of Ethernet frame; a length of 0 advances the fake clock by one second and runs
//! the timers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::router::Router;
use crate::router::dns::Upstreams;
use crate::stats::Stats;

/// Run `data` through a fresh router and check its invariants.
pub fn frame_pipeline(data: &[u8]) {
    run_pipeline(data, |_| {});
}

/// A router that opens no socket (outbound off, no DNS upstream), and what made it.
struct FuzzRouter {
    _poll: mio::Poll,
    cfg: Config,
    stats: Arc<Stats>,
    router: Router,
    start: Instant,
}

fn fuzz_router(guest_mac: Option<[u8; 6]>) -> Option<FuzzRouter> {
    let poll = mio::Poll::new().ok()?;
    let registry = poll.registry().try_clone().ok()?;
    let mut cfg = Config {
        outbound: false,
        verify_checksums: false,
        ..Config::default()
    };
    cfg.dns_options.upstreams = Upstreams::Fixed(Vec::new());
    cfg.limits.max_reassembly = 8;
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let router = Router::new(cfg.clone(), stats.clone(), registry, guest_mac, start).ok()?;
    Some(FuzzRouter {
        _poll: poll,
        cfg,
        stats,
        router,
        start,
    })
}

/// [`frame_pipeline`], handing every emitted frame to `seen`.
pub fn run_pipeline(data: &[u8], mut seen: impl FnMut(&[u8])) {
    let Some(FuzzRouter {
        _poll,
        mut router,
        start,
        ..
    }) = fuzz_router(Some([0x02, 0, 0, 0, 0, 0x64]))
    else {
        return;
    };
    let mut now = start;
    let mut rest = data;
    let mut frames = 0;
    while rest.len() >= 2 && frames < 4096 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if len == 0 {
            now += Duration::from_secs(1);
            router.run_timers(now);
        } else {
            let n = len.min(rest.len());
            router.handle_frame(now, &rest[..n]);
            rest = &rest[n..];
            frames += 1;
        }
        router.process(now);
        let cap = router.txq().frame_cap();
        while let Some(f) = router.txq().front() {
            assert!(
                f.len() >= 14 && f.len() <= cap,
                "emitted frame of {} bytes",
                f.len()
            );
            seen(f);
            router.txq().pop_front();
        }
        router.tx_drained(now);
    }
    router.run_timers(now + Duration::from_secs(3600));
}

/// Guest ports in [`network_pipeline`].
const NET_FUZZ_PORTS: usize = 4;

/// The `network` fuzz target: frames from several guest ports through a network's
/// switch and its router (outbound off, as in [`frame_pipeline`]), with a fake clock.
///
/// Input: records `[port][len: u16 BE][frame]`. `port % 8` below 4 is a guest port;
/// 4 advances the clock by a second and runs every timer; 5 removes that record's
/// port (`len % 4`) and attaches a fresh one; 6 advances the clock past the stall
/// time without writing, so the router's frames meet full queues.
pub fn network_pipeline(data: &[u8]) {
    run_network(data, |_, _| {});
}

/// [`network_pipeline`], handing every frame a port's queue receives to `seen`.
pub fn run_network(data: &[u8], mut seen: impl FnMut(usize, &[u8])) {
    use crate::network::{Fabric, PortKind};
    let Some(FuzzRouter {
        _poll,
        cfg,
        stats,
        router,
        start,
    }) = fuzz_router(None)
    else {
        return;
    };
    let mut fabric = Fabric::new(
        start,
        cfg.mtu,
        (cfg.network, cfg.prefix_len),
        cfg.gateway,
        Some(router),
        stats,
    );
    let mut ids = [0usize; NET_FUZZ_PORTS];
    for id in ids.iter_mut() {
        *id = fabric
            .add_port(start, None, PortKind::Virtual, String::new())
            .unwrap_or(0);
    }
    let cap = 14 + cfg.mtu as usize;
    let mut now = start;
    let mut rest = data;
    let mut records = 0;
    while rest.len() >= 3 && records < 4096 {
        let op = usize::from(rest[0] % 8);
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rest = &rest[3..];
        records += 1;
        match op {
            0..=3 => {
                let n = len.min(rest.len());
                fabric.from_port(now, ids[op], &rest[..n]);
                rest = &rest[n..];
            }
            4 => {
                now += Duration::from_secs(1);
                if let Some(r) = fabric.router.as_mut() {
                    r.run_timers(now);
                }
                fabric.switch.expire(now);
            }
            5 => {
                let i = len % NET_FUZZ_PORTS;
                fabric.remove_port(ids[i]);
                ids[i] = fabric
                    .add_port(now, None, PortKind::Virtual, String::new())
                    .unwrap_or(0);
            }
            _ => {
                now += crate::network::PORT_STALL;
                if let Some(r) = fabric.router.as_mut() {
                    r.process(now);
                }
                fabric.drain_router(now);
                continue;
            }
        }
        if let Some(r) = fabric.router.as_mut() {
            r.process(now);
        }
        fabric.drain_router(now);
        assert!(fabric.switch.len() <= crate::network::switch::MAX_MACS);
        assert!(fabric.neighbors() <= 2 * crate::network::MAX_NEIGHBORS);
        for (k, p) in fabric.ports.iter_mut() {
            while let Some(f) = p.q.front() {
                assert!(f.len() <= cap, "queued frame of {} bytes", f.len());
                seen(k + 1, f);
                p.q.pop_front();
            }
        }
        fabric.to_write.clear();
        if let Some(r) = fabric.router.as_mut() {
            r.tx_drained(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&(f.len() as u16).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    fn replies(seed: &str) -> Vec<Vec<u8>> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/frame_pipeline")
            .join(seed);
        let data = std::fs::read(&p).unwrap();
        let mut out = Vec::new();
        run_pipeline(&data, |f| out.push(f.to_vec()));
        out
    }

    #[test]
    fn the_router_answers_real_frames() {
        // ARP: one reply for the gateway, none for the guest's gratuitous ARP.
        let r = replies("arp");
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0][12..14], &[0x08, 0x06]);
        assert_eq!(&r[0][14 + 6..14 + 8], &[0, 2], "ARP reply opcode");
        // DHCP: OFFER then ACK for 10.0.2.15.
        let r = replies("dhcp");
        assert_eq!(r.len(), 2);
        for f in &r {
            assert_eq!(
                &f[14 + 20 + 8 + 16..14 + 20 + 8 + 20],
                &[10, 0, 2, 15],
                "yiaddr"
            );
        }
        // DNS: the local name is answered with the gateway's address.
        let r = replies("dns_local");
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0][r[0].len() - 4..], &[10, 0, 2, 2]);
        // Echo to the gateway is answered; its payload comes back.
        let r = replies("ping_gateway");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0][14 + 20], 0, "echo reply");
        // With outbound off, a SYN is answered with RST (never a fake SYN-ACK).
        let r = replies("tcp_syn");
        assert!(!r.is_empty());
        for f in &r {
            assert_eq!(f[14 + 20 + 13] & 0x04, 0x04, "RST flag");
            assert_eq!(f[14 + 20 + 13] & 0x02, 0, "no SYN");
        }
        // UDP to the outside with outbound off: ICMP port unreachable.
        let r = replies("udp");
        assert_eq!(r.len(), 1);
        assert_eq!((r[0][14 + 20], r[0][14 + 21]), (3, 3));
    }

    #[test]
    fn network_seeds_reach_their_guests() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/network");
        // Two guests lease by DHCP and ping each other through the switch.
        let data = std::fs::read(dir.join("two_guests")).unwrap();
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        run_network(&data, |p, f| got.push((p, f.to_vec())));
        let acks = |port| {
            got.iter()
                .filter(|(p, f)| {
                    *p == port && f[6..12] == crate::config::GATEWAY_MAC && f.len() > 300
                })
                .count()
        };
        assert!(acks(1) >= 2, "port 1 got its offer and ack");
        assert!(acks(2) >= 2, "port 2 got its offer and ack");
        // The ping from port 1 to port 2's MAC reached port 2 only.
        assert!(
            got.iter()
                .any(|(p, f)| *p == 2 && f[12..14] == [8, 0] && f[14 + 9] == 1)
        );
        assert!(!got.iter().any(|(p, f)| *p == 1
            && f[12..14] == [8, 0]
            && f[14 + 9] == 1
            && f[6..12] != crate::config::GATEWAY_MAC));
    }

    #[test]
    fn garbage_and_lone_fragments_do_not_hurt() {
        let mut frag = vec![0u8; 14 + 28];
        frag[0..6].copy_from_slice(&crate::config::GATEWAY_MAC);
        frag[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x64]);
        frag[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut frag[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[6] = 0x20; // MF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 2, 100]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
        frame_pipeline(&rec(&[&[0xff; 3], &[0u8; 60], &frag, &[], &frag]));
    }
}
