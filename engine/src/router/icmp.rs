//! Guest ICMP and ICMPv6 echo: answered locally for our addresses, or relayed through
//! the host's unprivileged ping sockets (a raw socket when privileged).
//!
//! # Theory of operation
//! An echo request to the gateway, DNS or (IPv6) link-local router address is answered
//! at once. Any other routable destination goes out through a host socket, and only a
//! real reply from that destination comes back: usernet never fakes a reply. Each
//! (guest address, echo id) gets a ping socket (`SOCK_DGRAM` with `IPPROTO_ICMP` or
//! `IPPROTO_ICMPV6`) bound to the same id where the kernel allows it; the kernel's id
//! in replies is rewritten back to the guest's. Ping sockets need
//! `net.ipv4.ping_group_range` to cover our group; when they are refused a shared raw
//! socket per family is used if we have `CAP_NET_RAW`; when neither works, echo
//! requests are counted ([`DropReason::IcmpUnavailable`]) and dropped, with one
//! warning. Mappings expire after [`ICMP_IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use mio::Interest;
use slab::Slab;
use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};

use super::{Ctx, Owner, TimerKey};
use crate::config::ICMP_IDLE_TIMEOUT;
use crate::nat::{self, Proto};
use crate::stats::{DropReason, FlowKind};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// ICMPv6 echo request.
pub const ECHO_REQUEST6: u8 = 128;
const ECHO_REPLY6: u8 = 129;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Unknown,
    Ping,
    Raw,
    Unavailable,
}

struct EchoMap {
    guest: IpAddr,
    /// The network port that opened it (0: single guest).
    origin: usize,
    ident: u16,
    sock: Option<mio::net::UdpSocket>,
    last_active: Instant,
    deadline: Option<Instant>,
}

/// All ICMP echo mappings.
pub struct IcmpTable {
    maps: Slab<EchoMap>,
    by_key: HashMap<(IpAddr, u16), usize>,
    /// Per family (0: IPv4, 1: IPv6).
    raw: [Option<mio::net::UdpSocket>; 2],
    raw_by_ident: HashMap<(bool, u16), usize>,
    mode: [Mode; 2],
    buf: Vec<u8>,
    /// Mappings per network port (ports holding none are absent).
    by_origin: HashMap<usize, usize>,
}

impl Default for IcmpTable {
    fn default() -> Self {
        IcmpTable {
            maps: Slab::new(),
            by_key: HashMap::new(),
            raw: [None, None],
            raw_by_ident: HashMap::new(),
            mode: [Mode::Unknown; 2],
            buf: vec![0u8; 65536],
            by_origin: HashMap::new(),
        }
    }
}

impl IcmpTable {
    /// A whole IPv4 packet carrying ICMP from the guest.
    pub fn handle_guest(&mut self, ctx: &mut Ctx, now: Instant, ip: &[u8]) {
        let Ok(pkt) = Ipv4Packet::new_checked(ip) else {
            ctx.drop(DropReason::Ipv4Malformed);
            return;
        };
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let Ok(icmp) = Icmpv4Packet::new_checked(pkt.payload()) else {
            ctx.drop(DropReason::IcmpMalformed);
            return;
        };
        if ctx.cfg.verify_checksums && !icmp.verify_checksum() {
            ctx.drop(DropReason::IcmpMalformed);
            return;
        }
        let body = pkt.payload();
        if body[0] != ECHO_REQUEST || body[1] != 0 || body.len() < 8 {
            ctx.drop(DropReason::IcmpUnsupported);
            return;
        }
        if dst == ctx.cfg.gateway || dst == ctx.cfg.dns {
            let hdr = [ECHO_REPLY, 0, 0, 0, body[4], body[5], body[6], body[7]];
            if !ctx.emit.icmp(&mut ctx.txq, dst, src, hdr, &body[8..]) {
                ctx.drop(DropReason::TxQueueFull);
            }
            return;
        }
        self.forward(ctx, now, IpAddr::V4(src), IpAddr::V4(dst), body);
    }

    /// An ICMPv6 echo request (`body` is the ICMPv6 message, checksum already verified).
    pub fn handle_guest6(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        body: &[u8],
    ) {
        if body.len() < 8 || body[1] != 0 {
            ctx.drop(DropReason::IcmpMalformed);
            return;
        }
        if ctx.cfg.ipv6.as_ref().is_some_and(|v6| v6.is_ours(dst)) {
            let hdr = [ECHO_REPLY6, 0, 0, 0, body[4], body[5], body[6], body[7]];
            let mac = ctx.emit.guest_mac;
            if !ctx
                .emit
                .icmp6(&mut ctx.txq, mac, dst, src, 64, hdr, &body[8..])
            {
                ctx.drop(DropReason::TxQueueFull);
            }
            return;
        }
        self.forward(ctx, now, IpAddr::V6(src), IpAddr::V6(dst), body);
    }

