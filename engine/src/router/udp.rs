//! Guest UDP: endpoint-independent NAT to host sockets.
//!
//! # Theory of operation
//! Each guest (address, port) that sends UDP gets one unconnected host socket (a
//! *mapping*), as libslirp and passt do: datagrams to any destination go out through it,
//! and datagrams from any source that reach it come back to that guest port, with the
//! host's loopback shown as the gateway. Replies larger than the MTU are fragmented.
//! ICMP errors the host receives for a mapping (`IP_RECVERR`) are relayed to the guest
//! as ICMP errors quoting its datagram, so `ECONNREFUSED` and unreachable destinations
//! reach the guest's application.
//!
//! Mappings expire after [`UDP_IDLE_TIMEOUT`] without traffic either way. The table is
//! bounded; when full, a mapping is evicted by a second-chance clock (amortised O(1):
//! recently used mappings are skipped a bounded number of times). Reading a host socket
//! stops while the frame queue toward the guest is full and resumes when it drains.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Interest;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
use slab::Slab;
use smoltcp::wire::{Ipv4Packet, UdpPacket};

use super::{Ctx, Owner, TimerKey};
use crate::config::{Config, UDP_IDLE_TIMEOUT};
use crate::nat::{self, Proto, Refusal, Target};
use crate::stats::{DropReason, FlowKind};

/// Largest UDP payload read from a host socket.
const RECV_BUF: usize = 65536;
/// A mapping used within this long is skipped once by the eviction clock.
const RECENT: Duration = Duration::from_secs(10);
/// Skips the eviction clock may make before it evicts regardless.
const CLOCK_SKIPS: usize = 8;
/// ICMP origin value of `sock_extended_err` for ICMP errors.
const SO_EE_ORIGIN_ICMP: u8 = 2;

/// A parsed guest UDP datagram.
pub struct GuestDatagram<'a> {
    /// Source (the guest).
    pub src: SocketAddrV4,
    /// Destination.
    pub dst: SocketAddrV4,
    /// UDP payload.
    pub payload: &'a [u8],
}

