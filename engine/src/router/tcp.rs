//! Guest TCP: terminated by smoltcp, proxied to a host socket.
//!
//! # Theory of operation
//! A guest SYN for an unknown tuple starts a nonblocking host `connect()` and a smoltcp
//! socket that `listen`s on the exact destination with its SYN-ACK paused. The guest
//! gets the SYN-ACK only when the host connect succeeds; RST when it is refused; an ICMP
//! unreachable when the host says the network or host is unreachable. A retransmitted SYN
//! finds the flow in the table and is handled by that socket (it never creates a second).
//!
//! Each flow owns a one-socket `SocketSet`, so smoltcp's per-packet scans touch one
//! socket. Data moves between the smoltcp rings and the host socket with no staging
//! copy (`send`/`recv` closures read and write straight into the rings). Backpressure:
//! a full transmit ring stops reading the host socket (resumed when the guest ACKs); a
//! host socket that would block leaves data in the receive ring, whose window shrinks
//! (resumed on writability). A stalled flow costs no CPU: nothing polls it.
//!
//! Half-close: a guest FIN is passed on as `shutdown(SHUT_WR)` once the receive ring is
//! drained; a host EOF becomes `close()` on the smoltcp socket, whose FIN follows the
//! data. A guest RST closes the host socket with `SO_LINGER` 0 (the peer sees RST); a host
//! reset aborts the smoltcp socket (the guest sees RST). The flow is released as soon as
//! smoltcp reaches TIME-WAIT or CLOSED, so no buffers are held in TIME-WAIT.
//!
//! Flow states: `Connecting` (host connect in flight; counts toward the half-open cap)
//! → `Open` (data may flow) → released. Deadlines: connect timeout, idle timeout, and
//! smoltcp's own (`poll_at`), merged into one entry of the router's timer set.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::Interest;
use slab::Slab;
use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, TcpPacket};

use super::dns::DnsService;
use super::dns_tcp::{self, DnsStream};
use super::{Ctx, Owner, TimerKey};
use crate::config::{GATEWAY_MAC, TCP_CONNECT_TIMEOUT, TCP_IDLE_TIMEOUT};
use crate::frames::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IcmpError, write_eth};
use crate::nat::{self, Proto, Refusal, Target};
use crate::stats::{DropReason, FlowKind};
use crate::txq::TxQueue;

/// Bytes of the guest's SYN kept for an ICMP error quote (IP header with options + 8).
const SYN_QUOTE: usize = 68;
/// How long a guest keeps a closed connection in TIME-WAIT (Linux: 60 s).
const GUEST_TIME_WAIT: Duration = Duration::from_secs(60);
/// Released flows after which, when few flows remain, freed heap memory is returned.
const TRIM_AFTER_RELEASES: usize = 1024;
/// Recently closed forwarded tuples remembered (beyond this, the oldest is forgotten).
const MAX_RECENT: usize = 16384;
/// The source ports a forwarded connection may be given when its client's own port is
/// taken or recently used: `FWD_PORT_FIRST..=65535`, tried in turn.
const FWD_PORT_FIRST: u16 = 1024;
/// Ports tried before a forwarded connection is refused: with at most [`MAX_RECENT`]
/// of the 64 512 ports remembered, a run this long of used ones does not happen.
const FWD_PORT_TRIES: usize = 1024;
/// `poll_egress` calls per flow per turn (each emits at most one segment): bounds one
/// flow's burst so that others get their turn.
const EGRESS_BURST: usize = 256;

/// A TCP flow's identity: the guest's end and the remote end as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpKey {
    /// Guest address and port.
    pub guest: SocketAddr,
    /// Remote address and port the guest connects to.
    pub remote: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Guest-initiated: the host connect is in flight (counts toward the half-open cap).
    Connecting,
    /// Host-initiated (a port forward): smoltcp's SYN to the guest is in flight.
    GuestConnecting,
    /// Data may flow.
    Open,
}

struct TcpFlow {
    key: TcpKey,
    /// The network port the guest's SYN came from (0: single guest, or a forward).
    origin: usize,
    set: SocketSet<'static>,
    handle: SocketHandle,
    host: mio::net::TcpStream,
    phase: Phase,
    started: Instant,
    last_active: Instant,
    syn: [u8; SYN_QUOTE],
    syn_len: usize,
    host_readable: bool,
    host_writable: bool,
    /// The host's end of stream, an error or urgent data has arrived, maybe not read
    /// yet: no readiness edge will come for it again, and a read may stop short of it,
    /// so from now on reads go on until one would block.
    host_hup: bool,
    host_eof: bool,
    host_wr_shut: bool,
    guest_fin: bool,
    dirty: bool,
    tx_blocked: bool,
    deadline: Option<Instant>,
    /// DNS over TCP to the DNS address: framing, local names, upstream failover.
    dns: Option<Box<DnsStream>>,
    /// Bytes written into the transmit ring (saturating), and how far past the guest's
    /// initial sequence number its segments reached (the receive ring holds at most
    /// that, in order or not): together they decide whether the socket may be kept for
    /// reuse (see [`SPARE_SOCKETS`]).
    to_guest_bytes: usize,
    guest_start: Option<u32>,
    guest_reach: u32,
}

/// How far past `start` a segment of `len` sequence numbers at `seq` ends (modulo 2³²);
/// one that ends before `start` is old or forged and counts as `u32::MAX`.
fn seq_reach(start: u32, seq: u32, len: u32) -> u32 {
    let reach = seq.wrapping_add(len).wrapping_sub(start);
    if reach > i32::MAX as u32 {
        u32::MAX
    } else {
        reach
    }
}

