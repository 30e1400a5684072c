//! Fuzz entry points for the whole frame pipeline: arbitrary guest frames through the
//! real classifier, reassembly, NAT tables, smoltcp and the DHCP/DNS services, with a
//! fake clock and with host-side events interleaved by the fuzzer, and `cargo test`
//! replays their corpora.
//!
//! `frame_pipeline`: the router of a single guest. Every flow that would leave through
//! a host socket goes to sockets the harness owns on the host's loopback
//! ([`crate::fuzz_host`], `Config::sink`), never anywhere else, so the input can play
//! the servers the guest talks to, and the clients of a TCP and a UDP port forward.
//! smoltcp's and the DNS relay's randomness is seeded, so an input replays the same way
//! and the fuzzer can learn the sequence numbers it has to acknowledge.
//!
//! Input: a sequence of records, each a 2-byte big-endian length and then
//! - 1 ..= `0xffef`: that many bytes of an Ethernet frame from the guest;
//! - 0: one second passes and the timers run;
//! - `0xfff0 + op`: a host-side event (see [`HostOp`]), with the operands it names.
//!
//! After each record, host readiness is handed to the router as the engine's loop
//! hands it over, and every frame the router queued is checked and taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::fuzz_host::HostSide;
use crate::router::dns::Upstreams;
use crate::router::{Owner, Readiness, Router};
use crate::stats::Stats;

/// Records read from one input.
const MAX_RECORDS: usize = 4096;
/// Lengths from this one up name host-side events.
const HOST_OP_BASE: u16 = 0xfff0;
/// The seed of the pipeline's randomness.
const FUZZ_SEED: u64 = 0x7573_6572_6e65_7421;

/// Host-side events of the `frame_pipeline` input (`0xfff0 + op`). `[i]` is one byte
/// naming a connection or UDP peer (modulo those held), `[data]` a 2-byte big-endian
/// length and that many bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HostOp {
    /// Accept every connection waiting at the sink.
    Accept = 0,
    /// `[i][data]`: connection `i` writes `data` toward the guest.
    Write = 1,
    /// `[i]`: connection `i` shuts its sending side.
    Shutdown = 2,
    /// `[i]`: connection `i` is reset.
    Reset = 3,
    /// `[i]`: connection `i` is closed.
    Close = 4,
    /// Read everything waiting on the connections and UDP sockets.
    Drain = 5,
    /// `[i][data]`: the sink sends `data` to UDP peer `i`.
    Reply = 6,
    /// `[i][data]`: as `Reply`, with the first two bytes of that peer's last datagram
    /// (a DNS answer to its query's id).
    Answer = 7,
    /// A client connects to the TCP forward (127.0.0.1 → guest port 80).
    Connect = 8,
    /// `[data]`: a client sends `data` to the UDP forward (→ guest port 53).
    Datagram = 9,
    /// 100 ms pass and the timers run.
    Tick = 10,
}

impl HostOp {
    fn of(v: u16) -> Option<HostOp> {
        use HostOp::*;
        [
            Accept, Write, Shutdown, Reset, Close, Drain, Reply, Answer, Connect, Datagram, Tick,
        ]
        .get(usize::from(v.checked_sub(HOST_OP_BASE)?))
        .copied()
    }

    /// The record header of this event.
    pub fn record(self) -> [u8; 2] {
        (HOST_OP_BASE + self as u16).to_be_bytes()
    }
}

/// Run `data` through a fresh router and check its invariants.
pub fn frame_pipeline(data: &[u8]) {
    run_pipeline(data, |_| {});
}

/// A router for the fuzz targets, and what made it. With `sink`, its outbound flows and
/// its DNS upstream are that port of the host's loopback; without, outbound is off,
/// there is no upstream, and it opens no socket.
struct FuzzRouter {
    poll: mio::Poll,
    cfg: Config,
    stats: Arc<Stats>,
    router: Router,
    start: Instant,
}

