//! Building frames toward the guest: Ethernet + IPv4 (fragmented to the MTU when needed)
//! + UDP or ICMP, written in place into the [`TxQueue`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::checksum;

use crate::txq::TxQueue;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length (usernet emits no options).
pub const IPV4_HLEN: usize = 20;
/// EtherType IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol numbers.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 fragment extension header.
pub const PROTO_FRAGMENT6: u8 = 44;
/// IPv6 header length.
pub const IPV6_HLEN: usize = 40;

/// ICMP errors usernet sends, in both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// Network unreachable (v4 3/0, v6 1/0).
    NetUnreachable,
    /// Host unreachable (v4 3/1, v6 1/3).
    HostUnreachable,
    /// Port unreachable (v4 3/3, v6 1/4).
    PortUnreachable,
    /// Administratively prohibited (v4 3/13, v6 1/1).
    AdminProhibited,
}

impl IcmpError {
    fn v4(self) -> (u8, u8) {
        match self {
            IcmpError::NetUnreachable => (3, 0),
            IcmpError::HostUnreachable => (3, 1),
            IcmpError::PortUnreachable => (3, 3),
            IcmpError::AdminProhibited => (3, 13),
        }
    }

    fn v6(self) -> (u8, u8) {
        match self {
            IcmpError::NetUnreachable => (1, 0),
            IcmpError::HostUnreachable => (1, 3),
            IcmpError::PortUnreachable => (1, 4),
            IcmpError::AdminProhibited => (1, 1),
        }
    }
}

/// The Ethernet address an IPv6 multicast group maps to (33:33 + low 32 bits).
pub fn ipv6_multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Write a 40-byte IPv6 header.
pub fn write_ipv6(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload_len: usize,
) {
    buf[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    buf[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    buf[6] = next_header;
    buf[7] = hop_limit;
    buf[8..24].copy_from_slice(&src.octets());
    buf[24..40].copy_from_slice(&dst.octets());
}

/// The IPv6 pseudo-header checksum (not complemented).
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> u16 {
    let mut b = [0u8; 40];
    b[0..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..36].copy_from_slice(&(len as u32).to_be_bytes());
    b[39] = next_header;
    checksum::data(&b)
}

/// The pseudo-header checksum for either family.
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_v4(s, d, proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_v6(s, d, proto, len),
        _ => 0,
    }
}

/// Write an Ethernet header.
pub fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Fields of an IPv4 header usernet emits.
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Identification.
    pub ident: u16,
    /// Time to live.
    pub ttl: u8,
}