impl TcpFlow {
    /// Notes how far into the receive ring a guest segment reaches. A segment that ends
    /// before the guest's first sequence number counts as reaching everywhere.
    fn note_guest_segment(&mut self, seg: &TcpPacket<&[u8]>) {
        let seq = seg.seq_number().0 as u32;
        let start = *self
            .guest_start
            .get_or_insert(seq.wrapping_add(u32::from(seg.syn())));
        let len = seg.payload().len() as u32 + u32::from(seg.syn()) + u32::from(seg.fin());
        self.guest_reach = self.guest_reach.max(seq_reach(start, seq, len));
    }

    /// Whether the flow's rings stayed within [`SPARE_TOUCH_MAX`] each.
    fn rings_barely_used(&self) -> bool {
        self.dns.is_none()
            && self.to_guest_bytes <= SPARE_TOUCH_MAX
            && self.guest_reach as usize <= SPARE_TOUCH_MAX
    }
}

/// Closed smoltcp sockets kept, rings and all, for the next flows: a new flow then costs
/// no `mmap`/`munmap` of its two rings (a fifth of the engine's time per connect+close
/// otherwise). Only sockets whose rings saw at most [`SPARE_TOUCH_MAX`] bytes are kept,
/// so the pool holds at most `SPARE_SOCKETS × 2 × SPARE_TOUCH_MAX` resident bytes; the
/// rings of bulk flows are unmapped as before and their memory goes back at once.
pub const SPARE_SOCKETS: usize = 32;
/// See [`SPARE_SOCKETS`].
pub const SPARE_TOUCH_MAX: usize = 32 * 1024;

/// The smoltcp device for one flow: at most one received IP packet in, frames out into
/// the router's queue with the Ethernet header filled in place.
struct FlowDev<'a> {
    rx: Option<&'a [u8]>,
    txq: &'a mut TxQueue,
    guest_mac: [u8; 6],
    caps: &'a DeviceCapabilities,
}

struct RxTok<'a>(&'a [u8]);
struct TxTok<'a> {
    txq: &'a mut TxQueue,
    guest_mac: [u8; 6],
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mac = self.guest_mac;
        // Only a reply token handed out with a received packet can meet a full queue;
        // then the segment is built and discarded (smoltcp retransmits it).
        let (r, _queued) = self.txq.push_or_discard(ETH_HLEN + len, |b| {
            let r = f(&mut b[ETH_HLEN..]);
            let et = if b[ETH_HLEN] >> 4 == 6 {
                ETHERTYPE_IPV6
            } else {
                ETHERTYPE_IPV4
            };
            write_eth(b, mac, GATEWAY_MAC, et);
            r
        });
        r
    }
}

