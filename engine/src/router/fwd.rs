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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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
    key: (SocketAddr, SocketAddr),
    last_active: Instant,
    deadline: Option<Instant>,
}

/// The forwards the engine serves.
#[derive(Default)]
pub struct Forwards {
    rules: HashMap<u32, Fwd>,
    clients: Slab<UdpClient>,
    by_key: HashMap<(SocketAddr, SocketAddr), usize>,
    buf: Vec<u8>,
    blocked: Vec<u32>,
}

/// Most UDP forward clients tracked at once (one entry each; the oldest is not evicted:
/// new clients beyond the cap are dropped and counted).
pub const MAX_UDP_FWD_CLIENTS: usize = 4096;

/// Where forwards without a guest address go, per family.
#[derive(Clone, Copy, Debug)]
pub struct DefaultGuest {
    /// The IPv4 guest.
    pub v4: Ipv4Addr,
    /// The IPv6 guest, when IPv6 is on and its address is known.
    pub v6: Option<Ipv6Addr>,
}

/// The gateways a client may be shown as.
#[derive(Clone, Copy, Debug)]
pub struct Gateways {
    /// IPv4 gateway.
    pub v4: Ipv4Addr,
    /// IPv6 gateway, when IPv6 is on.
    pub v6: Option<Ipv6Addr>,
}

/// A connection accepted on a TCP forward.
pub struct Accepted {
    /// The host client's connection.
    pub stream: std::net::TcpStream,
    /// Where it goes in the guest.
    pub target: SocketAddr,
    /// The client's address as the guest sees it on the ordinary path.
    pub seen: SocketAddr,
    /// The client is on the host's loopback (spliceable).
    pub loopback: bool,
}

/// The guest endpoint of a rule for a client: the rule's guest address, else the
/// default guest of the client's family (IPv6 clients reach an IPv6 guest when one is
/// known), else the IPv4 guest.
pub fn guest_target(spec: &RuleSpec, client: SocketAddr, def: DefaultGuest) -> SocketAddr {
    let ip = match (spec.guest_addr, client, def.v6) {
        (Some(a), _, _) => a,
        (None, SocketAddr::V6(c), Some(g6)) if c.ip().to_ipv4_mapped().is_none() => IpAddr::V6(g6),
        _ => IpAddr::V4(def.v4),
    };
    SocketAddr::new(ip, spec.guest_port)
}

/// How a host client's address looks from a guest reached over `guest`'s family:
/// loopback clients appear as the gateway; a client of the other family appears as the
/// gateway too (usernet does no 4-to-6 translation of addresses).
pub fn seen_from_guest(gw: Gateways, client: SocketAddr, guest: SocketAddr) -> SocketAddr {
    let client_v4 = match client {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|v4| SocketAddrV4::new(v4, a.port())),
    };
    match (guest, client_v4, client, gw.v6) {
        (SocketAddr::V4(_), Some(c), _, _) if !c.ip().is_loopback() => SocketAddr::V4(c),
        (SocketAddr::V4(_), _, _, _) => SocketAddr::V4(SocketAddrV4::new(gw.v4, client.port())),
        (SocketAddr::V6(_), None, SocketAddr::V6(c), _) if !c.ip().is_loopback() => {
            SocketAddr::V6(SocketAddrV6::new(*c.ip(), c.port(), 0, 0))
        }
        (SocketAddr::V6(_), _, _, Some(g6)) => {
            SocketAddr::V6(SocketAddrV6::new(g6, client.port(), 0, 0))
        }
        (SocketAddr::V6(_), _, _, None) => SocketAddr::V4(SocketAddrV4::new(gw.v4, client.port())),
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

    /// The MAC rule `id` names its guest by, if it does.
    pub fn guest_mac(&self, id: u32) -> Option<[u8; 6]> {
        self.rules.get(&id)?.spec.guest_mac
    }

    /// Whether rule `id` names its guest's address itself.
    pub fn names_guest_addr(&self, id: u32) -> bool {
        self.rules
            .get(&id)
            .is_some_and(|r| r.spec.guest_addr.is_some())
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

    /// Accept pending connections of a TCP rule.
    pub fn accept(&mut self, id: u32, def: DefaultGuest, gw: Gateways, out: &mut Vec<Accepted>) {
        let Some(f) = self.rules.get(&id) else { return };
        let Sock::Tcp(l) = &f.sock else { return };
        for _ in 0..256 {
            match l.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    let target = guest_target(&f.spec, peer, def);
                    let loopback = peer.ip().to_canonical().is_loopback();
                    let stream = std::net::TcpStream::from(std::os::fd::OwnedFd::from(s));
                    out.push(Accepted {
                        stream,
                        target,
                        seen: seen_from_guest(gw, peer, target),
                        loopback,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Datagrams arrived on a UDP rule's socket.
    pub fn udp_readable(&mut self, ctx: &mut Ctx, now: Instant, id: u32, def: DefaultGuest) {
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
            let guest = guest_target(&f.spec, client, def);
            let gw = Gateways {
                v4: ctx.cfg.gateway,
                v6: ctx.cfg.ipv6.as_ref().map(|v| v.gateway),
            };
            let seen = seen_from_guest(gw, client, guest);
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
        src: SocketAddr,
        dst: SocketAddr,
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

    /// The UDP rules that stopped reading for lack of queue room (the caller resumes
    /// each with [`Forwards::udp_readable`]).
    pub fn take_blocked(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.blocked)
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
