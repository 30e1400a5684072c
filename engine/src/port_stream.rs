//! QEMU `-netdev stream` (and legacy `-netdev socket`, gvproxy's "qemu" protocol): Ethernet
//! frames over a unix or TCP stream, each preceded by its length as 4 bytes big-endian
//! (reference/compat.md §2.5).
//!
//! [`StreamDecoder`] is the sans-IO half: bytes go in (read straight into its spare room,
//! or [`StreamDecoder::push`]ed), whole frames come out as slices of its one fixed buffer,
//! many per read, a partial frame kept for the next read. Nothing is copied per frame; the
//! only copy is moving a partial tail to the front of the buffer when the room behind it
//! runs short, at most once per read.
//!
//! [`StreamPort`] is the I/O half: it listens (unix or TCP) and serves one client at a
//! time, or owns a stream socket a parent already connected (`--fd`). A client that
//! disconnects leaves the engine running and waiting for the next one (QEMU's
//! `reconnect=`), so the guest keeps its DHCP lease; a second simultaneous client is
//! accepted and closed at once with a log line (as passt does).
//!
//! # Frame length bounds
//!
//! A length below 14 (an Ethernet header) or above [`STREAM_MAX_FRAME`] = 65535 bytes
//! resets the connection: the stream has lost its framing (or the peer is not QEMU), and
//! nothing after it can be trusted. 65535 is passt's `L2_MAX_LEN_PASST` and the largest
//! frame QEMU's virtio-net produces; it does not depend on `--mtu`, because a guest whose
//! MTU is larger than ours is misconfigured, not out of sync: such frames are parsed and
//! dropped by the router (counted as `frame_bad_length`), the connection survives.
//!
//! # Writes
//!
//! Frames toward the guest are padded to 60 bytes (ETH_ZLEN, as passt). A frame is written
//! with one `writev` of prefix + frame; if the socket takes only part of it, the rest is
//! kept in a buffer of one frame's size inside the port, and further frames are refused
//! (`Ok(false)`, they stay in the engine's queue) until [`Port::flush`] or the next
//! `write_frame` has written it out. Nothing blocks and nothing is dropped silently.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::{Interest, Registry, Token};

use crate::port::Port;
use crate::stats::{DropReason, Stats};

/// Largest frame accepted from and sent to the stream (passt's `L2_MAX_LEN_PASST`).
pub const STREAM_MAX_FRAME: usize = 65535;
/// Smallest frame accepted from the stream: an Ethernet header.
pub const STREAM_MIN_FRAME: usize = 14;
/// Frames shorter than this are zero-padded on the way to the guest (ETH_ZLEN).
pub const ETH_ZLEN: usize = 60;
/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Why the stream lost its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A length prefix below [`STREAM_MIN_FRAME`].
    #[error("frame length {0} is shorter than an Ethernet header (14 bytes)")]
    TooShort(u32),
    /// A length prefix above the decoder's maximum.
    #[error("frame length {0} exceeds the maximum of {1} bytes")]
    TooLong(u32, usize),
}

/// Sans-IO decoder of a length-prefixed frame stream, with one buffer of fixed size.
///
/// Feed it with [`spare`](StreamDecoder::spare) + [`commit`](StreamDecoder::commit)
/// (read straight into the buffer) or [`push`](StreamDecoder::push) (copy); take frames
/// with [`next_frame`](StreamDecoder::next_frame) until it returns `Ok(None)`. A framing
/// error is sticky until [`reset`](StreamDecoder::reset).
pub struct StreamDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame: usize,
    error: Option<FramingError>,
}