impl phy::Device for FlowDev<'_> {
    type RxToken<'b>
        = RxTok<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let rx = self.rx.take()?;
        Some((
            RxTok(rx),
            TxTok {
                txq: self.txq,
                guest_mac: self.guest_mac,
            },
        ))
    }

    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<TxTok<'_>> {
        if !self.txq.has_room() {
            return None;
        }
        Some(TxTok {
            txq: self.txq,
            guest_mac: self.guest_mac,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// All guest TCP flows.
pub struct TcpTable {
    iface: Interface,
    caps: DeviceCapabilities,
    flows: Slab<TcpFlow>,
    map: HashMap<TcpKey, usize>,
    half_open: usize,
    /// Per network port: (flows, half-open connects) it started; only ports that
    /// hold some (at most `MAX_PORTS` entries).
    by_origin: HashMap<usize, (usize, usize)>,
    dirty: Vec<usize>,
    blocked: Vec<usize>,
    next_port: u16,
    /// Tuples of forwarded connections closed less than [`GUEST_TIME_WAIT`] ago, oldest
    /// first (bounded by [`MAX_RECENT`]): the guest may still hold them in TIME-WAIT and
    /// reject a new SYN with a random sequence number, costing a 1 s retransmission.
    recent: std::collections::VecDeque<(Instant, TcpKey)>,
    recent_set: std::collections::HashSet<TcpKey>,
    released_since_trim: usize,
    /// Closed sockets for reuse, at most [`SPARE_SOCKETS`].
    spare: Vec<(SocketSet<'static>, SocketHandle)>,
    /// Flows that took a spare socket instead of a new one.
    reused: u64,
}

fn dev<'a>(ctx: &'a mut Ctx, caps: &'a DeviceCapabilities, rx: Option<&'a [u8]>) -> FlowDev<'a> {
    FlowDev {
        rx,
        guest_mac: ctx.emit.guest_mac,
        txq: &mut ctx.txq,
        caps,
    }
}

enum Pump {
    /// This many bytes moved, and whether that filled all the room offered (the socket
    /// may hold more).
    Data(usize, bool),
    Full,
    Again,
    Eof,
    Failed(io::Error),
}

impl TcpTable {
    /// A table with its smoltcp interface (`Medium::Ip`, any-IP).
    pub fn new(ctx: &mut Ctx, now: Instant) -> TcpTable {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = if ctx.cfg.tso {
            crate::config::TSO_MTU
        } else {
            ctx.cfg.mtu as usize
        };
        // smoltcp computes checksums and never verifies them: every segment reaches it
        // through `handle_segment`, after the router verified the IP header and the TCP
        // checksum (when `verify_checksums` is on), so a second pass over the data would
        // only cost time. With checksum offload the port completes TCP checksums.
        let mut c = ChecksumCapabilities::ignored();
        c.ipv4 = phy::Checksum::Tx;
        c.tcp = if ctx.cfg.csum_offload {
            phy::Checksum::None
        } else {
            phy::Checksum::Tx
        };
        c.udp = phy::Checksum::Tx;
        c.icmpv4 = phy::Checksum::Tx;
        c.icmpv6 = phy::Checksum::Tx;
        caps.checksum = c;
        let mut config = IfaceConfig::new(HardwareAddress::Ip);
        config.random_seed = ctx.cfg.seed();
        let smol_now = ctx.smol_now(now);
        let mut iface = {
            let mut d = dev(ctx, &caps, None);
            Interface::new(config, &mut d, smol_now)
        };
        iface.set_any_ip(true);
        let gw = ctx.cfg.gateway;
        let prefix = ctx.cfg.prefix_len;
        let gw6 = ctx.cfg.ipv6.as_ref().map(|v| (v.gateway, v.prefix_len));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(gw), prefix));
            if let Some((g, p)) = gw6 {
                let _ = a.push(IpCidr::new(IpAddress::Ipv6(g), p));
            }
        });
        TcpTable {
            iface,
            caps,
            flows: Slab::new(),
            map: HashMap::new(),
            half_open: 0,
            by_origin: HashMap::new(),
            dirty: Vec::new(),
            blocked: Vec::new(),
            next_port: FWD_PORT_FIRST,
            recent: std::collections::VecDeque::new(),
            recent_set: std::collections::HashSet::new(),
            released_since_trim: 0,
            spare: Vec::new(),
            reused: 0,
        }
    }

    /// Whether a flow waits for room in the frame queue.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Spare sockets held now, and flows that took one so far.
    pub fn spare_stats(&self) -> (usize, u64) {
        (self.spare.len(), self.reused)
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(f) = self.flows.get_mut(idx)
            && !f.dirty
        {
            f.dirty = true;
            self.dirty.push(idx);
        }
    }

    /// A whole IP packet (`ip`) carrying TCP (`l4`) from the guest `src` to `dst`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_segment(
        &mut self,
        ctx: &mut Ctx,
        dns: &mut DnsService,
        now: Instant,
        ip: &[u8],
        src: IpAddr,
        dst: IpAddr,
        l4: &[u8],
    ) {
        let Ok(seg) = TcpPacket::new_checked(l4) else {
            ctx.drop(DropReason::TcpMalformed);
            return;
        };
        if ctx.cfg.verify_checksums && !seg.verify_checksum(&src.into(), &dst.into()) {
            ctx.drop(DropReason::TcpMalformed);
            return;
        }
        let key = TcpKey {
            guest: SocketAddr::new(src, seg.src_port()),
            remote: SocketAddr::new(dst, seg.dst_port()),
        };
        // With TSO toward the guest, smoltcp may send it segments up to 64 KiB (the
        // TAP takes them as GSO packets): raise the MSS the guest announced to match.
        let mut syn_copy = [0u8; MSS_SCRATCH];
        let ip = if ctx.cfg.tso && seg.syn() {
            match raise_mss(ip, &mut syn_copy) {
                Some(n) => &syn_copy[..n],
                None => ip,
            }
        } else {
            ip
        };
        if let Some(&idx) = self.map.get(&key) {
            let smol_now = ctx.smol_now(now);
            if let Some(f) = self.flows.get_mut(idx) {
                f.note_guest_segment(&seg);
                let mut d = dev(ctx, &self.caps, Some(ip));
                self.iface.poll_ingress_single(smol_now, &mut d, &mut f.set);
                f.last_active = now;
            }
            self.mark_dirty(idx);
            return;
        }
        if seg.rst() {
            ctx.drop(DropReason::TcpNoFlow);
            return;
        }
        if !seg.syn() || seg.ack() {
            ctx.drop(DropReason::TcpNoFlow);
            send_rst(ctx, &key, &seg);
            return;
        }
        if key.guest.port() == 0
            || src.is_unspecified()
            || dst == IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
        {
            ctx.drop(DropReason::TcpMalformed);
            return;
        }
        if self.flows.len() >= ctx.cfg.limits.max_tcp_flows {
            ctx.drop(DropReason::TcpTableFull);
            return;
        }
        if self.half_open >= ctx.cfg.limits.max_half_open {
            ctx.drop(DropReason::TcpHalfOpenFull);
            return;
        }
        let origin = ctx.policy.origin.port;
        if origin != 0
            && let Some(&(flows, half_open)) = self.by_origin.get(&origin)
            && (crate::config::over_share(flows, self.flows.len(), ctx.cfg.limits.max_tcp_flows)
                || crate::config::over_share(
                    half_open,
                    self.half_open,
                    ctx.cfg.limits.max_half_open,
                ))
        {
            // This guest holds more than its share: the rest is for the others. Like
            // a full table, a SYN dropped here is retransmitted by the guest later.
            ctx.drop(DropReason::TcpGuestShareFull);
            return;
        }
        let mut dns_stream = None;
        let target = match nat::from_guest(&ctx.cfg, Proto::Tcp, key.remote) {
            Ok(Target::Host(a)) => Some(a),
            Ok(Target::Dns) => {
                let ups = dns.tcp_upstreams(now);
                let first = ups.first().copied();
                dns_stream = Some(Box::new(DnsStream::new(ups)));
                first
            }
            Err(Refusal::Unroutable) if dst.is_multicast() => {
                ctx.drop(DropReason::Ipv4BadDestination);
                return;
            }
            Err(_) => None,
        };
        let Some(target) = target else {
            ctx.drop(DropReason::TcpRefused);
            send_rst(ctx, &key, &seg);
            return;
        };
        if !ctx.policy.is_open() {
            // The host: its loopback through the gateway, or (asked only for a guest
            // that may not reach the host) any of the host's own addresses.
            let to_host = dns_stream.is_none()
                && (target.ip().is_loopback()
                    || (ctx.policy.origin.block_host && crate::host::is_host(target.ip())));
            if ctx
                .policy
                .check(
                    usernet_portfwd::filter::FilterProto::Tcp,
                    key.remote,
                    to_host,
                )
                .is_err()
            {
                ctx.drop(DropReason::FlowDenied);
                send_rst(ctx, &key, &seg);
                return;
            }
        }
        let mut host = match crate::host::tcp_connect(&ctx.cfg, target) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(guest = %key.guest, remote = %key.remote, %target, error = %e, "connect failed at once");
                connect_error_reply(ctx, &key, &seg, ip, &e);
                return;
            }
        };
        let (mut set, handle) = self.socket(ctx.cfg.limits.tcp_buffer);
        let sock = set.get_mut::<tcp::Socket>(handle);
        sock.pause_synack(true);
        if sock
            .listen(IpListenEndpoint {
                addr: Some(dst.into()),
                port: key.remote.port(),
            })
            .is_err()
        {
            ctx.drop(DropReason::TcpMalformed);
            return;
        }
        let idx = self.flows.vacant_key();
        if let Err(e) = ctx.registry.register(
            &mut host,
            Owner::Tcp(idx).token(),
            Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
        ) {
            tracing::warn!(error = %e, "cannot register a host socket");
            send_rst(ctx, &key, &seg);
            return;
        }
        {
            let smol_now = ctx.smol_now(now);
            let mut d = dev(ctx, &self.caps, Some(ip));
            self.iface.poll_ingress_single(smol_now, &mut d, &mut set);
        }
        let mut syn = [0u8; SYN_QUOTE];
        let syn_len = ip.len().min(SYN_QUOTE);
        syn[..syn_len].copy_from_slice(&ip[..syn_len]);
        self.flows.insert(TcpFlow {
            key,
            origin,
            set,
            handle,
            host,
            phase: Phase::Connecting,
            started: now,
            last_active: now,
            syn,
            syn_len,
            host_readable: false,
            host_writable: false,
            host_hup: false,
            host_eof: false,
            host_wr_shut: false,
            guest_fin: false,
            dirty: false,
            tx_blocked: false,
            deadline: None,
            dns: dns_stream,
            to_guest_bytes: 0,
            guest_start: Some((seg.seq_number().0 as u32).wrapping_add(1)),
            guest_reach: 0,
        });
        self.map.insert(key, idx);
        self.half_open += 1;
        if origin != 0 {
            let u = self.by_origin.entry(origin).or_default();
            u.0 += 1;
            u.1 += 1;
        }
        ctx.stats.flow_opened(FlowKind::Tcp);
        tracing::debug!(flow = idx, guest = %key.guest, remote = %key.remote, %target, "tcp flow: connecting");
        self.update_timer(ctx, now, idx);
    }

    /// A connection accepted by a port forward: open its guest side toward `guest`,
    /// from `seen` (the client as the guest sees it).
    pub fn open_forward(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        mut host: mio::net::TcpStream,
        guest: SocketAddr,
        seen: SocketAddr,
    ) {
        if self.flows.len() >= ctx.cfg.limits.max_tcp_flows {
            ctx.drop(DropReason::TcpTableFull);
            let _ = socket2::SockRef::from(&host).set_linger(Some(Duration::ZERO));
            return;
        }
        // The client's own port when free, else an unused one.
        let mut key = TcpKey {
            guest,
            remote: seen,
        };
        let mut tries = 0;
        while self.map.contains_key(&key)
            || key.remote.port() == 0
            || self.recently_closed(&key, now)
        {
            if tries == FWD_PORT_TRIES {
                ctx.drop(DropReason::TcpTableFull);
                return;
            }
            tries += 1;
            self.next_port = if self.next_port == u16::MAX {
                FWD_PORT_FIRST
            } else {
                self.next_port + 1
            };
            key.remote.set_port(self.next_port);
        }
        let (mut set, handle) = self.socket(ctx.cfg.limits.tcp_buffer);
        let sock = set.get_mut::<tcp::Socket>(handle);
        sock.pause_synack(false);
        let remote = (IpAddress::from(guest.ip()), guest.port());
        let local = IpListenEndpoint {
            addr: Some(key.remote.ip().into()),
            port: key.remote.port(),
        };
        if let Err(e) = sock.connect(self.iface.context(), remote, local) {
            tracing::debug!(error = %e, %guest, "cannot open a forwarded connection");
            return;
        }
        let idx = self.flows.vacant_key();
        if ctx
            .registry
            .register(
                &mut host,
                Owner::Tcp(idx).token(),
                Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
            )
            .is_err()
        {
            return;
        }
        self.flows.insert(TcpFlow {
            key,
            origin: 0,
            set,
            handle,
            host,
            phase: Phase::GuestConnecting,
            started: now,
            last_active: now,
            syn: [0u8; SYN_QUOTE],
            syn_len: 0,
            host_readable: true,
            host_writable: true,
            host_hup: false,
            host_eof: false,
            host_wr_shut: false,
            guest_fin: false,
            dirty: false,
            tx_blocked: false,
            deadline: None,
            dns: None,
            to_guest_bytes: 0,
            guest_start: None,
            guest_reach: 0,
        });
        self.map.insert(key, idx);
        ctx.stats.flow_opened(FlowKind::Tcp);
        tracing::debug!(flow = idx, %guest, client = %key.remote, "tcp flow: forwarded connection");
        self.mark_dirty(idx);
    }

    /// Readiness of a flow's host socket.
    pub fn host_event(&mut self, idx: usize, readable: bool, writable: bool, hup: bool) {
        if let Some(f) = self.flows.get_mut(idx) {
            f.host_readable |= readable;
            f.host_writable |= writable;
            f.host_hup |= hup;
        }
        self.mark_dirty(idx);
    }

    /// A flow's deadline passed.
    pub fn timer(&mut self, ctx: &mut Ctx, now: Instant, idx: usize) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        f.deadline = None;
        if f.phase == Phase::Connecting && now >= f.started + TCP_CONNECT_TIMEOUT {
            self.connect_failed(ctx, now, idx, io::Error::from_raw_os_error(libc::ETIMEDOUT));
            return;
        }
        let stuck = f.phase == Phase::GuestConnecting && now >= f.started + TCP_CONNECT_TIMEOUT;
        if stuck || (f.phase == Phase::Open && now >= f.last_active + TCP_IDLE_TIMEOUT) {
            tracing::debug!(flow = idx, "tcp flow idle: reset");
            f.set.get_mut::<tcp::Socket>(f.handle).abort();
        }
        self.mark_dirty(idx);
    }

    /// Resume flows that waited for room in the frame queue.
    pub fn resume_blocked(&mut self, ctx: &mut Ctx, now: Instant, dns: &DnsService) {
        let blocked = std::mem::take(&mut self.blocked);
        for idx in &blocked {
            if let Some(f) = self.flows.get_mut(*idx) {
                f.tx_blocked = false;
            }
            self.mark_dirty(*idx);
        }
        self.blocked = blocked;
        self.blocked.clear();
        self.process_dirty(ctx, now, dns);
    }

    /// Poll every flow marked dirty, once each.
    pub fn process_dirty(&mut self, ctx: &mut Ctx, now: Instant, dns: &DnsService) {
        let mut i = 0;
        // Processing may mark further flows dirty (none today); walk by index.
        while i < self.dirty.len() {
            let idx = self.dirty[i];
            i += 1;
            self.process_flow(ctx, now, idx, dns);
        }
        self.dirty.clear();
    }

    fn process_flow(&mut self, ctx: &mut Ctx, now: Instant, idx: usize, dns: &DnsService) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        f.dirty = false;
        if f.phase == Phase::Connecting
            && !matches!(
                f.set.get::<tcp::Socket>(f.handle).state(),
                tcp::State::SynReceived
            )
        {
            // The guest gave up (its RST took the socket out of SYN-RECEIVED) while
            // the host connect was in flight: drop the host side too.
            tracing::debug!(flow = idx, "tcp flow: guest reset during connect");
            self.release(ctx, idx, false);
            return;
        }
        if f.phase == Phase::Connecting && f.host_writable {
            match f.host.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.connect_failed(ctx, now, idx, e);
                    return;
                }
                Ok(None) => match f.host.peer_addr() {
                    Ok(_) => {
                        f.phase = Phase::Open;
                        self.half_open -= 1;
                        if let Some(u) = self.by_origin.get_mut(&f.origin) {
                            u.1 = u.1.saturating_sub(1);
                        }
                        f.set.get_mut::<tcp::Socket>(f.handle).pause_synack(false);
                        tracing::debug!(flow = idx, "tcp flow: host connected");
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => f.host_writable = false,
                    Err(e) => {
                        self.connect_failed(ctx, now, idx, e);
                        return;
                    }
                },
            }
        }
        if f.phase == Phase::GuestConnecting
            && f.set.get::<tcp::Socket>(f.handle).state() == tcp::State::Established
        {
            f.phase = Phase::Open;
        }
        if f.phase != Phase::Connecting {
            if f.dns.is_some() {
                pump_dns(f, dns);
            } else {
                pump_guest_to_host(f);
                pump_host_to_guest(f);
            }
        }
        let smol_now = ctx.smol_now(now);
        {
            let mut d = dev(ctx, &self.caps, None);
            for _ in 0..EGRESS_BURST {
                if self.iface.poll_egress(smol_now, &mut d, &mut f.set) == PollResult::None {
                    break;
                }
            }
        }
        if !ctx.txq.has_room() && !f.tx_blocked {
            f.tx_blocked = true;
            self.blocked.push(idx);
        }
        let state = f.set.get::<tcp::Socket>(f.handle).state();
        if matches!(
            state,
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        ) {
            f.guest_fin = true;
        }
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait)
            && f.phase != Phase::Connecting
        {
            let graceful = f.host_eof && f.guest_fin;
            self.release(ctx, idx, graceful);
            return;
        }
        self.update_timer(ctx, now, idx);
    }

    fn update_timer(&mut self, ctx: &mut Ctx, now: Instant, idx: usize) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        let smol_now = ctx.smol_now(now);
        let mut next = match f.phase {
            Phase::Connecting | Phase::GuestConnecting => f.started + TCP_CONNECT_TIMEOUT,
            Phase::Open => f.last_active + TCP_IDLE_TIMEOUT,
        };
        if let Some(t) = self.iface.poll_at(smol_now, &f.set) {
            let t = ctx.std_time(t);
            // Egress just ran, so a deadline already due means smoltcp was held back: by
            // a full frame queue (the drain resumes the flow) or by the burst bound.
            if t > now {
                next = next.min(t);
            } else if !f.tx_blocked {
                next = next.min(now + Duration::from_millis(1));
            }
        }
        ctx.timers
            .reschedule(TimerKey::Tcp(idx), &mut f.deadline, Some(next));
    }

    fn connect_failed(&mut self, ctx: &mut Ctx, now: Instant, idx: usize, e: io::Error) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        tracing::debug!(flow = idx, guest = %f.key.guest, remote = %f.key.remote, error = %e, "tcp flow: host connect failed");
        // DNS over TCP: try the next upstream before giving up.
        if let Some(st) = f.dns.as_mut()
            && let Some(&next) = st.upstreams.get(st.next)
        {
            st.next += 1;
            if let Ok(mut h) = crate::host::tcp_connect(&ctx.cfg, next) {
                let _ = ctx.registry.deregister(&mut f.host);
                if ctx
                    .registry
                    .register(
                        &mut h,
                        Owner::Tcp(idx).token(),
                        Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY,
                    )
                    .is_ok()
                {
                    tracing::debug!(flow = idx, upstream = %next, "dns over tcp: trying the next upstream");
                    f.host = h;
                    f.host_writable = false;
                    return;
                }
            }
        }
        let quote = f.syn;
        let qlen = f.syn_len;
        match icmp_code_for(&e) {
            Some(kind) => {
                let gw = gateway_for(ctx, f.key.guest.ip());
                let guest = f.key.guest.ip();
                if !ctx
                    .emit
                    .icmp_error_any(&mut ctx.txq, gw, guest, kind, &quote[..qlen])
                {
                    ctx.drop(DropReason::TxQueueFull);
                }
            }
            None => {
                f.set.get_mut::<tcp::Socket>(f.handle).abort();
                let smol_now = ctx.smol_now(now);
                let mut d = dev(ctx, &self.caps, None);
                let _ = self.iface.poll_egress(smol_now, &mut d, &mut f.set);
            }
        }
        self.release(ctx, idx, true);
    }

    fn recently_closed(&mut self, key: &TcpKey, now: Instant) -> bool {
        while let Some(&(t, k)) = self.recent.front() {
            if now.saturating_duration_since(t) < GUEST_TIME_WAIT && self.recent.len() <= MAX_RECENT
            {
                break;
            }
            self.recent.pop_front();
            self.recent_set.remove(&k);
        }
        self.recent_set.contains(key)
    }

    /// A closed socket with rings of `n` bytes each: a spare one if there is one (its
    /// `listen`/`connect` resets all connection state and empties the rings), else new.
    fn socket(&mut self, n: usize) -> (SocketSet<'static>, SocketHandle) {
        if let Some(s) = self.spare.pop() {
            self.reused += 1;
            return s;
        }
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; n]),
            tcp::SocketBuffer::new(vec![0u8; n]),
        );
        sock.set_nagle_enabled(false);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        (set, handle)
    }

    /// A network port left: its flows stay until they end, owned by nobody (a port
    /// that takes its id later starts with none). O(flows), once per departure.
    pub fn forget_origin(&mut self, origin: usize) {
        if self.by_origin.remove(&origin).is_some() {
            for (_, f) in self.flows.iter_mut() {
                if f.origin == origin {
                    f.origin = 0;
                }
            }
        }
    }

    fn release(&mut self, ctx: &mut Ctx, idx: usize, graceful: bool) {
        if !self.flows.contains(idx) {
            return;
        }
        let mut f = self.flows.remove(idx);
        self.map.remove(&f.key);
        if f.syn_len == 0 && self.recent_set.insert(f.key) {
            // A forwarded connection (no guest SYN): remember its tuple for a while.
            self.recent.push_back((Instant::now(), f.key));
        }
        if f.phase == Phase::Connecting {
            self.half_open -= 1;
        }
        if let Some(u) = self.by_origin.get_mut(&f.origin) {
            u.0 = u.0.saturating_sub(1);
            if f.phase == Phase::Connecting {
                u.1 = u.1.saturating_sub(1);
            }
            if u.0 == 0 {
                self.by_origin.remove(&f.origin);
            }
        }
        ctx.timers
            .reschedule(TimerKey::Tcp(idx), &mut f.deadline, None);
        let _ = ctx.registry.deregister(&mut f.host);
        if !graceful {
            let _ = socket2::SockRef::from(&f.host).set_linger(Some(Duration::ZERO));
        }
        ctx.stats.flow_closed(FlowKind::Tcp);
        tracing::debug!(flow = idx, graceful, "tcp flow released");
        // After many flows have gone and few remain, give the freed heap back.
        self.released_since_trim += 1;
        if self.released_since_trim >= TRIM_AFTER_RELEASES
            && self.flows.len() * 4 < self.released_since_trim
        {
            self.released_since_trim = 0;
            if ctx.txq.is_empty() {
                ctx.txq.shrink();
            }
            // SAFETY: malloc_trim only returns free heap pages to the system.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        if f.rings_barely_used() && self.spare.len() < SPARE_SOCKETS {
            // Closed without a word: a spare socket is never polled, and `listen` or
            // `connect` resets it before it sends anything again.
            f.set.get_mut::<tcp::Socket>(f.handle).abort();
            let TcpFlow { set, handle, .. } = f;
            self.spare.push((set, handle));
        }
    }
}

