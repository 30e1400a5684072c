//! Networks of guests: VirtualBox's NAT Network, internal and host-only modes.
//!
//! # Theory of operation
//! A network is a learning Ethernet switch ([`switch`]) whose ports are guests (TAP
//! devices handed over by `usernet attach` and `usernet run --network`, QEMU stream
//! connections) and, in the modes that have one, the [`Router`] (gateway, DHCP, DNS,
//! NAT, forwards), which owns the gateway's MAC as a static entry. [`Fabric`] is the
//! whole switching logic, sans-IO apart from the router's host sockets: frames enter
//! with [`Fabric::from_port`], the router's output is moved to the ports' queues by
//! [`Fabric::drain_router`], and the event loop ([`run`]) writes each port's queue to
//! its device.
//!
//! The router serves every guest of the network at once ([`Router::set_shared`]): its
//! frames toward guests carry [`UNRESOLVED_MAC`], which the fabric replaces with the
//! MAC of the guest holding the destination address, from a neighbour table learned
//! from guests' frames (ARP senders, IPv4 and IPv6 sources) and from DHCP leases. A
//! destination nobody holds yet costs an ARP request from the gateway and the frame
//! (counted as `neighbor_unresolved`; TCP retransmits it).
//!
//! Every queue is bounded: each port has its own [`TxQueue`] of [`PORT_QUEUE_BYTES`],
//! and the loop reads at most [`NET_RX_BATCH`] frames per port per turn, round robin,
//! so a guest that floods cannot starve the others. Frames from the router wait in the
//! router's own queue while a live port's queue is full (backpressure, as in the
//! single-guest modes) as long as nobody else waits: when frames for other guests are
//! queued behind one for a full port, or the port has not taken a frame for
//! [`PORT_STALL`] (a guest whose interface is down, a paused VM), that port's frames
//! are dropped and counted instead, so a slow guest cannot hold up the others.
//!
//! Guest-to-guest flows are asked of the filter rules once per new flow ([`flows`]);
//! each port's MAC is its own (a second port cannot take a MAC another port holds
//! while anti-spoofing is on).
//!
//! The single-guest modes (`usernet PID tap0`, `run`, `vm`) do not use any of this:
//! their router writes straight to their one port.

pub mod client;
pub mod flows;
pub mod guard;
pub mod run;
pub mod switch;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::config::{GATEWAY_LINK_LOCAL, GATEWAY_MAC, Ipv6Config};
use crate::frames::ETH_HLEN;
use crate::policy::FlowPolicy;
use crate::port::Port;
use crate::router::{Router, UNRESOLVED_MAC};
use crate::stats::{DropReason, Stats};
use crate::txq::TxQueue;
use guard::{Flags, Identity, Lookup, Overrides};
use switch::{Dest, PortId, Switch};

/// Most per-guest policy overrides of a network.
pub const MAX_GUEST_POLICIES: usize = 256;

/// How a per-guest setting names its guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKey {
    /// By the port's MAC.
    Mac([u8; 6]),
    /// By the port's IPv4 address (its lease, configured or pinned address).
    Addr(Ipv4Addr),
}

/// The router's port id.
pub const ROUTER: PortId = 0;
/// Most guest ports of one network.
pub const MAX_PORTS: usize = 256;
/// Bytes each port's queue may hold (at least [`PORT_QUEUE_MIN_FRAMES`] frames).
pub const PORT_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Fewest frames a port's queue holds, whatever the MTU.
pub const PORT_QUEUE_MIN_FRAMES: usize = 64;
/// Frames read from one port per turn before the next port's turn.
pub const NET_RX_BATCH: usize = 64;
/// A port that took no frame for this long while frames waited for it is stalled:
/// the router's frames toward it are dropped instead of waiting.
pub const PORT_STALL: Duration = Duration::from_millis(500);
/// Frames of the router's queue looked at, per drain, for frames that wait behind one
/// for a full port.
pub const HOL_SCAN: usize = 256;
/// Most addresses in the neighbour table, per family.
pub const MAX_NEIGHBORS: usize = 4096;
/// Least time between two ARP requests for one address.
const ARP_RETRY: Duration = Duration::from_secs(1);
/// Most addresses with an outstanding ARP request.
const MAX_ARP_PENDING: usize = 256;

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

/// What a port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A TAP device in a guest's network namespace.
    Tap,
    /// A QEMU `-netdev stream` connection.
    Stream,
    /// A port of a test or fuzz harness (no device).
    Virtual,
}

impl PortKind {
    /// The name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Stream => "stream",
            PortKind::Virtual => "virtual",
        }
    }
}

