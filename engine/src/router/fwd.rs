//! Port forwards: host listeners whose connections and datagrams enter the guest.
//!
//! # Theory of operation
//! The control plane binds each rule's host socket (so "address in use" is reported to
//! the caller at once) and hands it to the engine, which owns it from then on. A TCP
//! connection accepted on a forward becomes an ordinary TCP flow whose smoltcp socket
//! *connects* to the guest; the guest sees the real client address, except that clients
//! on the host's loopback appear as the gateway. A guest without a listener resets the
//! connection, and the host client sees the reset.
//!
//! A UDP forward keeps one mapping per outside client (expiring after
//! [`UDP_IDLE_TIMEOUT`]): datagrams from the client enter the guest from the client's
//! address as the guest sees it, and the guest's replies to that address leave through
//! the rule's socket to that client, whatever `--disable-host-loopback` says (the host
//! opened this flow). Removing a rule closes its socket at once; TCP connections already
//! accepted may finish.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::Interest;
use slab::Slab;
use usernet_portfwd::{Proto, RuleSpec};

use super::{Ctx, Owner, TimerKey};
use crate::config::UDP_IDLE_TIMEOUT;
use crate::stats::DropReason;

/// A host socket bound for a rule, handed from the control plane to the engine.
#[derive(Debug)]
pub enum BoundListener {
    /// A listening TCP socket.
    Tcp(std::net::TcpListener),
    /// A bound UDP socket.
    Udp(std::net::UdpSocket),
}

/// Bind the host side of `spec` (nonblocking, close-on-exec; IPv6 sockets are v6-only).
pub fn bind(spec: &RuleSpec) -> io::Result<BoundListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(spec.host_addr, spec.host_port);
    let domain = Domain::for_address(addr);
    match spec.proto {
        Proto::Tcp => {
            let s = Socket::new(
                domain,
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(BoundListener::Tcp(s.into()))
        }
        Proto::Udp => {
            let s = Socket::new(
                domain,
                Type::DGRAM.nonblocking().cloexec(),
                Some(Protocol::UDP),
            )?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            Ok(BoundListener::Udp(s.into()))
        }
    }
}

enum Sock {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

struct Fwd {
    spec: RuleSpec,
    sock: Sock,
}

struct UdpClient {
    rule: u32,
    client: SocketAddr,
    key: (SocketAddrV4, SocketAddrV4),
    last_active: Instant,
    deadline: Option<Instant>,
}

/// The forwards the engine serves.
#[derive(Default)]
pub struct Forwards {
    rules: HashMap<u32, Fwd>,
    clients: Slab<UdpClient>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    buf: Vec<u8>,
    blocked: Vec<u32>,
}

/// Most UDP forward clients tracked at once (one entry each; the oldest is not evicted:
/// new clients beyond the cap are dropped and counted).
pub const MAX_UDP_FWD_CLIENTS: usize = 4096;

/// How a host client's address looks from the guest: loopback (and any non-IPv4
/// client, until IPv6 guests) appears as the gateway.
pub fn seen_from_guest(gateway: std::net::Ipv4Addr, client: SocketAddr) -> SocketAddrV4 {
    match client {
        SocketAddr::V4(a) if !a.ip().is_loopback() => a,
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) if !v4.is_loopback() => SocketAddrV4::new(v4, a.port()),
            _ => SocketAddrV4::new(gateway, a.port()),
        },
        _ => SocketAddrV4::new(gateway, client.port()),
    }
}

impl Forwards {
    /// Start serving rule `id` on `listener`.
    pub fn add(
        &mut self,
        ctx: &mut Ctx,
        id: u32,
        spec: RuleSpec,
        listener: BoundListener,
    ) -> io::Result<()> {
        let mut sock = match listener {
            BoundListener::Tcp(l) => Sock::Tcp(mio::net::TcpListener::from_std(l)),
            BoundListener::Udp(u) => Sock::Udp(mio::net::UdpSocket::from_std(u)),
        };
        match &mut sock {
            Sock::Tcp(l) => {
                ctx.registry
                    .register(l, Owner::FwdTcp(id as usize).token(), Interest::READABLE)?
            }
            Sock::Udp(u) => {
                ctx.registry
                    .register(u, Owner::FwdUdp(id as usize).token(), Interest::READABLE)?
            }
        }
        tracing::info!(id, rule = %spec, "port forward added");
        self.rules.insert(id, Fwd { spec, sock });
        Ok(())
    }