/// The pumps of a DNS-over-TCP flow, with the same FIN and error handling.
fn pump_dns(f: &mut TcpFlow, dns: &DnsService) {
    let TcpFlow {
        set,
        handle,
        host,
        dns: st,
        ..
    } = f;
    let Some(st) = st.as_mut() else { return };
    let sock = set.get_mut::<tcp::Socket>(*handle);
    let r = dns_tcp::pump_g2h(st, sock, host, &mut f.host_writable, dns)
        .and_then(|()| dns_tcp::pump_h2g(st, sock, host, &mut f.host_readable, &mut f.host_eof));
    if let Err(e) = r {
        tracing::debug!(error = %e, "dns over tcp: host socket failed: reset");
        f.host_eof = true;
        sock.abort();
        return;
    }
    let guest_done = matches!(
        sock.state(),
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    );
    if guest_done && sock.recv_queue() == 0 && st.g2h_idle() && !f.host_wr_shut {
        f.guest_fin = true;
        f.host_wr_shut = true;
        let _ = host.shutdown(Shutdown::Write);
    }
    if f.host_eof && !st.has_local() && sock.may_send() {
        sock.close();
    }
}

/// Move bytes from the flow's receive ring to the host socket; pass a guest FIN on.
fn pump_guest_to_host(f: &mut TcpFlow) {
    let TcpFlow {
        set, handle, host, ..
    } = f;
    let sock = set.get_mut::<tcp::Socket>(*handle);
    while f.host_writable && sock.recv_queue() > 0 {
        let r = sock.recv(|data| match (&*host).write(data) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.host_writable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "host write failed: reset");
                sock.abort();
                return;
            }
        }
    }
    let guest_done = matches!(
        sock.state(),
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    );
    if guest_done && sock.recv_queue() == 0 && !f.host_wr_shut {
        f.guest_fin = true;
        f.host_wr_shut = true;
        let _ = host.shutdown(Shutdown::Write);
    }
}

