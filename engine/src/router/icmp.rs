//! Guest ICMP: echo requests answered locally for our addresses, or relayed through
//! the host's unprivileged ping sockets (a raw socket when privileged).
//!
//! # Theory of operation
//! An echo request to the gateway or DNS address is answered at once. Any other
//! routable destination goes out through a host socket, and only a real reply from that
//! destination comes back: usernet never fakes a reply. Each (guest address, echo id)
//! gets a ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`) bound to the same id where the
//! kernel allows it; the kernel's id in replies is rewritten back to the guest's. Ping
//! sockets need `net.ipv4.ping_group_range` to cover our group; when they are refused
//! a shared raw socket is used if we have `CAP_NET_RAW`; when neither works, echo
//! requests are counted ([`DropReason::IcmpUnavailable`]) and dropped, with one warning.
//! Mappings expire after [`ICMP_IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::Interest;
use slab::Slab;
use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};

use super::{Ctx, Owner, TimerKey};
use crate::config::ICMP_IDLE_TIMEOUT;
use crate::nat::{self, Proto, Refusal};
use crate::stats::{DropReason, FlowKind};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Unknown,
    Ping,
    Raw,
    Unavailable,
}

struct EchoMap {
    guest: Ipv4Addr,
    ident: u16,
    sock: Option<mio::net::UdpSocket>,
    last_active: Instant,
    deadline: Option<Instant>,
}

/// All ICMP echo mappings.
pub struct IcmpTable {
    maps: Slab<EchoMap>,
    by_key: HashMap<(Ipv4Addr, u16), usize>,
    raw: Option<mio::net::UdpSocket>,
    raw_by_ident: HashMap<u16, usize>,
    mode: Mode,
    buf: Vec<u8>,
}

impl Default for IcmpTable {
    fn default() -> Self {
        IcmpTable {
            maps: Slab::new(),
            by_key: HashMap::new(),
            raw: None,
            raw_by_ident: HashMap::new(),
            mode: Mode::Unknown,
            buf: vec![0u8; 65536],
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
        let ident = u16::from_be_bytes([body[4], body[5]]);
        let data = &body[8..];
        if dst == ctx.cfg.gateway || dst == ctx.cfg.dns {
            let hdr = [ECHO_REPLY, 0, 0, 0, body[4], body[5], body[6], body[7]];
            if !ctx.emit.icmp(&mut ctx.txq, dst, src, hdr, data) {
                ctx.drop(DropReason::TxQueueFull);
            }
            return;
        }
        match nat::from_guest(&ctx.cfg, Proto::Udp, SocketAddrV4::new(dst, 1)) {
            Ok(nat::Target::Host(_)) if !dst.is_broadcast() => {}
            Ok(_) | Err(Refusal::Unroutable) => {
                ctx.drop(DropReason::Ipv4BadDestination);
                return;
            }
            Err(_) => {
                ctx.drop(DropReason::Ipv4BadDestination);
                return;
            }
        }
        let Some(idx) = self.mapping(ctx, now, src, ident) else {
            return;
        };
        let Some(m) = self.maps.get_mut(idx) else {
            return;
        };
        m.last_active = now;
        let target = SocketAddr::V4(SocketAddrV4::new(dst, 0));
        let res = match (&m.sock, &self.raw) {
            (Some(s), _) => {
                // The kernel fills in the id and checksum of ping-socket messages.
                s.send_to(body, target)
            }
            (None, Some(raw)) => raw.send_to(body, target),
            (None, None) => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, %dst, "echo send failed");
            ctx.drop(DropReason::IcmpUnavailable);
        }
    }

    fn mapping(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        guest: Ipv4Addr,
        ident: u16,
    ) -> Option<usize> {
        if let Some(&i) = self.by_key.get(&(guest, ident)) {
            return Some(i);
        }
        if self.maps.len() >= ctx.cfg.limits.max_icmp_mappings {
            ctx.drop(DropReason::IcmpTableFull);
            return None;
        }
        let idx = self.maps.vacant_key();
        let mut sock = None;
        if matches!(self.mode, Mode::Unknown | Mode::Ping) {
            match crate::host::ping_socket(&ctx.cfg, ident) {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(&mut s, Owner::Icmp(idx).token(), Interest::READABLE)
                        .is_err()
                    {
                        ctx.drop(DropReason::IcmpUnavailable);
                        return None;
                    }
                    self.mode = Mode::Ping;
                    sock = Some(s);
                }
                Err(e) if self.mode == Mode::Unknown => {
                    tracing::debug!(error = %e, "ping sockets unavailable, trying a raw socket");
                    self.mode = Mode::Raw;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ping socket failed");
                    ctx.drop(DropReason::IcmpUnavailable);
                    return None;
                }
            }
        }
        if self.mode == Mode::Raw && self.raw.is_none() {
            match crate::host::raw_icmp_socket(&ctx.cfg) {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(&mut s, Owner::IcmpRaw.token(), Interest::READABLE)
                        .is_err()
                    {
                        self.mode = Mode::Unavailable;
                    } else {
                        self.raw = Some(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "ICMP echo is unavailable: ping sockets are not allowed for this group \
                         (net.ipv4.ping_group_range) and raw sockets need CAP_NET_RAW; guest pings to \
                         outside addresses are dropped"
                    );
                    self.mode = Mode::Unavailable;
                }
            }
        }
        if self.mode == Mode::Unavailable {
            ctx.drop(DropReason::IcmpUnavailable);
            return None;
        }
        self.maps.insert(EchoMap {
            guest,
            ident,
            sock,
            last_active: now,
            deadline: None,
        });
        self.by_key.insert((guest, ident), idx);
        if self.mode == Mode::Raw {
            self.raw_by_ident.insert(ident, idx);
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

    /// A ping socket (`Some(idx)`) or the raw socket (`None`) is readable.
    pub fn host_event(&mut self, ctx: &mut Ctx, now: Instant, idx: Option<usize>) {
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
                    None => match &self.raw {
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
            let SocketAddr::V4(from) = from else { continue };
            let Some(src) = nat::to_guest_source(&ctx.cfg, SocketAddr::V4(from)) else {
                continue;
            };
            // Ping sockets give the ICMP message; a raw socket the whole IP packet.
            let (msg, map_idx) = match idx {
                Some(i) => (&mut self.buf[..n], i),
                None => {
                    let hl = self.buf.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                    if n < hl + 8 || self.buf[hl] != ECHO_REPLY {
                        continue;
                    }
                    let ident = u16::from_be_bytes([self.buf[hl + 4], self.buf[hl + 5]]);
                    let Some(&i) = self.raw_by_ident.get(&ident) else {
                        continue;
                    };
                    (&mut self.buf[hl..n], i)
                }
            };
            if msg.len() < 8 || msg[0] != ECHO_REPLY {
                continue;
            }
            let Some(m) = self.maps.get_mut(map_idx) else {
                continue;
            };
            m.last_active = now;
            let hdr = [
                ECHO_REPLY,
                0,
                0,
                0,
                (m.ident >> 8) as u8,
                m.ident as u8,
                msg[6],
                msg[7],
            ];
            let guest = m.guest;
            if !ctx
                .emit
                .icmp(&mut ctx.txq, *src.ip(), guest, hdr, &msg[8..])
            {
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
        if self.raw_by_ident.get(&m.ident) == Some(&idx) {
            self.raw_by_ident.remove(&m.ident);
        }
        if let Some(s) = m.sock.as_mut() {
            let _ = ctx.registry.deregister(s);
        }
        ctx.stats.flow_closed(FlowKind::Icmp);
    }
}