/// Write a 20-byte IPv4 header with checksum.
pub fn write_ipv4(buf: &mut [u8], h: &Ipv4Hdr, payload_len: usize, frag_off8: u16, more: bool) {
    let total = (IPV4_HLEN + payload_len) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&h.ident.to_be_bytes());
    let flags = (if more { 0x2000 } else { 0 }) | (frag_off8 & 0x1fff);
    buf[6..8].copy_from_slice(&flags.to_be_bytes());
    buf[8] = h.ttl;
    buf[9] = h.proto;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&h.src.octets());
    buf[16..20].copy_from_slice(&h.dst.octets());
    let c = !checksum::data(&buf[..IPV4_HLEN]);
    buf[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Emits IPv4 packets toward the guest, fragmenting to the MTU.
pub struct Emitter {
    /// Our MAC.
    pub our_mac: [u8; 6],
    /// The guest's MAC (broadcast until learned).
    pub guest_mac: [u8; 6],
    /// IP MTU of the link.
    pub mtu: usize,
    ident: u16,
}

impl Emitter {
    /// A new emitter.
    pub fn new(our_mac: [u8; 6], guest_mac: [u8; 6], mtu: usize) -> Emitter {
        Emitter {
            our_mac,
            guest_mac,
            mtu,
            ident: 1,
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// Emit one IPv4 packet whose payload is the concatenation of `parts` (an L4
    /// header already carrying its checksum, then data), to `dst_mac`. Fragments when
    /// larger than the MTU. Returns `false` if the queue could not take every fragment.
    pub fn ipv4(
        &mut self,
        txq: &mut TxQueue,
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        parts: &[&[u8]],
    ) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let h = Ipv4Hdr {
            src,
            dst,
            proto,
            ident: self.next_ident(),
            ttl: 64,
        };
        let our = self.our_mac;
        if IPV4_HLEN + total <= self.mtu {
            return txq
                .push(ETH_HLEN + IPV4_HLEN + total, |b| {
                    write_eth(b, dst_mac, our, ETHERTYPE_IPV4);
                    write_ipv4(&mut b[ETH_HLEN..], &h, total, 0, false);
                    copy_parts(&mut b[ETH_HLEN + IPV4_HLEN..], parts, 0);
                })
                .is_some();
        }
        if total > 65535 - IPV4_HLEN {
            return false;
        }
        let per = (self.mtu - IPV4_HLEN) & !7;
        if per == 0 {
            return false;
        }
        let nfrags = total.div_ceil(per);
        if txq.room() < nfrags {
            return false;
        }
        let mut off = 0;
        while off < total {
            let n = per.min(total - off);
            let more = off + n < total;
            let ok = txq.push(ETH_HLEN + IPV4_HLEN + n, |b| {
                write_eth(b, dst_mac, our, ETHERTYPE_IPV4);
                write_ipv4(&mut b[ETH_HLEN..], &h, n, (off / 8) as u16, more);
                copy_parts(&mut b[ETH_HLEN + IPV4_HLEN..], parts, off);
            });
            if ok.is_none() {
                return false;
            }
            off += n;
        }
        true
    }

    /// Emit one IPv6 packet whose payload is the concatenation of `parts`, fragmenting
    /// (with a Fragment header, as the source may) when larger than the MTU.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv6(
        &mut self,
        txq: &mut TxQueue,
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop_limit: u8,
        parts: &[&[u8]],
    ) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let our = self.our_mac;
        if IPV6_HLEN + total <= self.mtu {
            return txq
                .push(ETH_HLEN + IPV6_HLEN + total, |b| {
                    write_eth(b, dst_mac, our, ETHERTYPE_IPV6);
                    write_ipv6(&mut b[ETH_HLEN..], src, dst, next_header, hop_limit, total);
                    copy_parts(&mut b[ETH_HLEN + IPV6_HLEN..], parts, 0);
                })
                .is_some();
        }
        if total > 65535 || self.mtu < IPV6_HLEN + 8 + 8 {
            return false;
        }
        let per = (self.mtu - IPV6_HLEN - 8) & !7;
        let nfrags = total.div_ceil(per);
        if txq.room() < nfrags {
            return false;
        }
        let ident = u32::from(self.next_ident()) | 0x5553_0000;
        let mut off = 0;
        while off < total {
            let n = per.min(total - off);
            let more = off + n < total;
            let ok = txq.push(ETH_HLEN + IPV6_HLEN + 8 + n, |b| {
                write_eth(b, dst_mac, our, ETHERTYPE_IPV6);
                write_ipv6(
                    &mut b[ETH_HLEN..],
                    src,
                    dst,
                    PROTO_FRAGMENT6,
                    hop_limit,
                    8 + n,
                );
                let f = &mut b[ETH_HLEN + IPV6_HLEN..];
                f[0] = next_header;
                f[1] = 0;
                let om = (off as u16) | u16::from(more);
                f[2..4].copy_from_slice(&om.to_be_bytes());
                f[4..8].copy_from_slice(&ident.to_be_bytes());
                copy_parts(&mut f[8..8 + n], parts, off);
            });
            if ok.is_none() {
                return false;
            }
            off += n;
        }
        true
    }

    /// Emit an IP packet of either family (`parts` carry a finished L4 header).
    pub fn ip(
        &mut self,
        txq: &mut TxQueue,
        dst_mac: [u8; 6],
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        parts: &[&[u8]],
    ) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(txq, dst_mac, s, d, proto, parts),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(txq, dst_mac, s, d, proto, 64, parts),
            _ => false,
        }
    }

    /// Emit a UDP datagram to the guest.
    pub fn udp(
        &mut self,
        txq: &mut TxQueue,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        self.udp_to(txq, self.guest_mac, src, dst, payload)
    }

    /// Emit a UDP datagram to `dst_mac`.
    pub fn udp_to(
        &mut self,
        txq: &mut TxQueue,
        dst_mac: [u8; 6],
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let len = 8 + payload.len();
        if len > 65535 {
            return false;
        }
        let mut hdr = [0u8; 8];
        hdr[0..2].copy_from_slice(&src.port().to_be_bytes());
        hdr[2..4].copy_from_slice(&dst.port().to_be_bytes());
        hdr[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        let ph = pseudo(src.ip(), dst.ip(), PROTO_UDP, len);
        let mut c = !checksum::combine(&[ph, checksum::data(&hdr), checksum::data(payload)]);
        if c == 0 {
            c = 0xffff;
        }
        hdr[6..8].copy_from_slice(&c.to_be_bytes());
        self.ip(
            txq,
            dst_mac,
            src.ip(),
            dst.ip(),
            PROTO_UDP,
            &[&hdr, payload],
        )
    }

    /// Emit an ICMPv6 message (`header`: type, code, 0, 0, then 4 type-specific bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn icmp6(
        &mut self,
        txq: &mut TxQueue,
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        mut header: [u8; 8],
        body: &[u8],
    ) -> bool {
        header[2] = 0;
        header[3] = 0;
        let len = 8 + body.len();
        let c = !checksum::combine(&[
            pseudo_v6(src, dst, PROTO_ICMPV6, len),
            checksum::data(&header),
            checksum::data(body),
        ]);
        header[2..4].copy_from_slice(&c.to_be_bytes());
        self.ipv6(
            txq,
            dst_mac,
            src,
            dst,
            PROTO_ICMPV6,
            hop_limit,
            &[&header, body],
        )
    }

    /// Emit an ICMP or ICMPv6 error quoting `original` (as much as the minimum MTU allows).
    pub fn icmp_error_any(
        &mut self,
        txq: &mut TxQueue,
        src: IpAddr,
        dst: IpAddr,
        kind: IcmpError,
        original: &[u8],
    ) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (t, c) = kind.v4();
                self.icmp_error(txq, s, d, t, c, original)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let (t, c) = kind.v6();
                let quote = &original[..original.len().min(1280 - IPV6_HLEN - 8)];
                let mac = self.guest_mac;
                self.icmp6(txq, mac, s, d, 64, [t, c, 0, 0, 0, 0, 0, 0], quote)
            }
            _ => false,
        }
    }

    /// Emit an ICMP message (`header` is the 8-byte ICMP header without checksum; `body` follows).
    pub fn icmp(
        &mut self,
        txq: &mut TxQueue,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        mut header: [u8; 8],
        body: &[u8],
    ) -> bool {
        header[2] = 0;
        header[3] = 0;
        let c = !checksum::combine(&[checksum::data(&header), checksum::data(body)]);
        header[2..4].copy_from_slice(&c.to_be_bytes());
        let mac = self.guest_mac;
        self.ipv4(txq, mac, src, dst, PROTO_ICMP, &[&header, body])
    }

    /// Emit an ICMP error (`icmp_type`/`code`) quoting `original` (the offending IP
    /// packet: its header and first 8 bytes of payload are quoted).
    pub fn icmp_error(
        &mut self,
        txq: &mut TxQueue,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        original: &[u8],
    ) -> bool {
        let ihl = original.first().map_or(20, |b| usize::from(b & 0x0f) * 4);
        let quote = &original[..original.len().min(ihl + 8)];
        self.icmp(txq, src, dst, [icmp_type, code, 0, 0, 0, 0, 0, 0], quote)
    }
}