/// Move bytes from the host socket into the flow's transmit ring; pass a host EOF on.
fn pump_host_to_guest(f: &mut TcpFlow) {
    let TcpFlow {
        set, handle, host, ..
    } = f;
    let sock = set.get_mut::<tcp::Socket>(*handle);
    while f.host_readable && !f.host_eof {
        if !sock.may_send() {
            return;
        }
        let r = sock.send(|buf| {
            if buf.is_empty() {
                return (0, Pump::Full);
            }
            match (&*host).read(buf) {
                Ok(0) => (0, Pump::Eof),
                Ok(n) => (n, Pump::Data(n, n == buf.len())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Pump::Again),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Pump::Data(0, true)),
                Err(e) => (0, Pump::Failed(e)),
            }
        });
        match r {
            Ok(Pump::Data(n, filled)) => {
                f.to_guest_bytes = f.to_guest_bytes.saturating_add(n);
                // A read that did not fill the room took everything the socket held
                // (a TCP read stops early only at an empty queue or the end of stream):
                // skip the read that would only say "would block". New data raises a
                // new readiness edge; an end of stream already here does not, hence
                // `host_hup`.
                if !filled && !f.host_hup {
                    f.host_readable = false;
                }
            }
            Ok(Pump::Full) | Err(_) => return,
            Ok(Pump::Again) => f.host_readable = false,
            Ok(Pump::Eof) => {
                f.host_eof = true;
                sock.close();
            }
            Ok(Pump::Failed(e)) => {
                tracing::debug!(error = %e, "host read failed: reset");
                f.host_eof = true;
                sock.abort();
            }
        }
    }
}