impl<'a> GuestDatagram<'a> {
    /// Parse a whole IPv4 packet carrying UDP; `None` if malformed or its checksum is wrong.
    pub fn parse(cfg: &Config, ip: &'a [u8]) -> Option<GuestDatagram<'a>> {
        let pkt = Ipv4Packet::new_checked(ip).ok()?;
        let (s, d) = (pkt.src_addr(), pkt.dst_addr());
        let hl = usize::from(pkt.header_len());
        let l4 = ip.get(hl..)?;
        let udp = UdpPacket::new_checked(l4).ok()?;
        if cfg.verify_checksums && udp.checksum() != 0 && !udp.verify_checksum(&s.into(), &d.into())
        {
            return None;
        }
        let len = usize::from(udp.len());
        let payload = l4.get(8..len)?;
        Some(GuestDatagram {
            src: SocketAddrV4::new(s, udp.src_port()),
            dst: SocketAddrV4::new(d, udp.dst_port()),
            payload,
        })
    }
}

struct Mapping {
    guest: SocketAddrV4,
    sock: mio::net::UdpSocket,
    last_active: Instant,
    deadline: Option<Instant>,
    readable: bool,
    blocked: bool,
}

/// All UDP mappings.
pub struct UdpTable {
    maps: Slab<Mapping>,
    by_guest: HashMap<SocketAddrV4, usize>,
    clock: VecDeque<usize>,
    blocked: Vec<usize>,
    buf: Vec<u8>,
}

impl Default for UdpTable {
    fn default() -> Self {
        UdpTable {
            maps: Slab::new(),
            by_guest: HashMap::new(),
            clock: VecDeque::new(),
            blocked: Vec::new(),
            buf: Vec::new(),
        }
    }
}

/// Frames a largest datagram needs at this MTU (so reading stops before the queue overflows).
pub(crate) fn frames_per_datagram(mtu: usize) -> usize {
    let per = (mtu.saturating_sub(20)) & !7;
    if per == 0 {
        1
    } else {
        65535usize.div_ceil(per)
    }
}

impl UdpTable {
    /// Whether a reader waits for room in the frame queue.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Mappings open now.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether no mapping is open.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// A datagram from the guest (`ip` is the whole packet, for ICMP quotes).
    pub fn handle_guest(&mut self, ctx: &mut Ctx, now: Instant, d: &GuestDatagram<'_>, ip: &[u8]) {
        let target = match nat::from_guest(&ctx.cfg, Proto::Udp, d.dst) {
            Ok(Target::Host(a)) => a,
            Ok(Target::Dns) | Err(Refusal::Unroutable) => {
                ctx.drop(DropReason::Ipv4BadDestination);
                return;
            }
            Err(_) => {
                ctx.drop(DropReason::UdpRefused);
                port_unreachable(ctx, *d.dst.ip(), *d.src.ip(), ip);
                return;
            }
        };
        let idx = match self.by_guest.get(&d.src) {
            Some(&i) => i,
            None => match self.open(ctx, now, d.src) {
                Some(i) => i,
                None => return,
            },
        };
        let Some(m) = self.maps.get_mut(idx) else {
            return;
        };
        m.last_active = now;
        match m.sock.send_to(d.payload, target) {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(guest = %d.src, %target, error = %e, "udp send failed");
                ctx.drop(DropReason::UdpSendFailed);
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    // A pending ICMP error surfaced on send; the datagram did not leave.
                    port_unreachable(ctx, *d.dst.ip(), *d.src.ip(), ip);
                }
            }
        }
    }

    fn open(&mut self, ctx: &mut Ctx, now: Instant, guest: SocketAddrV4) -> Option<usize> {
        if self.maps.len() >= ctx.cfg.limits.max_udp_mappings {
            self.evict_one(ctx, now);
        }
        let mut sock = match crate::host::udp_socket(&ctx.cfg, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a UDP socket");
                ctx.drop(DropReason::UdpSendFailed);
                return None;
            }
        };
        let idx = self.maps.vacant_key();
        if ctx
            .registry
            .register(&mut sock, Owner::Udp(idx).token(), Interest::READABLE)
            .is_err()
        {
            ctx.drop(DropReason::UdpSendFailed);
            return None;
        }
        self.maps.insert(Mapping {
            guest,
            sock,
            last_active: now,
            deadline: None,
            readable: false,
            blocked: false,
        });
        self.by_guest.insert(guest, idx);
        self.clock.push_back(idx);
        ctx.stats.flow_opened(FlowKind::Udp);
        if let Some(m) = self.maps.get_mut(idx) {
            ctx.timers.reschedule(
                TimerKey::Udp(idx),
                &mut m.deadline,
                Some(now + UDP_IDLE_TIMEOUT),
            );
        }
        tracing::debug!(mapping = idx, %guest, "udp mapping opened");
        Some(idx)
    }

    fn evict_one(&mut self, ctx: &mut Ctx, now: Instant) {
        let mut skips = 0;
        while let Some(idx) = self.clock.pop_front() {
            let Some(m) = self.maps.get(idx) else {
                continue;
            };
            if skips < CLOCK_SKIPS && now.saturating_duration_since(m.last_active) < RECENT {
                skips += 1;
                self.clock.push_back(idx);
                continue;
            }
            ctx.drop(DropReason::UdpEvicted);
            self.close(ctx, idx);
            return;
        }
    }

    fn close(&mut self, ctx: &mut Ctx, idx: usize) {
        if !self.maps.contains(idx) {
            return;
        }
        let mut m = self.maps.remove(idx);
        self.by_guest.remove(&m.guest);
        ctx.timers
            .reschedule(TimerKey::Udp(idx), &mut m.deadline, None);
        let _ = ctx.registry.deregister(&mut m.sock);
        ctx.stats.flow_closed(FlowKind::Udp);
        // The clock deque keeps a stale index until it is popped; bound it.
        if self.clock.len() > 2 * self.maps.len() + 64 {
            let maps = &self.maps;
            self.clock.retain(|i| maps.contains(*i));
        }
    }

    /// Readiness of a mapping's socket.
    pub fn host_event(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        idx: usize,
        readable: bool,
        error: bool,
    ) {
        if error {
            self.relay_errors(ctx, idx);
        }
        if readable {
            if let Some(m) = self.maps.get_mut(idx) {
                m.readable = true;
            }
            self.pump(ctx, now, idx);
        }
    }

    fn pump(&mut self, ctx: &mut Ctx, now: Instant, idx: usize) {
        let need = frames_per_datagram(ctx.cfg.mtu as usize);
        if self.buf.len() < RECV_BUF {
            self.buf.resize(RECV_BUF, 0);
        }
        // A receive error means an ICMP error is queued: relay it and read on (bounded).
        for _ in 0..4 {
            let Some(m) = self.maps.get_mut(idx) else {
                return;
            };
            let mut failed = false;
            while m.readable {
                if ctx.txq.room() < need {
                    if !m.blocked {
                        m.blocked = true;
                        self.blocked.push(idx);
                    }
                    return;
                }
                match m.sock.recv_from(&mut self.buf) {
                    Ok((n, from)) => {
                        m.last_active = now;
                        let Some(src) = nat::to_guest_source(&ctx.cfg, from) else {
                            ctx.drop(DropReason::Ipv4BadSource);
                            continue;
                        };
                        if !ctx.emit.udp(&mut ctx.txq, src, m.guest, &self.buf[..n]) {
                            ctx.drop(DropReason::TxQueueFull);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => m.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "udp recv error");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                return;
            }
            self.relay_errors(ctx, idx);
        }
    }

    /// Relay ICMP errors queued on a mapping's socket to the guest.
    fn relay_errors(&mut self, ctx: &mut Ctx, idx: usize) {
        let Some(m) = self.maps.get(idx) else { return };
        let fd = m.sock.as_raw_fd();
        let guest = m.guest;
        for _ in 0..64 {
            let mut data = [0u8; 64];
            let mut iov = [IoSliceMut::new(&mut data)];
            let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
            let msg = match recvmsg::<SockaddrIn>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_ERRQUEUE,
            ) {
                Ok(m) => m,
                Err(_) => return,
            };
            let Some(orig) = msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port())) else {
                continue;
            };
            let Ok(cmsgs) = msg.cmsgs() else { continue };
            for c in cmsgs {
                let ControlMessageOwned::Ipv4RecvErr(err, offender) = c else {
                    continue;
                };
                if err.ee_origin != SO_EE_ORIGIN_ICMP {
                    continue;
                }
                let seen_dst = nat::to_guest_source(&ctx.cfg, SocketAddr::V4(orig)).unwrap_or(orig);
                let from = offender
                    .map(|o| Ipv4Addr::from(u32::from_be(o.sin_addr.s_addr)))
                    .filter(|a| !a.is_unspecified())
                    .and_then(|a| {
                        nat::to_guest_source(&ctx.cfg, SocketAddr::V4(SocketAddrV4::new(a, 0)))
                    })
                    .map_or(*seen_dst.ip(), |s| *s.ip());
                let quote = quote_udp(guest, seen_dst);
                tracing::debug!(%guest, dst = %seen_dst, icmp_type = err.ee_type, code = err.ee_code, "relaying ICMP error");
                if !ctx.emit.icmp_error(
                    &mut ctx.txq,
                    from,
                    *guest.ip(),
                    err.ee_type,
                    err.ee_code,
                    &quote,
                ) {
                    ctx.drop(DropReason::TxQueueFull);
                }
            }
        }
    }

    /// Resume readers that stopped for a full frame queue.
    pub fn resume_blocked(&mut self, ctx: &mut Ctx, now: Instant) {
        let blocked = std::mem::take(&mut self.blocked);
        for &idx in &blocked {
            if let Some(m) = self.maps.get_mut(idx) {
                m.blocked = false;
            }
            self.pump(ctx, now, idx);
        }
    }

    /// A mapping's idle deadline.
    pub fn timer(&mut self, ctx: &mut Ctx, now: Instant, idx: usize) {
        let Some(m) = self.maps.get_mut(idx) else {
            return;
        };
        m.deadline = None;
        let due = m.last_active + UDP_IDLE_TIMEOUT;
        if due <= now {
            tracing::debug!(mapping = idx, guest = %m.guest, "udp mapping expired");
            self.close(ctx, idx);
        } else {
            ctx.timers
                .reschedule(TimerKey::Udp(idx), &mut m.deadline, Some(due));
        }
    }
}

/// An IPv4 + UDP header as the guest sent it, for an ICMP error's quote.
fn quote_udp(guest: SocketAddrV4, dst: SocketAddrV4) -> [u8; 28] {
    let mut q = [0u8; 28];
    q[0] = 0x45;
    q[2..4].copy_from_slice(&28u16.to_be_bytes());
    q[8] = 64;
    q[9] = crate::frames::PROTO_UDP;
    q[12..16].copy_from_slice(&guest.ip().octets());
    q[16..20].copy_from_slice(&dst.ip().octets());
    let c = !smoltcp::wire::checksum::data(&q[..20]);
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q[20..22].copy_from_slice(&guest.port().to_be_bytes());
    q[22..24].copy_from_slice(&dst.port().to_be_bytes());
    q[24..26].copy_from_slice(&8u16.to_be_bytes());
    q
}

/// ICMP port unreachable from `from` to the guest, quoting `ip`.
pub fn port_unreachable(ctx: &mut Ctx, from: Ipv4Addr, guest: Ipv4Addr, ip: &[u8]) {
    if !ctx.emit.icmp_error(&mut ctx.txq, from, guest, 3, 3, ip) {
        ctx.drop(DropReason::TxQueueFull);
    }
}