impl StreamDecoder {
    /// A decoder accepting frames of up to `max_frame` bytes. Its buffer holds two
    /// prefixed maximum frames (at least 8 KiB), and never grows.
    pub fn new(max_frame: usize) -> StreamDecoder {
        let max_frame = max_frame.max(STREAM_MIN_FRAME);
        let cap = (2 * (PREFIX_LEN + max_frame)).max(8192);
        StreamDecoder {
            buf: vec![0u8; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
            error: None,
        }
    }

    /// The buffer's fixed size: the most this decoder ever holds.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The framing error met, if any.
    pub fn error(&self) -> Option<FramingError> {
        self.error
    }

    /// Forget everything buffered and any error (a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.error = None;
    }

    /// Room to read into; never empty while no complete frame is waiting (take frames
    /// with [`next_frame`](StreamDecoder::next_frame) first). Moves a partial tail to
    /// the front of the buffer when the room behind it is smaller than one frame.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.buf.len() - self.end < PREFIX_LEN + self.max_frame {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Mark `n` bytes of [`spare`](StreamDecoder::spare) as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copy as much of `data` as fits; returns how many bytes were taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let room = self.spare();
        let n = room.len().min(data.len());
        room[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// The next complete frame (without its prefix), `Ok(None)` if more bytes are
    /// needed, or the framing error (sticky).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let avail = &self.buf[self.start..self.end];
        let Some(prefix) = avail.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        let n = len as usize;
        if n < STREAM_MIN_FRAME {
            self.error = Some(FramingError::TooShort(len));
        } else if n > self.max_frame {
            self.error = Some(FramingError::TooLong(len, self.max_frame));
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        if avail.len() < PREFIX_LEN + n {
            return Ok(None);
        }
        let from = self.start + PREFIX_LEN;
        self.start = from + n;
        if self.start == self.end {
            // Everything consumed: the next read starts at the front, no copy needed.
            let f = from..from + n;
            self.start = 0;
            self.end = 0;
            return Ok(Some(&self.buf[f]));
        }
        Ok(Some(&self.buf[from..from + n]))
    }
}

/// The 4-byte prefix of a frame of `len` bytes.
pub fn frame_prefix(len: usize) -> [u8; PREFIX_LEN] {
    (len as u32).to_be_bytes()
}

/// Where `--stream` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl StreamAddr {
    /// Parse `unix:PATH` or `tcp:ADDR:PORT` (`tcp:[::1]:PORT` for IPv6).
    pub fn parse(s: &str) -> Result<StreamAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("\"{s}\": the unix socket path is empty"));
            }
            Ok(StreamAddr::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse::<SocketAddr>().map(StreamAddr::Tcp).map_err(|_| {
                format!(
                    "\"{s}\": \"{a}\" is not ADDR:PORT (e.g. tcp:127.0.0.1:5555 or tcp:[::1]:5555)"
                )
            })
        } else {
            Err(format!(
                "\"{s}\" is not a stream address (expected unix:PATH or tcp:ADDR:PORT)"
            ))
        }
    }

    /// The QEMU `-netdev stream` options that connect to this address.
    pub fn qemu_netdev(&self, id: &str) -> String {
        match self {
            StreamAddr::Unix(p) => format!(
                "stream,id={id},server=off,addr.type=unix,addr.path={}",
                p.display()
            ),
            StreamAddr::Tcp(a) => format!(
                "stream,id={id},server=off,addr.type=inet,addr.host={},addr.port={}",
                a.ip(),
                a.port()
            ),
        }
    }
}

enum Listener {
    Unix(mio::net::UnixListener),
    Tcp(mio::net::TcpListener),
}

enum Conn {
    Unix(mio::net::UnixStream),
    Tcp(mio::net::TcpStream),
}

impl Conn {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Conn::Unix(s) => s,
            Conn::Tcp(s) => s,
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write_vectored(bufs),
            Conn::Tcp(s) => s.write_vectored(bufs),
        }
    }
}

/// Removes a unix socket file this process created.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bind a unix stream listener at `path`, replacing a stale socket file nobody serves.
fn bind_unix(path: &Path) -> io::Result<mio::net::UnixListener> {
    match mio::net::UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket || std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the path exists and is in use (or is not a socket)",
                ));
            }
            tracing::debug!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)?;
            mio::net::UnixListener::bind(path)
        }
        r => r,
    }
}

