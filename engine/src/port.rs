//! L2 ports: where guest frames come from and go to.
//!
//! The router never sees a port; the event loop moves frames between a [`Port`] and the
//! router: the TAP device of a network namespace (here), QEMU's `-netdev stream`
//! ([`crate::port_stream`]) and `-netdev dgram` ([`crate::port_dgram`]); a pcap recorder
//! ([`crate::pcap`]) wraps any of them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::frames::ETH_HLEN;

/// A source and sink of Ethernet frames.
pub trait Port {
    /// Register for readable and writable readiness (edge-triggered).
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()>;
    /// Read up to `max` frames, handing each to `sink`. `Ok(true)`: stopped at `max`,
    /// more may be waiting; `Ok(false)`: nothing more to read now.
    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool>;
    /// Write one frame. `Ok(false)`: it would block (the frame was not taken).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool>;
    /// Called once per event-loop turn, after the queued frames were written: write out
    /// whatever the port buffered itself (the rest of a frame a stream socket took only
    /// in part, pcap records). `Ok(false)`: still blocked; the loop waits for writability.
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Whether an error from [`write_frame`](Port::write_frame) or
    /// [`read_frames`](Port::read_frames) means the port is gone for good.
    fn is_fatal(&self, e: &io::Error) -> bool;
    /// Whether the port's readable event is level-triggered: the event loop hears again
    /// about frames a read round left behind, so it need not come back by itself when
    /// [`read_frames`](Port::read_frames) says more may be waiting.
    fn reads_level_triggered(&self) -> bool {
        false
    }
}

/// Largest frame read from a TAP (64 KiB IP MTU plus Ethernet header, with margin).
const TAP_FRAME_MAX: usize = 65536 + 64;

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_TCPV6: u8 = 4;

/// Read pacing of a level-triggered TAP: rounds in a row that found at most one frame
/// before the pacer stops reading until `EAGAIN`.
const SINGLE_AFTER_QUIET_ROUNDS: u8 = 4;
/// In single-frame mode, one round in this many still reads until `EAGAIN`, to notice
/// that frames now come in bursts.
const PROBE_EVERY_ROUNDS: u8 = 8;

/// How many frames the next read round of a level-triggered TAP takes.
///
/// A TAP `read` returns one frame and no sign of whether another waits, so draining the
/// queue costs one `read` that returns `EAGAIN` per round. When frames come one at a
/// time (request/response traffic: each round finds one frame), that read is a seventh
/// of the syscalls of a forwarded round trip. Registered level-triggered, the TAP is
/// reported again while frames wait, so a round may stop after one frame: the pacer
/// does that once [`SINGLE_AFTER_QUIET_ROUNDS`] rounds in a row found at most one frame,
/// and goes back to reading whole batches as soon as a round (a full batch, or the
/// draining probe every [`PROBE_EVERY_ROUNDS`] rounds) finds more.
#[derive(Debug, Default)]
struct ReadPacer {
    single: bool,
    quiet: u8,
    rounds: u8,
}

impl ReadPacer {
    /// Frames to read this round, of at most `max`.
    fn limit(&mut self, max: usize) -> usize {
        if !self.single {
            return max;
        }
        self.rounds += 1;
        if self.rounds >= PROBE_EVERY_ROUNDS {
            self.rounds = 0;
            max
        } else {
            1
        }
    }

    /// A round read `n` frames and then found the queue empty.
    fn drained(&mut self, n: usize) {
        if n <= 1 {
            self.quiet = self.quiet.saturating_add(1);
            if self.quiet >= SINGLE_AFTER_QUIET_ROUNDS {
                self.single = true;
            }
        } else {
            self.busy();
        }
    }

    /// A round read all `limit` frames it was allowed.
    fn filled(&mut self, limit: usize) {
        if limit > 1 {
            self.busy();
        }
    }

    fn busy(&mut self) {
        *self = ReadPacer::default();
    }
}

/// A TAP device (one frame per `read`/`write`), optionally with a virtio-net header
/// before each frame (`IFF_VNET_HDR`).
pub struct TapPort {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// With virtio-net headers: the guest's IP MTU. A TCP frame larger than it is
    /// written as one GSO packet (TSO), its checksum left partial for the kernel.
    vnet_mtu: Option<usize>,
    /// With virtio-net headers: every TCP frame goes with its checksum partial
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, [`Config::csum_offload`](crate::config::Config)).
    csum_offload: bool,
    /// Level-triggered reads ([`TapPort::level_triggered`]): how many frames a round takes.
    pacer: Option<ReadPacer>,
    /// With level-triggered reads: a second fd of the same TAP, registered for the
    /// edge-triggered writable event.
    writable_fd: Option<OwnedFd>,
}

