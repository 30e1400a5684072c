//! The bounded queue of frames toward the guest.
//!
//! Every frame the engine emits (smoltcp segments, UDP, ICMP, ARP, DHCP, DNS) is built in
//! place in a buffer of this queue, then written to the port by the event loop. Buffers are
//! allocated once at `frame_cap` bytes and recycled, so the steady state allocates nothing.
//! When the queue is full, smoltcp's `transmit()` gets no token (backpressure: TCP data
//! waits in the flow's ring instead of being dropped and costing a 1 s RTO) and UDP
//! readers stop reading their host sockets until the port drains.

use std::collections::VecDeque;

/// A bounded FIFO of Ethernet frames with recycled buffers.
pub struct TxQueue {
    frames: VecDeque<(Box<[u8]>, usize)>,
    free: Vec<Box<[u8]>>,
    max_frames: usize,
    frame_cap: usize,
    scratch: Vec<u8>,
}

impl TxQueue {
    /// A queue of at most `max_frames` frames of at most `frame_cap` bytes each.
    pub fn new(max_frames: usize, frame_cap: usize) -> TxQueue {
        TxQueue {
            frames: VecDeque::with_capacity(max_frames),
            free: Vec::new(),
            max_frames,
            frame_cap,
            scratch: Vec::new(),
        }
    }

    /// Whether one more frame fits.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.frames.len() < self.max_frames
    }

    /// Frames that still fit.
    pub fn room(&self) -> usize {
        self.max_frames - self.frames.len()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Largest frame a buffer holds.
    pub fn frame_cap(&self) -> usize {
        self.frame_cap
    }

    /// Append a frame of `len` bytes written by `build`. Returns `false` (and builds
    /// nothing) when the queue is full or `len` exceeds the buffer size.
    pub fn push<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.has_room() || len > self.frame_cap {
            return None;
        }
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.frame_cap].into_boxed_slice());
        let r = build(&mut buf[..len]);
        self.frames.push_back((buf, len));
        Some(r)
    }

    /// Like [`push`](Self::push), but when the frame does not fit it is built into a
    /// scratch buffer and discarded (for callers that must run `build` regardless).
    /// Returns the result and whether the frame was queued.
    pub fn push_or_discard<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> (R, bool) {
        if self.has_room() && len <= self.frame_cap {
            let mut buf = self
                .free
                .pop()
                .unwrap_or_else(|| vec![0u8; self.frame_cap].into_boxed_slice());
            let r = build(&mut buf[..len]);
            self.frames.push_back((buf, len));
            return (r, true);
        }
        if self.scratch.len() < len {
            self.scratch.resize(len.min(65536 + 64), 0);
        }
        let n = len.min(self.scratch.len());
        (build(&mut self.scratch[..n]), false)
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|(b, l)| &b[..*l])
    }

    /// Drop the oldest frame (after it was written or refused), recycling its buffer.
    pub fn pop_front(&mut self) {
        if let Some((b, _)) = self.frames.pop_front() {
            self.free.push(b);
        }
    }

    /// Give recycled buffers back to the allocator (after a burst).
    pub fn shrink(&mut self) {
        self.free.clear();
        self.free.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_recycled() {
        let mut q = TxQueue::new(2, 100);
        assert!(q.push(10, |b| b.fill(1)).is_some());
        assert!(q.push(20, |b| b.fill(2)).is_some());
        assert!(q.push(5, |_| ()).is_none());
        assert!(!q.has_room());
        assert_eq!(q.front().unwrap(), &[1u8; 10][..]);
        q.pop_front();
        assert!(q.push(101, |_| ()).is_none());
        assert!(q.push(3, |_| ()).is_some());
        assert_eq!(q.front().unwrap(), &[2u8; 20][..]);
        assert_eq!(q.len(), 2);
    }
}