fn fuzz_router(guest_mac: Option<[u8; 6]>, sink: Option<u16>) -> Option<FuzzRouter> {
    let poll = mio::Poll::new().ok()?;
    let registry = poll.registry().try_clone().ok()?;
    let mut cfg = Config {
        outbound: sink.is_some(),
        sink,
        random_seed: Some(FUZZ_SEED),
        verify_checksums: false,
        ..Config::default()
    };
    let ups = sink.map(|p| std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, p)));
    cfg.dns_options.upstreams = Upstreams::Fixed(ups.into_iter().collect());
    // Small tables, so that their caps and evictions are within the fuzzer's reach.
    cfg.limits.max_reassembly = 8;
    cfg.limits.max_tcp_flows = 32;
    cfg.limits.max_half_open = 16;
    cfg.limits.max_udp_mappings = 16;
    cfg.limits.max_icmp_mappings = 8;
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let router = Router::new(cfg.clone(), stats.clone(), registry, guest_mac, start).ok()?;
    Some(FuzzRouter {
        poll,
        cfg,
        stats,
        router,
        start,
    })
}

/// The `frame_pipeline` target's world: a router, the host side it talks to, a fake
/// clock. Tests drive it a record at a time.
pub struct Pipeline {
    /// Dropped first: its connections are reset before the router closes its ends.
    pub host: HostSide,
    poll: mio::Poll,
    events: mio::Events,
    router: Router,
    now: Instant,
}

impl Pipeline {
    /// A router for guest 02:00:00:00:00:64 with the host side bound, and a TCP and a
    /// UDP forward from 127.0.0.1.
    pub fn new() -> Option<Pipeline> {
        let mut host = HostSide::bind().ok()?;
        let FuzzRouter {
            poll,
            mut router,
            start,
            ..
        } = fuzz_router(Some([0x02, 0, 0, 0, 0, 0x64]), Some(host.port()))?;
        let tcp = forward(&mut router, 1, usernet_portfwd::Proto::Tcp, 80);
        let udp = forward(&mut router, 2, usernet_portfwd::Proto::Udp, 53);
        host.set_forwards(tcp, udp).ok()?;
        Some(Pipeline {
            host,
            poll,
            events: mio::Events::with_capacity(256),
            router,
            now: start,
        })
    }

    /// A frame from the guest.
    pub fn frame(&mut self, f: &[u8]) {
        self.router.handle_frame(self.now, f);
    }

    /// Time passes; the timers run.
    pub fn tick(&mut self, d: Duration) {
        self.now += d;
        self.router.run_timers(self.now);
    }

    /// A host-side event with its operands taken from `rest`; returns what is left.
    pub fn host_op<'a>(&mut self, op: HostOp, rest: &'a [u8]) -> &'a [u8] {
        let (i, rest) = match op {
            HostOp::Write
            | HostOp::Shutdown
            | HostOp::Reset
            | HostOp::Close
            | HostOp::Reply
            | HostOp::Answer => match rest.split_first() {
                Some((&i, r)) => (i, r),
                None => return rest,
            },
            _ => (0, rest),
        };
        let (data, rest) = match op {
            HostOp::Write | HostOp::Reply | HostOp::Answer | HostOp::Datagram => {
                let [a, b, r @ ..] = rest else {
                    return &[];
                };
                let n = usize::from(u16::from_be_bytes([*a, *b])).min(r.len());
                r.split_at(n)
            }
            _ => (&[][..], rest),
        };
        let h = &mut self.host;
        match op {
            HostOp::Accept => h.accept(),
            HostOp::Write => h.write(i, data),
            HostOp::Shutdown => h.shutdown(i),
            HostOp::Reset => h.close(i, true),
            HostOp::Close => h.close(i, false),
            HostOp::Drain => h.drain(),
            HostOp::Reply => h.reply(i, data, false),
            HostOp::Answer => h.reply(i, data, true),
            HostOp::Connect => h.connect_forward(),
            HostOp::Datagram => h.send_forward(data),
            HostOp::Tick => self.tick(Duration::from_millis(100)),
        }
        rest
    }

    /// Hand host readiness to the router, let it work, and take every frame it queued
    /// (checked: an Ethernet header at least, the frame cap at most).
    pub fn settle(&mut self, seen: &mut impl FnMut(&[u8])) {
        for _ in 0..2 {
            if self
                .poll
                .poll(&mut self.events, Some(Duration::ZERO))
                .is_err()
            {
                return;
            }
            let any = !self.events.is_empty();
            for ev in self.events.iter() {
                if let Some(owner) = Owner::from_token(ev.token()) {
                    self.router.host_event(self.now, owner, Readiness::of(ev));
                }
            }
            self.router.process(self.now);
            let cap = self.router.txq().frame_cap();
            while let Some(f) = self.router.txq().front() {
                assert!(
                    f.len() >= 14 && f.len() <= cap,
                    "emitted frame of {} bytes",
                    f.len()
                );
                seen(f);
                self.router.txq().pop_front();
            }
            self.router.tx_drained(self.now);
            if !any {
                return;
            }
        }
    }
}

