//! Filter rules between guests: the flows one guest starts toward another through the
//! switch, asked of the network's [`FlowPolicy`](crate::policy::FlowPolicy) once per
//! new flow, as the router asks it for flows toward the host and the outside.
//!
//! * **TCP**: a SYN without ACK is a new flow; every other segment passes without a
//!   question (a flow refused at its SYN never gets further). A refused SYN is
//!   answered with a RST from the address it was sent to.
//! * **UDP**: a datagram whose (source, destination) pair the [`FlowCache`] does not
//!   hold, in either direction (a reply to an allowed flow is part of it), is a new
//!   flow; the verdict is cached, so later datagrams cost one hash lookup. A refused
//!   unicast datagram is answered with ICMP administratively prohibited from the
//!   address it was sent to (nothing for broadcast or multicast).
//! * **ICMP echo requests** are asked like UDP datagrams, keyed by their identifier;
//!   a refused one is dropped without an answer (as the router does).
//! * Everything else (ARP, NDP, ICMP errors and replies, non-first fragments, other
//!   protocols) is not a flow and passes.
//!
//! The cache is bounded ([`MAX_GUEST_FLOWS`], oldest evicted first) and keyed by the
//! policy's epoch: a rule change, or a guest's changed flags, makes every cached
//! verdict stale, so changed rules apply to the next datagram of a UDP flow and to the
//! next TCP connection. Nothing here is asked when the sending guest has no rules of
//! its own, the network has none and the default is allow.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::checksum;

use crate::frames::{
    ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, pseudo, write_eth, write_ipv4, write_ipv6,
};

/// Most guest-to-guest UDP and ICMP flows whose verdict is remembered.
pub const MAX_GUEST_FLOWS: usize = 4096;
/// Most IPv6 extension headers walked to find the upper-layer header.
const MAX_EXT_HEADERS: usize = 8;
/// Longest reply frame built here (an ICMPv6 error quoting the IPv6 minimum MTU).
pub const REPLY_MAX: usize = ETH_HLEN + 1280;

/// One guest-to-guest flow, as its first packet names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol (TCP, UDP, ICMP or ICMPv6).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (the echo identifier for ICMP).
    pub sport: u16,
    /// Destination port (0 for ICMP).
    pub dport: u16,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reverse(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What a guest's packet is, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP SYN without ACK: a new connection.
    TcpSyn {
        /// Its sequence number.
        seq: u32,
        /// Its payload length (SYN data counts too).
        len: u32,
    },
    /// Another TCP segment.
    TcpOther,
    /// A UDP datagram.
    Udp,
    /// An ICMP or ICMPv6 echo request.
    EchoRequest,
    /// Not a flow the rules cover.
    Other,
}

/// A parsed guest IP packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// Its flow.
    pub key: FlowKey,
    /// What it is.
    pub kind: Kind,
    /// Offset of the IP header in the frame.
    pub l3: usize,
    /// Length of the IP packet (header and payload) within the frame.
    pub l3_len: usize,
}

