//! Per-guest isolation flags and anti-spoofing: who a port is, and whether a frame
//! from it says the truth about that.
//!
//! # Identity of a port
//! * Its **MAC** is fixed by its first frame, or by the MAC its owner configured (the
//!   TAP's, passed with `attach`). The gateway's MAC is never a guest's.
//! * Its **IPv4 addresses**: the addresses leased (offered, bound or reserved) to its
//!   MAC by DHCP, asked of the lease table in O(1) by address, and its configured
//!   address. A port that holds a bound lease or a configured address owns those
//!   only. A port with neither (the internal-network case, whose guests configure
//!   themselves) owns the first address it used, learned and pinned
//!   ([`Identity::pinned4`]); the pin stays, but counts only while the port has
//!   neither. An address leased to or used by another guest, the gateway's and the
//!   DNS address, and addresses outside the subnet (or its network and broadcast
//!   addresses) are never its own.
//! * Its **IPv6 addresses**: the first link-local (fe80::/10) and, when the network
//!   has an IPv6 prefix, in-prefix addresses it used as a source (up to
//!   [`MAX_V6_PER_PORT`]; a new one then takes the place of the one used least
//!   recently, as temporary addresses come and go, and the network forgets who used
//!   it), unless another guest used them before. Never the router's
//!   addresses (its link-local address, the gateway and DNS addresses, the prefix's
//!   subnet-router anycast address), never a multicast, loopback or any other address.
//!
//! Addresses are pinned only by a frame that passes every check, so a refused frame
//! claims nothing.
//!
//! # What is checked per frame
//! Every check is O(1): a bounded number of fixed-offset reads and table lookups (the
//! IPv6 extension-header walk stops after [`MAX_EXT_HEADERS`] headers, the NDP option
//! walk after [`MAX_NDP_OPTIONS`] options). Failures are dropped and counted per port
//! and per [`Spoof`] reason (the reason's name in parentheses).
//! * **Ethernet**: the source MAC is the port's (`mac`). VLAN and QinQ tagged frames
//!   (ethertypes 0x8100, 0x88a8, 0x9100) are refused (`tagged`): their inner headers
//!   would escape every other check. Other ethertypes than ARP, IPv4 and IPv6 pass.
//! * **ARP**: Ethernet/IPv4 ARP only (htype 1, ptype 0x0800, hlen 6, plen 4), requests
//!   and replies only; the sender MAC is the port's, and the sender address one it owns,
//!   or 0.0.0.0 in a request (an ARP probe). So no reply or gratuitous ARP claims
//!   another guest's or the gateway's address (`arp`). Shorter than 28 bytes:
//!   `malformed`.
//! * **IPv4**: version 4, a header length of at least 20 bytes and a total length that
//!   fits the frame (`malformed`); the first fragment of a UDP or ICMP datagram holds
//!   its 8-byte header (`malformed`). Then, in a datagram's first fragment (later ones
//!   carry no header to check):
//!   * UDP from port 67 or to port 68, a BOOTREPLY (op 2) to port 67 and ICMP
//!     redirects (type 5): messages only a router or server sends (`rogue_server`);
//!   * UDP to port 67 (a DHCP client's message) is one unfragmented BOOTREQUEST whose
//!     `chaddr` is the port's MAC (`mac`): a guest cannot drain the pool with made-up
//!     MACs.
//!
//!   The source is an address the port owns (`ipv4_source`); 0.0.0.0 only for a DHCP
//!   client's message (UDP 68 to 67).
//! * **IPv6**: version 6 and a payload length that fits the frame (`malformed`). The
//!   extension headers Hop-by-Hop (0), Routing (43), Fragment (44), Destination Options
//!   (60) and Authentication (51) are walked to the upper-layer header; a chain longer
//!   than [`MAX_EXT_HEADERS`] or running past the packet, and a first fragment that
//!   does not hold the 8-byte UDP or ICMPv6 header, are `malformed`. A fragment with a
//!   nonzero offset has no upper-layer header to check. Then:
//!   * UDP from port 547 or to port 546 (DHCPv6 server messages), router
//!     advertisements (134) and redirects (137): `rogue_server`;
//!   * router and neighbour solicitations and neighbour advertisements (133, 135, 136):
//!     never fragmented (RFC 6980), their options well formed, and every source or
//!     target link-layer address option (types 1, 2) 8 bytes long and carrying the
//!     port's MAC; a neighbour advertisement's target is an address the port owns
//!     already or the packet's own source (`ndp`).
//!
//!   The source is an address the port owns (`ipv6_source`); the unspecified address
//!   only in router and neighbour solicitations (DAD) and MLD messages (131, 132, 143).
//!
//! Not checked: other ethertypes (LLDP, PPPoE...), 802.3 frames with an LLC/SNAP
//! header, what tunnels (IP in IP, GRE) and encrypted payloads (ESP) carry.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::GATEWAY_MAC;

/// IPv6 addresses a port may own.
pub const MAX_V6_PER_PORT: usize = 8;
/// IPv6 extension headers walked before the upper-layer header; more are refused.
pub const MAX_EXT_HEADERS: usize = 8;
/// NDP options walked in one message; more are refused.
pub const MAX_NDP_OPTIONS: usize = 16;

/// A network's or a guest's isolation settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// No traffic to or from other guests (broadcasts and ARP included); DHCP and the
    /// gateway still work.
    pub isolate: bool,
    /// Nothing to the host: the gateway does not stand for the host's loopback.
    pub block_host: bool,
    /// Nothing at all but what is forwarded in (QEMU's `restrict=on`): no new flow of
    /// its own, no other guest.
    pub restrict: bool,
    /// Check the port's identity on every frame (anti-spoofing).
    pub spoof_check: bool,
}

/// Changes to [`Flags`] for one guest; `None` inherits the network's setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// See [`Flags::isolate`].
    pub isolate: Option<bool>,
    /// See [`Flags::block_host`].
    pub block_host: Option<bool>,
    /// See [`Flags::restrict`].
    pub restrict: Option<bool>,
    /// The inverse of [`Flags::spoof_check`].
    pub allow_spoofing: Option<bool>,
}

impl Overrides {
    /// `base` with these changes.
    pub fn apply(&self, mut base: Flags) -> Flags {
        if let Some(v) = self.isolate {
            base.isolate = v;
        }
        if let Some(v) = self.block_host {
            base.block_host = v;
        }
        if let Some(v) = self.restrict {
            base.restrict = v;
        }
        if let Some(v) = self.allow_spoofing {
            base.spoof_check = !v;
        }
        base
    }

    /// Fold `other`'s set fields over these.
    pub fn merge(&mut self, other: &Overrides) {
        self.isolate = other.isolate.or(self.isolate);
        self.block_host = other.block_host.or(self.block_host);
        self.restrict = other.restrict.or(self.restrict);
        self.allow_spoofing = other.allow_spoofing.or(self.allow_spoofing);
    }
}