/// A QEMU stream port: one client at a time on a listener, or one pre-connected socket.
pub struct StreamPort {
    listener: Option<Listener>,
    _unlink: Option<Unlink>,
    conn: Option<Conn>,
    dec: StreamDecoder,
    /// The unwritten rest of one frame (prefix included); `out_pos` bytes of it are sent.
    out: Vec<u8>,
    out_pos: usize,
    registry: Option<Registry>,
    token: Token,
    stats: Arc<Stats>,
    framing_resets: u64,
    refused_clients: u64,
}

const PAD: [u8; ETH_ZLEN] = [0u8; ETH_ZLEN];

impl StreamPort {
    /// Listen on `addr` (nothing is accepted before [`Port::register`]).
    pub fn listen(addr: &StreamAddr, stats: Arc<Stats>) -> io::Result<StreamPort> {
        let (listener, unlink) = match addr {
            StreamAddr::Unix(p) => (Listener::Unix(bind_unix(p)?), Some(Unlink(p.to_path_buf()))),
            StreamAddr::Tcp(a) => (Listener::Tcp(mio::net::TcpListener::bind(*a)?), None),
        };
        Ok(StreamPort::new(Some(listener), unlink, None, stats))
    }

    /// Serve a stream socket a parent already connected (`--fd`). When it closes, the
    /// port is gone for good (there is nothing to wait for).
    pub fn connected(fd: std::os::fd::OwnedFd, stats: Arc<Stats>) -> io::Result<StreamPort> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        let conn = Conn::Unix(mio::net::UnixStream::from_std(s));
        Ok(StreamPort::new(None, None, Some(conn), stats))
    }

    fn new(
        listener: Option<Listener>,
        unlink: Option<Unlink>,
        conn: Option<Conn>,
        stats: Arc<Stats>,
    ) -> StreamPort {
        StreamPort {
            listener,
            _unlink: unlink,
            conn,
            dec: StreamDecoder::new(STREAM_MAX_FRAME),
            out: Vec::with_capacity(PREFIX_LEN + STREAM_MAX_FRAME),
            out_pos: 0,
            registry: None,
            token: Token(0),
            stats,
            framing_resets: 0,
            refused_clients: 0,
        }
    }

    /// The TCP address actually bound (for `tcp:ADDR:0`).
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Some(Listener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        }
    }

    /// Connections reset because the stream lost its framing.
    pub fn framing_resets(&self) -> u64 {
        self.framing_resets
    }

    /// Whether a client is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn listening(&self) -> bool {
        self.listener.is_some()
    }

    fn disconnect(&mut self, why: &str) {
        if let Some(mut c) = self.conn.take() {
            if let Some(r) = &self.registry {
                let _ = r.deregister(c.source());
            }
            if self.listening() {
                tracing::info!(
                    reason = why,
                    "guest disconnected; waiting for the next connection"
                );
            } else {
                tracing::warn!(reason = why, "guest connection closed");
            }
        }
        self.dec.reset();
        self.out.clear();
        self.out_pos = 0;
    }

    /// Accept every pending connection: the first becomes the client if there is none,
    /// the others are closed at once.
    fn accept_pending(&mut self) {
        loop {
            let accepted = match &self.listener {
                None => return,
                Some(Listener::Unix(l)) => l.accept().map(|(s, _)| Conn::Unix(s)),
                Some(Listener::Tcp(l)) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(s)
                }),
            };
            let mut c = match accepted {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ECONNABORTED...: the listener stays; try again on the next event.
                    tracing::warn!(error = %e, "cannot accept a guest connection");
                    return;
                }
            };
            if self.conn.is_some() {
                self.refused_clients += 1;
                tracing::warn!(
                    refused = self.refused_clients,
                    "refusing a second guest connection: one guest is already connected"
                );
                drop(c);
                continue;
            }
            if let Some(r) = &self.registry
                && let Err(e) = r.register(
                    c.source(),
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                )
            {
                tracing::warn!(error = %e, "cannot watch the guest connection");
                continue;
            }
            tracing::info!("guest connected");
            self.dec.reset();
            self.out.clear();
            self.out_pos = 0;
            self.conn = Some(c);
        }
    }

    fn framing_error(&mut self, e: FramingError) {
        self.framing_resets += 1;
        self.stats.record(DropReason::FrameBadLength);
        if self.framing_resets == 1 {
            tracing::warn!(error = %e, "guest stream lost its framing; resetting the connection (further resets are logged at debug level)");
        } else {
            tracing::debug!(error = %e, resets = self.framing_resets, "guest stream lost its framing; resetting the connection");
        }
        self.disconnect("bad frame length");
    }

    /// A connection failure: in listening mode the port waits for the next client (the
    /// error is absorbed); with `--fd` it is returned (and fatal).
    fn conn_failed(&mut self, why: &str, e: io::Error) -> io::Result<()> {
        self.disconnect(why);
        if self.listening() { Ok(()) } else { Err(e) }
    }

    /// Write out the buffered rest of a frame. `Ok(false)`: the socket is full.
    fn flush_out(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            let Some(c) = self.conn.as_mut() else {
                self.out.clear();
                self.out_pos = 0;
                return Ok(true);
            };
            match c.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    self.conn_failed("write error", e)?;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.conn_failed("write error", e)?,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Read the current client until it would block, closes, or `max` frames came.
    /// `Ok(Some(true))`: stopped at `max`; `Ok(Some(false))`: would block;
    /// `Ok(None)`: the client went away.
    fn read_conn(
        &mut self,
        max: usize,
        count: &mut usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Option<bool>> {
        loop {
            if *count >= max {
                return Ok(Some(true));
            }
            let Some(c) = self.conn.as_mut() else {
                return Ok(None);
            };
            match self.dec.next_frame() {
                Ok(Some(f)) => {
                    sink(f);
                    *count += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.framing_error(e);
                    if !self.listening() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    return Ok(None);
                }
            }
            match c.read(self.dec.spare()) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    self.conn_failed("closed by the guest", e)?;
                    return Ok(None);
                }
                Ok(n) => self.dec.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.conn_failed("read error", e)?;
                    return Ok(None);
                }
            }
        }
    }
}

