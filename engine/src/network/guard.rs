//! Per-guest isolation flags and anti-spoofing: who a port is, and whether a frame
//! from it says the truth about that.
//!
//! # Identity of a port
//! * Its **MAC** is fixed by its first frame, or by the MAC its owner configured (the
//!   TAP's, passed with `attach`).
//! * Its **IPv4 address** is its DHCP lease (asked of the lease table in O(1) by
//!   address), else its configured address, else the first address it used (learned
//!   and pinned: the internal-network case, whose guests configure themselves). An
//!   address leased to or used by another guest, the gateway's and the DNS address are
//!   never its own.
//! * Its **IPv6 addresses**: link-local and global addresses it used first (up to
//!   [`MAX_V6_PER_PORT`]), unless another guest used them before.
//!
//! # What is checked per frame (O(1) each)
//! The source MAC; the IPv4 source (0.0.0.0 only for a DHCP client's message); the ARP
//! sender (MAC and address: no gratuitous ARP or reply for someone else's address or
//! the gateway's); the IPv6 source (unspecified is fine: DAD); neighbour
//! advertisements only for the port's own addresses; no router advertisement and no
//! DHCP or DHCPv6 server message from a guest. Failures are dropped and counted per
//! port and per [`Spoof`] reason.

use std::net::{Ipv4Addr, Ipv6Addr};

/// IPv6 addresses a port may own.
pub const MAX_V6_PER_PORT: usize = 8;

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
    /// A source MAC other than the port's.
    Mac,
    /// An IPv4 source the port does not own.
    Ipv4,
    /// An ARP message claiming an address the port does not own (or another MAC).
    Arp,
    /// An IPv6 source the port does not own.
    Ipv6,
    /// A neighbour advertisement for an address the port does not own.
    Ndp,
    /// A DHCP or DHCPv6 server message, or a router advertisement, from a guest.
    RogueServer,
}

impl Spoof {
    /// Every reason, in counter order.
    pub const ALL: [Spoof; 6] = [
        Spoof::Mac,
        Spoof::Ipv4,
        Spoof::Arp,
        Spoof::Ipv6,
        Spoof::Ndp,
        Spoof::RogueServer,
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
        }
    }
}

/// What a port is, as far as the checks know.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// Its MAC (pinned by the first frame or configured).
    pub mac: Option<[u8; 6]>,
    /// Its configured or pinned IPv4 address.
    pub addr4: Option<Ipv4Addr>,
    /// Its IPv6 addresses.
    pub addr6: Vec<Ipv6Addr>,
}

/// What the checks ask of the rest of the network, all O(1).
pub trait Lookup {
    /// The MAC holding (leased, offered or reserved) `a` by DHCP.
    fn leased_to(&self, a: Ipv4Addr) -> Option<[u8; 6]>;
    /// The MAC another guest used `a` from.
    fn used_by4(&self, a: Ipv4Addr) -> Option<[u8; 6]>;
    /// The MAC another guest used `a` from.
    fn used_by6(&self, a: Ipv6Addr) -> Option<[u8; 6]>;
    /// Whether `a` is in the network's IPv4 subnet.
    fn in_subnet(&self, a: Ipv4Addr) -> bool;
    /// Whether `a` is the gateway's or the DNS address.
    fn is_ours(&self, a: Ipv4Addr) -> bool;
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

impl Identity {
    /// Whether `a` is this port's IPv4 address; pins it when the port has none and
    /// nobody else holds it.
    fn own4(&mut self, a: Ipv4Addr, look: &dyn Lookup) -> bool {
        let Some(mac) = self.mac else { return false };
        if !look.in_subnet(a) || look.is_ours(a) || a.is_broadcast() {
            return false;
        }
        match look.leased_to(a) {
            Some(m) => return m == mac,
            None if self.addr4 == Some(a) => return true,
            None => {}
        }
        if look.used_by4(a).is_some_and(|m| m != mac) {
            return false;
        }
        if self.addr4.is_none() {
            self.addr4 = Some(a);
            return true;
        }
        false
    }

    /// Whether `a` is one of this port's IPv6 addresses; pins it when there is room
    /// and nobody else used it.
    fn own6(&mut self, a: Ipv6Addr, look: &dyn Lookup) -> bool {
        let Some(mac) = self.mac else { return false };
        if a.is_multicast() || a.is_loopback() {
            return false;
        }
        if self.addr6.contains(&a) {
            return true;
        }
        if look.used_by6(a).is_some_and(|m| m != mac) || self.addr6.len() >= MAX_V6_PER_PORT {
            return false;
        }
        self.addr6.push(a);
        true
    }