/// The ICMP error for a host connect error, or `None` for RST.
fn icmp_code_for(e: &io::Error) -> Option<IcmpError> {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH) => Some(IcmpError::NetUnreachable),
        Some(libc::EHOSTUNREACH) => Some(IcmpError::HostUnreachable),
        Some(libc::EACCES) | Some(libc::EPERM) => Some(IcmpError::AdminProhibited),
        _ => None,
    }
}

/// The router address that reports errors to a guest of this family.
fn gateway_for(ctx: &Ctx, guest: IpAddr) -> IpAddr {
    match (guest, &ctx.cfg.ipv6) {
        (IpAddr::V6(_), Some(v6)) => IpAddr::V6(v6.gateway),
        _ => IpAddr::V4(ctx.cfg.gateway),
    }
}

fn connect_error_reply(
    ctx: &mut Ctx,
    key: &TcpKey,
    seg: &TcpPacket<&[u8]>,
    ip: &[u8],
    e: &io::Error,
) {
    match icmp_code_for(e) {
        Some(kind) => {
            let gw = gateway_for(ctx, key.guest.ip());
            if !ctx
                .emit
                .icmp_error_any(&mut ctx.txq, gw, key.guest.ip(), kind, ip)
            {
                ctx.drop(DropReason::TxQueueFull);
            }
        }
        None => send_rst(ctx, key, seg),
    }
}