fn not_connected() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOTCONN)
}

impl Port for StreamPort {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = token;
        match &mut self.listener {
            Some(Listener::Unix(l)) => registry.register(l, token, Interest::READABLE)?,
            Some(Listener::Tcp(l)) => registry.register(l, token, Interest::READABLE)?,
            None => {}
        }
        if let Some(c) = self.conn.as_mut() {
            registry.register(c.source(), token, Interest::READABLE | Interest::WRITABLE)?;
        }
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let mut count = 0;
        // The current client first: a QEMU that restarted shows up as an EOF on the old
        // connection and a new one in the backlog, and the new one must not be refused.
        // At most a few rounds: each either accepts a client or finds none waiting.
        for _ in 0..4 {
            if let Some(true) = self.read_conn(max, &mut count, sink)? {
                return Ok(true);
            }
            let had = self.conn.is_some();
            self.accept_pending();
            if had || self.conn.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        if self.conn.is_none() {
            return Err(not_connected());
        }
        if !self.flush_out()? {
            return Ok(false);
        }
        if frame.len() > STREAM_MAX_FRAME {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let pad = ETH_ZLEN.saturating_sub(frame.len());
        let prefix = frame_prefix(frame.len() + pad);
        let total = PREFIX_LEN + frame.len() + pad;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Err(not_connected());
            };
            let iov = [
                IoSlice::new(&prefix),
                IoSlice::new(frame),
                IoSlice::new(&PAD[..pad]),
            ];
            match c.write_vectored(&iov) {
                Ok(n) if n >= total => return Ok(true),
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    self.conn_failed("write error", e)?;
                    return Err(not_connected());
                }
                Ok(n) => {
                    // Part of the frame is on the wire: keep the rest (at most one frame).
                    self.out.clear();
                    self.out.extend_from_slice(&prefix);
                    self.out.extend_from_slice(frame);
                    self.out.extend_from_slice(&PAD[..pad]);
                    self.out_pos = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.conn_failed("write error", e)?;
                    return Err(not_connected());
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.flush_out()
    }

    fn is_fatal(&self, e: &io::Error) -> bool {
        // Listening: a client's failure only ends that connection. A pre-connected
        // socket (--fd) that fails or closes is gone for good.
        !self.listening() && !matches!(e.raw_os_error(), Some(libc::EMSGSIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&frame_prefix(f.len()));
            v.extend_from_slice(f);
        }
        v
    }

    fn frame(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    fn drain(d: &mut StreamDecoder, out: &mut Vec<Vec<u8>>) -> Result<(), FramingError> {
        while let Some(f) = d.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(())
    }

    fn feed_in_chunks(data: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            let mut rest = c;
            while !rest.is_empty() {
                let n = d.push(rest);
                rest = &rest[n..];
                drain(&mut d, &mut out)?;
            }
        }
        assert_eq!(d.buffered(), 0);
        Ok(out)
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let frames: Vec<_> = (0..50).map(|i| frame(i, 14 + i * 7)).collect();
        let data = encode(&frames);
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        assert_eq!(d.push(&data), data.len());
        let mut out = Vec::new();
        drain(&mut d, &mut out).unwrap();
        assert_eq!(out, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn split_anywhere() {
        let frames: Vec<_> = (0..6)
            .map(|i| frame(i, [14, 60, 1514, 100, 9000, 15][i]))
            .collect();
        let data = encode(&frames);
        // Every chunk size, and every single split point.
        for chunk in [1, 2, 3, 4, 5, 7, 13, 64, 1000, 4096] {
            assert_eq!(
                feed_in_chunks(&data, chunk).unwrap(),
                frames,
                "chunk {chunk}"
            );
        }
        for cut in 0..=data.len() {
            let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
            let mut out = Vec::new();
            assert_eq!(d.push(&data[..cut]), cut);
            drain(&mut d, &mut out).unwrap();
            assert_eq!(d.push(&data[cut..]), data.len() - cut);
            drain(&mut d, &mut out).unwrap();
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    #[test]
    fn maximum_frames_back_to_back_fit_the_fixed_buffer() {
        let frames: Vec<_> = (0..5).map(|i| frame(i, STREAM_MAX_FRAME)).collect();
        let data = encode(&frames);
        for chunk in [1000, 65539, 100_000, data.len()] {
            assert_eq!(feed_in_chunks(&data, chunk).unwrap(), frames);
        }
        let d = StreamDecoder::new(STREAM_MAX_FRAME);
        assert_eq!(d.capacity(), 2 * (4 + STREAM_MAX_FRAME));
    }

    #[test]
    fn undersize_is_an_error_and_sticky() {
        let mut data = encode(&[frame(0, 20)]);
        data.extend_from_slice(&13u32.to_be_bytes());
        data.extend_from_slice(&[0u8; 13]);
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        d.push(&data);
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(20));
        assert_eq!(d.next_frame(), Err(FramingError::TooShort(13)));
        assert_eq!(d.next_frame(), Err(FramingError::TooShort(13)));
        assert_eq!(d.error(), Some(FramingError::TooShort(13)));
        d.reset();
        assert_eq!(d.next_frame(), Ok(None));
        let mut z = StreamDecoder::new(STREAM_MAX_FRAME);
        z.push(&[0, 0, 0, 0]);
        assert_eq!(z.next_frame(), Err(FramingError::TooShort(0)));
    }

    #[test]
    fn oversize_is_an_error_before_the_body_arrives() {
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        d.push(&65536u32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FramingError::TooLong(65536, STREAM_MAX_FRAME))
        );
        let mut d = StreamDecoder::new(1514);
        d.push(&1515u32.to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(FramingError::TooLong(1515, 1514))
        ));
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn a_partial_prefix_waits() {
        let mut d = StreamDecoder::new(STREAM_MAX_FRAME);
        d.push(&[0, 0]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[0, 14]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[7u8; 14]);
        assert_eq!(d.next_frame().unwrap(), Some(&[7u8; 14][..]));
    }

    #[test]
    fn stream_addr_parse_and_qemu_hint() {
        assert_eq!(
            StreamAddr::parse("unix:/tmp/x.sock").unwrap(),
            StreamAddr::Unix("/tmp/x.sock".into())
        );
        let t = StreamAddr::parse("tcp:127.0.0.1:5555").unwrap();
        assert_eq!(
            t.qemu_netdev("n0"),
            "stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=5555"
        );
        assert!(StreamAddr::parse("tcp:[::1]:1").is_ok());
        assert!(
            StreamAddr::parse("tcp:localhost")
                .unwrap_err()
                .contains("localhost")
        );
        assert!(StreamAddr::parse("unix:").is_err());
        assert!(
            StreamAddr::parse("/tmp/x")
                .unwrap_err()
                .contains("unix:PATH")
        );
        assert_eq!(
            StreamAddr::Unix("/s".into()).qemu_netdev("n0"),
            "stream,id=n0,server=off,addr.type=unix,addr.path=/s"
        );
    }

    // ---- the port, over a real socket pair ----

    use std::os::unix::net::UnixStream as StdStream;
    use std::time::Duration;

    fn read_exact_frames(s: &mut StdStream, n: usize) -> Vec<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let mut p = [0u8; 4];
            s.read_exact(&mut p).unwrap();
            let mut f = vec![0u8; u32::from_be_bytes(p) as usize];
            s.read_exact(&mut f).unwrap();
            out.push(f);
        }
        out
    }

    fn collect(port: &mut StreamPort, max: usize) -> (Vec<Vec<u8>>, io::Result<bool>) {
        let mut v = Vec::new();
        let r = port.read_frames(max, &mut |f| v.push(f.to_vec()));
        (v, r)
    }

    #[test]
    fn fd_port_reads_batches_and_pads_writes() {
        let (a, mut b) = StdStream::pair().unwrap();
        let stats = Arc::new(Stats::default());
        let mut port = StreamPort::connected(a.into(), stats).unwrap();
        let frames: Vec<_> = (0..10).map(|i| frame(i, 64 + i)).collect();
        b.write_all(&encode(&frames)).unwrap();
        let (got, r) = collect(&mut port, 4);
        assert_eq!((got.len(), r.unwrap()), (4, true));
        let (got2, r) = collect(&mut port, 100);
        assert_eq!(got2.len(), 6);
        assert!(!r.unwrap());
        assert_eq!([got, got2].concat(), frames);

        assert!(port.write_frame(&[1u8; 42]).unwrap());
        let back = read_exact_frames(&mut b, 1);
        assert_eq!(back[0].len(), 60);
        assert_eq!(&back[0][..42], &[1u8; 42]);
        assert!(back[0][42..].iter().all(|&x| x == 0));

        drop(b);
        let (_, r) = collect(&mut port, 10);
        let e = r.unwrap_err();
        assert!(port.is_fatal(&e));
    }

    #[test]
    fn fd_port_bad_length_resets() {
        let (a, mut b) = StdStream::pair().unwrap();
        let stats = Arc::new(Stats::default());
        let mut port = StreamPort::connected(a.into(), stats.clone()).unwrap();
        b.write_all(&70000u32.to_be_bytes()).unwrap();
        let (_, r) = collect(&mut port, 10);
        assert!(port.is_fatal(&r.unwrap_err()));
        assert_eq!(port.framing_resets(), 1);
        assert_eq!(
            stats
                .drop_counts()
                .into_iter()
                .find(|(k, _)| *k == "frame_bad_length")
                .map(|x| x.1),
            Some(1)
        );
    }

    #[test]
    fn full_socket_keeps_the_rest_and_refuses_until_flushed() {
        let (a, mut b) = StdStream::pair().unwrap();
        let stats = Arc::new(Stats::default());
        let mut port = StreamPort::connected(a.into(), stats).unwrap();
        let big = frame(3, 9000);
        // Fill the socket until the port refuses a frame.
        let mut sent = 0;
        let mut refused = false;
        for _ in 0..10_000 {
            if port.write_frame(&big).unwrap() {
                sent += 1;
            } else {
                refused = true;
                break;
            }
        }
        assert!(refused, "the socket never filled");
        assert!(!port.write_frame(&big).unwrap());
        // Drain from the other side in a thread while flushing.
        let reader = std::thread::spawn(move || read_exact_frames(&mut b, sent + 1));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if port.write_frame(&big).unwrap() {
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        while !port.flush().unwrap() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), sent + 1);
        assert!(
            got.iter().all(|f| *f == big),
            "a frame was cut or reordered"
        );
    }