/// Parse the flow a guest frame belongs to; `None` for anything that is not IPv4 or
/// IPv6 with a whole header chain in the frame.
pub fn parse(frame: &[u8]) -> Option<Packet> {
    let et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(ETH_HLEN..)?;
    let (src, dst, proto, l4_off, l3_len, first) = match et {
        ETHERTYPE_IPV4 => {
            if ip.len() < IPV4_HLEN || ip[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ihl < IPV4_HLEN || total < ihl || total > ip.len() {
                return None;
            }
            let frag_off = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip[9], ihl, total, frag_off == 0)
        }
        ETHERTYPE_IPV6 => {
            if ip.len() < IPV6_HLEN || ip[0] >> 4 != 6 {
                return None;
            }
            let total = IPV6_HLEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if total > ip.len() {
                return None;
            }
            let mut s = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&ip[24..40]);
            let (mut next, mut off, mut first) = (ip[6], IPV6_HLEN, true);
            for _ in 0..MAX_EXT_HEADERS {
                match next {
                    // Hop-by-Hop, Routing, Destination Options.
                    0 | 43 | 60 => {
                        let h = ip.get(off..off + 2)?;
                        next = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                    // Fragment.
                    44 => {
                        let h = ip.get(off..off + 8)?;
                        next = h[0];
                        first = u16::from_be_bytes([h[2], h[3]]) >> 3 == 0;
                        off += 8;
                    }
                    _ => break,
                }
            }
            if off > total {
                return None;
            }
            let (src, dst) = (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)));
            (src, dst, next, off, total, first)
        }
        _ => return None,
    };
    let l4 = &ip[l4_off.min(l3_len)..l3_len];
    let mut key = FlowKey {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
    };
    let port = |i: usize| l4.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let kind = if !first {
        Kind::Other
    } else {
        match proto {
            PROTO_TCP if l4.len() >= 20 => {
                key.sport = port(0)?;
                key.dport = port(2)?;
                let flags = l4[13];
                let hlen = usize::from(l4[12] >> 4) * 4;
                if flags & 0x02 != 0 && flags & 0x10 == 0 && flags & 0x04 == 0 {
                    let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
                    let len = l4.len().saturating_sub(hlen) as u32;
                    Kind::TcpSyn { seq, len }
                } else {
                    Kind::TcpOther
                }
            }
            PROTO_UDP if l4.len() >= 8 => {
                key.sport = port(0)?;
                key.dport = port(2)?;
                Kind::Udp
            }
            PROTO_ICMP | PROTO_ICMPV6 if l4.len() >= 8 => {
                let echo = if proto == PROTO_ICMP { 8 } else { 128 };
                if l4[0] == echo && l4[1] == 0 {
                    key.sport = port(4)?;
                    Kind::EchoRequest
                } else {
                    Kind::Other
                }
            }
            _ => Kind::Other,
        }
    };
    Some(Packet {
        key,
        kind,
        l3: ETH_HLEN,
        l3_len,
    })
}

/// Remembered verdicts of guest-to-guest flows. See the module docs.
#[derive(Debug)]
pub struct FlowCache {
    map: HashMap<FlowKey, (bool, u64)>,
    order: VecDeque<FlowKey>,
    cap: usize,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache::new(MAX_GUEST_FLOWS)
    }
}