/// Why a frame was refused as spoofed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoof {
    /// A source MAC other than the port's (or the gateway's), or a DHCP client message
    /// whose `chaddr` is not the port's MAC.
    Mac,
    /// An IPv4 source the port does not own.
    Ipv4,
    /// An ARP message claiming an address the port does not own (or another MAC).
    Arp,
    /// An IPv6 source the port does not own.
    Ipv6,
    /// A neighbour advertisement for an address the port does not own, an NDP
    /// link-layer address option naming another MAC, malformed NDP options, or
    /// fragmented NDP.
    Ndp,
    /// A message only a router or server sends: a DHCP or DHCPv6 server message, a
    /// BOOTREPLY, a router advertisement, an ICMP or ICMPv6 redirect.
    RogueServer,
    /// A VLAN or QinQ tagged frame.
    Tagged,
    /// An IP header the checks cannot follow: a bad IPv4 header or total length, an
    /// IPv6 payload length past the frame, an IPv6 extension-header chain too long or
    /// running past the packet, a first fragment without its upper-layer header, a
    /// truncated ARP message.
    Malformed,
}

impl Spoof {
    /// Every reason, in counter order.
    pub const ALL: [Spoof; 8] = [
        Spoof::Mac,
        Spoof::Ipv4,
        Spoof::Arp,
        Spoof::Ipv6,
        Spoof::Ndp,
        Spoof::RogueServer,
        Spoof::Tagged,
        Spoof::Malformed,
    ];

    /// The counter's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Spoof::Mac => "mac",
            Spoof::Ipv4 => "ipv4_source",
            Spoof::Arp => "arp",
            Spoof::Ipv6 => "ipv6_source",
            Spoof::Ndp => "ndp",
            Spoof::RogueServer => "rogue_server",
            Spoof::Tagged => "tagged",
            Spoof::Malformed => "malformed",
        }
    }
}

/// What a port is, as far as the checks know.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// Its MAC (pinned by the first frame or configured).
    pub mac: Option<[u8; 6]>,
    /// Its configured IPv4 address.
    pub addr4: Option<Ipv4Addr>,
    /// The first IPv4 address it used while it had neither a lease nor a configured
    /// address; its own only while that lasts.
    pub pinned4: Option<Ipv4Addr>,
    /// Its IPv6 addresses.
    pub addr6: Vec<Ipv6Addr>,
    /// When each of `addr6` was last a source (a count of the port's IPv6 frames).
    used6: Vec<u64>,
    tick6: u64,
    /// The address the last check took out of `addr6` to make room, for the network
    /// to forget too (the port gave it up).
    pub gave_up6: Option<Ipv6Addr>,
}

/// What the checks ask of the rest of the network, all O(1).
pub trait Lookup {
    /// The MAC holding (leased, offered or reserved) `a` by DHCP.
    fn leased_to(&self, a: Ipv4Addr) -> Option<[u8; 6]>;
    /// Whether `mac` holds a bound DHCP lease (any address).
    fn holds_lease(&self, mac: [u8; 6]) -> bool;
    /// The MAC another guest used `a` from.
    fn used_by4(&self, a: Ipv4Addr) -> Option<[u8; 6]>;
    /// The MAC another guest used `a` from.
    fn used_by6(&self, a: Ipv6Addr) -> Option<[u8; 6]>;
    /// Whether `a` is a host address of the network's IPv4 subnet (not its network or
    /// broadcast address).
    fn in_subnet(&self, a: Ipv4Addr) -> bool;
    /// Whether `a` is the gateway's or the DNS address.
    fn is_ours(&self, a: Ipv4Addr) -> bool;
    /// Whether `a` is one of the router's IPv6 addresses (its link-local address, the
    /// gateway and DNS addresses, the prefix's subnet-router anycast address).
    fn is_ours6(&self, a: Ipv6Addr) -> bool;
    /// Whether `a` lies in the network's IPv6 prefix (never, without one).
    fn in_prefix6(&self, a: Ipv6Addr) -> bool;
}

/// Whether an address is a port's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    /// No.
    No,
    /// Yes, already.
    Yes,
    /// Not yet, but it may pin it (once the whole frame passes).
    Pin,
}

