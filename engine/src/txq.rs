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
///
/// Buffers come in two sizes: `small_cap` (the guest's MTU) and `frame_cap` (the largest
/// frame, 64 KiB with TSO); each size is recycled on its own. The queue is bounded both
/// in frames and in the bytes of the buffers it holds, and a full-size frame (what
/// smoltcp asks room for) must leave [`TxQueue::reserve`] bytes free, so that a queue
/// full of TCP segments still takes ARP, DNS and UDP replies.
pub struct TxQueue {
    frames: VecDeque<(Box<[u8]>, usize)>,
    free: Vec<Box<[u8]>>,
    free_small: Vec<Box<[u8]>>,
    max_frames: usize,
    frame_cap: usize,
    small_cap: usize,
    max_bytes: usize,
    bytes: usize,
    reserve: usize,
    scratch: Vec<u8>,
}

impl TxQueue {
    /// A queue of at most `max_frames` frames of at most `frame_cap` bytes each.
    pub fn new(max_frames: usize, frame_cap: usize) -> TxQueue {
        TxQueue::with_classes(max_frames, frame_cap, frame_cap, max_frames * frame_cap, 0)
    }

    /// A queue of at most `max_frames` frames and `max_bytes` bytes of buffers; frames up
    /// to `small_cap` bytes take a small buffer, larger ones (up to `frame_cap`) a full
    /// one, and a full-size frame must leave `reserve` bytes free.
    pub fn with_classes(
        max_frames: usize,
        small_cap: usize,
        frame_cap: usize,
        max_bytes: usize,
        reserve: usize,
    ) -> TxQueue {
        TxQueue {
            frames: VecDeque::with_capacity(max_frames.min(4096)),
            free: Vec::new(),
            free_small: Vec::new(),
            max_frames,
            frame_cap,
            small_cap: small_cap.min(frame_cap),
            max_bytes,
            bytes: 0,
            reserve,
            scratch: Vec::new(),
        }
    }

    fn cap_for(&self, len: usize) -> usize {
        if len <= self.small_cap {
            self.small_cap
        } else {
            self.frame_cap
        }
    }

    fn fits(&self, len: usize) -> bool {
        len <= self.frame_cap
            && self.frames.len() < self.max_frames
            && self.bytes + self.cap_for(len) <= self.max_bytes
    }

    /// Whether one more full-size frame fits (leaving the reserve).
    #[inline]
    pub fn has_room(&self) -> bool {
        self.frames.len() < self.max_frames
            && self.bytes + self.frame_cap + self.reserve <= self.max_bytes
    }

    /// Frames of the guest's MTU that still fit.
    pub fn room(&self) -> usize {
        let by_bytes = self.max_bytes.saturating_sub(self.bytes) / self.small_cap.max(1);
        (self.max_frames - self.frames.len()).min(by_bytes)
    }

    /// Bytes kept free for small frames while full-size ones wait.
    pub fn reserve(&self) -> usize {
        self.reserve
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

    fn take_buf(&mut self, len: usize) -> Box<[u8]> {
        let cap = self.cap_for(len);
        self.bytes += cap;
        let pool = if cap == self.small_cap && cap != self.frame_cap {
            &mut self.free_small
        } else {
            &mut self.free
        };
        pool.pop()
            .unwrap_or_else(|| vec![0u8; cap].into_boxed_slice())
    }

    /// Append a frame of `len` bytes written by `build`. Returns `None` (and builds
    /// nothing) when the queue is full or `len` exceeds the buffer size.
    pub fn push<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.fits(len) {
            return None;
        }
        let mut buf = self.take_buf(len);
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
        if self.fits(len) {
            let mut buf = self.take_buf(len);
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

    /// The frame `i` places behind the oldest.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.frames.get(i).map(|(b, l)| &b[..*l])
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|(b, l)| &b[..*l])
    }

    /// Drop the oldest frame (after it was written or refused), recycling its buffer.
    pub fn pop_front(&mut self) {
        if let Some((b, _)) = self.frames.pop_front() {
            self.bytes -= b.len();
            if b.len() == self.small_cap && self.small_cap != self.frame_cap {
                self.free_small.push(b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Give recycled buffers back to the allocator (after a burst).
    pub fn shrink(&mut self) {
        self.free.clear();
        self.free.shrink_to_fit();
        self.free_small.clear();
        self.free_small.shrink_to_fit();
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

    #[test]
    fn two_classes_keep_room_for_small_frames() {
        // 1 MiB of buffers, MTU-size 1514 and TSO-size 65549, 256 KiB reserved.
        let mut q = TxQueue::with_classes(1024, 1514, 65549, 1 << 20, 256 << 10);
        let mut big = 0;
        while q.has_room() {
            assert!(q.push(65549, |_| ()).is_some());
            big += 1;
        }
        assert_eq!(big, ((1 << 20) - (256 << 10)) / 65549);
        // Small frames still fit, up to the byte bound.
        let room = q.room();
        assert!(room >= (256 << 10) / 1514);
        for _ in 0..room {
            assert!(q.push(100, |_| ()).is_some());
        }
        assert!(q.push(100, |_| ()).is_none());
        // Buffers are recycled by size and the byte count returns to zero.
        while !q.is_empty() {
            q.pop_front();
        }
        assert!(q.has_room());
        assert_eq!(q.room(), (1 << 20) / 1514);
    }
}