impl TapPort {
    /// Wrap an open, nonblocking TAP fd.
    pub fn new(fd: OwnedFd) -> TapPort {
        TapPort {
            fd,
            buf: vec![0u8; TAP_FRAME_MAX + VNET_HDR_LEN],
            vnet_mtu: None,
            csum_offload: false,
            pacer: None,
            writable_fd: None,
        }
    }

    /// Watch the TAP's readable event level-triggered and pace reads with a
    /// [`ReadPacer`]: for an event loop that polls again after every read round (the
    /// single-guest engine), where it saves the `read` that returns `EAGAIN` when frames
    /// come one at a time.
    pub fn level_triggered(mut self) -> TapPort {
        self.pacer = Some(ReadPacer::default());
        self
    }

    /// Wrap a TAP fd opened with `IFF_VNET_HDR` toward a guest of IP MTU `mtu`. With
    /// `csum_offload`, every TCP frame is written with its checksum partial, for the
    /// frames of an engine whose smoltcp leaves TCP checksums out.
    pub fn with_vnet_hdr(fd: OwnedFd, mtu: usize, csum_offload: bool) -> TapPort {
        TapPort {
            vnet_mtu: Some(mtu),
            csum_offload,
            ..TapPort::new(fd)
        }
    }
}

/// The virtio-net header for `frame` toward a guest of IP MTU `mtu`, and where the TCP
/// checksum is with its partial value, when the frame is a TCP segment larger than the
/// MTU (GSO), or any TCP segment with `csum` (checksum offload: the guest's kernel takes
/// it as `CHECKSUM_PARTIAL`, as from a virtio-net device, and never verifies it);
/// `None` for a frame sent as it is.
pub fn offload_header(
    frame: &[u8],
    mtu: usize,
    csum: bool,
) -> Option<([u8; VNET_HDR_LEN], usize, [u8; 2])> {
    let gso = frame.len() > ETH_HLEN + mtu;
    if !(gso || csum) || frame.len() < ETH_HLEN + 40 {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let (ip_hl, gso_type, src, dst) = match (frame[12], frame[13], ip[0] >> 4) {
        (0x08, 0x00, 4) if ip[9] == 6 => {
            let hl = usize::from(ip[0] & 0x0f) * 4;
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            (
                hl,
                VNET_GSO_TCPV4,
                std::net::IpAddr::from(s),
                std::net::IpAddr::from(d),
            )
        }
        (0x86, 0xdd, 6) if ip[6] == 6 => {
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                40,
                VNET_GSO_TCPV6,
                std::net::IpAddr::from(s),
                std::net::IpAddr::from(d),
            )
        }
        _ => return None,
    };
    let tcp = ip.get(ip_hl..)?;
    let tcp_hl = usize::from(tcp.get(12)? >> 4) * 4;
    if tcp_hl < 20 || tcp.len() < tcp_hl {
        return None;
    }
    let hdr_len = ETH_HLEN + ip_hl + tcp_hl;
    let csum_start = ETH_HLEN + ip_hl;
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = VNET_F_NEEDS_CSUM;
    if gso {
        let gso_size = mtu.checked_sub(ip_hl + tcp_hl)?;
        h[1] = gso_type;
        h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
        h[4..6].copy_from_slice(&(gso_size as u16).to_le_bytes());
    }
    h[6..8].copy_from_slice(&(csum_start as u16).to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
    let partial = crate::frames::pseudo(src, dst, 6, tcp.len());
    Some((h, csum_start + 16, partial.to_be_bytes()))
}

impl Port for TapPort {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if self.pacer.is_none() {
            return registry.register(
                &mut SourceFd(&self.fd.as_raw_fd()),
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
        }
        // Readable, level-triggered: mio registers edge-triggered only, so register
        // through it and then clear EPOLLET on its epoll instance. Writable stays
        // edge-triggered (a TAP is nearly always writable) on a duplicate of the fd:
        // epoll keys registrations by file and fd number, so both may share the token.
        let raw = self.fd.as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token.0 as u64,
        };
        // SAFETY: the registry's fd is mio's live epoll instance, `raw` is an open fd
        // registered in it just above, and `ev` is a valid epoll_event on the stack
        // that the kernel only reads.
        let r = unsafe { libc::epoll_ctl(registry.as_raw_fd(), libc::EPOLL_CTL_MOD, raw, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let dup = self.fd.try_clone()?;
        registry.register(&mut SourceFd(&dup.as_raw_fd()), token, Interest::WRITABLE)?;
        self.writable_fd = Some(dup);
        Ok(())
    }

    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let skip = if self.vnet_mtu.is_some() {
            VNET_HDR_LEN
        } else {
            0
        };
        let limit = self.pacer.as_mut().map_or(max, |p| p.limit(max));
        let mut got = 0;
        while got < limit {
            match nix::unistd::read(&self.fd, &mut self.buf) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EBADFD)),
                // No offloads are enabled toward us: the header carries nothing.
                Ok(n) if n >= skip => {
                    got += 1;
                    sink(&self.buf[skip..n])
                }
                Ok(_) => got += 1,
                Err(nix::errno::Errno::EAGAIN) => {
                    if let Some(p) = &mut self.pacer {
                        p.drained(got);
                    }
                    return Ok(false);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(p) = &mut self.pacer {
            p.filled(limit);
        }
        Ok(true)
    }

    fn reads_level_triggered(&self) -> bool {
        self.pacer.is_some()
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        if let Some(mtu) = self.vnet_mtu {
            return self.write_vnet(frame, mtu);
        }
        loop {
            match nix::unistd::write(&self.fd, frame) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn is_fatal(&self, e: &io::Error) -> bool {
        tap_error_is_fatal(e)
    }
}

impl TapPort {
    /// Write one frame after its virtio-net header, without copying it: a GSO header
    /// and the partial checksum for a TCP segment above the MTU, the partial checksum
    /// for any other TCP segment with checksum offload, zeros otherwise.
    fn write_vnet(&mut self, frame: &[u8], mtu: usize) -> io::Result<bool> {
        use std::io::IoSlice;
        let zero = [0u8; VNET_HDR_LEN];
        let gso = offload_header(frame, mtu, self.csum_offload);
        loop {
            let r = match &gso {
                Some((h, at, csum)) => nix::sys::uio::writev(
                    &self.fd,
                    &[
                        IoSlice::new(h),
                        IoSlice::new(&frame[..*at]),
                        IoSlice::new(csum),
                        IoSlice::new(&frame[at + 2..]),
                    ],
                ),
                None => {
                    nix::sys::uio::writev(&self.fd, &[IoSlice::new(&zero), IoSlice::new(frame)])
                }
            };
            match r {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn tap_error_is_fatal(e: &io::Error) -> bool {
    // EIO: the interface is down (the guest may bring it up again); EINVAL: a frame
    // the device refused. Everything else (EBADFD when the device is deleted or its
    // namespace dies) is final.
    !matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOBUFS) | Some(libc::EMSGSIZE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload` bytes of data.
    fn tcp4(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + 20 + 32 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 100]);
        ip[20 + 12] = 8 << 4; // 32-byte TCP header (timestamps)
        f
    }

    #[test]
    fn large_tcp_segments_get_a_gso_header_and_small_ones_none() {
        assert!(offload_header(&tcp4(1448), 1500, false).is_none());
        let f = tcp4(60000);
        let (h, at, csum) = offload_header(&f, 1500, false).unwrap();
        assert_eq!(h[0], VNET_F_NEEDS_CSUM);
        assert_eq!(h[1], VNET_GSO_TCPV4);
        assert_eq!(
            u16::from_le_bytes([h[2], h[3]]),
            (ETH_HLEN + 52) as u16,
            "hdr_len"
        );
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1500 - 52, "gso_size");
        assert_eq!(
            u16::from_le_bytes([h[6], h[7]]),
            (ETH_HLEN + 20) as u16,
            "csum_start"
        );
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 16, "csum_offset");
        assert_eq!(at, ETH_HLEN + 20 + 16);
        let want =
            crate::frames::pseudo([10, 0, 2, 2].into(), [10, 0, 2, 100].into(), 6, 32 + 60000);
        assert_eq!(u16::from_be_bytes(csum), want);
        // Not TCP, or truncated: sent as it is.
        let mut udp = tcp4(60000);
        udp[ETH_HLEN + 9] = 17;
        assert!(offload_header(&udp, 1500, false).is_none());
        assert!(offload_header(&f[..60], 20, false).is_none());
        assert!(offload_header(&udp, 1500, true).is_none());
    }

    #[test]
    fn with_checksum_offload_every_tcp_segment_gets_a_partial_checksum() {
        let f = tcp4(1448);
        let (h, at, csum) = offload_header(&f, 1500, true).unwrap();
        assert_eq!(h[0], VNET_F_NEEDS_CSUM);
        assert_eq!(h[1], 0, "no GSO");
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 0, "gso_size");
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), (ETH_HLEN + 20) as u16);
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 16);
        assert_eq!(at, ETH_HLEN + 20 + 16);
        let want =
            crate::frames::pseudo([10, 0, 2, 2].into(), [10, 0, 2, 100].into(), 6, 32 + 1448);
        assert_eq!(u16::from_be_bytes(csum), want);
        // Above the MTU it is a GSO packet as without the offload.
        let (h, _, _) = offload_header(&tcp4(60000), 1500, true).unwrap();
        assert_eq!(h[1], VNET_GSO_TCPV4);
        // IPv6.
        let mut f6 = vec![0u8; ETH_HLEN + 40 + 20 + 10];
        f6[12..14].copy_from_slice(&[0x86, 0xdd]);
        f6[ETH_HLEN] = 0x60;
        f6[ETH_HLEN + 6] = 6;
        f6[ETH_HLEN + 40 + 12] = 5 << 4;
        let (h, at, _) = offload_header(&f6, 1500, true).unwrap();
        assert_eq!((h[0], h[1]), (VNET_F_NEEDS_CSUM, 0));
        assert_eq!(at, ETH_HLEN + 40 + 16);
    }

    #[test]
    fn pacer_goes_single_after_quiet_rounds_and_back_on_a_burst() {
        let mut p = ReadPacer::default();
        for _ in 0..SINGLE_AFTER_QUIET_ROUNDS {
            assert_eq!(p.limit(256), 256);
            p.drained(1);
        }
        // One frame per round now, with a draining probe every PROBE_EVERY_ROUNDS.
        let limits: Vec<usize> = (0..2 * PROBE_EVERY_ROUNDS)
            .map(|_| {
                let l = p.limit(256);
                if l == 1 {
                    p.filled(1)
                } else {
                    p.drained(1)
                }
                l
            })
            .collect();
        assert_eq!(limits.iter().filter(|&&l| l == 256).count(), 2);
        assert!(limits.iter().filter(|&&l| l == 1).count() >= 14);
        // A probe that finds a burst goes back to whole batches at once.
        while p.limit(256) == 1 {
            p.filled(1);
        }
        p.drained(5);
        assert_eq!(p.limit(256), 256);
        // So does a full batch; an empty round counts as quiet.
        for _ in 0..SINGLE_AFTER_QUIET_ROUNDS {
            p.drained(0);
        }
        assert!(p.single);
        while p.limit(256) == 1 {}
        p.filled(256);
        assert_eq!(p.limit(256), 256);
    }

    /// A seqpacket socket stands in for the TAP: one packet per `read`, `EAGAIN` when
    /// none waits.
    #[test]
    fn level_triggered_tap_is_reported_again_for_frames_a_round_left() {
        use mio::{Events, Poll};
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let mut port = TapPort::new(a).level_triggered();
        assert!(port.reads_level_triggered());
        let mut poll = Poll::new().unwrap();
        port.register(poll.registry(), Token(7)).unwrap();
        let mut events = Events::with_capacity(8);
        let wait = |poll: &mut Poll, events: &mut Events| -> (bool, bool) {
            poll.poll(events, Some(std::time::Duration::ZERO)).unwrap();
            let r = events
                .iter()
                .any(|e| e.token() == Token(7) && e.is_readable());
            let w = events
                .iter()
                .any(|e| e.token() == Token(7) && e.is_writable());
            (r, w)
        };
        // The duplicate fd reports writable (edge-triggered: once).
        assert_eq!(wait(&mut poll, &mut events), (false, true));
        assert_eq!(wait(&mut poll, &mut events), (false, false));
        // Frames one at a time: the pacer goes single.
        for i in 0..SINGLE_AFTER_QUIET_ROUNDS {
            nix::unistd::write(&b, &[i; 20]).unwrap();
            assert!(wait(&mut poll, &mut events).0);
            let mut n = 0;
            assert!(!port.read_frames(256, &mut |_| n += 1).unwrap());
            assert_eq!(n, 1);
        }
        // Three at once: each round takes one, and the TAP is reported again until the
        // queue is empty, although no new frame arrived.
        for i in 0..3u8 {
            nix::unistd::write(&b, &[100 + i; 20]).unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            assert!(wait(&mut poll, &mut events).0, "left frames are reported");
            assert!(port.read_frames(256, &mut |f| seen.push(f[0])).unwrap());
        }
        assert_eq!(seen, [100, 101, 102]);
        assert!(
            !wait(&mut poll, &mut events).0,
            "an empty TAP is not reported"
        );
    }
}