fn copy_parts(out: &mut [u8], parts: &[&[u8]], mut skip: usize) {
    let mut w = 0;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let src = &p[skip..];
        skip = 0;
        let n = src.len().min(out.len() - w);
        out[w..w + n].copy_from_slice(&src[..n]);
        w += n;
        if w == out.len() {
            return;
        }
    }
}

/// The IPv4 pseudo-header checksum (not complemented).
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u16 {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[9] = proto;
    b[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    checksum::data(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Packet, UdpPacket};
    use std::net::SocketAddrV4;

    #[test]
    fn udp_frame_checks_out() {
        let mut q = TxQueue::new(64, 1514);
        let mut e = Emitter::new([2; 6], [4; 6], 1500);
        let src: SocketAddrV4 = "198.51.100.1:7".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.100:4000".parse().unwrap();
        assert!(e.udp(&mut q, src.into(), dst.into(), b"hello"));
        let f = q.front().unwrap();
        assert_eq!(&f[0..6], &[4; 6]);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&src.ip().to_owned().into(), &dst.ip().to_owned().into()));
        assert_eq!(udp.payload(), b"hello");
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let mut q = TxQueue::new(64, 1514);
        let mut e = Emitter::new([2; 6], [4; 6], 1500);
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let src: SocketAddrV4 = "198.51.100.1:7".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.100:4000".parse().unwrap();
        assert!(e.udp(&mut q, src.into(), dst.into(), &payload));
        assert_eq!(q.len(), 3);
        let mut whole = vec![0u8; 4008];
        let mut seen = 0;
        while let Some(f) = q.front() {
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(f.len() - 14 <= 1500);
            let off = usize::from(ip.frag_offset());
            whole[off..off + ip.payload().len()].copy_from_slice(ip.payload());
            seen += ip.payload().len();
            if !ip.more_frags() {
                assert_eq!(off + ip.payload().len(), 4008);
            }
            q.pop_front();
        }
        assert_eq!(seen, 4008);
        assert_eq!(&whole[8..], &payload[..]);
    }
}
