//! Fuzz entry point for the QEMU stream decoder ([`crate::port_stream::StreamDecoder`]).
//!
//! Input: byte 0 picks the decoder's maximum frame (14 + 256·b, or 65535 for 255),
//! byte 1 seeds the chunk sizes the rest is fed in (so the same stream is split at
//! varying points); the rest is the stream. Checked: no panic, the buffer never exceeds
//! its fixed capacity, every frame is within bounds, and the frames and the error are
//! exactly those of a straightforward reference parse of the whole stream.

use crate::port_stream::{FramingError, STREAM_MAX_FRAME, STREAM_MIN_FRAME, StreamDecoder};

/// Reference: parse the whole stream at once.
fn reference(data: &[u8], max: usize) -> (Vec<&[u8]>, Option<FramingError>) {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((p, body)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*p);
        let n = len as usize;
        if n < STREAM_MIN_FRAME {
            return (out, Some(FramingError::TooShort(len)));
        }
        if n > max {
            return (out, Some(FramingError::TooLong(len, max)));
        }
        if body.len() < n {
            break;
        }
        out.push(&body[..n]);
        rest = &body[n..];
    }
    (out, None)
}

/// Run `data` through a decoder fed in varying chunks; panic on any broken invariant.
pub fn stream_decoder(data: &[u8]) {
    let [b0, b1, stream @ ..] = data else {
        return;
    };
    let max = if *b0 == 255 {
        STREAM_MAX_FRAME
    } else {
        STREAM_MIN_FRAME + 256 * usize::from(*b0)
    };
    let mut d = StreamDecoder::new(max);
    let cap = d.capacity();
    let (want, want_err) = reference(stream, max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut err = None;
    let mut seed = u32::from(*b1) | 1;
    let mut rest = stream;
    'feed: while !rest.is_empty() {
        // xorshift32: chunk sizes from 1 byte to a few KiB.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let chunk = 1 + (seed as usize % if seed & 0x100 != 0 { 16 } else { 5000 });
        let take = chunk.min(rest.len());
        let mut piece = &rest[..take];
        rest = &rest[take..];
        while !piece.is_empty() {
            let n = d.push(piece);
            piece = &piece[n..];
            assert!(d.buffered() <= cap, "decoder grew beyond its buffer");
            let mut popped = 0;
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        assert!((STREAM_MIN_FRAME..=max).contains(&f.len()));
                        got.push(f.to_vec());
                        popped += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break 'feed;
                    }
                }
            }
            assert!(
                n > 0 || popped > 0,
                "decoder made no progress: buffered {} of {cap}",
                d.buffered()
            );
        }
    }
    assert_eq!(err, want_err);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w);
    }
    d.reset();
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.next_frame(), Ok(None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_corpus_shapes() {
        let mut s = vec![255, 7];
        for len in [14u32, 60, 1514, 65535, 20] {
            s.extend_from_slice(&len.to_be_bytes());
            s.extend(std::iter::repeat_n(len as u8, len as usize));
        }
        stream_decoder(&s);
        s.extend_from_slice(&3u32.to_be_bytes());
        stream_decoder(&s);
        let mut small = vec![0, 1];
        small.extend_from_slice(&15u32.to_be_bytes());
        stream_decoder(&small);
        stream_decoder(&[]);
        stream_decoder(&[1]);
    }

    #[test]
    fn replays_the_committed_corpus() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/stream_decoder");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                stream_decoder(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
        assert!(n >= 5, "corpus {} has {n} files", dir.display());
    }

    #[test]
    fn random_streams() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..300 {
            let mut v = vec![(round % 256) as u8, (round * 7 % 256) as u8];
            let frames = 1 + round % 20;
            for _ in 0..frames {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = 14 + (x % 3000) as u32;
                v.extend_from_slice(&len.to_be_bytes());
                v.extend(std::iter::repeat_n((x >> 8) as u8, len as usize));
            }
            if round % 3 == 0 {
                v.truncate(v.len() - (x % 50) as usize);
            }
            stream_decoder(&v);
        }
    }
}
