//! The router: everything the guest sees on its link.
//!
//! # Theory of operation
//! The router takes whole Ethernet frames from an L2 port (a TAP today, a QEMU stream or
//! a switch of several guests later: the router never knows which) and emits frames into
//! a bounded [`TxQueue`] that the event loop writes back to the port. It is the gateway
//! (10.0.2.2) and the DNS address (10.0.2.3) on the virtual network:
//!
//! * **L2** is ours: ARP is answered only for the gateway and DNS addresses (never for
//!   the guest's own gratuitous ARP), the guest's MAC is learned from its frames.
//! * **Classification** parses each frame with zero-copy `smoltcp::wire` views and ends
//!   in exactly one handler or one counted [`DropReason`]. Fragments are reassembled
//!   first ([`crate::frag`]).
//! * **TCP** ([`tcp`]) is terminated by smoltcp, one `SocketSet` per flow, so no per-frame
//!   work grows with the number of flows; the host side is a nonblocking socket.
//! * **UDP** ([`udp`]) and **ICMP** ([`icmp`]) bypass smoltcp: they are NAT-ed to host
//!   sockets directly, with endpoint-independent UDP mappings and ping sockets.
//! * **Services**: the DNS relay ([`dns`]) and, when wired, the DHCP server.
//!
//! Work on host sockets is driven by the event loop through [`Router::host_event`], and
//! every flow touched in one batch is polled once in [`Router::process`]. Deadlines of all
//! flows live in one ordered set, so expiry never scans the tables.

pub mod dns;
pub mod dns_tcp;
pub mod fwd;
pub mod icmp;
pub mod ndp;
pub mod splice;
pub mod tcp;
pub mod udp;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Token};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Packet,
    Ipv6Packet,
};

use crate::config::{Config, GATEWAY_MAC, TX_QUEUE_BYTES, TX_QUEUE_MIN_FRAMES};
use crate::frag::{FragOutcome, Reassembler};
use crate::frames::{
    ETH_HLEN, ETHERTYPE_ARP, Emitter, IPV6_HLEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    write_eth,
};
use crate::stats::{DropReason, Stats};
use crate::txq::TxQueue;

/// Whether a hop-by-hop header (`l4`) carries an MLD message.
fn is_mld(l4: &[u8]) -> bool {
    let (Some(&next), Some(&len)) = (l4.first(), l4.get(1)) else {
        return false;
    };
    let at = (usize::from(len) + 1) * 8;
    next == PROTO_ICMPV6 && matches!(l4.get(at), Some(130..=132 | 143))
}

/// The destination MAC of frames toward a guest when the router serves a network of
/// several guests ([`Router::set_shared`]): the network replaces it with the MAC of
/// the guest that holds the frame's destination address. Locally administered, never
/// a real interface's.
pub const UNRESOLVED_MAC: [u8; 6] = [0x02, 0x55, 0x4e, 0x00, 0x00, 0x00];

/// Whether an Ethernet payload is an IPv4 UDP datagram to port 67 (a DHCP client's
/// message; checked in full by the DHCP path).
fn is_dhcp_request(ip: &[u8]) -> bool {
    let Some(&vihl) = ip.first() else {
        return false;
    };
    let hl = usize::from(vihl & 0x0f) * 4;
    vihl >> 4 == 4 && ip.get(9) == Some(&PROTO_UDP) && ip.get(hl + 2..hl + 4) == Some(&[0, 67])
}

/// Tokens at or above this value belong to the router; the low ones to the event loop.
pub const ROUTER_TOKEN_BASE: usize = 1 << 32;
const KIND_SHIFT: u32 = 40;

/// What a router-owned token refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A TCP flow's host socket (slab index).
    Tcp(usize),
    /// A UDP mapping's host socket.
    Udp(usize),
    /// An ICMP echo mapping's ping socket.
    Icmp(usize),
    /// The shared raw ICMP socket of a family (0: IPv4, 1: IPv6).
    IcmpRaw(usize),
    /// The DNS relay's upstream socket (0: IPv4, 1: IPv6).
    DnsUpstream(usize),
    /// A TCP port-forward listener (rule id).
    FwdTcp(usize),
    /// A UDP port-forward socket (rule id).
    FwdUdp(usize),
    /// One side of a spliced forward (flow index × 2, + 1 for the guest side).
    Splice(usize),
}

impl Owner {
    /// The mio token.
    pub fn token(self) -> Token {
        let (k, i) = match self {
            Owner::Tcp(i) => (1, i),
            Owner::Udp(i) => (2, i),
            Owner::Icmp(i) => (3, i),
            Owner::IcmpRaw(i) => (4, i),
            Owner::DnsUpstream(i) => (5, i),
            Owner::FwdTcp(i) => (6, i),
            Owner::FwdUdp(i) => (7, i),
            Owner::Splice(i) => (8, i),
        };
        Token(ROUTER_TOKEN_BASE + ((k as usize) << KIND_SHIFT) + i)
    }