/// Answer a segment that has no flow with a RST, as RFC 793 says.
fn send_rst(ctx: &mut Ctx, key: &TcpKey, seg: &TcpPacket<&[u8]>) {
    let (seq, ack) = if seg.ack() {
        (seg.ack_number().0 as u32, None)
    } else {
        let len = seg.payload().len() as u32 + u32::from(seg.syn()) + u32::from(seg.fin());
        (0, Some((seg.seq_number().0 as u32).wrapping_add(len)))
    };
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&key.remote.port().to_be_bytes());
    h[2..4].copy_from_slice(&key.guest.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.unwrap_or(0).to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x04 | if ack.is_some() { 0x10 } else { 0 };
    let c = !smoltcp::wire::checksum::combine(&[
        crate::frames::pseudo(
            key.remote.ip(),
            key.guest.ip(),
            crate::frames::PROTO_TCP,
            20,
        ),
        smoltcp::wire::checksum::data(&h),
    ]);
    h[16..18].copy_from_slice(&c.to_be_bytes());
    let mac = ctx.emit.guest_mac;
    if !ctx.emit.ip(
        &mut ctx.txq,
        mac,
        key.remote.ip(),
        key.guest.ip(),
        crate::frames::PROTO_TCP,
        &[&h],
    ) {
        ctx.drop(DropReason::TxQueueFull);
    }
}

