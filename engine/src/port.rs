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
}

/// Largest frame read from a TAP (64 KiB IP MTU plus Ethernet header, with margin).
const TAP_FRAME_MAX: usize = 65536 + 64;

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_TCPV6: u8 = 4;

/// A TAP device (one frame per `read`/`write`), optionally with a virtio-net header
/// before each frame (`IFF_VNET_HDR`).
pub struct TapPort {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// With virtio-net headers: the guest's IP MTU. A TCP frame larger than it is
    /// written as one GSO packet (TSO), its checksum left partial for the kernel.
    vnet_mtu: Option<usize>,
}

impl TapPort {
    /// Wrap an open, nonblocking TAP fd.
    pub fn new(fd: OwnedFd) -> TapPort {
        TapPort {
            fd,
            buf: vec![0u8; TAP_FRAME_MAX + VNET_HDR_LEN],
            vnet_mtu: None,
        }
    }

    /// Wrap a TAP fd opened with `IFF_VNET_HDR` toward a guest of IP MTU `mtu`.
    pub fn with_vnet_hdr(fd: OwnedFd, mtu: usize) -> TapPort {
        TapPort {
            vnet_mtu: Some(mtu),
            ..TapPort::new(fd)
        }
    }
}

/// The virtio-net header for `frame` toward a guest of IP MTU `mtu`, and where the TCP
/// checksum is with its partial value, when the frame is a TCP segment larger than the
/// MTU (GSO); `None` for a frame sent as it is.
pub fn gso_header(frame: &[u8], mtu: usize) -> Option<([u8; VNET_HDR_LEN], usize, [u8; 2])> {
    if frame.len() <= ETH_HLEN + mtu || frame.len() < ETH_HLEN + 40 {
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
    let gso_size = mtu.checked_sub(ip_hl + tcp_hl)?;
    let hdr_len = ETH_HLEN + ip_hl + tcp_hl;
    let csum_start = ETH_HLEN + ip_hl;
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = VNET_F_NEEDS_CSUM;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
    h[4..6].copy_from_slice(&(gso_size as u16).to_le_bytes());
    h[6..8].copy_from_slice(&(csum_start as u16).to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
    let partial = crate::frames::pseudo(src, dst, 6, tcp.len());
    Some((h, csum_start + 16, partial.to_be_bytes()))
}

impl Port for TapPort {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let skip = if self.vnet_mtu.is_some() {
            VNET_HDR_LEN
        } else {
            0
        };
        for _ in 0..max {
            match nix::unistd::read(&self.fd, &mut self.buf) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EBADFD)),
                // No offloads are enabled toward us: the header carries nothing.
                Ok(n) if n >= skip => sink(&self.buf[skip..n]),
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
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
    /// and the partial checksum for a TCP segment above the MTU, zeros otherwise.
    fn write_vnet(&mut self, frame: &[u8], mtu: usize) -> io::Result<bool> {
        use std::io::IoSlice;
        let zero = [0u8; VNET_HDR_LEN];
        let gso = gso_header(frame, mtu);
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
        assert!(gso_header(&tcp4(1448), 1500).is_none());
        let f = tcp4(60000);
        let (h, at, csum) = gso_header(&f, 1500).unwrap();
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
        assert!(gso_header(&udp, 1500).is_none());
        assert!(gso_header(&f[..60], 20).is_none());
    }
}