    fn forward(&mut self, ctx: &mut Ctx, now: Instant, src: IpAddr, dst: IpAddr, body: &[u8]) {
        let target = match nat::from_guest(&ctx.cfg, Proto::Udp, SocketAddr::new(dst, 1)) {
            Ok(nat::Target::Host(a))
                if !a.ip().is_loopback() && dst != IpAddr::V4(Ipv4Addr::BROADCAST) =>
            {
                a.ip()
            }
            _ => {
                ctx.drop(DropReason::Ipv4BadDestination);
                return;
            }
        };
        if !ctx.policy.is_open()
            && ctx
                .policy
                .check(
                    usernet_portfwd::filter::FilterProto::Icmp,
                    SocketAddr::new(dst, 0),
                    ctx.policy.origin.block_host && crate::host::is_host(target),
                )
                .is_err()
        {
            ctx.drop(DropReason::FlowDenied);
            return;
        }
        let ident = u16::from_be_bytes([body[4], body[5]]);
        let Some(idx) = self.mapping(ctx, now, src, ident) else {
            return;
        };
        let Some(m) = self.maps.get_mut(idx) else {
            return;
        };
        m.last_active = now;
        let target = SocketAddr::new(dst, 0);
        let fam = usize::from(dst.is_ipv6());
        // The kernel fills in the id and checksum of ping-socket messages.
        let res = match (&m.sock, &self.raw[fam]) {
            _ if crate::host::contained(&ctx.cfg, target).is_err() => {
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            }
            (Some(s), _) => s.send_to(body, target),
            (None, Some(raw)) => raw.send_to(body, target),
            (None, None) => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, %dst, "echo send failed");
            ctx.drop(DropReason::IcmpUnavailable);
        }
    }

    fn mapping(&mut self, ctx: &mut Ctx, now: Instant, guest: IpAddr, ident: u16) -> Option<usize> {
        if let Some(&i) = self.by_key.get(&(guest, ident)) {
            return Some(i);
        }
        if self.maps.len() >= ctx.cfg.limits.max_icmp_mappings {
            ctx.drop(DropReason::IcmpTableFull);
            return None;
        }
        let origin = ctx.policy.origin.port;
        if origin != 0
            && self.by_origin.get(&origin).is_some_and(|&n| {
                crate::config::over_share(n, self.maps.len(), ctx.cfg.limits.max_icmp_mappings)
            })
        {
            ctx.drop(DropReason::IcmpGuestShareFull);
            return None;
        }
        let v6 = guest.is_ipv6();
        let fam = usize::from(v6);
        let idx = self.maps.vacant_key();
        let mut sock = None;
        if matches!(self.mode[fam], Mode::Unknown | Mode::Ping) {
            match crate::host::ping_socket(&ctx.cfg, ident, v6) {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(&mut s, Owner::Icmp(idx).token(), Interest::READABLE)
                        .is_err()
                    {
                        ctx.drop(DropReason::IcmpUnavailable);
                        return None;
                    }
                    self.mode[fam] = Mode::Ping;
                    sock = Some(s);
                }
                Err(e) if self.mode[fam] == Mode::Unknown => {
                    tracing::debug!(error = %e, v6, "ping sockets unavailable, trying a raw socket");
                    self.mode[fam] = Mode::Raw;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ping socket failed");
                    ctx.drop(DropReason::IcmpUnavailable);
                    return None;
                }
            }
        }
        if self.mode[fam] == Mode::Raw && self.raw[fam].is_none() {
            match crate::host::raw_icmp_socket(&ctx.cfg, v6) {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(&mut s, Owner::IcmpRaw(fam).token(), Interest::READABLE)
                        .is_err()
                    {
                        self.mode[fam] = Mode::Unavailable;
                    } else {
                        self.raw[fam] = Some(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "ICMP echo is unavailable: ping sockets are not allowed for this group \
                         (net.ipv4.ping_group_range) and raw sockets need CAP_NET_RAW; guest pings to \
                         outside addresses are dropped"
                    );
                    self.mode[fam] = Mode::Unavailable;
                }
            }
        }
        if self.mode[fam] == Mode::Unavailable {
            ctx.drop(DropReason::IcmpUnavailable);
            return None;
        }
        self.maps.insert(EchoMap {
            guest,
            origin,
            ident,
            sock,
            last_active: now,
            deadline: None,
        });
        self.by_key.insert((guest, ident), idx);
        if origin != 0 {
            *self.by_origin.entry(origin).or_default() += 1;
        }
        if self.mode[fam] == Mode::Raw {
            self.raw_by_ident.insert((v6, ident), idx);
        }
        ctx.stats.flow_opened(FlowKind::Icmp);
        if let Some(m) = self.maps.get_mut(idx) {
            ctx.timers.reschedule(
                TimerKey::Icmp(idx),
                &mut m.deadline,
                Some(now + ICMP_IDLE_TIMEOUT),
            );
        }
        Some(idx)
    }

    /// A network port left: its mappings stay until they expire, owned by nobody.
    pub fn forget_origin(&mut self, origin: usize) {
        if self.by_origin.remove(&origin).is_some() {
            for (_, m) in self.maps.iter_mut() {
                if m.origin == origin {
                    m.origin = 0;
                }
            }
        }
    }

    /// A ping socket (`Some(idx)`) or the raw socket of family `fam` (`None`) is readable.
    pub fn host_event(&mut self, ctx: &mut Ctx, now: Instant, idx: Option<usize>, fam: usize) {
        for _ in 0..256 {
            if !ctx.txq.has_room() {
                // The kernel keeps the rest; echo replies are not worth a blocked list.
                return;
            }
            let (n, from) = {
                let sock = match idx {
                    Some(i) => match self.maps.get(i).and_then(|m| m.sock.as_ref()) {
                        Some(s) => s,
                        None => return,
                    },
                    None => match self.raw.get(fam).and_then(|r| r.as_ref()) {
                        Some(s) => s,
                        None => return,
                    },
                };
                match sock.recv_from(&mut self.buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            };
            let v6 = from.is_ipv6();
            let Some(src) = nat::to_guest(&ctx.cfg, v6, from) else {
                continue;
            };
            let reply_type = if v6 { ECHO_REPLY6 } else { ECHO_REPLY };
            // Ping sockets and raw ICMPv6 sockets give the ICMP message; a raw IPv4
            // socket gives the whole packet.
            let start = if idx.is_none() && !v6 {
                self.buf.first().map_or(0, |b| usize::from(b & 0x0f) * 4)
            } else {
                0
            };
            if n < start + 8 || self.buf[start] != reply_type {
                continue;
            }
            let msg = &self.buf[start..n];
            let map_idx = match idx {
                Some(i) => i,
                None => {
                    let ident = u16::from_be_bytes([msg[4], msg[5]]);
                    match self.raw_by_ident.get(&(v6, ident)) {
                        Some(&i) => i,
                        None => continue,
                    }
                }
            };
            let Some(m) = self.maps.get_mut(map_idx) else {
                continue;
            };
            m.last_active = now;
            let hdr = [
                reply_type,
                0,
                0,
                0,
                (m.ident >> 8) as u8,
                m.ident as u8,
                msg[6],
                msg[7],
            ];
            let ok = match (src.ip(), m.guest) {
                (IpAddr::V4(s), IpAddr::V4(g)) => ctx.emit.icmp(&mut ctx.txq, s, g, hdr, &msg[8..]),
                (IpAddr::V6(s), IpAddr::V6(g)) => {
                    let mac = ctx.emit.guest_mac;
                    ctx.emit.icmp6(&mut ctx.txq, mac, s, g, 64, hdr, &msg[8..])
                }
                _ => true,
            };
            if !ok {
                ctx.drop(DropReason::TxQueueFull);
            }
        }
    }

    /// A mapping's idle deadline.
    pub fn timer(&mut self, ctx: &mut Ctx, now: Instant, idx: usize) {
        let Some(m) = self.maps.get_mut(idx) else {
            return;
        };
        m.deadline = None;
        let due = m.last_active + ICMP_IDLE_TIMEOUT;
        if due > now {
            ctx.timers
                .reschedule(TimerKey::Icmp(idx), &mut m.deadline, Some(due));
            return;
        }
        let mut m = self.maps.remove(idx);
        self.by_key.remove(&(m.guest, m.ident));
        if let Some(n) = self.by_origin.get_mut(&m.origin) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_origin.remove(&m.origin);
            }
        }
        let key = (m.guest.is_ipv6(), m.ident);
        if self.raw_by_ident.get(&key) == Some(&idx) {
            self.raw_by_ident.remove(&key);
        }
        if let Some(s) = m.sock.as_mut() {
            let _ = ctx.registry.deregister(s);
        }
        ctx.stats.flow_closed(FlowKind::Icmp);
    }
}