fn v4(b: &[u8]) -> Ipv4Addr {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    Ipv4Addr::from(a)
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn is_link_local6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Identity {
    fn mac_is(&self, b: Option<&[u8]>) -> bool {
        self.mac.is_some_and(|m| b == Some(&m[..]))
    }

    /// Whether `a` is this port's IPv4 address (see the module docs).
    fn own4(&self, a: Ipv4Addr, look: &dyn Lookup) -> Own {
        let Some(mac) = self.mac else { return Own::No };
        if !look.in_subnet(a) || look.is_ours(a) || a.is_broadcast() {
            return Own::No;
        }
        match look.leased_to(a) {
            Some(m) if m == mac => return Own::Yes,
            Some(_) => return Own::No,
            None => {}
        }
        if self.addr4 == Some(a) {
            return Own::Yes;
        }
        // A lease or a configured address: those only.
        if self.addr4.is_some() || look.holds_lease(mac) {
            return Own::No;
        }
        // Another guest's since (its configured address, or with anti-spoofing off).
        if look.used_by4(a).is_some_and(|m| m != mac) {
            return Own::No;
        }
        match self.pinned4 {
            Some(p) if p == a => Own::Yes,
            Some(_) => Own::No,
            None => Own::Pin,
        }
    }

    /// Whether `a` is one of this port's IPv6 addresses (see the module docs).
    fn own6(&self, a: Ipv6Addr, look: &dyn Lookup) -> Own {
        let Some(mac) = self.mac else { return Own::No };
        if a.is_multicast() || a.is_loopback() || a.is_unspecified() || look.is_ours6(a) {
            return Own::No;
        }
        if !is_link_local6(a) && !look.in_prefix6(a) {
            return Own::No;
        }
        if self.addr6.contains(&a) {
            return Own::Yes;
        }
        if look.used_by6(a).is_some_and(|m| m != mac) {
            return Own::No;
        }
        Own::Pin
    }

    /// Check one frame (at least an Ethernet header) from this port.
    pub fn check(&mut self, frame: &[u8], look: &dyn Lookup) -> Result<(), Spoof> {
        if frame.len() < 14 {
            return Ok(());
        }
        if frame[6..12] == GATEWAY_MAC || self.mac.is_some_and(|m| frame[6..12] != m) {
            return Err(Spoof::Mac);
        }
        let p = &frame[14..];
        match [frame[12], frame[13]] {
            [0x81, 0x00] | [0x88, 0xa8] | [0x91, 0x00] => Err(Spoof::Tagged),
            [0x08, 0x06] => self.check_arp(p, look),
            [0x08, 0x00] => self.check4(p, look),
            [0x86, 0xdd] => self.check6(p, look),
            _ => Ok(()),
        }
    }

    fn check_arp(&mut self, p: &[u8], look: &dyn Lookup) -> Result<(), Spoof> {
        if p.len() < 28 {
            return Err(Spoof::Malformed);
        }
        let op = be16(p, 6);
        if p[0..6] != [0, 1, 8, 0, 6, 4] || !matches!(op, Some(1 | 2)) {
            return Err(Spoof::Arp);
        }
        if !self.mac_is(p.get(8..14)) {
            return Err(Spoof::Arp);
        }
        let sender = v4(&p[14..18]);
        if sender.is_unspecified() {
            // An ARP probe.
            return if op == Some(1) {
                Ok(())
            } else {
                Err(Spoof::Arp)
            };
        }
        self.claim4(sender, look, Spoof::Arp)
    }

    /// The last step of a check: `a` must be the port's, pinned if new.
    fn claim4(&mut self, a: Ipv4Addr, look: &dyn Lookup, why: Spoof) -> Result<(), Spoof> {
        match self.own4(a, look) {
            Own::No => Err(why),
            Own::Yes => Ok(()),
            Own::Pin => {
                self.pinned4 = Some(a);
                Ok(())
            }
        }
    }

    fn check4(&mut self, p: &[u8], look: &dyn Lookup) -> Result<(), Spoof> {
        if p.len() < 20 || p[0] >> 4 != 4 {
            return Err(Spoof::Malformed);
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if ihl < 20 || total < ihl || total > p.len() {
            return Err(Spoof::Malformed);
        }
        let p = &p[..total];
        let proto = p[9];
        let frag = u16::from_be_bytes([p[6], p[7]]);
        let first = frag & 0x1fff == 0;
        let more = frag & 0x2000 != 0;
        let l4 = &p[ihl..];
        let mut dhcp_client = false;
        if first {
            if more && matches!(proto, 1 | 17) && l4.len() < 8 {
                return Err(Spoof::Malformed);
            }
            match proto {
                17 => {
                    let (sport, dport) = (be16(l4, 0), be16(l4, 2));
                    if sport == Some(67) || dport == Some(68) {
                        return Err(Spoof::RogueServer);
                    }
                    if dport == Some(67) {
                        // BOOTP: op at 0, chaddr at 28..34 of the UDP payload.
                        match l4.get(8) {
                            Some(2) => return Err(Spoof::RogueServer),
                            Some(1) if !more && self.mac_is(l4.get(36..42)) => {}
                            _ => return Err(Spoof::Mac),
                        }
                        dhcp_client = sport == Some(68);
                    }
                }
                1 if l4.first() == Some(&5) => return Err(Spoof::RogueServer),
                _ => {}
            }
        }
        let src = v4(&p[12..16]);
        if src.is_unspecified() {
            // Only a DHCP client's message comes from 0.0.0.0.
            return if dhcp_client {
                Ok(())
            } else {
                Err(Spoof::Ipv4)
            };
        }
        self.claim4(src, look, Spoof::Ipv4)
    }

    fn check6(&mut self, p: &[u8], look: &dyn Lookup) -> Result<(), Spoof> {
        if p.len() < 40 || p[0] >> 4 != 6 {
            return Err(Spoof::Malformed);
        }
        let end = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
        let p = p.get(..end).ok_or(Spoof::Malformed)?;
        let src = v6(&p[8..24]);
        // Walk the extension headers to the upper-layer header.
        let mut next = p[6];
        let mut at = 40;
        let mut fragmented = false;
        let mut first = true;
        let mut headers = 0;
        while first && matches!(next, 0 | 43 | 44 | 51 | 60) {
            headers += 1;
            if headers > MAX_EXT_HEADERS {
                return Err(Spoof::Malformed);
            }
            let h = p.get(at..at + 8).ok_or(Spoof::Malformed)?;
            let len = match next {
                44 => {
                    fragmented = true;
                    first = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 == 0;
                    8
                }
                51 => (usize::from(h[1]) + 2) * 4,
                _ => (usize::from(h[1]) + 1) * 8,
            };
            if p.len() < at + len {
                return Err(Spoof::Malformed);
            }
            next = h[0];
            at += len;
        }
        let l4 = &p[at..];
        let mut icmp = None;
        if first {
            if fragmented && matches!(next, 17 | 58) && l4.len() < 8 {
                return Err(Spoof::Malformed);
            }
            match next {
                17 if be16(l4, 0) == Some(547) || be16(l4, 2) == Some(546) => {
                    return Err(Spoof::RogueServer);
                }
                58 => {
                    icmp = l4.first().copied();
                    self.check_ndp(l4, src, fragmented)?;
                }
                _ => {}
            }
        }
        if src.is_unspecified() {
            // DAD, a router solicitation or MLD before the port has an address.
            return if matches!(icmp, Some(131 | 132 | 133 | 135 | 143)) {
                Ok(())
            } else {
                Err(Spoof::Ipv6)
            };
        }
        self.tick6 += 1;
        match self.own6(src, look) {
            Own::No => Err(Spoof::Ipv6),
            Own::Yes => {
                if let Some(i) = self.addr6.iter().position(|&a| a == src) {
                    self.used6.resize(self.addr6.len(), 0);
                    self.used6[i] = self.tick6;
                }
                Ok(())
            }
            Own::Pin => {
                self.used6.resize(self.addr6.len(), 0);
                if self.addr6.len() >= MAX_V6_PER_PORT {
                    // Full: the address used least recently makes room (O(8)).
                    let lru = (0..self.used6.len())
                        .min_by_key(|&i| self.used6[i])
                        .unwrap_or(0);
                    self.gave_up6 = Some(self.addr6.swap_remove(lru));
                    self.used6.swap_remove(lru);
                }
                self.addr6.push(src);
                self.used6.push(self.tick6);
                Ok(())
            }
        }
    }

    /// Router messages and NDP in the ICMPv6 message `m` from `src`.
    fn check_ndp(&self, m: &[u8], src: Ipv6Addr, fragmented: bool) -> Result<(), Spoof> {
        let opts_at = match m.first() {
            Some(134 | 137) => return Err(Spoof::RogueServer),
            Some(133) => 8,
            Some(135 | 136) => 24,
            _ => return Ok(()),
        };
        if fragmented {
            return Err(Spoof::Ndp);
        }
        let mut opts = m.get(opts_at..).ok_or(Spoof::Ndp)?;
        if m[0] == 136 {
            let target = v6(&m[8..24]);
            if target != src && !self.addr6.contains(&target) {
                return Err(Spoof::Ndp);
            }
        }
        for _ in 0..MAX_NDP_OPTIONS {
            let (kind, len) = match opts {
                [] => return Ok(()),
                [kind, len, ..] => (*kind, *len),
                _ => return Err(Spoof::Ndp),
            };
            let n = usize::from(len) * 8;
            if n == 0 || opts.len() < n {
                return Err(Spoof::Ndp);
            }
            if matches!(kind, 1 | 2) && (len != 1 || !self.mac_is(opts.get(2..8))) {
                return Err(Spoof::Ndp);
            }
            opts = &opts[n..];
        }
        if opts.is_empty() {
            Ok(())
        } else {
            Err(Spoof::Ndp)
        }
    }

    /// Whether `a` is (now) this port's IPv4 address, without pinning anything.
    pub fn owns4(&self, a: Ipv4Addr, look: &dyn Lookup) -> bool {
        self.own4(a, look) == Own::Yes
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GATEWAY_LINK_LOCAL;
    use std::collections::HashMap;

    /// Holds the lease 10.0.2.15.
    const ME: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
    /// Holds 10.0.2.16 by lease, used 10.0.2.30 and fe80::2.
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
    /// Holds no lease (configures itself).
    const LONE: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
    const GW: [u8; 4] = [10, 0, 2, 2];

    struct Net {
        leases: HashMap<Ipv4Addr, [u8; 6]>,
        bound: Vec<[u8; 6]>,
        used4: HashMap<Ipv4Addr, [u8; 6]>,
        used6: HashMap<Ipv6Addr, [u8; 6]>,
        prefix6: bool,
    }

    impl Lookup for Net {
        fn leased_to(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
            self.leases.get(&a).copied()
        }
        fn holds_lease(&self, mac: [u8; 6]) -> bool {
            self.bound.contains(&mac)
        }
        fn used_by4(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
            self.used4.get(&a).copied()
        }
        fn used_by6(&self, a: Ipv6Addr) -> Option<[u8; 6]> {
            self.used6.get(&a).copied()
        }
        fn in_subnet(&self, a: Ipv4Addr) -> bool {
            let o = a.octets();
            o[..3] == [10, 0, 2] && o[3] != 0 && o[3] != 255
        }
        fn is_ours(&self, a: Ipv4Addr) -> bool {
            a == Ipv4Addr::from(GW) || a == Ipv4Addr::new(10, 0, 2, 3)
        }
        fn is_ours6(&self, a: Ipv6Addr) -> bool {
            a == GATEWAY_LINK_LOCAL
                || (self.prefix6 && [a6("fd00::"), a6("fd00::2"), a6("fd00::3")].contains(&a))
        }
        fn in_prefix6(&self, a: Ipv6Addr) -> bool {
            self.prefix6 && a.segments()[..4] == [0xfd00, 0, 0, 0]
        }
    }

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().unwrap_or(Ipv6Addr::LOCALHOST)
    }

    /// The network of the tables: ME leases .15, OTHER .16 and used .30 and fe80::2.
    fn net() -> Net {
        let mut n = Net {
            leases: HashMap::new(),
            bound: vec![ME, OTHER],
            used4: HashMap::new(),
            used6: HashMap::new(),
            prefix6: true,
        };
        n.leases.insert(Ipv4Addr::new(10, 0, 2, 15), ME);
        n.leases.insert(Ipv4Addr::new(10, 0, 2, 16), OTHER);
        n.used4.insert(Ipv4Addr::new(10, 0, 2, 30), OTHER);
        n.used6.insert(a6("fe80::2"), OTHER);
        n
    }

    fn eth(src: [u8; 6], et: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// `inner` with a VLAN tag of `tpid` after its source MAC.
    fn tagged(tpid: u16, inner: &[u8]) -> Vec<u8> {
        let mut f = inner[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 5]);
        f.extend_from_slice(&inner[12..]);
        f
    }

    fn arp(mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], op: u8) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, op];
        p.extend_from_slice(&sha);
        p.extend_from_slice(&spa);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[10, 0, 2, 99]);
        eth(mac, 0x0806, &p)
    }

    /// An IPv4 packet; `frag` is the flags and fragment offset field.
    fn ip4f(mac: [u8; 6], src: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 0, 2, 99]);
        p.extend_from_slice(l4);
        eth(mac, 0x0800, &p)
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn ip4(mac: [u8; 6], src: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        ip4f(mac, src, proto, 0, &udp(sport, dport, &[]))
    }

    /// A BOOTP message (`op` 1 request, 2 reply) for `chaddr`.
    fn bootp(op: u8, chaddr: [u8; 6]) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&chaddr);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, 1, 255]);
        b
    }

    fn dhcp(mac: [u8; 6], src: [u8; 4], op: u8, chaddr: [u8; 6]) -> Vec<u8> {
        ip4f(mac, src, 17, 0, &udp(68, 67, &bootp(op, chaddr)))
    }

    fn ip6(mac: [u8; 6], src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 255];
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(payload);
        eth(mac, 0x86dd, &p)
    }

    /// An extension header of `units` 8-byte units (Hop-by-Hop, Routing, Destination
    /// Options) before `rest`, whose protocol is `next`.
    fn ext(next: u8, units: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; usize::from(units) * 8];
        h[0] = next;
        h[1] = units - 1;
        h.extend_from_slice(rest);
        h
    }

    /// A Fragment header (offset in 8-byte units) before `rest`.
    fn frag6(next: u8, offset: u16, more: bool, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![next, 0, 0, 0, 0, 0, 0, 1];
        h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    fn icmp6(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t, 0, 0, 0];
        m.extend_from_slice(body);
        m
    }

    fn lla(kind: u8, mac: [u8; 6]) -> Vec<u8> {
        let mut o = vec![kind, 1];
        o.extend_from_slice(&mac);
        o
    }

    fn na(target: Ipv6Addr, opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&target.octets());
        b.extend_from_slice(opts);
        icmp6(136, &b)
    }

    fn ns(target: Ipv6Addr, opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0; 4];
        b.extend_from_slice(&target.octets());
        b.extend_from_slice(opts);
        icmp6(135, &b)
    }

    fn rs(opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0; 4];
        b.extend_from_slice(opts);
        icmp6(133, &b)
    }

    fn id(mac: [u8; 6]) -> Identity {
        Identity {
            mac: Some(mac),
            ..Identity::default()
        }
    }

    type Row = (&'static str, [u8; 6], Vec<u8>, Result<(), Spoof>);

    fn run(net: &Net, rows: Vec<Row>) {
        for (what, mac, frame, want) in rows {
            let mut port = id(mac);
            assert_eq!(port.check(&frame, net), want, "{what}");
        }
    }

    #[test]
    fn ethernet_arp_and_ipv4() {
        let ok = Ok(());
        let lease = [10, 0, 2, 15];
        run(
            &net(),
            vec![
                ("own lease", ME, ip4(ME, lease, 6, 1, 2), ok),
                (
                    "another MAC",
                    ME,
                    ip4(OTHER, lease, 6, 1, 2),
                    Err(Spoof::Mac),
                ),
                (
                    "the gateway's MAC",
                    ME,
                    ip4(crate::config::GATEWAY_MAC, lease, 6, 1, 2),
                    Err(Spoof::Mac),
                ),
                (
                    "another's lease",
                    ME,
                    ip4(ME, [10, 0, 2, 16], 6, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "another's address",
                    LONE,
                    ip4(LONE, [10, 0, 2, 30], 17, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                ("the gateway's", ME, ip4(ME, GW, 1, 0, 0), Err(Spoof::Ipv4)),
                (
                    "the DNS address",
                    LONE,
                    ip4(LONE, [10, 0, 2, 3], 17, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "the subnet's broadcast",
                    LONE,
                    ip4(LONE, [10, 0, 2, 255], 17, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "the subnet's network",
                    LONE,
                    ip4(LONE, [10, 0, 2, 0], 17, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "outside the subnet",
                    LONE,
                    ip4(LONE, [192, 0, 2, 1], 6, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "unleased, no lease: pinned",
                    LONE,
                    ip4(LONE, [10, 0, 2, 20], 6, 1, 2),
                    ok,
                ),
                (
                    "unleased, holding a lease",
                    ME,
                    ip4(ME, [10, 0, 2, 20], 6, 1, 2),
                    Err(Spoof::Ipv4),
                ),
                (
                    "0.0.0.0 not DHCP",
                    ME,
                    ip4(ME, [0; 4], 6, 68, 67),
                    Err(Spoof::Ipv4),
                ),
                (
                    "0.0.0.0 UDP not DHCP",
                    ME,
                    ip4(ME, [0; 4], 17, 1000, 2000),
                    Err(Spoof::Ipv4),
                ),
                // IPv4 headers the checks cannot follow.
                (
                    "header length 4",
                    ME,
                    {
                        let mut f = ip4(ME, lease, 17, 1, 2);
                        f[14] = 0x41;
                        f
                    },
                    Err(Spoof::Malformed),
                ),
                (
                    "total length past the frame",
                    ME,
                    {
                        let mut f = ip4(ME, lease, 17, 1, 2);
                        f[16..18].copy_from_slice(&200u16.to_be_bytes());
                        f
                    },
                    Err(Spoof::Malformed),
                ),
                (
                    "version 6 in IPv4",
                    ME,
                    {
                        let mut f = ip4(ME, lease, 17, 1, 2);
                        f[14] = 0x65;
                        f
                    },
                    Err(Spoof::Malformed),
                ),
                (
                    "truncated IPv4",
                    ME,
                    eth(ME, 0x0800, &[0x45, 0, 0, 20]),
                    Err(Spoof::Malformed),
                ),
                (
                    "first fragment without the UDP header",
                    ME,
                    ip4f(ME, lease, 17, 0x2000, &[0, 68, 0, 67]),
                    Err(Spoof::Malformed),
                ),
                // Messages only a server or router sends.
                (
                    "DHCP server",
                    ME,
                    ip4(ME, lease, 17, 67, 68),
                    Err(Spoof::RogueServer),
                ),
                (
                    "UDP to port 68",
                    ME,
                    ip4(ME, lease, 17, 5000, 68),
                    Err(Spoof::RogueServer),
                ),
                (
                    "BOOTREPLY to port 67",
                    ME,
                    dhcp(ME, lease, 2, ME),
                    Err(Spoof::RogueServer),
                ),
                (
                    "ICMP redirect",
                    ME,
                    ip4f(ME, lease, 1, 0, &[5, 1, 0, 0, 10, 0, 2, 2]),
                    Err(Spoof::RogueServer),
                ),
                (
                    "ICMP echo",
                    ME,
                    ip4f(ME, lease, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
                    ok,
                ),
                (
                    "a later fragment is not parsed as UDP",
                    ME,
                    ip4f(ME, lease, 17, 0x0003, &udp(67, 68, &[])),
                    ok,
                ),
                (
                    "a later fragment still has a source",
                    ME,
                    ip4f(ME, [10, 0, 2, 16], 17, 0x0003, &[0; 8]),
                    Err(Spoof::Ipv4),
                ),
                // DHCP clients.
                ("DHCP client", ME, dhcp(ME, [0; 4], 1, ME), ok),
                ("DHCP renewal", ME, dhcp(ME, lease, 1, ME), ok),
                (
                    "DHCP for a made-up MAC",
                    ME,
                    dhcp(ME, [0; 4], 1, OTHER),
                    Err(Spoof::Mac),
                ),
                (
                    "DHCP renewal for a made-up MAC",
                    ME,
                    dhcp(ME, lease, 1, LONE),
                    Err(Spoof::Mac),
                ),
                (
                    "DHCP without chaddr",
                    ME,
                    ip4f(ME, [0; 4], 17, 0, &udp(68, 67, &[1, 1, 6, 0])),
                    Err(Spoof::Mac),
                ),
                (
                    "fragmented DHCP",
                    ME,
                    ip4f(ME, [0; 4], 17, 0x2000, &udp(68, 67, &bootp(1, ME))),
                    Err(Spoof::Mac),
                ),
                ("BOOTP op 3", ME, dhcp(ME, [0; 4], 3, ME), Err(Spoof::Mac)),
                // ARP.
                ("ARP probe", ME, arp(ME, ME, [0; 4], 1), ok),
                (
                    "ARP reply from 0.0.0.0",
                    ME,
                    arp(ME, ME, [0; 4], 2),
                    Err(Spoof::Arp),
                ),
                ("ARP for own lease", ME, arp(ME, ME, lease, 2), ok),
                (
                    "gratuitous ARP for own lease",
                    ME,
                    arp(ME, ME, lease, 1),
                    ok,
                ),
                (
                    "ARP claiming another's lease",
                    ME,
                    arp(ME, ME, [10, 0, 2, 16], 2),
                    Err(Spoof::Arp),
                ),
                (
                    "gratuitous ARP claiming another's",
                    LONE,
                    arp(LONE, LONE, [10, 0, 2, 16], 1),
                    Err(Spoof::Arp),
                ),
                (
                    "ARP claiming another's address",
                    LONE,
                    arp(LONE, LONE, [10, 0, 2, 30], 2),
                    Err(Spoof::Arp),
                ),
                (
                    "ARP claiming the gateway",
                    ME,
                    arp(ME, ME, GW, 2),
                    Err(Spoof::Arp),
                ),
                (
                    "gratuitous ARP claiming the gateway",
                    LONE,
                    arp(LONE, LONE, GW, 1),
                    Err(Spoof::Arp),
                ),
                (
                    "ARP claiming unleased, holding a lease",
                    ME,
                    arp(ME, ME, [10, 0, 2, 20], 2),
                    Err(Spoof::Arp),
                ),
                (
                    "ARP with another sender MAC",
                    ME,
                    arp(ME, OTHER, lease, 2),
                    Err(Spoof::Arp),
                ),
                ("ARP op 3", ME, arp(ME, ME, lease, 3), Err(Spoof::Arp)),
                (
                    "ARP not Ethernet/IPv4",
                    ME,
                    {
                        let mut f = arp(ME, ME, lease, 2);
                        f[18] = 8;
                        f
                    },
                    Err(Spoof::Arp),
                ),
                (
                    "truncated ARP",
                    ME,
                    arp(ME, ME, lease, 2)[..40].to_vec(),
                    Err(Spoof::Malformed),
                ),
                // Tags and other ethertypes.
                (
                    "802.1Q",
                    ME,
                    tagged(0x8100, &ip4(ME, lease, 6, 1, 2)),
                    Err(Spoof::Tagged),
                ),
                (
                    "802.1ad",
                    ME,
                    tagged(0x88a8, &ip4(ME, lease, 6, 1, 2)),
                    Err(Spoof::Tagged),
                ),
                (
                    "QinQ 0x9100",
                    ME,
                    tagged(0x9100, &arp(ME, ME, lease, 2)),
                    Err(Spoof::Tagged),
                ),
                (
                    "tagged gateway claim",
                    ME,
                    tagged(0x8100, &tagged(0x8100, &arp(ME, ME, GW, 2))),
                    Err(Spoof::Tagged),
                ),
                (
                    "tagged, another MAC",
                    ME,
                    tagged(0x8100, &ip4(OTHER, lease, 6, 1, 2)),
                    Err(Spoof::Mac),
                ),
                ("other ethertype", ME, eth(ME, 0x88cc, &[0; 30]), ok),
            ],
        );
    }

    #[test]
    fn ipv6_and_ndp() {
        let ok = Ok(());
        let ll = a6("fe80::1");
        let ll_other = a6("fe80::2");
        let udp6 = udp(1000, 2000, &[]);
        let mld = icmp6(143, &[0; 4]);
        run(
            &net(),
            vec![
                ("own link-local", ME, ip6(ME, ll, 17, &udp6), ok),
                ("in the prefix", ME, ip6(ME, a6("fd00::99"), 17, &udp6), ok),
                (
                    "another's",
                    ME,
                    ip6(ME, ll_other, 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "the router's link-local",
                    ME,
                    ip6(ME, GATEWAY_LINK_LOCAL, 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "the gateway's",
                    ME,
                    ip6(ME, a6("fd00::2"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "the DNS address",
                    ME,
                    ip6(ME, a6("fd00::3"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "subnet-router anycast",
                    ME,
                    ip6(ME, a6("fd00::"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "outside the prefix",
                    ME,
                    ip6(ME, a6("2001:db8::1"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "another ULA",
                    ME,
                    ip6(ME, a6("fd01::1"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "multicast",
                    ME,
                    ip6(ME, a6("ff02::1"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "loopback",
                    ME,
                    ip6(ME, Ipv6Addr::LOCALHOST, 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "IPv4-mapped",
                    ME,
                    ip6(ME, a6("::ffff:10.0.2.16"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "UDP from ::",
                    ME,
                    ip6(ME, Ipv6Addr::UNSPECIFIED, 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "DAD",
                    ME,
                    ip6(ME, Ipv6Addr::UNSPECIFIED, 58, &ns(ll, &[])),
                    ok,
                ),
                (
                    "RS from ::",
                    ME,
                    ip6(ME, Ipv6Addr::UNSPECIFIED, 58, &rs(&[])),
                    ok,
                ),
                (
                    "MLD from :: behind Hop-by-Hop",
                    ME,
                    ip6(ME, Ipv6Addr::UNSPECIFIED, 0, &ext(58, 1, &mld)),
                    ok,
                ),
                (
                    "echo from ::",
                    ME,
                    ip6(ME, Ipv6Addr::UNSPECIFIED, 58, &icmp6(128, &[0; 4])),
                    Err(Spoof::Ipv6),
                ),
                (
                    "payload length past the frame",
                    ME,
                    {
                        let mut f = ip6(ME, ll, 17, &udp6);
                        f[18..20].copy_from_slice(&100u16.to_be_bytes());
                        f
                    },
                    Err(Spoof::Malformed),
                ),
                (
                    "truncated IPv6",
                    ME,
                    eth(ME, 0x86dd, &[0x60; 30]),
                    Err(Spoof::Malformed),
                ),
                // Router and server messages, directly and behind extension headers.
                (
                    "RA",
                    ME,
                    ip6(ME, ll, 58, &icmp6(134, &[0; 12])),
                    Err(Spoof::RogueServer),
                ),
                (
                    "redirect",
                    ME,
                    ip6(ME, ll, 58, &icmp6(137, &[0; 36])),
                    Err(Spoof::RogueServer),
                ),
                (
                    "DHCPv6 server",
                    ME,
                    ip6(ME, ll, 17, &udp(547, 546, &[])),
                    Err(Spoof::RogueServer),
                ),
                (
                    "UDP to port 546",
                    ME,
                    ip6(ME, ll, 17, &udp(5000, 546, &[])),
                    Err(Spoof::RogueServer),
                ),
                (
                    "DHCPv6 client",
                    ME,
                    ip6(ME, ll, 17, &udp(546, 547, &[1, 0, 0, 0])),
                    ok,
                ),
                (
                    "RA behind Hop-by-Hop",
                    ME,
                    ip6(ME, ll, 0, &ext(58, 1, &icmp6(134, &[0; 12]))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "RA behind Destination Options",
                    ME,
                    ip6(ME, ll, 60, &ext(58, 2, &icmp6(134, &[0; 12]))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "RA behind Routing and Destination Options",
                    ME,
                    ip6(ME, ll, 43, &ext(60, 1, &ext(58, 1, &icmp6(134, &[0; 12])))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "RA behind AH",
                    ME,
                    ip6(ME, ll, 51, &{
                        let mut h = vec![58, 4, 0, 0];
                        h.extend_from_slice(&[0; 20]);
                        h.extend_from_slice(&icmp6(134, &[0; 12]));
                        h
                    }),
                    Err(Spoof::RogueServer),
                ),
                (
                    "RA in a first fragment",
                    ME,
                    ip6(ME, ll, 44, &frag6(58, 0, true, &icmp6(134, &[0; 12]))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "DHCPv6 server behind Hop-by-Hop",
                    ME,
                    ip6(ME, ll, 0, &ext(17, 1, &udp(547, 546, &[]))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "DHCPv6 server in a first fragment",
                    ME,
                    ip6(ME, ll, 44, &frag6(17, 0, true, &udp(547, 546, &[0; 8]))),
                    Err(Spoof::RogueServer),
                ),
                (
                    "a later fragment has no upper-layer header",
                    ME,
                    ip6(ME, ll, 44, &frag6(58, 2, false, &icmp6(134, &[0; 12]))),
                    ok,
                ),
                (
                    "a later fragment still has a source",
                    ME,
                    ip6(ME, ll_other, 44, &frag6(17, 2, false, &[0; 16])),
                    Err(Spoof::Ipv6),
                ),
                (
                    "a first fragment without its UDP header",
                    ME,
                    ip6(ME, ll, 44, &frag6(17, 0, true, &[2, 35])),
                    Err(Spoof::Malformed),
                ),
                (
                    "a chain past the packet",
                    ME,
                    ip6(ME, ll, 0, &ext(60, 1, &[58, 3, 0, 0, 0, 0, 0, 0])),
                    Err(Spoof::Malformed),
                ),
                (
                    "a header cut short",
                    ME,
                    ip6(ME, ll, 60, &[58, 0, 0, 0]),
                    Err(Spoof::Malformed),
                ),
                (
                    "nine extension headers",
                    ME,
                    ip6(
                        ME,
                        ll,
                        60,
                        &(0..9).fold(udp6.clone(), |rest, i| {
                            ext(if i == 0 { 17 } else { 60 }, 1, &rest)
                        }),
                    ),
                    Err(Spoof::Malformed),
                ),
                (
                    "eight extension headers",
                    ME,
                    ip6(
                        ME,
                        ll,
                        60,
                        &(0..8).fold(udp6.clone(), |rest, i| {
                            ext(if i == 0 { 17 } else { 60 }, 1, &rest)
                        }),
                    ),
                    ok,
                ),
                // Neighbour discovery.
                (
                    "NA for own source",
                    ME,
                    ip6(ME, ll, 58, &na(ll, &lla(2, ME))),
                    ok,
                ),
                (
                    "NA for another's",
                    ME,
                    ip6(ME, ll, 58, &na(ll_other, &[])),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA for an unused address",
                    ME,
                    ip6(ME, ll, 58, &na(a6("fd00::77"), &[])),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA for the router",
                    ME,
                    ip6(ME, ll, 58, &na(GATEWAY_LINK_LOCAL, &[])),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA for the router from itself",
                    ME,
                    ip6(ME, GATEWAY_LINK_LOCAL, 58, &na(GATEWAY_LINK_LOCAL, &[])),
                    Err(Spoof::Ipv6),
                ),
                (
                    "NA for the gateway",
                    ME,
                    ip6(ME, ll, 58, &na(a6("fd00::2"), &[])),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA for another's behind Hop-by-Hop",
                    ME,
                    ip6(ME, ll, 0, &ext(58, 1, &na(ll_other, &[]))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA for another's behind Destination Options",
                    ME,
                    ip6(ME, ll, 60, &ext(58, 1, &na(ll_other, &[]))),
                    Err(Spoof::Ndp),
                ),
                (
                    "fragmented NA",
                    ME,
                    ip6(ME, ll, 44, &frag6(58, 0, true, &na(ll, &[]))),
                    Err(Spoof::Ndp),
                ),
                (
                    "fragmented NS",
                    ME,
                    ip6(ME, ll, 44, &frag6(58, 0, false, &ns(ll_other, &[]))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA with another's MAC",
                    ME,
                    ip6(ME, ll, 58, &na(ll, &lla(2, OTHER))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA with the gateway's MAC",
                    ME,
                    ip6(ME, ll, 58, &na(ll, &lla(2, crate::config::GATEWAY_MAC))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NA with a source LLA of another",
                    ME,
                    ip6(ME, ll, 58, &na(ll, &lla(1, OTHER))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NS with own MAC",
                    ME,
                    ip6(ME, ll, 58, &ns(ll_other, &lla(1, ME))),
                    ok,
                ),
                (
                    "NS with another's MAC",
                    ME,
                    ip6(ME, ll, 58, &ns(ll_other, &lla(1, OTHER))),
                    Err(Spoof::Ndp),
                ),
                (
                    "NS with another's MAC after a nonce",
                    ME,
                    ip6(
                        ME,
                        ll,
                        58,
                        &ns(
                            ll_other,
                            &[&[14, 1, 1, 2, 3, 4, 5, 6][..], &lla(1, OTHER)].concat(),
                        ),
                    ),
                    Err(Spoof::Ndp),
                ),
                ("RS with own MAC", ME, ip6(ME, ll, 58, &rs(&lla(1, ME))), ok),
                (
                    "RS with another's MAC",
                    ME,
                    ip6(ME, ll, 58, &rs(&lla(1, OTHER))),
                    Err(Spoof::Ndp),
                ),
                (
                    "LLA option 16 bytes long",
                    ME,
                    ip6(ME, ll, 58, &rs(&[&[1, 2][..], &ME, &[0; 8]].concat())),
                    Err(Spoof::Ndp),
                ),
                (
                    "option of length 0",
                    ME,
                    ip6(ME, ll, 58, &rs(&[14, 0, 0, 0, 0, 0, 0, 0])),
                    Err(Spoof::Ndp),
                ),
                (
                    "option past the end",
                    ME,
                    ip6(ME, ll, 58, &rs(&[14, 2, 0, 0, 0, 0, 0, 0])),
                    Err(Spoof::Ndp),
                ),
                (
                    "half an option",
                    ME,
                    ip6(ME, ll, 58, &rs(&[14])),
                    Err(Spoof::Ndp),
                ),
                (
                    "truncated NA",
                    ME,
                    ip6(ME, ll, 58, &icmp6(136, &[0; 8])),
                    Err(Spoof::Ndp),
                ),
                (
                    "too many options",
                    ME,
                    ip6(
                        ME,
                        ll,
                        58,
                        &rs(&[14, 1, 0, 0, 0, 0, 0, 0].repeat(MAX_NDP_OPTIONS + 1)),
                    ),
                    Err(Spoof::Ndp),
                ),
                (
                    "many options",
                    ME,
                    ip6(
                        ME,
                        ll,
                        58,
                        &rs(&[14, 1, 0, 0, 0, 0, 0, 0].repeat(MAX_NDP_OPTIONS)),
                    ),
                    ok,
                ),
                (
                    "tagged IPv6",
                    ME,
                    tagged(0x8100, &ip6(ME, ll, 17, &udp6)),
                    Err(Spoof::Tagged),
                ),
            ],
        );
    }

    #[test]
    fn without_a_prefix_only_link_local_is_a_guests() {
        let mut n = net();
        n.prefix6 = false;
        let udp6 = udp(1000, 2000, &[]);
        run(
            &n,
            vec![
                ("link-local", ME, ip6(ME, a6("fe80::1"), 17, &udp6), Ok(())),
                (
                    "ULA",
                    ME,
                    ip6(ME, a6("fd00::99"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "global",
                    ME,
                    ip6(ME, a6("2001:db8::1"), 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
                (
                    "the router's",
                    ME,
                    ip6(ME, GATEWAY_LINK_LOCAL, 17, &udp6),
                    Err(Spoof::Ipv6),
                ),
            ],
        );
    }

    #[test]
    fn the_first_address_is_pinned_where_nothing_is_leased() {
        let mut n = net();
        let mut port = id(LONE);
        assert_eq!(port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n), Ok(()));
        assert_eq!(port.pinned4, Some(Ipv4Addr::new(10, 0, 2, 20)));
        assert_eq!(
            port.check(&ip4(LONE, [10, 0, 2, 21], 6, 1, 2), &n),
            Err(Spoof::Ipv4)
        );
        assert_eq!(
            port.check(&arp(LONE, LONE, [10, 0, 2, 21], 2), &n),
            Err(Spoof::Arp)
        );
        assert_eq!(port.check(&arp(LONE, LONE, [10, 0, 2, 20], 2), &n), Ok(()));
        assert!(port.owns4(Ipv4Addr::new(10, 0, 2, 20), &n));
        // Another guest's since (configured there): no longer this one's.
        n.used4.insert(Ipv4Addr::new(10, 0, 2, 20), OTHER);
        assert_eq!(
            port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n),
            Err(Spoof::Ipv4)
        );
        n.used4.insert(Ipv4Addr::new(10, 0, 2, 20), LONE);
        // Once it holds a lease, the lease is all it owns.
        n.leases.insert(Ipv4Addr::new(10, 0, 2, 21), LONE);
        n.bound.push(LONE);
        assert_eq!(
            port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n),
            Err(Spoof::Ipv4)
        );
        assert_eq!(
            port.check(&arp(LONE, LONE, [10, 0, 2, 20], 1), &n),
            Err(Spoof::Arp)
        );
        assert!(!port.owns4(Ipv4Addr::new(10, 0, 2, 20), &n));
        assert_eq!(port.check(&ip4(LONE, [10, 0, 2, 21], 6, 1, 2), &n), Ok(()));
        // An offer alone is not a lease: the pin still counts.
        n.bound.retain(|m| *m != LONE);
        assert_eq!(port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n), Ok(()));
        assert_eq!(port.check(&ip4(LONE, [10, 0, 2, 21], 6, 1, 2), &n), Ok(()));
        // A lease always wins over a pin.
        n.leases.insert(Ipv4Addr::new(10, 0, 2, 20), OTHER);
        assert_eq!(
            port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n),
            Err(Spoof::Ipv4)
        );
    }

    #[test]
    fn a_configured_address_is_the_only_one() {
        let n = net();
        let mut port = Identity {
            mac: Some(LONE),
            addr4: Some(Ipv4Addr::new(10, 0, 2, 40)),
            ..Identity::default()
        };
        assert_eq!(
            port.check(&ip4(LONE, [10, 0, 2, 20], 6, 1, 2), &n),
            Err(Spoof::Ipv4)
        );
        assert_eq!(port.pinned4, None);
        assert_eq!(port.check(&ip4(LONE, [10, 0, 2, 40], 6, 1, 2), &n), Ok(()));
        assert!(port.owns4(Ipv4Addr::new(10, 0, 2, 40), &n));
        // A lease and a configured address: both, nothing else.
        let mut port = Identity {
            mac: Some(ME),
            addr4: Some(Ipv4Addr::new(10, 0, 2, 40)),
            ..Identity::default()
        };
        for (a, want) in [
            ([10, 0, 2, 15], Ok(())),
            ([10, 0, 2, 40], Ok(())),
            ([10, 0, 2, 41], Err(Spoof::Ipv4)),
        ] {
            assert_eq!(port.check(&ip4(ME, a, 6, 1, 2), &n), want, "{a:?}");
        }
    }

    #[test]
    fn a_refused_frame_pins_nothing() {
        let n = net();
        let mut port = id(LONE);
        let ll = a6("fe80::c");
        // The source would be new, but the NA names another's address.
        assert_eq!(
            port.check(&ip6(LONE, ll, 58, &na(a6("fe80::2"), &[])), &n),
            Err(Spoof::Ndp)
        );
        assert_eq!(
            port.check(&ip6(LONE, ll, 58, &rs(&lla(1, OTHER))), &n),
            Err(Spoof::Ndp)
        );
        assert!(port.addr6.is_empty());
        assert_eq!(
            port.check(&dhcp(LONE, [10, 0, 2, 20], 1, OTHER), &n),
            Err(Spoof::Mac)
        );
        assert_eq!(port.pinned4, None);
    }

    #[test]
    fn a_neighbour_advertisement_names_an_address_the_port_used() {
        let n = net();
        let mut port = id(ME);
        let ll = a6("fe80::1");
        let global = a6("fd00::15");
        assert_eq!(port.check(&ip6(ME, ll, 58, &na(ll, &[])), &n), Ok(()));
        assert_eq!(port.addr6, [ll]);
        // Not yet used as a source: no NA for it.
        assert_eq!(
            port.check(&ip6(ME, ll, 58, &na(global, &[])), &n),
            Err(Spoof::Ndp)
        );
        assert_eq!(
            port.check(&ip6(ME, global, 17, &udp(1, 2, &[])), &n),
            Ok(())
        );
        assert_eq!(port.check(&ip6(ME, ll, 58, &na(global, &[])), &n), Ok(()));
    }

    #[test]
    fn ipv6_addresses_are_bounded() {
        let n = net();
        let mut port = id(ME);
        for i in 0..MAX_V6_PER_PORT as u16 {
            let a = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + i);
            assert_eq!(port.check(&ip6(ME, a, 17, &[0, 1, 0, 2]), &n), Ok(()));
        }
        // The first stays in use; a ninth address takes the place of the second, the
        // one used least recently (temporary addresses come and go).
        let first = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
        let second = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x101);
        assert_eq!(port.check(&ip6(ME, first, 17, &[0, 1, 0, 2]), &n), Ok(()));
        let one_more = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x999);
        assert_eq!(
            port.check(&ip6(ME, one_more, 17, &[0, 1, 0, 2]), &n),
            Ok(())
        );
        assert_eq!(port.addr6.len(), MAX_V6_PER_PORT);
        assert!(port.addr6.contains(&first) && port.addr6.contains(&one_more));
        assert!(!port.addr6.contains(&second));
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (i, r) in Spoof::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<&str> = Spoof::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Spoof::ALL.len());
    }

    #[test]
    fn overrides_layer_over_the_network() {
        let base = Flags {
            isolate: true,
            spoof_check: true,
            ..Flags::default()
        };
        let o = Overrides {
            isolate: Some(false),
            allow_spoofing: Some(true),
            ..Overrides::default()
        };
        assert_eq!(
            o.apply(base),
            Flags {
                isolate: false,
                spoof_check: false,
                ..Flags::default()
            }
        );
        let mut a = Overrides {
            block_host: Some(true),
            ..Overrides::default()
        };
        a.merge(&o);
        assert_eq!(a.block_host, Some(true));
        assert_eq!(a.isolate, Some(false));
    }
}