fn forward(
    router: &mut Router,
    id: u32,
    proto: usernet_portfwd::Proto,
    guest_port: u16,
) -> Option<std::net::SocketAddr> {
    use crate::router::fwd::BoundListener;
    let lo = (std::net::Ipv4Addr::LOCALHOST, 0);
    let (listener, at) = match proto {
        usernet_portfwd::Proto::Tcp => {
            let l = std::net::TcpListener::bind(lo).ok()?;
            l.set_nonblocking(true).ok()?;
            let at = l.local_addr().ok()?;
            (BoundListener::Tcp(l), at)
        }
        usernet_portfwd::Proto::Udp => {
            let u = std::net::UdpSocket::bind(lo).ok()?;
            u.set_nonblocking(true).ok()?;
            let at = u.local_addr().ok()?;
            (BoundListener::Udp(u), at)
        }
    };
    let spec = usernet_portfwd::RuleSpec {
        proto,
        host_addr: at.ip(),
        host_port: at.port(),
        guest_addr: None,
        guest_mac: None,
        guest_port,
        name: None,
    };
    router.fwd.add(&mut router.ctx, id, spec, listener).ok()?;
    Some(at)
}

/// [`frame_pipeline`], handing every emitted frame to `seen`.
pub fn run_pipeline(data: &[u8], mut seen: impl FnMut(&[u8])) {
    let Some(mut p) = Pipeline::new() else {
        return;
    };
    let mut rest = data;
    let mut records = 0;
    while rest.len() >= 2 && records < MAX_RECORDS {
        let len = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        records += 1;
        if len == 0 {
            p.tick(Duration::from_secs(1));
        } else if let Some(op) = HostOp::of(len) {
            rest = p.host_op(op, rest);
        } else if len < HOST_OP_BASE {
            let n = usize::from(len).min(rest.len());
            p.frame(&rest[..n]);
            rest = &rest[n..];
        }
        p.settle(&mut seen);
    }
    p.tick(Duration::from_secs(3600));
    p.settle(&mut seen);
}

/// Guest ports in [`network_pipeline`].
const NET_FUZZ_PORTS: usize = 4;