/// One guest port: its device, its queue toward the guest, and its counters.
pub struct GuestPort {
    /// The device (`None` in harnesses, and while the loop reads from it).
    pub io: Option<Box<dyn Port>>,
    /// What it is.
    pub kind: PortKind,
    /// A label (`PID:tap0`, the QEMU peer).
    pub name: String,
    /// The source MAC of its first frame.
    pub mac: Option<[u8; 6]>,
    /// Frames toward the guest.
    pub q: TxQueue,
    /// Frames and bytes from the guest.
    pub rx_frames: u64,
    /// Bytes from the guest.
    pub rx_bytes: u64,
    /// Frames written to the guest.
    pub tx_frames: u64,
    /// Bytes written to the guest.
    pub tx_bytes: u64,
    /// Frames dropped on their way to or from this port.
    pub drops: u64,
    /// The last time the device took a frame, or its queue was empty.
    pub last_progress: Instant,
    /// The device has frames to read.
    pub pending: bool,
    /// The device can take frames.
    pub writable: bool,
    /// What the port is allowed to claim (anti-spoofing).
    pub ident: Identity,
    /// Its isolation flags, as of [`Fabric`]'s policy epoch `flags_epoch`.
    pub flags: Flags,
    flags_epoch: u64,
    /// The last IPv4 source seen (a change re-evaluates address-keyed settings).
    seen4: Option<Ipv4Addr>,
    /// Frames refused as spoofed, per [`Spoof`] reason.
    pub spoofed: [u64; guard::Spoof::ALL.len()],
    /// Frames to or from another guest refused by isolation.
    pub isolated: u64,
    /// A pidfd of the guest's process: readable when it exits, and the port leaves.
    pub watch: Option<std::os::fd::OwnedFd>,
}

impl GuestPort {
    fn stalled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_progress) >= PORT_STALL
    }
}

/// The switch, its ports and the router. See the module docs.
pub struct Fabric {
    /// The MAC table.
    pub switch: Switch,
    /// Guest ports; a port's id is its slab key plus one (0 is the router).
    pub ports: Slab<GuestPort>,
    /// The router, when the mode has one.
    pub router: Option<Router>,
    /// Network counters (drop reasons).
    pub stats: Arc<Stats>,
    neigh4: HashMap<Ipv4Addr, [u8; 6]>,
    neigh6: HashMap<Ipv6Addr, [u8; 6]>,
    arp_pending: HashMap<Ipv4Addr, Instant>,
    /// Ports whose queue holds frames, each once.
    pub to_write: Vec<PortId>,
    frame_cap: usize,
    queue_frames: usize,
    subnet: (Ipv4Addr, u32),
    gateway: Ipv4Addr,
    dns: Ipv4Addr,
    /// The network's isolation flags.
    pub base: Flags,
    /// Per-guest changes to them.
    pub overrides: Vec<(GuestKey, Overrides)>,
    /// Per-guest filter rules, applied to the port that matches the key.
    pub guest_filters: Vec<(GuestKey, Vec<usernet_portfwd::filter::FilterRule>)>,
    epoch: u64,
    /// The addresses that name a guest in `overrides` or `guest_filters`: a port whose
    /// source address becomes one of these has its settings looked up again.
    addr_keys: HashSet<Ipv4Addr>,
    /// Which port holds each pinned MAC (at most one port per MAC).
    macs: HashMap<[u8; 6], PortId>,
    /// The flow policy of a network without a router (an internal network); with one,
    /// the router's is used, so both see the same rules and counters.
    own_policy: FlowPolicy,
    /// Verdicts of guest-to-guest flows.
    pub guest_flows: flows::FlowCache,
    /// While the router's oldest frame waits for a full port: that port, and how far
    /// behind it the router's queue holds only frames for that port too.
    hol: Option<(PortId, usize)>,
}

/// The O(1) questions the anti-spoofing checks ask, over the fabric's tables.
struct Look<'a> {
    router: Option<&'a Router>,
    neigh4: &'a HashMap<Ipv4Addr, [u8; 6]>,
    neigh6: &'a HashMap<Ipv6Addr, [u8; 6]>,
    subnet: (Ipv4Addr, u32),
    gateway: Ipv4Addr,
    dns: Ipv4Addr,
}

impl Look<'_> {
    /// The network's IPv6 side, as its router serves it (none without a router or
    /// without IPv6, as on internal networks: guests then own link-local addresses
    /// only).
    fn v6(&self) -> Option<&Ipv6Config> {
        self.router?.config().ipv6.as_ref()
    }
}