    /// Check one frame (at least an Ethernet header) from this port.
    pub fn check(&mut self, frame: &[u8], look: &dyn Lookup) -> Result<(), Spoof> {
        if frame.len() < 14 {
            return Ok(());
        }
        if self.mac.is_some_and(|m| frame[6..12] != m) {
            return Err(Spoof::Mac);
        }
        match [frame[12], frame[13]] {
            [0x08, 0x06] if frame.len() >= 42 => {
                if Some(&frame[22..28]) != self.mac.as_ref().map(|m| &m[..]) {
                    return Err(Spoof::Arp);
                }
                let sender = v4(&frame[28..32]);
                if sender.is_unspecified() || self.own4(sender, look) {
                    Ok(())
                } else {
                    Err(Spoof::Arp)
                }
            }
            [0x08, 0x00] if frame.len() >= 34 => {
                let ihl = usize::from(frame[14] & 0x0f) * 4;
                let proto = frame[23];
                let l4 = frame.get(14 + ihl..).unwrap_or(&[]);
                let ports = |i: usize| l4.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                if proto == 17 && ports(0) == Some(67) {
                    return Err(Spoof::RogueServer);
                }
                let src = v4(&frame[26..30]);
                if src.is_unspecified() {
                    // Only a DHCP client's message comes from 0.0.0.0.
                    return if proto == 17 && ports(0) == Some(68) && ports(2) == Some(67) {
                        Ok(())
                    } else {
                        Err(Spoof::Ipv4)
                    };
                }
                if self.own4(src, look) {
                    Ok(())
                } else {
                    Err(Spoof::Ipv4)
                }
            }
            [0x86, 0xdd] if frame.len() >= 54 => {
                let src = v6(&frame[22..38]);
                let next = frame[20];
                let l4 = &frame[54..];
                if next == 17 && l4.get(0..2) == Some(&[2, 35]) {
                    // UDP from port 547: a DHCPv6 server.
                    return Err(Spoof::RogueServer);
                }
                if next == 58 {
                    match l4.first() {
                        Some(134) => return Err(Spoof::RogueServer),
                        Some(136) if l4.len() >= 24 => {
                            let target = v6(&l4[8..24]);
                            if !self.own6(target, look) {
                                return Err(Spoof::Ndp);
                            }
                        }
                        _ => {}
                    }
                }
                if src.is_unspecified() || self.own6(src, look) {
                    Ok(())
                } else {
                    Err(Spoof::Ipv6)
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether `a` is (now) this port's IPv4 address, without pinning anything.
    pub fn owns4(&self, a: Ipv4Addr, look: &dyn Lookup) -> bool {
        let Some(mac) = self.mac else { return false };
        match look.leased_to(a) {
            Some(m) => m == mac,
            None => self.addr4 == Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ME: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
    const GW: [u8; 4] = [10, 0, 2, 2];

    #[derive(Default)]
    struct Net {
        leases: HashMap<Ipv4Addr, [u8; 6]>,
        used4: HashMap<Ipv4Addr, [u8; 6]>,
        used6: HashMap<Ipv6Addr, [u8; 6]>,
    }

    impl Lookup for Net {
        fn leased_to(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
            self.leases.get(&a).copied()
        }
        fn used_by4(&self, a: Ipv4Addr) -> Option<[u8; 6]> {
            self.used4.get(&a).copied()
        }
        fn used_by6(&self, a: Ipv6Addr) -> Option<[u8; 6]> {
            self.used6.get(&a).copied()
        }
        fn in_subnet(&self, a: Ipv4Addr) -> bool {
            a.octets()[..3] == [10, 0, 2]
        }
        fn is_ours(&self, a: Ipv4Addr) -> bool {
            a == Ipv4Addr::from(GW) || a == Ipv4Addr::new(10, 0, 2, 3)
        }
    }

    fn eth(src: [u8; 6], et: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&et);
        f.extend_from_slice(payload);
        f
    }

    fn arp(mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], op: u8) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, op];
        p.extend_from_slice(&sha);
        p.extend_from_slice(&spa);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[10, 0, 2, 99]);
        eth(mac, [8, 6], &p)
    }

    fn ip4(mac: [u8; 6], src: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 0, 2, 99]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        eth(mac, [8, 0], &p)
    }

    fn ip6(mac: [u8; 6], src: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, l4.len() as u8, next, 255];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(l4);
        eth(mac, [0x86, 0xdd], &p)
    }

    fn na(target: Ipv6Addr) -> Vec<u8> {
        let mut l4 = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        l4.extend_from_slice(&target.octets());
        l4
    }

    fn me() -> Identity {
        Identity {
            mac: Some(ME),
            ..Identity::default()
        }
    }