/// The `network` fuzz target: frames from several guest ports through a network's
/// switch and its router (outbound off: it opens no socket), with a fake clock.
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
        poll: _poll,
        cfg,
        stats,
        router,
        start,
    }) = fuzz_router(None, None)
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
    // Rules, so that guest-to-guest frames go through the flow filter too (parsing,
    // the verdict cache, the RST and ICMP answers).
    let rule = |r: &str| usernet_portfwd::filter::parse_filter(r).ok();
    let net_rules = [
        "deny:tcp:10.0.2.0/24:22",
        "deny:udp:10.0.2.16/32:53",
        "deny:icmp:fd00::/64",
    ];
    fabric
        .policy_mut()
        .set_network(net_rules.iter().filter_map(|r| rule(r)).collect(), None);
    fabric.set_guest_filters(
        crate::network::GuestKey::Addr(std::net::Ipv4Addr::new(10, 0, 2, 15)),
        rule("deny:any:10.0.2.17/32").into_iter().collect(),
    );
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
        // A SYN to anywhere reaches the harness's sink: the host connect succeeds, and
        // the guest gets a SYN-ACK (never one before the host has answered).
        let r = replies("tcp_syn");
        assert!(r.len() >= 2);
        for f in &r {
            assert_eq!(f[14 + 20 + 13] & 0x12, 0x12, "SYN-ACK");
            assert_eq!(f[14 + 20 + 13] & 0x04, 0, "no RST");
        }
        // UDP to the outside went to the sink; nothing comes back unless it answers.
        assert!(replies("udp").is_empty());
    }

    const GUEST: [u8; 4] = [10, 0, 2, 100];
    const REMOTE: [u8; 4] = [198, 51, 100, 1];

    fn sum(data: &[u8], mut acc: u32) -> u16 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// An Ethernet + IPv4 frame from the guest carrying `l4` (protocol `proto`) to `dst`,
    /// with the L4 checksum at `csum_at` filled in.
    fn ip4(dst: [u8; 4], proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&GUEST);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = sum(&pseudo, 0);
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&crate::config::GATEWAY_MAC);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0x64, 0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&GUEST);
        ip.extend_from_slice(&dst);
        let c = sum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(data);
        ip4(REMOTE, 6, t, 16)
    }

    fn udp(dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        ip4(dst, 17, u, 6)
    }

    /// Drives a [`Pipeline`] and records the input that replays it.
    struct Script {
        p: Pipeline,
        input: Vec<u8>,
        out: Vec<Vec<u8>>,
    }

    impl Script {
        fn new() -> Script {
            let mut p = Pipeline::new().expect("the harness binds on the loopback");
            p.host.keep = true;
            Script {
                p,
                input: Vec::new(),
                out: Vec::new(),
            }
        }

        /// A guest frame; returns the frames the router sent back.
        fn frame(&mut self, f: &[u8]) -> Vec<Vec<u8>> {
            self.input
                .extend_from_slice(&(f.len() as u16).to_be_bytes());
            self.input.extend_from_slice(f);
            self.p.frame(f);
            self.settle()
        }

        /// A host-side event with its operands; returns the frames sent to the guest.
        fn host(&mut self, op: HostOp, operands: &[u8]) -> Vec<Vec<u8>> {
            self.input.extend_from_slice(&op.record());
            self.input.extend_from_slice(operands);
            let rest = self.p.host_op(op, operands);
            assert!(rest.is_empty());
            self.settle()
        }

        fn settle(&mut self) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            self.p.settle(&mut |f| got.push(f.to_vec()));
            self.out.extend(got.iter().cloned());
            got
        }
    }

    fn data(i: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![i];
        v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v.extend_from_slice(bytes);
        v
    }

    fn tcp_payload(f: &[u8]) -> &[u8] {
        let off = 14 + 20 + usize::from(f[14 + 20 + 12] >> 4) * 4;
        &f[off..]
    }

    /// A guest talks TCP, UDP and DNS with the host side, and a host client comes in
    /// through the forward; returns the script (its input replays it).
    fn conversation() -> Script {
        let mut s = Script::new();
        // TCP: SYN; the host connect reaches the sink, then the guest gets its SYN-ACK.
        let r = s.frame(&tcp(40000, 80, 1000, 0, 0x02, &[]));
        assert_eq!(r.len(), 1, "one SYN-ACK");
        let synack = &r[0];
        assert_eq!(synack[14 + 20 + 13], 0x12);
        assert_eq!(
            &synack[14 + 12..14 + 16],
            &REMOTE,
            "from the address the guest asked"
        );
        let isn = u32::from_be_bytes([synack[38], synack[39], synack[40], synack[41]]);
        s.frame(&tcp(40000, 80, 1001, isn.wrapping_add(1), 0x18, b"hello"));
        s.host(HostOp::Accept, &[]);
        assert_eq!(s.p.host.peers(), 1);
        s.host(HostOp::Drain, &[]);
        assert_eq!(s.p.host.received.concat(), b"hello");
        // The host's answer and its FIN reach the guest.
        let r = s.host(HostOp::Write, &data(0, b"world"));
        assert!(
            r.iter().any(|f| tcp_payload(f) == b"world"),
            "host data reached the guest"
        );
        let r = s.host(HostOp::Shutdown, &[0]);
        assert!(r.iter().any(|f| f[14 + 20 + 13] & 0x01 == 0x01), "FIN");
        s.p.host.received.clear();

        // UDP: the datagram reaches the sink, whose reply comes back from the gateway.
        assert!(s.frame(&udp(REMOTE, 5000, 9, b"ping")).is_empty());
        s.host(HostOp::Drain, &[]);
        assert_eq!(s.p.host.received.concat(), b"ping");
        assert_eq!(s.p.host.senders().len(), 1);
        let r = s.host(HostOp::Reply, &data(0, b"pong"));
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0][14 + 16..14 + 20], &GUEST);
        assert_eq!(&r[0][14 + 28..], b"pong");
        s.p.host.received.clear();

        // DNS: the relay forwards the query to the sink, and takes its answer.
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e',
            4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
        ];
        assert!(s.frame(&udp([10, 0, 2, 3], 5353, 53, &query)).is_empty());
        s.host(HostOp::Drain, &[]);
        assert_eq!(s.p.host.received.len(), 1, "the query reached the upstream");
        let mut answer = query.to_vec();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        let dns = s.p.host.senders().len() - 1;
        let r = s.host(HostOp::Answer, &data(dns as u8, &answer));
        assert_eq!(r.len(), 1, "the answer reached the guest");
        assert_eq!(&r[0][14 + 12..14 + 16], &[10, 0, 2, 3]);
        assert_eq!(
            &r[0][14 + 28..14 + 30],
            &[0x12, 0x34],
            "with the guest's own id"
        );
        assert_eq!(&r[0][r[0].len() - 4..], &[192, 0, 2, 7]);

        // A client of the TCP forward: the guest gets a SYN for its port 80.
        let r = s.host(HostOp::Connect, &[]);
        assert!(
            r.iter().any(|f| f[14 + 9] == 6
                && f[14 + 20 + 13] == 0x02
                && f[14 + 22..14 + 24] == [0, 80]),
            "SYN to the guest's port 80"
        );
        // A client of the UDP forward: its datagram reaches the guest's port 53.
        let r = s.host(HostOp::Datagram, &[0, 3, b'a', b'b', b'c']);
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0][14 + 22..14 + 24], &[0, 53]);
        assert_eq!(&r[0][14 + 28..], b"abc");
        s
    }

    #[test]
    fn host_side_events_reach_the_guest_and_replay_the_same_way() {
        // Host ports (the sink's, the forward clients') differ from run to run: mask
        // the L4 ports and checksums, compare the rest.
        fn masked(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
            let mut v = frames.to_vec();
            for f in &mut v {
                let csum = match f[14 + 9] {
                    6 => 16,
                    17 => 6,
                    _ => continue,
                };
                f[14 + 20..14 + 24].fill(0);
                f[14 + 20 + csum..14 + 22 + csum].fill(0);
            }
            v
        }
        let s = conversation();
        let mut again = Vec::new();
        run_pipeline(&s.input, |f| again.push(f.to_vec()));
        assert!(again.len() >= s.out.len());
        assert_eq!(
            masked(&again[..s.out.len()]),
            masked(&s.out),
            "the same input, the same frames"
        );
    }

    /// Writes the conversation into the corpus as a seed:
    /// `cargo test -p usernet-engine --lib write_conversation_seed -- --ignored`.
    #[test]
    #[ignore]
    fn write_conversation_seed() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/frame_pipeline/host_conversation");
        std::fs::write(p, conversation().input).unwrap();
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