impl FlowCache {
    /// A cache of at most `cap` flows.
    pub fn new(cap: usize) -> FlowCache {
        FlowCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The verdict on `key` (allowed or not) as of policy `epoch`.
    pub fn get(&self, key: &FlowKey, epoch: u64) -> Option<bool> {
        self.map
            .get(key)
            .and_then(|&(ok, e)| (e == epoch).then_some(ok))
    }

    /// Remember a verdict; the oldest flow makes room when the cache is full.
    pub fn insert(&mut self, key: FlowKey, allowed: bool, epoch: u64) {
        if let Some(v) = self.map.get_mut(&key) {
            *v = (allowed, epoch);
            return;
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key, (allowed, epoch));
        self.order.push_back(key);
    }

    /// Flows remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forget every flow from or to `addrs` (a port left).
    pub fn forget(&mut self, gone: impl Fn(&FlowKey) -> bool) {
        self.map.retain(|k, _| !gone(k));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }
}

/// Build the answer to a refused flow into `out`: a RST for a TCP SYN, ICMP (v6)
/// administratively prohibited for a unicast UDP datagram. The answer comes from the
/// address (and MAC) the packet was sent to. Returns its length, 0 for no answer.
pub fn refusal(frame: &[u8], p: &Packet, out: &mut [u8; REPLY_MAX]) -> usize {
    let (Some(dst_mac), Some(src_mac)) = (frame.get(0..6), frame.get(6..12)) else {
        return 0;
    };
    let mut from_mac = [0u8; 6];
    from_mac.copy_from_slice(dst_mac);
    let mut to_mac = [0u8; 6];
    to_mac.copy_from_slice(src_mac);
    if from_mac[0] & 1 == 1 {
        // Sent to a group: no single host answers.
        return 0;
    }
    let k = &p.key;
    match p.kind {
        Kind::TcpSyn { seq, len } => {
            let mut tcp = [0u8; 20];
            tcp[0..2].copy_from_slice(&k.dport.to_be_bytes());
            tcp[2..4].copy_from_slice(&k.sport.to_be_bytes());
            let ack = seq.wrapping_add(len).wrapping_add(1);
            tcp[8..12].copy_from_slice(&ack.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x14; // RST, ACK
            let c =
                !checksum::combine(&[pseudo(k.dst, k.src, PROTO_TCP, 20), checksum::data(&tcp)]);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            ip_reply(out, to_mac, from_mac, k.dst, k.src, PROTO_TCP, &tcp, &[])
        }
        Kind::Udp => {
            if is_group(k.dst) {
                return 0;
            }
            let orig = &frame[p.l3..p.l3 + p.l3_len];
            match (k.dst, k.src) {
                (IpAddr::V4(_), IpAddr::V4(_)) => {
                    let ihl = usize::from(orig[0] & 0x0f) * 4;
                    let quote = &orig[..orig.len().min(ihl + 8)];
                    let mut h = [3u8, 13, 0, 0, 0, 0, 0, 0];
                    let c = !checksum::combine(&[checksum::data(&h), checksum::data(quote)]);
                    h[2..4].copy_from_slice(&c.to_be_bytes());
                    ip_reply(out, to_mac, from_mac, k.dst, k.src, PROTO_ICMP, &h, quote)
                }
                (IpAddr::V6(_), IpAddr::V6(_)) => {
                    let quote = &orig[..orig.len().min(1280 - IPV6_HLEN - 8)];
                    let mut h = [1u8, 1, 0, 0, 0, 0, 0, 0];
                    let len = 8 + quote.len();
                    let c = !checksum::combine(&[
                        pseudo(k.dst, k.src, PROTO_ICMPV6, len),
                        checksum::data(&h),
                        checksum::data(quote),
                    ]);
                    h[2..4].copy_from_slice(&c.to_be_bytes());
                    ip_reply(out, to_mac, from_mac, k.dst, k.src, PROTO_ICMPV6, &h, quote)
                }
                _ => 0,
            }
        }
        _ => 0,
    }
}

fn is_group(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    }
}

#[allow(clippy::too_many_arguments)]
fn ip_reply(
    out: &mut [u8; REPLY_MAX],
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    head: &[u8],
    body: &[u8],
) -> usize {
    let l4 = head.len() + body.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let n = ETH_HLEN + IPV4_HLEN + l4;
            if n > out.len() {
                return 0;
            }
            write_eth(out, to_mac, from_mac, ETHERTYPE_IPV4);
            let h = Ipv4Hdr {
                src: s,
                dst: d,
                proto,
                ident: 0,
                ttl: 64,
            };
            write_ipv4(&mut out[ETH_HLEN..], &h, l4, 0, false);
            let o = ETH_HLEN + IPV4_HLEN;
            out[o..o + head.len()].copy_from_slice(head);
            out[o + head.len()..n].copy_from_slice(body);
            n
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let n = ETH_HLEN + IPV6_HLEN + l4;
            if n > out.len() {
                return 0;
            }
            write_eth(out, to_mac, from_mac, ETHERTYPE_IPV6);
            write_ipv6(&mut out[ETH_HLEN..], s, d, proto, 64, l4);
            let o = ETH_HLEN + IPV6_HLEN;
            out[o..o + head.len()].copy_from_slice(head);
            out[o + head.len()..n].copy_from_slice(body);
            n
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_keyed_by_epoch() {
        let mut c = FlowCache::new(3);
        let k = |p: u16| FlowKey {
            proto: PROTO_UDP,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 16)),
            sport: p,
            dport: 53,
        };
        for p in 0..10 {
            c.insert(k(p), p % 2 == 0, 1);
            assert!(c.len() <= 3);
        }
        // The newest three stay, the oldest went.
        assert_eq!(c.get(&k(9), 1), Some(false));
        assert_eq!(c.get(&k(8), 1), Some(true));
        assert_eq!(c.get(&k(0), 1), None);
        // Another epoch: stale.
        assert_eq!(c.get(&k(8), 2), None);
        c.insert(k(8), false, 2);
        assert_eq!(c.get(&k(8), 2), Some(false));
        assert_eq!(c.len(), 3);
        c.forget(|f| f.sport == 8);
        assert_eq!(c.get(&k(8), 2), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn odd_packets_parse_to_none_or_other() {
        // Truncated, wrong version, a header chain past the end.
        assert!(parse(&[0u8; 10]).is_none());
        let mut f = vec![0u8; 14 + 40];
        f[12] = 0x86;
        f[13] = 0xdd;
        f[14] = 0x60;
        f[20] = 0; // Hop-by-Hop, but nothing follows
        assert!(parse(&f).is_none());
        let mut g = vec![0u8; 14 + 20];
        g[12] = 0x08;
        g[14] = 0x45;
        g[17] = 20;
        g[23] = 99;
        assert_eq!(parse(&g).map(|p| p.kind), Some(Kind::Other));
    }
}
