//! IPv4 and IPv6 reassembly of guest fragments (UDP and ICMP datagrams up to 64 KiB).
//!
//! # Theory of operation
//! A guest at MTU 1500 that sends a 60 KB UDP datagram sends about 41 fragments. Each
//! datagram in reassembly is keyed by (source, destination, protocol, identification) and
//! owns one buffer that grows as fragments arrive, never past 20 + 65535 bytes. Received
//! byte ranges are kept sorted and merged; a fragment that overlaps one already received
//! (including an exact duplicate) discards the whole datagram, as Linux does with
//! overlaps. Bounds: at most `max` datagrams at once (the oldest is evicted when a new one
//! arrives), at most [`MAX_RANGES`] disjoint ranges each, [`REASSEMBLY_TIMEOUT`] of life.
//! Buffers are recycled. Expiry walks a deque in arrival order, never the whole table.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use smoltcp::wire::{Ipv4Packet, checksum};

use crate::config::REASSEMBLY_TIMEOUT;
use crate::stats::DropReason;

/// Disjoint received ranges a datagram may have before it is discarded.
pub const MAX_RANGES: usize = 128;
/// Largest IPv4 payload.
const MAX_PAYLOAD: usize = 65535 - 20;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ident: u32,
}

struct Entry {
    /// The header of the first fragment (20 bytes for IPv4, 40 for IPv6), then the payload.
    buf: Vec<u8>,
    hlen: usize,
    ranges: Vec<(usize, usize)>,
    total: Option<usize>,
    have_first: bool,
    created: Instant,
}

/// What became of a fragment.
#[derive(Debug)]
pub enum FragOutcome {
    /// Stored; the datagram is not complete yet.
    Pending,
    /// The datagram is complete: a whole IPv4 packet (20-byte header, no fragmentation).
    /// Give the buffer back with [`Reassembler::recycle`] when done.
    Complete(Vec<u8>),
    /// Dropped (the reason was not yet counted).
    Dropped(DropReason),
}

/// The reassembly table.
pub struct Reassembler {
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Instant, Key)>,
    pool: Vec<Vec<u8>>,
    max: usize,
    /// Drops found while evicting or expiring, for the caller to count.
    pub evicted: u64,
}

impl Reassembler {
    /// A table for at most `max` datagrams at once.
    pub fn new(max: usize) -> Reassembler {
        Reassembler {
            entries: HashMap::new(),
            order: VecDeque::new(),
            pool: Vec::new(),
            max: max.max(1),
            evicted: 0,
        }
    }