    fn poll_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(t) = f() {
                return t;
            }
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn listener_serves_one_client_and_survives_reconnects() {
        let dir = std::env::temp_dir().join(format!("usernet-sp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let stats = Arc::new(Stats::default());
        let poll = mio::Poll::new().unwrap();
        let mut port = StreamPort::listen(&StreamAddr::Unix(path.clone()), stats).unwrap();
        port.register(poll.registry(), Token(0)).unwrap();
        assert!(matches!(port.write_frame(&[0u8; 60]), Err(e) if !port.is_fatal(&e)));

        let mut c1 = StdStream::connect(&path).unwrap();
        c1.write_all(&encode(&[frame(1, 100)])).unwrap();
        let got = poll_until(|| {
            let (v, r) = collect(&mut port, 10);
            assert!(r.is_ok());
            (!v.is_empty()).then_some(v)
        });
        assert_eq!(got, vec![frame(1, 100)]);
        assert!(port.is_connected());

        // A second client is refused (closed at once); the first keeps working.
        let mut c2 = StdStream::connect(&path).unwrap();
        poll_until(|| {
            let _ = collect(&mut port, 10);
            let mut b = [0u8; 1];
            c2.set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            matches!(c2.read(&mut b), Ok(0)).then_some(())
        });
        assert!(port.write_frame(&frame(2, 80)).unwrap());
        assert_eq!(read_exact_frames(&mut c1, 1), vec![frame(2, 80)]);

        // Garbage resets that client; the port stays and takes the next one.
        c1.write_all(&5u32.to_be_bytes()).unwrap();
        poll_until(|| {
            let (_, r) = collect(&mut port, 10);
            assert!(r.is_ok());
            (!port.is_connected()).then_some(())
        });
        assert_eq!(port.framing_resets(), 1);
        let mut c3 = StdStream::connect(&path).unwrap();
        c3.write_all(&encode(&[frame(3, 14)])).unwrap();
        let got = poll_until(|| {
            let (v, _) = collect(&mut port, 10);
            (!v.is_empty()).then_some(v)
        });
        assert_eq!(got, vec![frame(3, 14)]);
        // A client that closes: the old EOF and a new client at once.
        drop(c3);
        let mut c4 = StdStream::connect(&path).unwrap();
        c4.write_all(&encode(&[frame(4, 30)])).unwrap();
        let got = poll_until(|| {
            let (v, _) = collect(&mut port, 10);
            (!v.is_empty()).then_some(v)
        });
        assert_eq!(got, vec![frame(4, 30)]);
        drop(port);
        assert!(!path.exists(), "the socket file is removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