impl Lookup for Look<'_> {
    fn leased_to(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
        self.router?.dhcp_mac_for(a)
    }
    fn holds_lease(&self, mac: [u8; 6]) -> bool {
        self.router.is_some_and(|r| r.dhcp_holds_lease(mac))
    }
    fn used_by4(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
        self.neigh4.get(&a).copied()
    }
    fn used_by6(&self, a: Ipv6Addr) -> Option<[u8; 6]> {
        self.neigh6.get(&a).copied()
    }
    fn in_subnet(&self, a: Ipv4Addr) -> bool {
        let (net, mask) = self.subnet;
        let host = u32::from(a) & !mask;
        // The network and broadcast addresses are nobody's (but in a /31 or /32).
        u32::from(a) & mask == u32::from(net) && (mask >= !1 || (host != 0 && host != !mask))
    }
    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.gateway || a == self.dns
    }
    fn is_ours6(&self, a: Ipv6Addr) -> bool {
        a == GATEWAY_LINK_LOCAL || self.v6().is_some_and(|c| c.is_ours(a) || a == c.prefix)
    }
    fn in_prefix6(&self, a: Ipv6Addr) -> bool {
        self.v6().is_some_and(|c| c.in_prefix(a))
    }
}

fn key(id: PortId) -> Option<usize> {
    id.checked_sub(1)
}