    #[test]
    fn the_table() {
        let lease_me = Ipv4Addr::new(10, 0, 2, 15);
        let lease_other = Ipv4Addr::new(10, 0, 2, 16);
        let used_other = Ipv4Addr::new(10, 0, 2, 30);
        let ll_me: Ipv6Addr = "fe80::1".parse().unwrap();
        let ll_other: Ipv6Addr = "fe80::2".parse().unwrap();
        let mut net = Net::default();
        net.leases.insert(lease_me, ME);
        net.leases.insert(lease_other, OTHER);
        net.used4.insert(used_other, OTHER);
        net.used6.insert(ll_other, OTHER);
        let cases: Vec<(&str, Vec<u8>, Result<(), Spoof>)> = vec![
            ("own lease", ip4(ME, [10, 0, 2, 15], 6, 1, 2), Ok(())),
            (
                "another MAC",
                ip4(OTHER, [10, 0, 2, 15], 6, 1, 2),
                Err(Spoof::Mac),
            ),
            (
                "another's lease",
                ip4(ME, [10, 0, 2, 16], 6, 1, 2),
                Err(Spoof::Ipv4),
            ),
            (
                "another's address",
                ip4(ME, [10, 0, 2, 30], 17, 1, 2),
                Err(Spoof::Ipv4),
            ),
            ("the gateway's", ip4(ME, GW, 1, 0, 0), Err(Spoof::Ipv4)),
            (
                "outside the subnet",
                ip4(ME, [192, 0, 2, 1], 6, 1, 2),
                Err(Spoof::Ipv4),
            ),
            ("DHCP client", ip4(ME, [0; 4], 17, 68, 67), Ok(())),
            (
                "0.0.0.0 not DHCP",
                ip4(ME, [0; 4], 6, 68, 67),
                Err(Spoof::Ipv4),
            ),
            (
                "DHCP server",
                ip4(ME, [10, 0, 2, 15], 17, 67, 68),
                Err(Spoof::RogueServer),
            ),
            ("ARP probe", arp(ME, ME, [0; 4], 1), Ok(())),
            ("ARP for own lease", arp(ME, ME, [10, 0, 2, 15], 2), Ok(())),
            (
                "ARP claiming another's",
                arp(ME, ME, [10, 0, 2, 16], 2),
                Err(Spoof::Arp),
            ),
            (
                "ARP claiming the gateway",
                arp(ME, ME, GW, 2),
                Err(Spoof::Arp),
            ),
            (
                "ARP with another sender MAC",
                arp(ME, OTHER, [10, 0, 2, 15], 2),
                Err(Spoof::Arp),
            ),
            (
                "IPv6 DAD",
                ip6(ME, Ipv6Addr::UNSPECIFIED, 58, &[135, 0, 0, 0]),
                Ok(()),
            ),
            (
                "IPv6 own link-local",
                ip6(ME, ll_me, 17, &[0, 1, 0, 2]),
                Ok(()),
            ),
            (
                "IPv6 another's",
                ip6(ME, ll_other, 17, &[0, 1, 0, 2]),
                Err(Spoof::Ipv6),
            ),
            ("NA for own", ip6(ME, ll_me, 58, &na(ll_me)), Ok(())),
            (
                "NA for another's",
                ip6(ME, ll_me, 58, &na(ll_other)),
                Err(Spoof::Ndp),
            ),
            (
                "RA",
                ip6(ME, ll_me, 58, &[134, 0, 0, 0]),
                Err(Spoof::RogueServer),
            ),
            (
                "DHCPv6 server",
                ip6(ME, ll_me, 17, &[2, 35, 2, 34]),
                Err(Spoof::RogueServer),
            ),
            ("other ethertype", eth(ME, [0x88, 0xcc], &[0; 30]), Ok(())),
        ];
        for (what, frame, want) in cases {
            let mut id = me();
            assert_eq!(id.check(&frame, &net), want, "{what}");
        }
    }

    #[test]
    fn the_first_address_is_pinned_where_nothing_is_leased() {
        let net = Net::default();
        let mut id = me();
        assert_eq!(id.check(&ip4(ME, [10, 0, 2, 20], 6, 1, 2), &net), Ok(()));
        assert_eq!(id.addr4, Some(Ipv4Addr::new(10, 0, 2, 20)));
        assert_eq!(
            id.check(&ip4(ME, [10, 0, 2, 21], 6, 1, 2), &net),
            Err(Spoof::Ipv4)
        );
        assert_eq!(
            id.check(&arp(ME, ME, [10, 0, 2, 21], 2), &net),
            Err(Spoof::Arp)
        );
        assert_eq!(id.check(&arp(ME, ME, [10, 0, 2, 20], 2), &net), Ok(()));
        // A configured address is the port's from the start.
        let mut id = Identity {
            mac: Some(ME),
            addr4: Some(Ipv4Addr::new(10, 0, 2, 40)),
            addr6: Vec::new(),
        };
        assert_eq!(
            id.check(&ip4(ME, [10, 0, 2, 20], 6, 1, 2), &net),
            Err(Spoof::Ipv4)
        );
        assert!(id.owns4(Ipv4Addr::new(10, 0, 2, 40), &net));
    }

    #[test]
    fn ipv6_addresses_are_bounded() {
        let net = Net::default();
        let mut id = me();
        for i in 0..MAX_V6_PER_PORT as u16 {
            let a = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + i);
            assert_eq!(id.check(&ip6(ME, a, 17, &[0, 1, 0, 2]), &net), Ok(()));
        }
        let one_more = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x999);
        assert_eq!(
            id.check(&ip6(ME, one_more, 17, &[0, 1, 0, 2]), &net),
            Err(Spoof::Ipv6)
        );
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
