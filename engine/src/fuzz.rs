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

/// [`frame_pipeline`], handing every emitted frame to `seen`.
pub fn run_pipeline(data: &[u8], mut seen: impl FnMut(&[u8])) {
    let Ok(poll) = mio::Poll::new() else { return };
    let Ok(registry) = poll.registry().try_clone() else {
        return;
    };
    let mut cfg = Config {
        outbound: false,
        verify_checksums: false,
        ..Config::default()
    };
    cfg.dns_options.upstreams = Upstreams::Fixed(Vec::new());
    cfg.limits.max_reassembly = 8;
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let Ok(mut router) = Router::new(cfg, stats, registry, Some([0x02, 0, 0, 0, 0, 0x64]), start)
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