    /// Stop serving rule `id`: its socket closes now.
    pub fn remove(&mut self, ctx: &mut Ctx, id: u32) -> bool {
        let Some(mut f) = self.rules.remove(&id) else {
            return false;
        };
        match &mut f.sock {
            Sock::Tcp(l) => {
                let _ = ctx.registry.deregister(l);
            }
            Sock::Udp(u) => {
                let _ = ctx.registry.deregister(u);
            }
        }
        tracing::info!(id, rule = %f.spec, "port forward removed");
        true
    }

    /// Accept pending connections of a TCP rule: `(stream, guest target, client as seen)`.
    pub fn accept(
        &mut self,
        id: u32,
        default_guest: std::net::Ipv4Addr,
        gateway: std::net::Ipv4Addr,
        out: &mut Vec<(mio::net::TcpStream, SocketAddrV4, SocketAddrV4)>,
    ) {
        let Some(f) = self.rules.get(&id) else { return };
        let Sock::Tcp(l) = &f.sock else { return };
        let guest = SocketAddrV4::new(guest_v4(&f.spec, default_guest), f.spec.guest_port);
        for _ in 0..256 {
            match l.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    out.push((s, guest, seen_from_guest(gateway, peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Datagrams arrived on a UDP rule's socket.
    pub fn udp_readable(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        id: u32,
        default_guest: std::net::Ipv4Addr,
    ) {
        if self.buf.len() < 65536 {
            self.buf.resize(65536, 0);
        }
        let need = super::udp::frames_per_datagram(ctx.cfg.mtu as usize);
        for _ in 0..256 {
            if ctx.txq.room() < need {
                if !self.blocked.contains(&id) {
                    self.blocked.push(id);
                }
                return;
            }
            let Some(f) = self.rules.get(&id) else { return };
            let Sock::Udp(u) = &f.sock else { return };
            let (n, client) = match u.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let guest = SocketAddrV4::new(guest_v4(&f.spec, default_guest), f.spec.guest_port);
            let seen = seen_from_guest(ctx.cfg.gateway, client);
            let key = (guest, seen);
            match self.by_key.get(&key).copied() {
                Some(i) => {
                    if let Some(c) = self.clients.get_mut(i) {
                        c.last_active = now;
                        c.client = client;
                        c.rule = id;
                    }
                }
                None => {
                    if self.clients.len() >= MAX_UDP_FWD_CLIENTS {
                        ctx.drop(DropReason::UdpEvicted);
                        continue;
                    }
                    let i = self.clients.insert(UdpClient {
                        rule: id,
                        client,
                        key,
                        last_active: now,
                        deadline: None,
                    });
                    self.by_key.insert(key, i);
                    if let Some(c) = self.clients.get_mut(i) {
                        ctx.timers.reschedule(
                            TimerKey::FwdUdp(i),
                            &mut c.deadline,
                            Some(now + UDP_IDLE_TIMEOUT),
                        );
                    }
                }
            }
            if !ctx.emit.udp(&mut ctx.txq, seen, guest, &self.buf[..n]) {
                ctx.drop(DropReason::TxQueueFull);
            }
        }
    }

    /// If `src → dst` from the guest answers a UDP forward client, send it there and return true.
    pub fn udp_reply(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> bool {
        let Some(&i) = self.by_key.get(&(src, dst)) else {
            return false;
        };
        let Some(c) = self.clients.get_mut(i) else {
            return false;
        };
        c.last_active = now;
        if let Some(Fwd {
            sock: Sock::Udp(u), ..
        }) = self.rules.get(&c.rule)
        {
            let _ = u.send_to(payload, c.client);
        }
        true
    }

    /// A UDP client's idle deadline.
    pub fn timer(&mut self, ctx: &mut Ctx, now: Instant, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        c.deadline = None;
        let due = c.last_active + UDP_IDLE_TIMEOUT;
        if due > now && self.rules.contains_key(&c.rule) {
            ctx.timers
                .reschedule(TimerKey::FwdUdp(i), &mut c.deadline, Some(due));
            return;
        }
        let c = self.clients.remove(i);
        self.by_key.remove(&c.key);
    }

    /// Whether a UDP rule waits for room in the frame queue.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Resume UDP rules that waited for room.
    pub fn resume_blocked(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        default_guest: std::net::Ipv4Addr,
    ) {
        for id in std::mem::take(&mut self.blocked) {
            self.udp_readable(ctx, now, id, default_guest);
        }
    }

    /// Rules served now.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is served.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn guest_v4(spec: &RuleSpec, default_guest: std::net::Ipv4Addr) -> std::net::Ipv4Addr {
    match spec.guest_addr {
        Some(IpAddr::V4(a)) => a,
        _ => default_guest,
    }
}