    /// Decode a token.
    pub fn from_token(t: Token) -> Option<Owner> {
        let v = t.0.checked_sub(ROUTER_TOKEN_BASE)?;
        let i = v & ((1usize << KIND_SHIFT) - 1);
        Some(match v >> KIND_SHIFT {
            1 => Owner::Tcp(i),
            2 => Owner::Udp(i),
            3 => Owner::Icmp(i),
            4 => Owner::IcmpRaw(i),
            5 => Owner::DnsUpstream(i),
            6 => Owner::FwdTcp(i),
            7 => Owner::FwdUdp(i),
            8 => Owner::Splice(i),
            _ => return None,
        })
    }
}

/// What a readiness event on a host socket says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Readable, or the peer closed its side (a read will not block).
    pub readable: bool,
    /// Writable, or the write side is closed (a write will not block).
    pub writable: bool,
    /// An error is pending.
    pub error: bool,
    /// The peer's end of stream (or a reset) has arrived (`EPOLLRDHUP`).
    pub read_closed: bool,
    /// TCP urgent data has arrived (`EPOLLPRI`): a read stops short at its mark.
    pub priority: bool,
}

impl Readiness {
    /// The readiness of a mio event.
    pub fn of(ev: &mio::event::Event) -> Readiness {
        Readiness {
            readable: ev.is_readable() || ev.is_read_closed(),
            writable: ev.is_writable() || ev.is_write_closed(),
            error: ev.is_error(),
            read_closed: ev.is_read_closed(),
            priority: ev.is_priority(),
        }
    }
}

/// A deadline owner in the timer set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKey {
    /// A TCP flow (smoltcp deadline, connect timeout, idle timeout).
    Tcp(usize),
    /// A UDP mapping's idle expiry.
    Udp(usize),
    /// An ICMP mapping's idle expiry.
    Icmp(usize),
    /// Fragment reassembly expiry.
    Frag,
    /// DNS relay retries.
    Dns,
    /// DHCP lease expiry.
    Dhcp,
    /// A UDP port-forward client's idle expiry.
    FwdUdp(usize),
    /// The next unsolicited router advertisement.
    Ra,
    /// DHCPv6 lease expiry.
    Dhcp6,
}

/// Ordered deadlines; each owner has at most one entry (it remembers its own).
#[derive(Default)]
pub struct Timers {
    set: BTreeSet<(Instant, TimerKey)>,
}

impl Timers {
    /// Move `key`'s deadline from `old` to `new`.
    pub fn reschedule(&mut self, key: TimerKey, old: &mut Option<Instant>, new: Option<Instant>) {
        if *old == new {
            return;
        }
        if let Some(o) = old.take() {
            self.set.remove(&(o, key));
        }
        if let Some(n) = new {
            self.set.insert((n, key));
        }
        *old = new;
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.set.first().map(|(t, _)| *t)
    }

    /// Remove and return the first owner due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        let first = *self.set.first()?;
        if first.0 > now {
            return None;
        }
        self.set.pop_first()
    }
}

/// Shared pieces every handler needs while a table is borrowed.
pub struct Ctx {
    /// Configuration.
    pub cfg: Config,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Frames toward the guest.
    pub txq: TxQueue,
    /// Frame builder.
    pub emit: Emitter,
    /// Deadlines.
    pub timers: Timers,
    /// For registering host sockets.
    pub registry: Registry,
    /// The engine's start, for smoltcp timestamps.
    pub epoch: Instant,
    /// Per-guest isolation and the IP filter rules, asked once per new flow.
    pub policy: crate::policy::FlowPolicy,
}

impl Ctx {
    /// Count a drop.
    #[inline]
    pub fn drop(&self, r: DropReason) {
        self.stats.record(r);
    }

    /// smoltcp's timestamp for `now`.
    pub fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// std time for a smoltcp timestamp.
    pub fn std_time(&self, t: smoltcp::time::Instant) -> Instant {
        self.epoch + std::time::Duration::from_micros(t.total_micros().max(0) as u64)
    }
}

/// The router. See the module docs.
pub struct Router {
    /// Shared context.
    pub ctx: Ctx,
    guest_mac_known: bool,
    /// One port of a network of several guests: frames toward guests carry
    /// [`UNRESOLVED_MAC`], and no guest MAC is learned.
    shared: bool,
    frag: Reassembler,
    frag_deadline: Option<Instant>,
    /// Guest TCP flows.
    pub tcp: tcp::TcpTable,
    /// UDP mappings.
    pub udp: udp::UdpTable,
    /// ICMP echo mappings.
    pub icmp: icmp::IcmpTable,
    /// DNS relay.
    pub dns: dns::DnsService,
    dns_deadline: Option<Instant>,
    dhcp: Option<usernet_dhcp::Server>,
    dhcp_deadline: Option<Instant>,
    dhcp_out: Vec<u8>,
    dhcp6: Option<usernet_dhcp::Server6>,
    dhcp6_deadline: Option<Instant>,
    /// Port forwards.
    pub fwd: fwd::Forwards,
    /// IPv6 neighbour discovery and RAs.
    pub ndp: ndp::Ndp,
    accepted: Vec<fwd::Accepted>,
    /// Spliced forwards from the host's loopback (namespace modes with a socket factory).
    pub splice: Option<splice::Splicer>,
}

