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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Interest;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, recvmsg};
use slab::Slab;
use smoltcp::wire::{Ipv4Packet, Ipv6Packet, UdpPacket};

use super::{Ctx, Owner, TimerKey};
use crate::config::{Config, UDP_IDLE_TIMEOUT};
use crate::nat::{self, Proto, Refusal, Target};
use crate::stats::{DropReason, FlowKind};

/// Largest UDP payload read from a host socket.
const RECV_BUF: usize = 65536;
/// Datagrams read from a host socket per `recvmmsg` call. A call that returns fewer
/// emptied the socket, which saves the `EAGAIN` read an edge-triggered loop would need.
pub const RECV_BATCH: usize = 8;
/// A mapping used within this long is skipped once by the eviction clock.
const RECENT: Duration = Duration::from_secs(10);
/// Skips the eviction clock may make before it evicts regardless.
const CLOCK_SKIPS: usize = 8;
/// Origin values of `sock_extended_err` for ICMP and ICMPv6 errors.
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// A parsed guest UDP datagram.
pub struct GuestDatagram<'a> {
    /// Source (the guest).
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
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
            src: SocketAddr::V4(SocketAddrV4::new(s, udp.src_port())),
            dst: SocketAddr::V4(SocketAddrV4::new(d, udp.dst_port())),
            payload,
        })
    }

    /// Parse a whole IPv6 packet whose next header is UDP (the checksum is mandatory).
    pub fn parse6(cfg: &Config, ip: &'a [u8]) -> Option<GuestDatagram<'a>> {
        let pkt = Ipv6Packet::new_checked(ip).ok()?;
        let (s, d) = (pkt.src_addr(), pkt.dst_addr());
        let l4 = ip.get(40..40 + usize::from(pkt.payload_len()))?;
        let udp = UdpPacket::new_checked(l4).ok()?;
        if udp.checksum() == 0
            || (cfg.verify_checksums && !udp.verify_checksum(&s.into(), &d.into()))
        {
            return None;
        }
        let len = usize::from(udp.len());
        let payload = l4.get(8..len)?;
        Some(GuestDatagram {
            src: SocketAddr::V6(SocketAddrV6::new(s, udp.src_port(), 0, 0)),
            dst: SocketAddr::V6(SocketAddrV6::new(d, udp.dst_port(), 0, 0)),
            payload,
        })
    }
}

struct Mapping {
    guest: SocketAddr,
    /// The network port that opened it (0: single guest).
    origin: usize,
    sock: mio::net::UdpSocket,
    last_active: Instant,
    deadline: Option<Instant>,
    readable: bool,
    blocked: bool,
    /// The last destinations the flow policy allowed, with its epoch: datagrams to
    /// them are not asked again (the policy is asked once per flow, not per datagram;
    /// a mapping talking to more destinations than this at once asks again for the
    /// oldest).
    allowed: [Option<(SocketAddr, u64)>; ALLOWED_DESTS],
}

/// Destinations per UDP mapping whose policy verdict is remembered.
pub const ALLOWED_DESTS: usize = 4;

/// All UDP mappings.
pub struct UdpTable {
    maps: Slab<Mapping>,
    by_guest: HashMap<SocketAddr, usize>,
    clock: VecDeque<usize>,
    blocked: Vec<usize>,
    buf: Vec<u8>,
    /// Per network port holding some: how many mappings, and their indices oldest
    /// first (entries whose mapping has gone since are skipped when met, and pruned
    /// when they outnumber the live ones).
    by_origin: HashMap<usize, Owned>,
}

/// One network port's UDP mappings.
#[derive(Default)]
struct Owned {
    count: usize,
    order: VecDeque<usize>,
}

