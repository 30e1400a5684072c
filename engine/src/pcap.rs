//! `--pcap FILE`: every frame from and to the guest, in the classic pcap format
//! (LINKTYPE_ETHERNET, microsecond timestamps), readable by tcpdump and Wireshark.
//!
//! [`PcapPort`] wraps any [`Port`]: frames the inner port read are recorded before the
//! router sees them, frames are recorded once the inner port took them. Records go
//! through a 64 KiB buffer that is flushed at the end of every event-loop turn
//! ([`Port::flush`]), so the file is complete up to the last turn even while the engine
//! idles, and at most one write per turn is spent on it. A failing write (disk full) is
//! logged once and ends the capture, never the engine.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use mio::{Registry, Token};

use crate::port::Port;

/// Magic of a microsecond-resolution pcap file, native byte order.
const MAGIC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length: whole frames (the stream's maximum is 65535, a TAP's 65536 + 64).
pub const SNAPLEN: u32 = 262_144;

/// Writes pcap records to `W`.
pub struct PcapWriter<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> PcapWriter<W> {
    /// Write the file header.
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&h)?;
        out.flush()?;
        Ok(PcapWriter { out, failed: false })
    }

    /// Record one frame, stamped with the current time.
    pub fn record(&mut self, frame: &[u8]) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.record_at(t.as_secs() as u32, t.subsec_micros(), frame);
    }

    /// Record one frame with the given timestamp.
    pub fn record_at(&mut self, secs: u32, micros: u32, frame: &[u8]) {
        if self.failed {
            return;
        }
        let orig = frame.len() as u32;
        let incl = orig.min(SNAPLEN);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&secs.to_ne_bytes());
        h[4..8].copy_from_slice(&micros.to_ne_bytes());
        h[8..12].copy_from_slice(&incl.to_ne_bytes());
        h[12..16].copy_from_slice(&orig.to_ne_bytes());
        let r = self
            .out
            .write_all(&h)
            .and_then(|_| self.out.write_all(&frame[..incl as usize]));
        if let Err(e) = r {
            self.fail(e);
        }
    }

    /// Push buffered records to the file.
    pub fn flush(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.failed = true;
        tracing::warn!(error = %e, "cannot write the pcap file; capture stopped");
    }

    /// The writer (for tests).
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

/// A [`Port`] that records every frame in and out to a pcap file.
pub struct PcapPort {
    inner: Box<dyn Port>,
    w: PcapWriter<BufWriter<File>>,
}

impl PcapPort {
    /// Create (truncate) `path` and wrap `inner`.
    pub fn create(inner: Box<dyn Port>, path: &Path) -> io::Result<PcapPort> {
        let f = File::create(path)?;
        let w = PcapWriter::new(BufWriter::with_capacity(64 * 1024, f))?;
        Ok(PcapPort { inner, w })
    }
}

impl Port for PcapPort {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.inner.register(registry, token)
    }

    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let w = &mut self.w;
        self.inner.read_frames(max, &mut |f| {
            w.record(f);
            sink(f)
        })
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        let r = self.inner.write_frame(frame);
        if let Ok(true) = r {
            self.w.record(frame);
        }
        r
    }

    fn reads_level_triggered(&self) -> bool {
        self.inner.reads_level_triggered()
    }

    fn flush(&mut self) -> io::Result<bool> {
        let r = self.inner.flush();
        self.w.flush();
        r
    }

    fn is_fatal(&self, e: &io::Error) -> bool {
        self.inner.is_fatal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a pcap file back into (timestamp, frame) records.
    fn parse(b: &[u8]) -> Vec<((u32, u32), Vec<u8>)> {
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        assert_eq!(u32_at(0), MAGIC);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 2);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 4);
        assert_eq!(u32_at(20), LINKTYPE_ETHERNET);
        let mut i = 24;
        let mut out = Vec::new();
        while i < b.len() {
            let incl = u32_at(i + 8) as usize;
            assert_eq!(u32_at(i + 12) as usize, incl);
            out.push((
                (u32_at(i), u32_at(i + 4)),
                b[i + 16..i + 16 + incl].to_vec(),
            ));
            i += 16 + incl;
        }
        assert_eq!(i, b.len());
        out
    }

    #[test]
    fn writer_round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.record_at(1, 2, &[1, 2, 3]);
        w.record_at(3, 4, &[9; 1514]);
        let recs = parse(w.get_ref());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], ((1, 2), vec![1, 2, 3]));
        assert_eq!(recs[1].1, vec![9; 1514]);
    }

    /// A port that yields fixed frames and takes every other write.
    struct Fake {
        to_read: Vec<Vec<u8>>,
        accept: bool,
    }

    impl Port for Fake {
        fn register(&mut self, _: &Registry, _: Token) -> io::Result<()> {
            Ok(())
        }
        fn read_frames(&mut self, _max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
            for f in self.to_read.drain(..) {
                sink(&f);
            }
            Ok(false)
        }
        fn write_frame(&mut self, _: &[u8]) -> io::Result<bool> {
            self.accept = !self.accept;
            Ok(!self.accept)
        }
        fn is_fatal(&self, _: &io::Error) -> bool {
            false
        }
    }

    #[test]
    fn port_records_both_directions_and_flushes() {
        let dir = std::env::temp_dir().join(format!("usernet-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let fake = Fake {
            to_read: vec![vec![1u8; 60], vec![2u8; 70]],
            accept: false,
        };
        let mut p = PcapPort::create(Box::new(fake), &path).unwrap();
        let mut seen = 0;
        p.read_frames(10, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, 2);
        assert!(!p.write_frame(&[3u8; 42]).unwrap()); // refused: not recorded
        assert!(p.write_frame(&[4u8; 42]).unwrap());
        assert!(p.flush().unwrap());
        let recs = parse(&std::fs::read(&path).unwrap());
        let frames: Vec<_> = recs.into_iter().map(|r| r.1).collect();
        assert_eq!(frames, vec![vec![1u8; 60], vec![2u8; 70], vec![4u8; 42]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