impl Router {
    /// A router for `cfg`; `guest_mac` is the guest interface's MAC when known.
    pub fn new(
        cfg: Config,
        stats: Arc<Stats>,
        registry: Registry,
        guest_mac: Option<[u8; 6]>,
        now: Instant,
    ) -> std::io::Result<Router> {
        let small_cap = ETH_HLEN + cfg.mtu as usize;
        let max_frames = (TX_QUEUE_BYTES / small_cap).max(TX_QUEUE_MIN_FRAMES);
        // With TSO, smoltcp's segments take 64 KiB buffers; a quarter of the queue
        // stays free for everything else (ARP, DNS, UDP, ICMP).
        let txq = if cfg.tso {
            let frame_cap = ETH_HLEN + crate::config::TSO_MTU;
            TxQueue::with_classes(
                max_frames,
                small_cap,
                frame_cap,
                TX_QUEUE_BYTES.max(4 * frame_cap),
                TX_QUEUE_BYTES / 4,
            )
        } else {
            TxQueue::new(max_frames, small_cap)
        };
        let mut ctx = Ctx {
            txq,
            emit: Emitter::new(
                GATEWAY_MAC,
                guest_mac.unwrap_or([0xff; 6]),
                cfg.mtu as usize,
            ),
            timers: Timers::default(),
            registry,
            epoch: now,
            policy: crate::policy::FlowPolicy::new(cfg.filters.clone(), cfg.filter_default),
            stats,
            cfg,
        };
        let tcp = tcp::TcpTable::new(&mut ctx, now);
        let dns = dns::DnsService::new(&ctx, now)?;
        let dhcp = match ctx.cfg.dhcp.clone() {
            Some(c) => Some(usernet_dhcp::Server::new(c).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("DHCP configuration: {e}"),
                )
            })?),
            None => None,
        };
        let dhcp6 = match ctx.cfg.ipv6.as_ref().filter(|v| v.dhcpv6) {
            Some(v6) => {
                let mut c =
                    usernet_dhcp::Server6Config::default_for(v6.prefix, v6.prefix_len, GATEWAY_MAC);
                c.dns_servers = if ctx.cfg.enable_dns {
                    vec![v6.dns]
                } else {
                    Vec::new()
                };
                c.excluded = vec![v6.gateway, v6.dns];
                c.search = ctx
                    .cfg
                    .dhcp
                    .as_ref()
                    .map(|d| d.search.clone())
                    .unwrap_or_default();
                Some(usernet_dhcp::Server6::new(c).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("DHCPv6 configuration: {e}"),
                    )
                })?)
            }
            None => None,
        };
        Ok(Router {
            frag: Reassembler::new(ctx.cfg.limits.max_reassembly),
            frag_deadline: None,
            guest_mac_known: guest_mac.is_some(),
            shared: false,
            udp: udp::UdpTable::default(),
            icmp: icmp::IcmpTable::default(),
            dns,
            dns_deadline: None,
            dhcp,
            dhcp_deadline: None,
            dhcp_out: vec![0u8; 1500],
            dhcp6,
            dhcp6_deadline: None,
            fwd: fwd::Forwards::default(),
            ndp: ndp::Ndp::new(
                ctx.cfg
                    .dhcp
                    .as_ref()
                    .map(|d| d.search.clone())
                    .unwrap_or_default(),
            ),
            accepted: Vec::new(),
            splice: None,
            tcp,
            ctx,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.ctx.cfg
    }

    /// Serve a network of several guests: address frames toward guests to
    /// [`UNRESOLVED_MAC`] (the network resolves it per destination) and learn no MAC.
    pub fn set_shared(&mut self) {
        self.shared = true;
        self.ctx.emit.guest_mac = UNRESOLVED_MAC;
        self.guest_mac_known = true;
    }

    /// Lease an address to `mac` without a DHCP exchange (`request_lease`).
    pub fn dhcp_allocate(
        &mut self,
        now: Instant,
        mac: [u8; 6],
        hostname: Option<&str>,
    ) -> Option<Ipv4Addr> {
        let a = self.dhcp.as_mut()?.allocate(now, mac, hostname);
        let next = self.dhcp.as_ref().and_then(|s| s.poll_at());
        self.ctx
            .timers
            .reschedule(TimerKey::Dhcp, &mut self.dhcp_deadline, next);
        a
    }

    /// Network port `origin` left: the flows and mappings it started stay until they
    /// end but no longer count toward its share (a port given its id later starts
    /// with none).
    pub fn forget_origin(&mut self, origin: usize) {
        self.tcp.forget_origin(origin);
        self.udp.forget_origin(origin);
        self.icmp.forget_origin(origin);
    }

    /// The MAC holding (or offered) `addr` by DHCP: O(1).
    pub fn dhcp_mac_for(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.dhcp.as_ref()?.mac_for_addr(addr)
    }

    /// Whether `mac` holds a bound DHCP lease: O(1).
    pub fn dhcp_holds_lease(&self, mac: [u8; 6]) -> bool {
        self.dhcp.as_ref().is_some_and(|s| s.holds_lease(mac))
    }

    /// The guest a forward rule sends to: `None` when the rule names its guest by a
    /// MAC that holds no lease.
    fn guest_for_rule(&self, id: u32) -> Option<fwd::DefaultGuest> {
        match self.fwd.guest_mac(id) {
            // The rule's own address is used; the default (which on a network looks
            // at the leases) is not needed.
            None if self.fwd.names_guest_addr(id) => Some(fwd::DefaultGuest {
                v4: self.ctx.cfg.guest,
                v6: None,
            }),
            // A network with several leased guests: which one is meant? None (the
            // client is refused and the drop counted) rather than a guess.
            None if self.shared && self.bound_leases().nth(1).is_some() => None,
            None => Some(self.default_guest()),
            Some(mac) => {
                let v4 = self.dhcp.as_ref()?.lease_for_mac(mac)?;
                Some(fwd::DefaultGuest { v4, v6: None })
            }
        }
    }

    /// Frames waiting for the port.
    pub fn txq(&mut self) -> &mut TxQueue {
        &mut self.ctx.txq
    }

    /// One Ethernet frame from the guest.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.ctx.drop(DropReason::FrameBadLength);
            return;
        };
        let dst = eth.dst_addr();
        if !(dst.is_broadcast() || dst.is_multicast() || dst.0 == GATEWAY_MAC) {
            self.ctx.drop(DropReason::FrameNotForUs);
            return;
        }
        let src = eth.src_addr();
        if self.ctx.cfg.internal
            && eth.ethertype() != EthernetProtocol::Arp
            && !is_dhcp_request(eth.payload())
        {
            self.ctx.drop(DropReason::InternalNetwork);
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(eth.payload(), src.0),
            EthernetProtocol::Ipv4 => self.handle_ipv4(now, eth.payload(), src.0),
            EthernetProtocol::Ipv6 => self.handle_ipv6(now, eth.payload(), src.0),
            _ => self.ctx.drop(DropReason::UnknownEthertype),
        }
    }

    /// Learn the guest's MAC, from a frame whose network header checked out (a garbage
    /// frame with a random source must not redirect the guest's traffic).
    fn learn_mac(&mut self, mac: [u8; 6]) {
        if self.shared {
            return;
        }
        if mac != self.ctx.emit.guest_mac && EthernetAddress(mac).is_unicast() {
            if self.guest_mac_known {
                tracing::debug!(mac = %EthernetAddress(mac), "guest MAC changed");
            }
            self.ctx.emit.guest_mac = mac;
            self.guest_mac_known = true;
        }
    }

    fn handle_arp(&mut self, payload: &[u8], src_mac: [u8; 6]) {
        let Ok(pkt) = ArpPacket::new_checked(payload) else {
            self.ctx.drop(DropReason::ArpMalformed);
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&pkt)
        else {
            self.ctx.drop(DropReason::ArpMalformed);
            return;
        };
        if self.ctx.cfg.in_subnet(source_protocol_addr) && source_hardware_addr.0 == src_mac {
            self.learn_mac(src_mac);
        }
        let cfg = &self.ctx.cfg;
        let ours = target_protocol_addr == cfg.gateway
            || (target_protocol_addr == cfg.dns && !cfg.internal);
        if operation != ArpOperation::Request
            || !ours
            || source_protocol_addr == target_protocol_addr
            || !source_hardware_addr.is_unicast()
        {
            self.ctx.drop(DropReason::ArpNotForUs);
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(GATEWAY_MAC),
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let len = ETH_HLEN + reply.buffer_len();
        let pushed = self.ctx.txq.push(len, |b| {
            write_eth(b, source_hardware_addr.0, GATEWAY_MAC, ETHERTYPE_ARP);
            let mut p = ArpPacket::new_unchecked(&mut b[ETH_HLEN..]);
            reply.emit(&mut p);
        });
        if pushed.is_none() {
            self.ctx.drop(DropReason::TxQueueFull);
        }
    }

    fn handle_ipv4(&mut self, now: Instant, payload: &[u8], src_mac: [u8; 6]) {
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            self.ctx.drop(DropReason::Ipv4Malformed);
            return;
        };
        if pkt.version() != 4 {
            self.ctx.drop(DropReason::Ipv4Malformed);
            return;
        }
        if self.ctx.cfg.verify_checksums && !pkt.verify_checksum() {
            self.ctx.drop(DropReason::Ipv4BadChecksum);
            return;
        }
        let total = usize::from(pkt.total_len());
        let ip = &payload[..total];
        let src = pkt.src_addr();
        let proto: u8 = pkt.next_header().into();
        // Only DHCP may come from 0.0.0.0; nothing may come from outside the subnet or from our addresses.
        let cfg = &self.ctx.cfg;
        if src.is_unspecified() {
            if proto != PROTO_UDP {
                self.ctx.drop(DropReason::Ipv4BadSource);
                return;
            }
        } else if !cfg.in_subnet(src)
            || src == cfg.gateway
            || src == cfg.dns
            || src == cfg.broadcast()
            || src == cfg.network
        {
            self.ctx.drop(DropReason::Ipv4BadSource);
            return;
        }
        self.learn_mac(src_mac);
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            let pkt = match Ipv4Packet::new_checked(ip) {
                Ok(p) => p,
                Err(_) => {
                    self.ctx.drop(DropReason::Ipv4Malformed);
                    return;
                }
            };
            let outcome = self.frag.push(now, &pkt);
            self.after_frag(now, outcome, src_mac);
            return;
        }
        self.dispatch_ipv4(now, ip, proto, src_mac);
    }

    /// Account for a fragment and dispatch the datagram it completed, if any.
    fn after_frag(&mut self, now: Instant, outcome: FragOutcome, src_mac: [u8; 6]) {
        let evicted = std::mem::take(&mut self.frag.evicted);
        for _ in 0..evicted {
            self.ctx.drop(DropReason::FragmentEvicted);
        }
        let next = self.frag.poll_at();
        self.ctx
            .timers
            .reschedule(TimerKey::Frag, &mut self.frag_deadline, next);
        match outcome {
            FragOutcome::Pending => {}
            FragOutcome::Dropped(r) => self.ctx.drop(r),
            FragOutcome::Complete(buf) => {
                if buf.first().is_some_and(|b| b >> 4 == 6) {
                    self.handle_ipv6(now, &buf, src_mac);
                } else {
                    let proto = buf.get(9).copied().unwrap_or(0);
                    self.dispatch_ipv4(now, &buf, proto, src_mac);
                }
                self.frag.recycle(buf);
            }
        }
    }

    fn handle_ipv6(&mut self, now: Instant, payload: &[u8], src_mac: [u8; 6]) {
        let Some(v6) = self.ctx.cfg.ipv6.clone() else {
            self.ctx.drop(DropReason::Ipv6Disabled);
            return;
        };
        let Ok(pkt) = Ipv6Packet::new_checked(payload) else {
            self.ctx.drop(DropReason::Ipv6Malformed);
            return;
        };
        if pkt.version() != 6 {
            self.ctx.drop(DropReason::Ipv6Malformed);
            return;
        }
        let ip = &payload[..IPV6_HLEN + usize::from(pkt.payload_len())];
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let hop_limit = pkt.hop_limit();
        let global_src = v6.in_prefix(src) && !v6.is_ours(src) && src != v6.prefix;
        if !(global_src || src.is_unspecified() || src.is_unicast_link_local()) {
            self.ctx.drop(DropReason::Ipv6BadSource);
            return;
        }
        if global_src && self.ndp.guest6 != Some(src) {
            self.ndp.guest6 = Some(src);
        }
        self.learn_mac(src_mac);
        let l4 = &ip[IPV6_HLEN..];
        match u8::from(pkt.next_header()) {
            PROTO_ICMPV6 => {
                let sum = smoltcp::wire::checksum::combine(&[
                    crate::frames::pseudo_v6(src, dst, PROTO_ICMPV6, l4.len()),
                    smoltcp::wire::checksum::data(l4),
                ]);
                if l4.len() < 8 || (self.ctx.cfg.verify_checksums && sum != 0xffff) {
                    self.ctx.drop(DropReason::IcmpMalformed);
                    return;
                }
                match l4[0] {
                    133..=137 => self
                        .ndp
                        .handle(&mut self.ctx, &v6, src, hop_limit, l4, src_mac),
                    icmp::ECHO_REQUEST6 if global_src || v6.is_ours(dst) => {
                        self.icmp.handle_guest6(&mut self.ctx, now, src, dst, l4)
                    }
                    130..=132 | 143 => self.ctx.drop(DropReason::MldIgnored),
                    _ => self.ctx.drop(DropReason::IcmpUnsupported),
                }
            }
            PROTO_UDP => {
                let Some(d) = udp::GuestDatagram::parse6(&self.ctx.cfg, ip) else {
                    self.ctx.drop(DropReason::UdpMalformed);
                    return;
                };
                if d.dst.port() == 547 && d.src.port() == 546 {
                    self.handle_dhcpv6(now, src, d.payload, src_mac);
                    return;
                }
                if !global_src {
                    self.ctx.drop(DropReason::Ipv6BadSource);
                    return;
                }
                if self.fwd.udp_reply(now, d.src, d.dst, d.payload) {
                    return;
                }
                if dst == v6.dns && d.dst.port() == 53 && self.ctx.cfg.enable_dns {
                    if !self.dns_allowed(d.dst) {
                        udp::admin_prohibited(&mut self.ctx, d.dst.ip(), d.src.ip(), ip);
                        return;
                    }
                    self.dns.handle_query(&mut self.ctx, now, d.src, d.payload);
                    self.sync_dns_timer();
                    return;
                }
                self.udp.handle_guest(&mut self.ctx, now, &d, ip);
            }
            PROTO_TCP if global_src => {
                self.tcp.handle_segment(
                    &mut self.ctx,
                    &mut self.dns,
                    now,
                    ip,
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    l4,
                );
            }
            PROTO_TCP => self.ctx.drop(DropReason::Ipv6BadSource),
            0 if is_mld(l4) => self.ctx.drop(DropReason::MldIgnored),
            crate::frames::PROTO_FRAGMENT6 => {
                let outcome = self.frag.push6(now, ip);
                self.after_frag(now, outcome, src_mac);
            }
            0 | 43 | 60 => self.ctx.drop(DropReason::Ipv6ExtensionHeader),
            _ => self.ctx.drop(DropReason::UnsupportedProtocol),
        }
    }

    fn handle_dhcpv6(&mut self, now: Instant, src: Ipv6Addr, msg: &[u8], src_mac: [u8; 6]) {
        let Some(server) = self.dhcp6.as_mut() else {
            self.ctx.drop(DropReason::DhcpDisabled);
            return;
        };
        match server.handle(now, src_mac, msg, &mut self.dhcp_out) {
            usernet_dhcp::Outcome6::Reply { len, kind } => {
                tracing::debug!(?kind, %src, "dhcpv6 reply");
                let from = SocketAddr::new(IpAddr::V6(crate::config::GATEWAY_LINK_LOCAL), 547);
                let to = SocketAddr::new(IpAddr::V6(src), 546);
                if !self.ctx.emit.udp_to(
                    &mut self.ctx.txq,
                    src_mac,
                    from,
                    to,
                    &self.dhcp_out[..len],
                ) {
                    self.ctx.drop(DropReason::TxQueueFull);
                }
            }
            usernet_dhcp::Outcome6::Ignored(reason) => {
                tracing::debug!(?reason, "dhcpv6 message handled without reply");
                self.ctx.drop(DropReason::DhcpIgnored);
            }
        }
        let next = self.dhcp6.as_ref().and_then(|s| s.poll_at());
        self.ctx
            .timers
            .reschedule(TimerKey::Dhcp6, &mut self.dhcp6_deadline, next);
    }

    /// A whole (unfragmented or reassembled) IPv4 packet.
    fn dispatch_ipv4(&mut self, now: Instant, ip: &[u8], proto: u8, src_mac: [u8; 6]) {
        match proto {
            PROTO_TCP => {
                let Ok(p) = Ipv4Packet::new_checked(ip) else {
                    self.ctx.drop(DropReason::Ipv4Malformed);
                    return;
                };
                let (src, dst) = (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()));
                let hl = usize::from(p.header_len()).min(ip.len());
                self.tcp
                    .handle_segment(&mut self.ctx, &mut self.dns, now, ip, src, dst, &ip[hl..]);
            }
            PROTO_UDP => self.handle_udp(now, ip, src_mac),
            PROTO_ICMP => self.icmp.handle_guest(&mut self.ctx, now, ip),
            _ => self.ctx.drop(DropReason::UnsupportedProtocol),
        }
    }

    fn handle_udp(&mut self, now: Instant, ip: &[u8], src_mac: [u8; 6]) {
        let Some(d) = udp::GuestDatagram::parse(&self.ctx.cfg, ip) else {
            self.ctx.drop(DropReason::UdpMalformed);
            return;
        };
        let gw = IpAddr::V4(self.ctx.cfg.gateway);
        if d.dst.port() == 67
            && d.src.port() == 68
            && (d.dst.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) || d.dst.ip() == gw)
        {
            self.handle_dhcp(now, d.payload, src_mac);
            return;
        }
        if d.src.ip().is_unspecified() {
            self.ctx.drop(DropReason::Ipv4BadSource);
            return;
        }
        if self.fwd.udp_reply(now, d.src, d.dst, d.payload) {
            return;
        }
        if d.dst.ip() == IpAddr::V4(self.ctx.cfg.dns)
            && d.dst.port() == 53
            && self.ctx.cfg.enable_dns
        {
            if !self.dns_allowed(d.dst) {
                udp::admin_prohibited(&mut self.ctx, d.dst.ip(), d.src.ip(), ip);
                return;
            }
            self.dns.handle_query(&mut self.ctx, now, d.src, d.payload);
            self.sync_dns_timer();
            return;
        }
        self.udp.handle_guest(&mut self.ctx, now, &d, ip);
    }

    fn handle_dhcp(&mut self, now: Instant, msg: &[u8], src_mac: [u8; 6]) {
        let Some(server) = self.dhcp.as_mut() else {
            self.ctx.drop(DropReason::DhcpDisabled);
            return;
        };
        match server.handle(now, src_mac, msg, &mut self.dhcp_out) {
            usernet_dhcp::Outcome::Reply(r) => {
                tracing::debug!(kind = ?r.message_type, dst = %r.dst_ip, "dhcp reply");
                let src = SocketAddr::V4(SocketAddrV4::new(self.ctx.cfg.gateway, 67));
                let dst = SocketAddr::V4(SocketAddrV4::new(r.dst_ip, 68));
                if !self.ctx.emit.udp_to(
                    &mut self.ctx.txq,
                    r.dst_mac,
                    src,
                    dst,
                    &self.dhcp_out[..r.len],
                ) {
                    self.ctx.drop(DropReason::TxQueueFull);
                }
            }
            usernet_dhcp::Outcome::Ignored(reason) => {
                use usernet_dhcp::IgnoreReason::{Declined, Released};
                tracing::debug!(?reason, "dhcp message handled without reply");
                if !matches!(reason, Released | Declined) {
                    self.ctx.drop(DropReason::DhcpIgnored);
                }
            }
        }
        let next = self.dhcp.as_ref().and_then(|s| s.poll_at());
        self.ctx
            .timers
            .reschedule(TimerKey::Dhcp, &mut self.dhcp_deadline, next);
    }

    /// Where forwards without a guest address go: the `--configure` address, else the
    /// address the guest leased by DHCP, else network + 100.
    pub fn default_guest(&self) -> fwd::DefaultGuest {
        let mut v4 = self.ctx.cfg.guest;
        if self.shared {
            // A network: its only DHCP guest, if it has exactly one.
            let mut bound = self.bound_leases();
            if let (Some(only), None) = (bound.next(), bound.next()) {
                v4 = only;
            }
        } else if !self.ctx.cfg.configured {
            let mac = self.ctx.emit.guest_mac;
            if let Some(a) = self.dhcp.as_ref().and_then(|s| s.lease_for_mac(mac)) {
                v4 = a;
            }
        }
        fwd::DefaultGuest {
            v4,
            v6: self.ctx.cfg.ipv6.as_ref().and(self.ndp.guest6),
        }
    }

    /// The addresses leased (bound or reserved and taken) by DHCP.
    fn bound_leases(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.leases().into_iter().filter_map(|l| {
            matches!(
                l.state,
                usernet_dhcp::LeaseState::Bound | usernet_dhcp::LeaseState::Reserved
            )
            .then_some(l.addr)
        })
    }

    fn gateways(&self) -> fwd::Gateways {
        fwd::Gateways {
            v4: self.ctx.cfg.gateway,
            v6: self.ctx.cfg.ipv6.as_ref().map(|v| v.gateway),
        }
    }

    /// Send what the guest should hear as soon as its link is up (the first RA).
    pub fn start(&mut self, now: Instant) {
        if self.ctx.cfg.ipv6.is_some() {
            self.ndp.start(&mut self.ctx, now);
        }
    }

    /// The DHCP leases.
    pub fn leases(&self) -> Vec<usernet_dhcp::LeaseInfo> {
        self.dhcp
            .as_ref()
            .map(|s| s.leases().collect())
            .unwrap_or_default()
    }

    /// Whether the flow policy lets this DNS query through (each query is a flow).
    fn dns_allowed(&mut self, dst: SocketAddr) -> bool {
        if self.ctx.policy.is_open() {
            return true;
        }
        let ok = self
            .ctx
            .policy
            .check(usernet_portfwd::filter::FilterProto::Udp, dst, false)
            .is_ok();
        if !ok {
            self.ctx.drop(DropReason::FlowDenied);
        }
        ok
    }

    fn sync_dns_timer(&mut self) {
        let next = self.dns.poll_at();
        self.ctx
            .timers
            .reschedule(TimerKey::Dns, &mut self.dns_deadline, next);
    }

    /// Readiness on a router-owned host socket.
    pub fn host_event(&mut self, now: Instant, owner: Owner, ev: Readiness) {
        let Readiness {
            readable,
            writable,
            error,
            read_closed,
            priority,
        } = ev;
        match owner {
            // After an end of stream, an error or urgent data, a short read no longer
            // means the socket is empty.
            Owner::Tcp(i) => self.tcp.host_event(
                i,
                readable || priority,
                writable || error,
                read_closed || error || priority,
            ),
            Owner::Udp(i) => self.udp.host_event(&mut self.ctx, now, i, readable, error),
            Owner::Icmp(i) => self.icmp.host_event(&mut self.ctx, now, Some(i), 0),
            Owner::IcmpRaw(f) => self.icmp.host_event(&mut self.ctx, now, None, f),
            Owner::DnsUpstream(i) => {
                self.dns.upstream_readable(&mut self.ctx, now, i);
                self.sync_dns_timer();
            }
            Owner::FwdTcp(id) => {
                let gw = self.gateways();
                let guest = self.guest_for_rule(id as u32);
                let mut acc = std::mem::take(&mut self.accepted);
                self.fwd.accept(
                    id as u32,
                    guest.unwrap_or_else(|| self.default_guest()),
                    gw,
                    &mut acc,
                );
                for a in acc.drain(..) {
                    if guest.is_none() {
                        // Named by a MAC without a lease: close (the client sees EOF).
                        self.ctx.drop(DropReason::ForwardGuestUnknown);
                        drop(a.stream);
                        continue;
                    }
                    let stream = match (&mut self.splice, a.loopback) {
                        (Some(sp), true) => {
                            match sp.open(&self.ctx.registry, now, a.stream, a.target) {
                                splice::Opened::Handled => continue,
                                splice::Opened::Fallback(s) => s,
                            }
                        }
                        _ => a.stream,
                    };
                    self.tcp.open_forward(
                        &mut self.ctx,
                        now,
                        mio::net::TcpStream::from_std(stream),
                        a.target,
                        a.seen,
                    );
                }
                self.accepted = acc;
            }
            Owner::Splice(i) => {
                if let Some(sp) = self.splice.as_mut() {
                    sp.event(&self.ctx.registry, now, i, ev);
                }
            }
            Owner::FwdUdp(id) => match self.guest_for_rule(id as u32) {
                Some(guest) => self.fwd.udp_readable(&mut self.ctx, now, id as u32, guest),
                None => self.ctx.drop(DropReason::ForwardGuestUnknown),
            },
        }
    }

    /// Poll every flow touched since the last call, once.
    pub fn process(&mut self, now: Instant) {
        self.tcp.process_dirty(&mut self.ctx, now, &self.dns);
    }

    /// After the port drained: resume flows and readers that waited for queue room.
    pub fn tx_drained(&mut self, now: Instant) {
        self.tcp.resume_blocked(&mut self.ctx, now, &self.dns);
        self.udp.resume_blocked(&mut self.ctx, now);
        for id in self.fwd.take_blocked() {
            if let Some(guest) = self.guest_for_rule(id) {
                self.fwd.udp_readable(&mut self.ctx, now, id, guest);
            }
        }
    }

    /// Whether a flow or reader waits for room in the frame queue.
    pub fn has_blocked(&self) -> bool {
        self.tcp.has_blocked() || self.udp.has_blocked() || self.fwd.has_blocked()
    }

    /// The earliest deadline of any flow or service.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ctx.timers.next()
    }

    /// Run every deadline due at `now`.
    pub fn run_timers(&mut self, now: Instant) {
        while let Some((_, key)) = self.ctx.timers.pop_due(now) {
            match key {
                TimerKey::Tcp(i) => self.tcp.timer(&mut self.ctx, now, i),
                TimerKey::Udp(i) => self.udp.timer(&mut self.ctx, now, i),
                TimerKey::Icmp(i) => self.icmp.timer(&mut self.ctx, now, i),
                TimerKey::Frag => {
                    self.frag_deadline = None;
                    for _ in 0..self.frag.expire(now) {
                        self.ctx.drop(DropReason::FragmentTimeout);
                    }
                    let next = self.frag.poll_at();
                    self.ctx
                        .timers
                        .reschedule(TimerKey::Frag, &mut self.frag_deadline, next);
                }
                TimerKey::Dhcp => {
                    self.dhcp_deadline = None;
                    if let Some(s) = self.dhcp.as_mut() {
                        s.expire(now);
                    }
                    let next = self.dhcp.as_ref().and_then(|s| s.poll_at());
                    self.ctx
                        .timers
                        .reschedule(TimerKey::Dhcp, &mut self.dhcp_deadline, next);
                }
                TimerKey::FwdUdp(i) => self.fwd.timer(&mut self.ctx, now, i),
                TimerKey::Ra => self.ndp.timer(&mut self.ctx, now),
                TimerKey::Dhcp6 => {
                    self.dhcp6_deadline = None;
                    if let Some(s) = self.dhcp6.as_mut() {
                        s.expire(now);
                    }
                    let next = self.dhcp6.as_ref().and_then(|s| s.poll_at());
                    self.ctx
                        .timers
                        .reschedule(TimerKey::Dhcp6, &mut self.dhcp6_deadline, next);
                }
                TimerKey::Dns => {
                    self.dns_deadline = None;
                    self.dns.on_timeout(&mut self.ctx, now);
                    self.sync_dns_timer();
                }
            }
        }
        self.tcp.process_dirty(&mut self.ctx, now, &self.dns);
    }
}