impl Fabric {
    /// A network of `mtu`; `router` serves it (set shared here) when the mode has one.
    pub fn new(
        now: Instant,
        mtu: u32,
        subnet: (Ipv4Addr, u8),
        gateway: Ipv4Addr,
        mut router: Option<Router>,
        stats: Arc<Stats>,
    ) -> Fabric {
        let mut switch = Switch::default();
        if let Some(r) = router.as_mut() {
            r.set_shared();
            switch.add_static(GATEWAY_MAC, ROUTER, now);
        }
        let frame_cap = ETH_HLEN + mtu as usize;
        let mask = if subnet.1 == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(subnet.1))
        };
        Fabric {
            switch,
            ports: Slab::new(),
            router,
            stats,
            neigh4: HashMap::new(),
            neigh6: HashMap::new(),
            arp_pending: HashMap::new(),
            to_write: Vec::new(),
            frame_cap,
            queue_frames: (PORT_QUEUE_BYTES / frame_cap).max(PORT_QUEUE_MIN_FRAMES),
            subnet: (subnet.0, mask),
            gateway,
            dns: Ipv4Addr::from(u32::from(gateway).wrapping_add(1)),
            base: Flags {
                spoof_check: true,
                ..Flags::default()
            },
            overrides: Vec::new(),
            guest_filters: Vec::new(),
            epoch: 1,
            addr_keys: HashSet::new(),
            macs: HashMap::new(),
            own_policy: FlowPolicy::default(),
            guest_flows: flows::FlowCache::default(),
            hol: None,
        }
    }

    /// The network's flow policy (filter rules and their counters).
    pub fn policy(&self) -> &FlowPolicy {
        match &self.router {
            Some(r) => &r.ctx.policy,
            None => &self.own_policy,
        }
    }

    /// The network's flow policy, mutably.
    pub fn policy_mut(&mut self) -> &mut FlowPolicy {
        match &mut self.router {
            Some(r) => &mut r.ctx.policy,
            None => &mut self.own_policy,
        }
    }

    fn rekey(&mut self) {
        self.addr_keys = self
            .overrides
            .iter()
            .map(|(k, _)| k)
            .chain(self.guest_filters.iter().map(|(k, _)| k))
            .filter_map(|k| match k {
                GuestKey::Addr(a) => Some(*a),
                GuestKey::Mac(_) => None,
            })
            .collect();
    }

    /// Replace one guest's filter rules (none: remove them). `false` (nothing
    /// changed) when [`MAX_GUEST_POLICIES`] other guests have rules already.
    pub fn set_guest_filters(
        &mut self,
        k: GuestKey,
        rules: Vec<usernet_portfwd::filter::FilterRule>,
    ) -> bool {
        let known = self.guest_filters.iter().any(|(key, _)| *key == k);
        if !rules.is_empty() && !known && self.guest_filters.len() >= MAX_GUEST_POLICIES {
            return false;
        }
        self.guest_filters.retain(|(key, _)| *key != k);
        if !rules.is_empty() {
            self.guest_filters.push((k, rules));
        }
        self.changed();
        true
    }

    /// Settings changed: every port's flags and rules are looked up again, and every
    /// cached flow verdict (the router's UDP mappings, guest-to-guest flows) is stale.
    fn changed(&mut self) {
        self.rekey();
        self.epoch += 1;
        self.policy_mut().epoch += 1;
        let ids: Vec<PortId> = self.ports.iter().map(|(k, _)| k + 1).collect();
        for id in ids {
            self.refresh_flags(id);
        }
    }

    /// Change the network's flags, or one guest's (merged over its earlier changes).
    /// `false` when the per-guest table is full.
    pub fn set_policy(&mut self, guest: Option<GuestKey>, o: Overrides) -> bool {
        match guest {
            None => self.base = o.apply(self.base),
            Some(k) => {
                let full = self.overrides.len() >= MAX_GUEST_POLICIES;
                match self.overrides.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, cur)) => cur.merge(&o),
                    None if full => return false,
                    None => self.overrides.push((k, o)),
                }
            }
        }
        self.changed();
        true
    }

    /// Recompute a port's flags from the network's and the overrides naming it.
    fn refresh_flags(&mut self, id: PortId) {
        let look = Look {
            router: self.router.as_ref(),
            neigh4: &self.neigh4,
            neigh6: &self.neigh6,
            subnet: self.subnet,
            gateway: self.gateway,
            dns: self.dns,
        };
        let Some(p) = key(id).and_then(|k| self.ports.get_mut(k)) else {
            return;
        };
        let mut f = self.base;
        for (k, o) in &self.overrides {
            let hit = match k {
                GuestKey::Mac(m) => p.ident.mac == Some(*m),
                GuestKey::Addr(a) => p.ident.owns4(*a, &look) || p.seen4 == Some(*a),
            };
            if hit {
                f = o.apply(f);
            }
        }
        p.flags = f;
        p.flags_epoch = self.epoch;
        // The port's own filter rules follow it the same way.
        let mut rules = Vec::new();
        for (k, r) in &self.guest_filters {
            let hit = match k {
                GuestKey::Mac(m) => p.ident.mac == Some(*m),
                GuestKey::Addr(a) => p.ident.owns4(*a, &look) || p.seen4 == Some(*a),
            };
            if hit {
                rules.extend(r.iter().cloned());
            }
        }
        let policy = match &mut self.router {
            Some(r) => &mut r.ctx.policy,
            None => &mut self.own_policy,
        };
        let cur = policy.guests.get(&id).map(|l| &l.rules[..]).unwrap_or(&[]);
        if cur != &rules[..] {
            policy.set_guest(id, rules);
        }
    }

    /// Pin a port's identity to what its owner configured (`attach` passes the TAP's
    /// MAC and its `--address`).
    pub fn configure_identity(
        &mut self,
        id: PortId,
        mac: Option<[u8; 6]>,
        addr4: Option<Ipv4Addr>,
    ) {
        if let Some(m) = mac {
            match self.macs.get(&m) {
                Some(&other) if other != id => {
                    tracing::warn!(port = id, other, mac = ?m, "two ports configured with one MAC: the newer one holds it");
                }
                _ => {}
            }
            if let Some(old) = self.port(id).and_then(|p| p.ident.mac)
                && self.macs.get(&old) == Some(&id)
            {
                self.macs.remove(&old);
            }
            self.macs.insert(m, id);
        }
        if let Some(p) = self.port_mut(id) {
            if mac.is_some() {
                p.ident.mac = mac;
                p.mac = mac;
            }
            if addr4.is_some() {
                p.ident.addr4 = addr4;
            }
            p.flags_epoch = 0;
        }
        // The configured address is taken from now on, before its guest first uses
        // it: no other port can pin it meanwhile.
        if let (Some(a), Some(m)) = (addr4, self.port(id).and_then(|p| p.ident.mac))
            && (self.neigh4.len() < MAX_NEIGHBORS || self.neigh4.contains_key(&a))
        {
            self.neigh4.insert(a, m);
        }
        self.refresh_flags(id);
    }

    /// Add a port; `None` when the network has [`MAX_PORTS`] already.
    pub fn add_port(
        &mut self,
        now: Instant,
        io: Option<Box<dyn Port>>,
        kind: PortKind,
        name: String,
    ) -> Option<PortId> {
        if self.ports.len() >= MAX_PORTS {
            return None;
        }
        let k = self.ports.insert(GuestPort {
            io,
            kind,
            name,
            mac: None,
            q: TxQueue::new(self.queue_frames, self.frame_cap),
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            drops: 0,
            last_progress: now,
            pending: true,
            writable: true,
            ident: Identity::default(),
            flags: self.base,
            flags_epoch: 0,
            seen4: None,
            spoofed: [0; guard::Spoof::ALL.len()],
            isolated: 0,
            watch: None,
        });
        self.refresh_flags(k + 1);
        Some(k + 1)
    }

    /// Remove a port (its device is closed when the returned port is dropped).
    pub fn remove_port(&mut self, id: PortId) -> Option<GuestPort> {
        let k = key(id)?;
        let p = self.ports.try_remove(k)?;
        self.switch.forget_port(id);
        if let Some(mac) = p.mac {
            self.neigh4.retain(|_, m| *m != mac);
            self.neigh6.retain(|_, m| *m != mac);
        }
        self.macs.retain(|_, q| *q != id);
        self.to_write.retain(|&q| q != id);
        if self.policy().guests.contains_key(&id) {
            self.policy_mut().set_guest(id, Vec::new());
        }
        if let Some(r) = self.router.as_mut() {
            r.forget_origin(id);
        }
        Some(p)
    }

    /// A guest port.
    pub fn port(&self, id: PortId) -> Option<&GuestPort> {
        self.ports.get(key(id)?)
    }

    /// A guest port, mutably.
    pub fn port_mut(&mut self, id: PortId) -> Option<&mut GuestPort> {
        self.ports.get_mut(key(id)?)
    }

    fn drop_at(&mut self, id: PortId, r: DropReason) {
        self.stats.record(r);
        if let Some(p) = self.port_mut(id) {
            p.drops += 1;
        }
    }

    /// One frame from guest port `from`.
    pub fn from_port(&mut self, now: Instant, from: PortId, frame: &[u8]) {
        let Some(p) = key(from).and_then(|k| self.ports.get_mut(k)) else {
            return;
        };
        p.rx_frames += 1;
        p.rx_bytes += frame.len() as u64;
        if frame.len() < ETH_HLEN {
            self.drop_at(from, DropReason::FrameBadLength);
            return;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        if src[0] & 1 == 1 || src == [0; 6] {
            self.drop_at(from, DropReason::SwitchFiltered);
            return;
        }
        if p.ident.mac.is_none() {
            // The first frame pins the port's MAC, unless another port (or the
            // gateway) holds it and the port is checked: a guest cannot take over a
            // neighbour's MAC by speaking first.
            p.ident.mac = Some(src);
            p.flags_epoch = 0;
            self.refresh_flags(from);
            let taken = src == GATEWAY_MAC || self.macs.get(&src).is_some_and(|&q| q != from);
            let Some(p) = key(from).and_then(|k| self.ports.get_mut(k)) else {
                return;
            };
            if taken && p.flags.spoof_check {
                p.ident.mac = None;
                p.flags_epoch = 0;
                self.spoofed(from, guard::Spoof::Mac);
                return;
            }
            if !taken {
                self.macs.insert(src, from);
            }
        }
        if self.port(from).is_some_and(|p| p.flags_epoch != self.epoch) {
            self.refresh_flags(from);
        }
        let Some(p) = key(from).and_then(|k| self.ports.get_mut(k)) else {
            return;
        };
        if p.mac.is_none() {
            p.mac = p.ident.mac;
        }
        if p.flags.spoof_check {
            let look = Look {
                router: self.router.as_ref(),
                neigh4: &self.neigh4,
                neigh6: &self.neigh6,
                subnet: self.subnet,
                gateway: self.gateway,
                dns: self.dns,
            };
            let checked = p.ident.check(frame, &look);
            if let Some(a) = p.ident.gave_up6.take()
                && p.ident.mac.is_some_and(|m| self.neigh6.get(&a) == Some(&m))
            {
                self.neigh6.remove(&a);
            }
            if let Err(why) = checked {
                self.spoofed(from, why);
                return;
            }
        }
        // Address-keyed settings follow the address the guest uses (checked above
        // when the port is checked): looked up again when the port starts or stops
        // using an address that names a guest.
        if let [0x08, 0x00] = [frame[12], frame[13]]
            && frame.len() >= 30
        {
            let a = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
            if !a.is_unspecified() && p.seen4 != Some(a) {
                let rekey = self.addr_keys.contains(&a)
                    || p.seen4.is_some_and(|old| self.addr_keys.contains(&old));
                p.seen4 = Some(a);
                if rekey {
                    self.refresh_flags(from);
                }
            }
        }
        let Some(p) = key(from).and_then(|k| self.ports.get_mut(k)) else {
            return;
        };
        let flags = p.flags;
        let fenced = flags.isolate || flags.restrict;
        self.switch.learn(now, src, from);
        self.learn_neighbor(frame, src);
        let origin = crate::policy::Origin {
            port: from,
            block_host: flags.block_host,
            restrict: flags.restrict,
        };
        match self.switch.lookup(now, dst, from) {
            Dest::One(ROUTER) => self.deliver_to_router(now, frame, origin),
            Dest::One(to) => {
                if fenced
                    || self
                        .port(to)
                        .is_some_and(|q| q.flags.isolate || q.flags.restrict)
                {
                    self.isolate_drop(from);
                } else if !self.guest_flow_denied(from, frame) {
                    self.enqueue(to, frame);
                }
            }
            Dest::Drop => self.drop_at(from, DropReason::SwitchFiltered),
            Dest::Flood => {
                let mut fenced_off = false;
                // Asked once for every guest copy (only when one would be sent).
                let mut denied = None;
                for k in 0..self.ports.capacity() {
                    let Some(q) = self.ports.get(k) else { continue };
                    if k + 1 == from {
                        continue;
                    }
                    if fenced || q.flags.isolate || q.flags.restrict {
                        fenced_off = true;
                        continue;
                    }
                    if *denied.get_or_insert_with(|| self.guest_flow_denied(from, frame)) {
                        break;
                    }
                    self.enqueue(k + 1, frame);
                }
                // Counted once per frame, broadcasts (ARP) included: what an
                // operator sees when isolated guests try to talk.
                if fenced_off {
                    self.isolate_drop(from);
                }
                // The router hears broadcasts and multicasts (ARP, DHCP, NDP), never
                // unicast meant for someone else.
                if dst[0] & 1 == 1 {
                    self.deliver_to_router(now, frame, origin);
                }
            }
        }
    }

    fn spoofed(&mut self, from: PortId, why: guard::Spoof) {
        self.stats.record(DropReason::Spoofed);
        if let Some(p) = self.port_mut(from) {
            p.spoofed[why as usize] += 1;
            p.drops += 1;
        }
        tracing::debug!(port = from, reason = why.as_str(), "spoofed frame dropped");
    }

    /// Whether a frame from guest `from` toward other guests starts a flow the filter
    /// rules refuse (then it is answered, when the flow's kind has an answer, and
    /// counted). See [`flows`].
    fn guest_flow_denied(&mut self, from: PortId, frame: &[u8]) -> bool {
        use usernet_portfwd::filter::{Action, FilterProto};
        let pol = self.policy();
        if pol.network.rules.is_empty()
            && pol.default == Action::Allow
            && !pol.guests.contains_key(&from)
        {
            return false;
        }
        let Some(pkt) = flows::parse(frame) else {
            return false;
        };
        let k = pkt.key;
        let proto = match pkt.kind {
            flows::Kind::Other | flows::Kind::TcpOther => return false,
            flows::Kind::TcpSyn { .. } => FilterProto::Tcp,
            flows::Kind::Udp => FilterProto::Udp,
            flows::Kind::EchoRequest => FilterProto::Icmp,
        };
        let cached = proto != FilterProto::Tcp;
        let epoch = self.policy().epoch;
        if cached {
            if let Some(ok) = self.guest_flows.get(&k, epoch) {
                return self.refuse(from, frame, &pkt, ok);
            }
            if self.guest_flows.get(&k.reverse(), epoch) == Some(true) {
                return false;
            }
        }
        let pol = self.policy_mut();
        pol.origin = crate::policy::Origin {
            port: from,
            ..crate::policy::Origin::default()
        };
        let ok = pol
            .check(proto, std::net::SocketAddr::new(k.dst, k.dport), false)
            .is_ok();
        if cached {
            self.guest_flows.insert(k, ok, epoch);
        }
        self.refuse(from, frame, &pkt, ok)
    }

    /// Count a refused guest-to-guest flow and answer it; `true` when refused.
    fn refuse(&mut self, from: PortId, frame: &[u8], pkt: &flows::Packet, ok: bool) -> bool {
        if ok {
            return false;
        }
        self.drop_at(from, DropReason::FlowDenied);
        tracing::debug!(port = from, flow = ?pkt.key, "guest-to-guest flow refused by the filter rules");
        let mut out = [0u8; flows::REPLY_MAX];
        let n = flows::refusal(frame, pkt, &mut out);
        if n > 0 {
            push_to(
                &mut self.ports,
                &mut self.to_write,
                &self.stats,
                from,
                &out[..n],
                None,
            );
        }
        true
    }

    fn isolate_drop(&mut self, from: PortId) {
        self.stats.record(DropReason::GuestIsolated);
        if let Some(p) = self.port_mut(from) {
            p.isolated += 1;
        }
    }

    fn deliver_to_router(&mut self, now: Instant, frame: &[u8], origin: crate::policy::Origin) {
        if let Some(r) = self.router.as_mut() {
            r.ctx.policy.origin = origin;
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.rx_frames.fetch_add(1, Relaxed);
            self.stats.rx_bytes.fetch_add(frame.len() as u64, Relaxed);
            r.handle_frame(now, frame);
        }
    }

    /// Copy `frame` into port `to`'s queue (counted as a drop when full).
    fn enqueue(&mut self, to: PortId, frame: &[u8]) {
        push_to(
            &mut self.ports,
            &mut self.to_write,
            &self.stats,
            to,
            frame,
            None,
        );
    }

    fn in_subnet(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.subnet.1 == u32::from(self.subnet.0)
    }

    /// Learn which MAC holds an address from a guest frame: an ARP sender (when it
    /// matches the frame's source), an IPv4 or IPv6 source. O(1); a changed entry is
    /// overwritten, a new one is refused once the table is full.
    fn learn_neighbor(&mut self, frame: &[u8], src: [u8; 6]) {
        let et = [frame[12], frame[13]];
        let v4 =
            |b: &[u8]| -> Option<Ipv4Addr> { Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?)) };
        let learned4 = if et == ETHERTYPE_ARP && frame.len() >= ETH_HLEN + 28 {
            (frame[22..28] == src).then(|| v4(&frame[28..32])).flatten()
        } else if et == ETHERTYPE_IPV4 && frame.len() >= ETH_HLEN + 20 {
            v4(&frame[26..30])
        } else {
            None
        };
        if let Some(a) = learned4 {
            if self.in_subnet(a)
                && !a.is_unspecified()
                && a != self.gateway
                && self.neigh4.get(&a) != Some(&src)
                && (self.neigh4.len() < MAX_NEIGHBORS || self.neigh4.contains_key(&a))
            {
                self.neigh4.insert(a, src);
            }
            return;
        }
        if et == ETHERTYPE_IPV6 && frame.len() >= ETH_HLEN + 40 {
            let mut b = [0u8; 16];
            b.copy_from_slice(&frame[22..38]);
            let a = Ipv6Addr::from(b);
            if !a.is_unspecified()
                && !a.is_multicast()
                && self.neigh6.get(&a) != Some(&src)
                && (self.neigh6.len() < MAX_NEIGHBORS || self.neigh6.contains_key(&a))
            {
                self.neigh6.insert(a, src);
            }
        }
    }

    /// The MAC holding `dst`'s destination address, from the neighbour table or a
    /// DHCP lease.
    fn resolve(&self, head: &[u8]) -> Resolved {
        let et = [head[12], head[13]];
        if et == ETHERTYPE_IPV4 && head.len() >= ETH_HLEN + 20 {
            let mut b = [0u8; 4];
            b.copy_from_slice(&head[30..34]);
            let a = Ipv4Addr::from(b);
            if let Some(m) = self.neigh4.get(&a) {
                return Resolved::Mac(*m);
            }
            if let Some(m) = self.router.as_ref().and_then(|r| r.dhcp_mac_for(a)) {
                return Resolved::Mac(m);
            }
            return Resolved::Ask(a);
        }
        if et == ETHERTYPE_IPV6 && head.len() >= ETH_HLEN + 40 {
            let mut b = [0u8; 16];
            b.copy_from_slice(&head[38..54]);
            if let Some(m) = self.neigh6.get(&Ipv6Addr::from(b)) {
                return Resolved::Mac(*m);
            }
        }
        Resolved::Unknown
    }

    /// Broadcast an ARP request from the gateway for `target` (at most once per
    /// [`ARP_RETRY`] per address).
    fn ask_arp(&mut self, now: Instant, target: Ipv4Addr) {
        if let Some(t) = self.arp_pending.get(&target)
            && now.saturating_duration_since(*t) < ARP_RETRY
        {
            return;
        }
        if self.arp_pending.len() >= MAX_ARP_PENDING {
            self.arp_pending
                .retain(|_, t| now.saturating_duration_since(*t) < ARP_RETRY);
            if self.arp_pending.len() >= MAX_ARP_PENDING {
                return;
            }
        }
        self.arp_pending.insert(target, now);
        let mut f = [0u8; ETH_HLEN + 28];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&GATEWAY_MAC);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&GATEWAY_MAC);
        f[28..32].copy_from_slice(&self.gateway.octets());
        f[38..42].copy_from_slice(&target.octets());
        for k in 0..self.ports.capacity() {
            if self.ports.contains(k) {
                self.enqueue(k + 1, &f);
            }
        }
    }

    /// Move the router's frames to the ports' queues. Stops (leaving the rest in the
    /// router's queue, which backpressures its flows) when a live port's queue is full.
    pub fn drain_router(&mut self, now: Instant) {
        let mut head = [0u8; ETH_HLEN + 40];
        // A full port whose frames give way this time (see `others_behind`).
        let mut yielding = None;
        loop {
            let Some(r) = self.router.as_mut() else {
                return;
            };
            let (n, full) = match r.txq().front() {
                Some(f) => {
                    let n = f.len().min(head.len());
                    head[..n].copy_from_slice(&f[..n]);
                    (n, f.len())
                }
                None => return,
            };
            if n < ETH_HLEN {
                self.pop_router();
                continue;
            }
            let mut dst = [0u8; 6];
            dst.copy_from_slice(&head[0..6]);
            let mut rewrite = None;
            if dst == UNRESOLVED_MAC {
                match self.resolve(&head[..n]) {
                    Resolved::Mac(m) => {
                        dst = m;
                        rewrite = Some(m);
                    }
                    Resolved::Ask(a) => {
                        self.ask_arp(now, a);
                        self.stats.record(DropReason::NeighborUnresolved);
                        self.pop_router();
                        continue;
                    }
                    Resolved::Unknown => {
                        self.stats.record(DropReason::NeighborUnresolved);
                        self.pop_router();
                        continue;
                    }
                }
            }
            match self.switch.lookup(now, dst, ROUTER) {
                Dest::One(to) => {
                    let Some(p) = key(to).and_then(|k| self.ports.get(k)) else {
                        self.pop_router();
                        continue;
                    };
                    if !p.q.has_room() && !p.stalled(now) && yielding != Some(to) {
                        if !self.others_behind(now, to) {
                            return;
                        }
                        // Frames for other guests wait behind this one: the full
                        // port's frames are dropped (counted) instead of holding
                        // them up, as a switch's egress queue tail-drops.
                        yielding = Some(to);
                    }
                    let Fabric {
                        router,
                        ports,
                        to_write,
                        stats,
                        ..
                    } = self;
                    if let Some(f) = router.as_mut().and_then(|r| r.txq().front()) {
                        push_to(ports, to_write, stats, to, f, rewrite);
                    }
                }
                Dest::Flood => {
                    let Fabric {
                        router,
                        ports,
                        to_write,
                        stats,
                        ..
                    } = self;
                    if let Some(f) = router.as_mut().and_then(|r| r.txq().front()) {
                        for k in 0..ports.capacity() {
                            if ports.contains(k) {
                                push_to(ports, to_write, stats, k + 1, f, rewrite);
                            }
                        }
                    }
                }
                Dest::Drop => {}
            }
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.tx_frames.fetch_add(1, Relaxed);
            self.stats.tx_bytes.fetch_add(full as u64, Relaxed);
            self.pop_router();
        }
    }

    /// Whether the router's queue holds, behind its oldest frame (which waits for
    /// full port `to`), a frame for anyone else. Looks at most [`HOL_SCAN`] frames per
    /// call, resuming where the last call stopped while the same frame waits, so a
    /// lone flow toward a slow guest keeps its backpressure at O(1) per call.
    fn others_behind(&mut self, now: Instant, to: PortId) -> bool {
        let start = match self.hol {
            Some((p, i)) if p == to => i,
            _ => 1,
        };
        let Some(r) = self.router.as_ref() else {
            return false;
        };
        let q = &r.ctx.txq;
        let end = q.len().min(start + HOL_SCAN);
        let mut i = start;
        while i < end {
            let Some(f) = q.get(i) else { break };
            if f.len() < ETH_HLEN {
                return true;
            }
            let mut dst = [0u8; 6];
            dst.copy_from_slice(&f[0..6]);
            if dst == UNRESOLVED_MAC {
                match self.resolve(&f[..f.len().min(ETH_HLEN + 40)]) {
                    Resolved::Mac(m) => dst = m,
                    // Dropped or asked for when it reaches the front: not waiting.
                    _ => return true,
                }
            }
            match self.switch.lookup(now, dst, ROUTER) {
                Dest::One(p) if p == to => i += 1,
                _ => return true,
            }
        }
        self.hol = Some((to, i));
        false
    }

    fn pop_router(&mut self) {
        self.hol = None;
        if let Some(r) = self.router.as_mut() {
            r.txq().pop_front();
        }
    }

    /// Addresses in the neighbour table (both families).
    pub fn neighbors(&self) -> usize {
        self.neigh4.len() + self.neigh6.len()
    }
}

/// Copy `frame` (with its destination MAC replaced by `dst`, when given) into port
/// `to`'s queue; a full queue drops it and counts the drop.
fn push_to(
    ports: &mut Slab<GuestPort>,
    to_write: &mut Vec<PortId>,
    stats: &Stats,
    to: PortId,
    frame: &[u8],
    dst: Option<[u8; 6]>,
) -> bool {
    let Some(p) = key(to).and_then(|k| ports.get_mut(k)) else {
        return false;
    };
    let was_empty = p.q.is_empty();
    let ok =
        p.q.push(frame.len(), |b| {
            b.copy_from_slice(frame);
            if let Some(d) = dst {
                b[0..6].copy_from_slice(&d);
            }
        })
        .is_some();
    if !ok {
        stats.record(DropReason::SwitchQueueFull);
        p.drops += 1;
        return false;
    }
    if was_empty {
        to_write.push(to);
    }
    true
}

enum Resolved {
    Mac([u8; 6]),
    Ask(Ipv4Addr),
    Unknown,
}

#[cfg(test)]
mod tests;