impl Default for UdpTable {
    fn default() -> Self {
        UdpTable {
            maps: Slab::new(),
            by_guest: HashMap::new(),
            clock: VecDeque::new(),
            blocked: Vec::new(),
            buf: Vec::new(),
            by_origin: HashMap::new(),
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
                port_unreachable(ctx, d.dst.ip(), d.src.ip(), ip);
                return;
            }
        };
        let mut newly_allowed = None;
        if !ctx.policy.is_open() {
            let key = (d.dst, ctx.policy.epoch);
            let cached = self
                .by_guest
                .get(&d.src)
                .and_then(|&i| self.maps.get(i))
                .is_some_and(|m| m.allowed.contains(&Some(key)));
            if !cached {
                let to_host = target.ip().is_loopback()
                    || (ctx.policy.origin.block_host && crate::host::is_host(target.ip()));
                if ctx
                    .policy
                    .check(usernet_portfwd::filter::FilterProto::Udp, d.dst, to_host)
                    .is_err()
                {
                    ctx.drop(DropReason::FlowDenied);
                    admin_prohibited(ctx, d.dst.ip(), d.src.ip(), ip);
                    return;
                }
                newly_allowed = Some(key);
            }
        }
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
        if newly_allowed.is_some() {
            // Round robin over the last few destinations.
            let slot = m
                .allowed
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    m.allowed.rotate_left(1);
                    ALLOWED_DESTS - 1
                });
            m.allowed[slot] = newly_allowed;
        }
        m.last_active = now;
        match crate::host::contained(&ctx.cfg, target)
            .and_then(|()| m.sock.send_to(d.payload, target))
        {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(guest = %d.src, %target, error = %e, "udp send failed");
                ctx.drop(DropReason::UdpSendFailed);
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    // A pending ICMP error surfaced on send; the datagram did not leave.
                    port_unreachable(ctx, d.dst.ip(), d.src.ip(), ip);
                }
            }
        }
    }

    fn open(&mut self, ctx: &mut Ctx, now: Instant, guest: SocketAddr) -> Option<usize> {
        let origin = ctx.policy.origin.port;
        let cap = ctx.cfg.limits.max_udp_mappings;
        let over = |t: &Self| {
            t.by_origin
                .get(&origin)
                .is_some_and(|o| crate::config::over_share(o.count, t.maps.len(), cap))
        };
        if origin != 0 && over(self) && !self.evict_own(ctx, origin) {
            // A network guest beyond its share makes room among its own mappings,
            // never the other guests'.
            ctx.drop(DropReason::UdpGuestShareFull);
            return None;
        }
        if self.maps.len() >= cap {
            // Full (the guests within their guaranteed part used the reserve): the
            // heaviest guest gives way first, else the clock picks.
            let heaviest = self
                .by_origin
                .iter()
                .filter(|&(&o, _)| o != origin)
                .max_by_key(|(_, o)| o.count)
                .map(|(&o, _)| o);
            if !heaviest.is_some_and(|h| self.evict_own(ctx, h)) {
                self.evict_one(ctx, now);
            }
        }
        let mut sock = match crate::host::udp_socket(&ctx.cfg, guest.is_ipv6()) {
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
            origin,
            sock,
            last_active: now,
            deadline: None,
            readable: false,
            blocked: false,
            allowed: [None; ALLOWED_DESTS],
        });
        self.by_guest.insert(guest, idx);
        self.clock.push_back(idx);
        if origin != 0 {
            let o = self.by_origin.entry(origin).or_default();
            o.count += 1;
            o.order.push_back(idx);
            if o.order.len() > 2 * o.count + 16 {
                let maps = &self.maps;
                o.order
                    .retain(|&i| maps.get(i).is_some_and(|m| m.origin == origin));
            }
        }
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

    /// Close the oldest of `origin`'s own mappings; `false` when it holds none.
    fn evict_own(&mut self, ctx: &mut Ctx, origin: usize) -> bool {
        loop {
            let Some(idx) = self
                .by_origin
                .get_mut(&origin)
                .and_then(|o| o.order.pop_front())
            else {
                return false;
            };
            if self.maps.get(idx).is_some_and(|m| m.origin == origin) {
                ctx.drop(DropReason::UdpEvicted);
                self.close(ctx, idx);
                return true;
            }
        }
    }

    /// A network port left: its mappings stay until they expire, owned by nobody (a
    /// port that takes its id later starts with none).
    pub fn forget_origin(&mut self, origin: usize) {
        if let Some(o) = self.by_origin.remove(&origin) {
            for i in o.order {
                if let Some(m) = self.maps.get_mut(i).filter(|m| m.origin == origin) {
                    m.origin = 0;
                }
            }
        }
    }

    fn close(&mut self, ctx: &mut Ctx, idx: usize) {
        if !self.maps.contains(idx) {
            return;
        }
        let mut m = self.maps.remove(idx);
        self.by_guest.remove(&m.guest);
        if let Some(o) = self.by_origin.get_mut(&m.origin) {
            o.count = o.count.saturating_sub(1);
            if o.count == 0 {
                self.by_origin.remove(&m.origin);
            }
        }
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
        if self.buf.len() < RECV_BUF * RECV_BATCH {
            self.buf.resize(RECV_BUF * RECV_BATCH, 0);
        }
        // A receive error means an ICMP error is queued: relay it and read on (bounded).
        for _ in 0..4 {
            let Some(m) = self.maps.get_mut(idx) else {
                return;
            };
            let mut failed = false;
            while m.readable {
                let vlen = (ctx.txq.room() / need.max(1)).min(RECV_BATCH);
                if vlen == 0 {
                    if !m.blocked {
                        m.blocked = true;
                        self.blocked.push(idx);
                    }
                    return;
                }
                let mut got = [(0usize, None::<SocketAddr>); RECV_BATCH];
                match recv_batch(m.sock.as_raw_fd(), &mut self.buf, &mut got[..vlen]) {
                    Ok(k) => {
                        m.last_active = now;
                        for (i, &(n, from)) in got[..k].iter().enumerate() {
                            let Some(from) = from else { continue };
                            let Some(src) = nat::to_guest(&ctx.cfg, m.guest.is_ipv6(), from) else {
                                ctx.drop(DropReason::Ipv4BadSource);
                                continue;
                            };
                            let data = &self.buf[i * RECV_BUF..i * RECV_BUF + n];
                            if !ctx.emit.udp(&mut ctx.txq, src, m.guest, data) {
                                ctx.drop(DropReason::TxQueueFull);
                            }
                        }
                        if k < vlen {
                            // Fewer than asked for: the socket is empty now.
                            m.readable = false;
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
            // (original destination, ICMP type, code, offender)
            let found: Option<(SocketAddr, u8, u8, Option<IpAddr>)> = if guest.is_ipv6() {
                let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
                let Ok(msg) =
                    recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_ERRQUEUE)
                else {
                    return;
                };
                let orig = msg
                    .address
                    .map(|a| SocketAddr::V6(SocketAddrV6::new(a.ip(), a.port(), 0, 0)));
                let mut r = None;
                if let (Some(orig), Ok(cmsgs)) = (orig, msg.cmsgs()) {
                    for c in cmsgs {
                        if let ControlMessageOwned::Ipv6RecvErr(err, off) = c
                            && err.ee_origin == SO_EE_ORIGIN_ICMP6
                        {
                            let off = off.map(|o| IpAddr::V6(Ipv6Addr::from(o.sin6_addr.s6_addr)));
                            r = Some((orig, err.ee_type, err.ee_code, off));
                        }
                    }
                }
                r
            } else {
                let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
                let Ok(msg) =
                    recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_ERRQUEUE)
                else {
                    return;
                };
                let orig = msg
                    .address
                    .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())));
                let mut r = None;
                if let (Some(orig), Ok(cmsgs)) = (orig, msg.cmsgs()) {
                    for c in cmsgs {
                        if let ControlMessageOwned::Ipv4RecvErr(err, off) = c
                            && err.ee_origin == SO_EE_ORIGIN_ICMP
                        {
                            let off = off.map(|o| {
                                IpAddr::V4(Ipv4Addr::from(u32::from_be(o.sin_addr.s_addr)))
                            });
                            r = Some((orig, err.ee_type, err.ee_code, off));
                        }
                    }
                }
                r
            };
            let Some((orig, icmp_type, code, offender)) = found else {
                continue;
            };
            let v6 = guest.is_ipv6();
            let seen_dst = nat::to_guest(&ctx.cfg, v6, orig).unwrap_or(orig);
            let from = offender
                .filter(|a| !a.is_unspecified())
                .and_then(|a| nat::to_guest(&ctx.cfg, v6, SocketAddr::new(a, 0)))
                .map_or(seen_dst.ip(), |s| s.ip());
            tracing::debug!(%guest, dst = %seen_dst, icmp_type, code, "relaying ICMP error");
            let quote = quote_udp(guest, seen_dst);
            let ok = match (from, guest.ip()) {
                (IpAddr::V4(f), IpAddr::V4(g)) => {
                    ctx.emit
                        .icmp_error(&mut ctx.txq, f, g, icmp_type, code, &quote)
                }
                (IpAddr::V6(f), IpAddr::V6(g)) => {
                    let mac = ctx.emit.guest_mac;
                    ctx.emit.icmp6(
                        &mut ctx.txq,
                        mac,
                        f,
                        g,
                        64,
                        [icmp_type, code, 0, 0, 0, 0, 0, 0],
                        &quote,
                    )
                }
                _ => true,
            };
            if !ok {
                ctx.drop(DropReason::TxQueueFull);
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

/// An IP + UDP header as the guest sent it, for an ICMP error's quote.
fn quote_udp(guest: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&guest.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&8u16.to_be_bytes());
    let mut q = Vec::with_capacity(48);
    match (guest.ip(), dst.ip()) {
        (IpAddr::V4(g), IpAddr::V4(d)) => {
            let mut h = [0u8; 20];
            let hdr = crate::frames::Ipv4Hdr {
                src: g,
                dst: d,
                proto: crate::frames::PROTO_UDP,
                ident: 0,
                ttl: 64,
            };
            crate::frames::write_ipv4(&mut h, &hdr, 8, 0, false);
            q.extend_from_slice(&h);
        }
        (IpAddr::V6(g), IpAddr::V6(d)) => {
            let mut h = [0u8; 40];
            crate::frames::write_ipv6(&mut h, g, d, crate::frames::PROTO_UDP, 64, 8);
            q.extend_from_slice(&h);
        }
        _ => {}
    }
    q.extend_from_slice(&udp);
    q
}

/// ICMP (v4) or ICMPv6 port unreachable from `from` to the guest, quoting `ip`.
/// Read up to `out.len()` datagrams from `fd` (nonblocking) into consecutive
/// [`RECV_BUF`]-byte slots of `buf` with one `recvmmsg`; `out[i]` gets datagram `i`'s
/// length and source. Returns how many arrived.
pub fn recv_batch(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    out: &mut [(usize, Option<SocketAddr>)],
) -> io::Result<usize> {
    let n = out.len().min(RECV_BATCH).min(buf.len() / RECV_BUF);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: [libc::sockaddr_storage; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; RECV_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; RECV_BATCH];
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
    for (i, chunk) in buf.chunks_exact_mut(RECV_BUF).take(n).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: RECV_BUF,
        };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at `n` live iovecs over disjoint RECV_BUF-byte
    // chunks of `buf` and at `n` sockaddr_storage slots, all of which outlive the call;
    // the kernel writes at most those lengths.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let k = r as usize;
    for i in 0..k {
        let len = hdrs[i].msg_len as usize;
        out[i] = (len.min(RECV_BUF), storage_addr(&addrs[i]));
    }
    Ok(k)
}

/// The IPv4 or IPv6 address the kernel wrote into a `sockaddr_storage`.
fn storage_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is
            // large and aligned enough for.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Answer a datagram the flow policy refused: ICMP administratively prohibited.
pub fn admin_prohibited(ctx: &mut Ctx, from: IpAddr, guest: IpAddr, ip: &[u8]) {
    let kind = crate::frames::IcmpError::AdminProhibited;
    if !ctx.emit.icmp_error_any(&mut ctx.txq, from, guest, kind, ip) {
        ctx.drop(DropReason::TxQueueFull);
    }
}

pub fn port_unreachable(ctx: &mut Ctx, from: IpAddr, guest: IpAddr, ip: &[u8]) {
    let kind = crate::frames::IcmpError::PortUnreachable;
    if !ctx.emit.icmp_error_any(&mut ctx.txq, from, guest, kind, ip) {
        ctx.drop(DropReason::TxQueueFull);
    }
}
