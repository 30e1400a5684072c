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

/// A TAP device (one frame per `read`/`write`).
pub struct TapPort {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl TapPort {
    /// Wrap an open, nonblocking TAP fd.
    pub fn new(fd: OwnedFd) -> TapPort {
        TapPort {
            fd,
            buf: vec![0u8; TAP_FRAME_MAX],
        }
    }
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
        for _ in 0..max {
            match nix::unistd::read(&self.fd, &mut self.buf) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EBADFD)),
                Ok(n) => sink(&self.buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
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
        // EIO: the interface is down (the guest may bring it up again); EINVAL: a frame
        // the device refused. Everything else (EBADFD when the device is deleted or its
        // namespace dies) is final.
        !matches!(
            e.raw_os_error(),
            Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOBUFS) | Some(libc::EMSGSIZE)
        )
    }
}