    /// Datagrams in reassembly.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in reassembly.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Return a completed datagram's buffer for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < self.max {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// When the oldest datagram expires.
    pub fn poll_at(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t + REASSEMBLY_TIMEOUT)
    }

    /// Drop datagrams older than the timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(t, k)) = self.order.front() {
            if t + REASSEMBLY_TIMEOUT > now {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&k).is_some_and(|e| e.created == t) {
                self.discard(k);
                n += 1;
            }
        }
        n
    }

    fn discard(&mut self, k: Key) {
        if let Some(e) = self.entries.remove(&k) {
            self.recycle(e.buf);
        }
    }

    /// Add one fragment (a checked IPv4 packet with MF set or a non-zero offset).
    pub fn push(&mut self, now: Instant, pkt: &Ipv4Packet<&[u8]>) -> FragOutcome {
        let key = Key {
            src: pkt.src_addr().into(),
            dst: pkt.dst_addr().into(),
            proto: pkt.next_header().into(),
            ident: u32::from(pkt.ident()),
        };
        let hdr = &pkt.as_ref()[..20];
        let off = usize::from(pkt.frag_offset());
        self.push_fragment(now, key, off, pkt.more_frags(), pkt.payload(), hdr)
    }

    /// Add one IPv6 fragment: `ip` is the whole packet, whose next header (right after the
    /// 40-byte fixed header) is the Fragment header.
    pub fn push6(&mut self, now: Instant, ip: &[u8]) -> FragOutcome {
        let Some(fh) = ip.get(40..48) else {
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        let key = Key {
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
            proto: fh[0],
            ident: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
        };
        let om = u16::from_be_bytes([fh[2], fh[3]]);
        let off = usize::from(om & !7);
        let more = om & 1 == 1;
        self.push_fragment(now, key, off, more, &ip[48..], &ip[..40])
    }

    fn push_fragment(
        &mut self,
        now: Instant,
        key: Key,
        off: usize,
        more: bool,
        data: &[u8],
        hdr: &[u8],
    ) -> FragOutcome {
        let hlen = hdr.len();
        let end = off + data.len();
        let max = if hlen == 40 { 65535 } else { MAX_PAYLOAD };
        if end > max || (more && (data.is_empty() || !data.len().is_multiple_of(8))) {
            self.discard(key);
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        }
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.max {
                self.evict_oldest();
            }
            let buf = self.pool.pop().unwrap_or_default();
            self.entries.insert(
                key,
                Entry {
                    buf,
                    hlen,
                    ranges: Vec::new(),
                    total: None,
                    have_first: false,
                    created: now,
                },
            );
            self.order.push_back((now, key));
            if self.order.len() > 4 * self.max {
                self.rebuild_order();
            }
        }
        let Some(e) = self.entries.get_mut(&key) else {
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        };
        if e.hlen != hlen {
            self.discard(key);
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        }
        // Overlap check and sorted insert with merging of adjacent ranges.
        let pos = e.ranges.partition_point(|r| r.1 <= off);
        if e.ranges.get(pos).is_some_and(|r| r.0 < end) || (!more && e.total.is_some()) {
            self.discard(key);
            return FragOutcome::Dropped(DropReason::FragmentOverlap);
        }
        if !more {
            if e.ranges.last().is_some_and(|r| r.1 > end) {
                self.discard(key);
                return FragOutcome::Dropped(DropReason::FragmentInvalid);
            }
            e.total = Some(end);
        } else if e.total.is_some_and(|t| end > t) {
            self.discard(key);
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        }
        e.ranges.insert(pos, (off, end));
        if pos + 1 < e.ranges.len() && e.ranges[pos].1 == e.ranges[pos + 1].0 {
            e.ranges[pos].1 = e.ranges[pos + 1].1;
            e.ranges.remove(pos + 1);
        }
        if pos > 0 && e.ranges[pos - 1].1 == e.ranges[pos].0 {
            e.ranges[pos - 1].1 = e.ranges[pos].1;
            e.ranges.remove(pos);
        }
        if e.ranges.len() > MAX_RANGES {
            self.discard(key);
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        }
        if e.buf.len() < hlen + end {
            e.buf.resize(hlen + end, 0);
        }
        e.buf[hlen + off..hlen + end].copy_from_slice(data);
        if off == 0 {
            e.buf[..hlen].copy_from_slice(hdr);
            e.have_first = true;
        }
        let complete = e.have_first
            && e.total
                .is_some_and(|t| e.ranges.len() == 1 && e.ranges[0] == (0, t));
        if !complete {
            return FragOutcome::Pending;
        }
        let Some(mut e) = self.entries.remove(&key) else {
            return FragOutcome::Dropped(DropReason::FragmentInvalid);
        };
        let payload = e.total.unwrap_or(0);
        e.buf.truncate(hlen + payload);
        let b = &mut e.buf;
        if hlen == 40 {
            // IPv6: the result carries the fragmented protocol directly after the header.
            b[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
            b[6] = key.proto;
        } else {
            let total = 20 + payload;
            b[0] = 0x45;
            b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            b[6..8].copy_from_slice(&[0, 0]);
            b[10..12].copy_from_slice(&[0, 0]);
            let c = !checksum::data(&b[..20]);
            b[10..12].copy_from_slice(&c.to_be_bytes());
        }
        FragOutcome::Complete(e.buf)
    }

    fn evict_oldest(&mut self) {
        while let Some((t, k)) = self.order.pop_front() {
            if self.entries.get(&k).is_some_and(|e| e.created == t) {
                self.discard(k);
                self.evicted += 1;
                return;
            }
        }
    }

    fn rebuild_order(&mut self) {
        let mut v: Vec<(Instant, Key)> =
            self.entries.iter().map(|(k, e)| (e.created, *k)).collect();
        v.sort_by_key(|(t, _)| *t);
        self.order = v.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frag(ident: u16, off: usize, more: bool, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + data.len()];
        b[0] = 0x45;
        b[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        b[4..6].copy_from_slice(&ident.to_be_bytes());
        let f = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        b[6..8].copy_from_slice(&f.to_be_bytes());
        b[8] = 64;
        b[9] = 17;
        b[12..16].copy_from_slice(&[10, 0, 2, 100]);
        b[16..20].copy_from_slice(&[198, 51, 100, 1]);
        b[20..].copy_from_slice(data);
        b
    }

    fn push(r: &mut Reassembler, now: Instant, b: &[u8]) -> FragOutcome {
        let p = Ipv4Packet::new_checked(b).unwrap();
        r.push(now, &p)
    }

    #[test]
    fn in_and_out_of_order() {
        let now = Instant::now();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        for order in [[0usize, 1, 2], [2, 0, 1], [1, 2, 0]] {
            let mut r = Reassembler::new(4);
            let parts = [
                frag(9, 0, true, &data[..1480]),
                frag(9, 1480, true, &data[1480..2960]),
                frag(9, 2960, false, &data[2960..]),
            ];
            let mut out = None;
            for i in order {
                match push(&mut r, now, &parts[i]) {
                    FragOutcome::Pending => {}
                    FragOutcome::Complete(b) => out = Some(b),
                    FragOutcome::Dropped(d) => panic!("{d:?}"),
                }
            }
            let b = out.expect("complete");
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert!(p.verify_checksum());
            assert!(!p.more_frags());
            assert_eq!(p.payload(), &data[..]);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn overlap_and_duplicates_drop() {
        let now = Instant::now();
        let mut r = Reassembler::new(4);
        assert!(matches!(
            push(&mut r, now, &frag(1, 0, true, &[1; 16])),
            FragOutcome::Pending
        ));
        assert!(matches!(
            push(&mut r, now, &frag(1, 8, true, &[1; 16])),
            FragOutcome::Dropped(DropReason::FragmentOverlap)
        ));
        assert!(r.is_empty());
        assert!(matches!(
            push(&mut r, now, &frag(2, 0, true, &[1; 16])),
            FragOutcome::Pending
        ));
        assert!(matches!(
            push(&mut r, now, &frag(2, 0, true, &[1; 16])),
            FragOutcome::Dropped(DropReason::FragmentOverlap)
        ));
    }

    #[test]
    fn lone_fragments_expire_and_are_bounded() {
        let now = Instant::now();
        let mut r = Reassembler::new(8);
        for i in 0..100u16 {
            let _ = push(&mut r, now, &frag(i, 8, true, &[0; 8]));
        }
        assert_eq!(r.len(), 8);
        assert_eq!(r.evicted, 92);
        assert_eq!(r.expire(now + Duration::from_secs(31)), 8);
        assert!(r.is_empty());
    }

    fn frag6(ident: u32, off: usize, more: bool, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 48 + data.len()];
        b[0] = 0x60;
        b[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        b[6] = 44;
        b[7] = 64;
        b[8] = 0xfd;
        b[23] = 0x15;
        b[24] = 0x20;
        b[39] = 1;
        b[40] = 17;
        let om = (off as u16) | u16::from(more);
        b[42..44].copy_from_slice(&om.to_be_bytes());
        b[44..48].copy_from_slice(&ident.to_be_bytes());
        b[48..].copy_from_slice(data);
        b
    }

    #[test]
    fn ipv6_fragments_reassemble() {
        let now = Instant::now();
        let mut r = Reassembler::new(4);
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        assert!(matches!(
            r.push6(now, &frag6(7, 1448, false, &data[1448..])),
            FragOutcome::Pending
        ));
        let FragOutcome::Complete(b) = r.push6(now, &frag6(7, 0, true, &data[..1448])) else {
            panic!("not complete");
        };
        assert_eq!(b[6], 17, "next header is the fragmented protocol");
        assert_eq!(usize::from(u16::from_be_bytes([b[4], b[5]])), 3000);
        assert_eq!(&b[40..], &data[..]);
        assert!(matches!(
            r.push6(now, &frag6(8, 0, true, &[0u8; 12])),
            FragOutcome::Dropped(DropReason::FragmentInvalid)
        ));
    }

    #[test]
    fn too_big_is_invalid() {
        let now = Instant::now();
        let mut r = Reassembler::new(8);
        assert!(matches!(
            push(&mut r, now, &frag(3, 65528, false, &[0; 16])),
            FragOutcome::Dropped(DropReason::FragmentInvalid)
        ));
        assert!(matches!(
            push(&mut r, now, &frag(4, 0, true, &[0; 12])),
            FragOutcome::Dropped(DropReason::FragmentInvalid)
        ));
    }
}