/// Room for a copy of a SYN (IPv6 header, TCP header with the largest options).
const MSS_SCRATCH: usize = 40 + 60 + 64;

/// Copy a SYN (`ip`: the whole IPv4 or IPv6 packet) into `out` with its MSS option
/// raised to what a 64 KiB segment allows, fixing the TCP checksum incrementally
/// (RFC 1624). Returns the copy's length, or `None` when there is no MSS option, the
/// packet carries data or does not fit.
pub fn raise_mss(ip: &[u8], out: &mut [u8; MSS_SCRATCH]) -> Option<usize> {
    let (ip_hl, mss) = match ip.first()? >> 4 {
        4 => (
            usize::from(ip[0] & 0x0f) * 4,
            (crate::config::TSO_MTU - 40) as u16,
        ),
        6 => (40, (crate::config::TSO_MTU - 60) as u16),
        _ => return None,
    };
    if ip.len() > out.len() || ip.len() < ip_hl + 20 {
        return None;
    }
    let tcp_hl = usize::from(ip[ip_hl + 12] >> 4) * 4;
    if tcp_hl < 20 || ip.len() != ip_hl + tcp_hl {
        return None;
    }
    out[..ip.len()].copy_from_slice(ip);
    let mut i = ip_hl + 20;
    let end = ip_hl + tcp_hl;
    while i < end {
        match out[i] {
            0 => return None,
            1 => i += 1,
            2 if i + 4 <= end && out[i + 1] == 4 => {
                let old = u16::from_be_bytes([out[i + 2], out[i + 3]]);
                if old >= mss {
                    return None;
                }
                out[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                let c = ip_hl + 16;
                let hc = u16::from_be_bytes([out[c], out[c + 1]]);
                // HC' = ~(~HC + ~m + m')
                let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(mss);
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                out[c..c + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                return Some(ip.len());
            }
            _ => {
                let len = usize::from(*out.get(i + 1)?);
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn4(opts: &[u8]) -> Vec<u8> {
        let tcp_hl = 20 + opts.len();
        let mut p = vec![0u8; 20 + tcp_hl];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + tcp_hl) as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 2, 100]);
        p[16..20].copy_from_slice(&[10, 0, 2, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[32] = ((tcp_hl / 4) as u8) << 4;
        p[33] = 0x02;
        p[40..40 + opts.len()].copy_from_slice(opts);
        let c = !smoltcp::wire::checksum::combine(&[
            crate::frames::pseudo([10, 0, 2, 100].into(), [10, 0, 2, 2].into(), 6, tcp_hl),
            smoltcp::wire::checksum::data(&p[20..]),
        ]);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn seq_reach_measures_from_the_guest_start_across_the_wrap() {
        assert_eq!(seq_reach(1000, 1000, 0), 0);
        assert_eq!(seq_reach(1000, 999, 1), 0, "a retransmitted SYN");
        assert_eq!(seq_reach(1000, 1000, 1460), 1460);
        assert_eq!(
            seq_reach(1000, 500_000, 100),
            499_100,
            "out of order, far ahead"
        );
        assert_eq!(seq_reach(u32::MAX - 9, 5, 10), 25, "across the wrap");
        assert_eq!(seq_reach(1000, 100, 10), u32::MAX, "ends before the start");
    }

    #[test]
    fn the_mss_of_a_syn_is_raised_and_its_checksum_stays_valid() {
        // Linux's SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale.
        let opts = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let syn = syn4(&opts);
        let mut out = [0u8; MSS_SCRATCH];
        let n = raise_mss(&syn, &mut out).unwrap();
        let p = TcpPacket::new_checked(&out[20..n]).unwrap();
        assert!(p.verify_checksum(
            &std::net::Ipv4Addr::new(10, 0, 2, 100).into(),
            &std::net::Ipv4Addr::new(10, 0, 2, 2).into()
        ));
        assert_eq!(u16::from_be_bytes([out[42], out[43]]), 65495);
        // No MSS option, or garbage options: left alone.
        assert!(raise_mss(&syn4(&[1, 1, 1, 1]), &mut out).is_none());
        assert!(raise_mss(&syn4(&[2, 0, 0, 0]), &mut out).is_none());
        assert!(raise_mss(&syn[..30], &mut out).is_none());
    }
}
