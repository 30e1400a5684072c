//! Zero-copy views of the parts of a DNS message the relay reads: the fixed
//! 12-byte header and the question section.
//!
//! The style follows `smoltcp::wire`: [`Header`] wraps any `T: AsRef<[u8]>`,
//! `new_unchecked` / `new_checked` / `check_len` guard the length once, and
//! field offsets live in a private `field` module of `Range<usize>` constants.
//! **Nothing in this module panics on any input once `check_len()` has passed**
//! (and the name and question parsers check every index themselves, so they
//! never panic at all). Nothing here allocates: names are flattened into a
//! fixed 255-byte [`NameBuf`] on the stack.
//!
//! Only the header and the question are understood. Answer, authority and
//! additional records (EDNS OPT, DNSSEC RRs, anything unknown) are opaque
//! bytes to the relay, which is why they pass through untouched.

use core::fmt;

/// Length of the fixed DNS header (RFC 1035 §4.1.1), in bytes.
pub const HEADER_LEN: usize = 12;

/// Longest domain name on the wire, length octets and root label included
/// (RFC 1035 §2.3.4), in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Longest single label (RFC 1035 §2.3.4), in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Most compression pointers followed while reading one name. Every pointer
/// must also jump strictly before everything read so far, which alone ends
/// every loop; this cap is the second, independent bound.
pub const MAX_POINTER_HOPS: usize = 32;

/// Smallest possible question: root name (1) + QTYPE (2) + QCLASS (2).
pub const MIN_QUESTION_LEN: usize = 5;

/// Smallest possible resource record: root name (1) + TYPE, CLASS (4) + TTL (4)
/// + RDLENGTH (2).
pub const MIN_RECORD_LEN: usize = 11;

mod field {
    use core::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const FLAGS: Range<usize> = 2..4;
    pub const QDCOUNT: Range<usize> = 4..6;
    pub const ANCOUNT: Range<usize> = 6..8;
    pub const NSCOUNT: Range<usize> = 8..10;
    pub const ARCOUNT: Range<usize> = 10..12;
}

/// Bits of the 16-bit flags word (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
pub mod flags {
    /// Query (0) or response (1).
    pub const QR: u16 = 0x8000;
    /// Mask of the 4-bit opcode, shifted left by [`OPCODE_SHIFT`].
    pub const OPCODE_MASK: u16 = 0x7800;
    /// Shift of the opcode inside the flags word.
    pub const OPCODE_SHIFT: u16 = 11;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Authentic data (DNSSEC).
    pub const AD: u16 = 0x0020;
    /// Checking disabled (DNSSEC).
    pub const CD: u16 = 0x0010;
    /// Mask of the 4-bit response code.
    pub const RCODE_MASK: u16 = 0x000f;
}

/// Opcode values used by the relay.
pub mod opcode {
    /// Standard query.
    pub const QUERY: u8 = 0;
}

/// Response codes used by the relay.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// Format error.
    pub const FORMERR: u8 = 1;
}

/// Record types used by the relay.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Text strings.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// Any type (QTYPE only).
    pub const ANY: u16 = 255;
}

/// Record classes used by the relay.
pub mod class {
    /// Internet.
    pub const IN: u16 = 1;
}

/// The buffer is shorter than the 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shorter than the DNS header")
    }
}

impl std::error::Error for Truncated {}

/// A read-only or read-write view of the DNS header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

fn get_u16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    match b.get(r) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

fn put_u16(b: &mut [u8], r: core::ops::Range<usize>, v: u16) {
    if let Some(s) = b.get_mut(r) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` without checking its length. Getters on a too-short
    /// buffer return 0 instead of panicking; use [`Header::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Header { buffer }
    }

    /// Wraps `buffer` after [`Header::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let h = Header::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Checks that the buffer holds at least the 12-byte header.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Transaction id.
    pub fn id(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ID)
    }

    /// The whole flags word.
    pub fn flags(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::FLAGS)
    }

    /// QR: true for a response.
    pub fn is_response(&self) -> bool {
        self.flags() & flags::QR != 0
    }

    /// The 4-bit opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags() & flags::OPCODE_MASK) >> flags::OPCODE_SHIFT) as u8
    }

    /// TC: the message was truncated.
    pub fn is_truncated(&self) -> bool {
        self.flags() & flags::TC != 0
    }

    /// RD: recursion desired.
    pub fn recursion_desired(&self) -> bool {
        self.flags() & flags::RD != 0
    }

    /// The 4-bit response code (EDNS extended bits are in the OPT record and
    /// not read here).
    pub fn rcode(&self) -> u8 {
        (self.flags() & flags::RCODE_MASK) as u8
    }

    /// Number of questions.
    pub fn qdcount(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::QDCOUNT)
    }

    /// Number of answer records.
    pub fn ancount(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ANCOUNT)
    }

    /// Number of authority records.
    pub fn nscount(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::NSCOUNT)
    }

    /// Number of additional records (EDNS OPT included).
    pub fn arcount(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ARCOUNT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the transaction id. This is the only byte the relay rewrites.
    pub fn set_id(&mut self, id: u16) {
        put_u16(self.buffer.as_mut(), field::ID, id)
    }

    /// Sets the whole flags word.
    pub fn set_flags(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::FLAGS, v)
    }

    /// Sets the question count.
    pub fn set_qdcount(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::QDCOUNT, v)
    }

    /// Sets the answer count.
    pub fn set_ancount(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::ANCOUNT, v)
    }

    /// Sets the authority count.
    pub fn set_nscount(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::NSCOUNT, v)
    }

    /// Sets the additional count.
    pub fn set_arcount(&mut self, v: u16) {
        put_u16(self.buffer.as_mut(), field::ARCOUNT, v)
    }
}

/// Why a name (or the question holding it) could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameError {
    /// The message ends inside the name, or inside QTYPE/QCLASS.
    Truncated,
    /// A label type other than a plain label or a pointer (0x40/0x80 prefixes).
    BadLabelType,
    /// The flattened name exceeds 255 bytes.
    TooLong,
    /// A pointer lands inside the header or outside the message.
    PointerOutOfRange,
    /// A pointer does not jump strictly backwards of everything read so far,
    /// or there are too many of them: a compression loop.
    PointerLoop,
}

impl NameError {
    /// A short, stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            NameError::Truncated => "name_truncated",
            NameError::BadLabelType => "name_bad_label_type",
            NameError::TooLong => "name_too_long",
            NameError::PointerOutOfRange => "name_pointer_out_of_range",
            NameError::PointerLoop => "name_pointer_loop",
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for NameError {}

/// A domain name flattened to uncompressed wire format (length-prefixed
/// labels ending in the root label), case as received. Fixed size, no heap.
#[derive(Clone, Copy)]
pub struct NameBuf {
    bytes: [u8; MAX_NAME_LEN],
    len: usize,
}

impl Default for NameBuf {
    fn default() -> Self {
        NameBuf {
            bytes: [0; MAX_NAME_LEN],
            len: 0,
        }
    }
}

impl NameBuf {
    /// The uncompressed wire form, root label included.
    pub fn as_wire(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    /// Case-insensitive (ASCII) comparison with another wire-form name.
    /// Length octets are at most 63, below every ASCII letter, so folding them
    /// is harmless.
    pub fn eq_ignore_case(&self, wire: &[u8]) -> bool {
        self.as_wire().eq_ignore_ascii_case(wire)
    }

    /// Iterates over the labels (without the root label).
    pub fn labels(&self) -> Labels<'_> {
        Labels {
            rest: self.as_wire(),
        }
    }
}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NameBuf({self})")
    }
}

/// Dotted presentation form with a trailing dot; bytes outside printable
/// ASCII, dots and backslashes inside labels are escaped as `\DDD`.
impl fmt::Display for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for label in self.labels() {
            any = true;
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
        }
        if !any {
            f.write_str(".")?;
        }
        Ok(())
    }
}

/// Iterator over the labels of a [`NameBuf`].
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            self.rest = &[];
            return None;
        }
        let (label, rest) = tail.split_at(len);
        self.rest = rest;
        Some(label)
    }
}

/// Reads the possibly compressed name starting at `start` in the whole
/// message `msg`, flattens it into `out`, and returns the offset just after
/// the name *where it started* (after the first pointer, if any).
///
/// Protections: labels ≤ 63 bytes, flattened name ≤ 255 bytes, pointers must
/// land at or after the header and strictly before the lowest offset read so
/// far (so every chain of pointers ends), and at most [`MAX_POINTER_HOPS`].
pub fn parse_name(msg: &[u8], start: usize, out: &mut NameBuf) -> Result<usize, NameError> {
    out.len = 0;
    let mut pos = start;
    // Lowest offset read so far: every pointer must jump below it.
    let mut low = start;
    let mut end: Option<usize> = None;
    let mut hops = 0usize;
    loop {
        let &len = msg.get(pos).ok_or(NameError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                let n = usize::from(len);
                let label = msg.get(pos + 1..pos + 1 + n).ok_or(NameError::Truncated)?;
                let dst = out
                    .bytes
                    .get_mut(out.len..out.len + 1 + n)
                    .ok_or(NameError::TooLong)?;
                if let Some((first, rest)) = dst.split_first_mut() {
                    *first = len;
                    rest.copy_from_slice(label);
                }
                out.len += 1 + n;
                pos += 1 + n;
                if n == 0 {
                    return Ok(end.unwrap_or(pos));
                }
            }
            0xc0 => {
                let &lo = msg.get(pos + 1).ok_or(NameError::Truncated)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, lo]));
                if end.is_none() {
                    end = Some(pos + 2);
                }
                if target < HEADER_LEN || target >= msg.len() {
                    return Err(NameError::PointerOutOfRange);
                }
                hops += 1;
                if target >= low || hops > MAX_POINTER_HOPS {
                    return Err(NameError::PointerLoop);
                }
                low = target;
                pos = target;
            }
            _ => return Err(NameError::BadLabelType),
        }
    }
}

/// One parsed question entry.
#[derive(Debug, Clone, Copy)]
pub struct Question {
    /// The flattened QNAME, case as received.
    pub name: NameBuf,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// Offset just after this question in the message.
    pub end: usize,
}

impl Question {
    /// Parses the question starting at `start` of the whole message `msg`.
    pub fn parse(msg: &[u8], start: usize) -> Result<Question, NameError> {
        let mut name = NameBuf::default();
        let after = parse_name(msg, start, &mut name)?;
        let tail = msg.get(after..after + 4).ok_or(NameError::Truncated)?;
        let (qtype, qclass) = match tail {
            &[a, b, c, d] => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
            _ => return Err(NameError::Truncated),
        };
        Ok(Question {
            name,
            qtype,
            qclass,
            end: after + 4,
        })
    }
}

/// Encodes a dotted name (`"host.usernet.internal"`, trailing dot optional)
/// into uncompressed wire form. Returns `None` for an empty label, a label
/// over 63 bytes or a name over 255 bytes. The root is `"."` or `""`.
pub fn encode_name(dotted: &str) -> Option<NameBuf> {
    let mut out = NameBuf::default();
    let trimmed = dotted.strip_suffix('.').unwrap_or(dotted);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            let n = label.len();
            if n == 0 || n > MAX_LABEL_LEN {
                return None;
            }
            let dst = out.bytes.get_mut(out.len..out.len + 1 + n)?;
            let (first, rest) = dst.split_first_mut()?;
            *first = n as u8;
            rest.copy_from_slice(label.as_bytes());
            out.len += 1 + n;
        }
    }
    *out.bytes.get_mut(out.len)? = 0;
    out.len += 1;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    static A_QUERY: &[u8; 57] = include_bytes!("testdata/a_query_cookie.bin");
    static A_ANSWER: &[u8; 61] = include_bytes!("testdata/a_answer.bin");
    static TC_ANSWER: &[u8; 462] = include_bytes!("testdata/tc_answer.bin");

    #[test]
    fn header_fields_of_dig_query() {
        let h = Header::new_checked(&A_QUERY[..]).unwrap();
        assert_eq!(h.id(), 0x5e9b);
        assert!(!h.is_response());
        assert_eq!(h.opcode(), 0);
        assert!(h.recursion_desired());
        assert_eq!(
            (h.qdcount(), h.ancount(), h.nscount(), h.arcount()),
            (1, 0, 0, 1)
        );
        let q = Question::parse(A_QUERY, HEADER_LEN).unwrap();
        assert_eq!(q.name.to_string(), "www.example.test.");
        assert_eq!((q.qtype, q.qclass, q.end), (rtype::A, class::IN, 34));
    }

    #[test]
    fn header_fields_of_tc_answer() {
        let h = Header::new_checked(&TC_ANSWER[..]).unwrap();
        assert!(h.is_response());
        assert!(h.is_truncated());
        assert_eq!(h.ancount(), 2);
    }

    #[test]
    fn short_header_rejected() {
        assert_eq!(Header::new_checked(&[0u8; 11][..]).err(), Some(Truncated));
        let h = Header::new_unchecked(&[1u8][..]);
        assert_eq!(h.id(), 0);
    }

    #[test]
    fn set_id_touches_only_two_bytes() {
        let mut b = *A_QUERY;
        Header::new_unchecked(&mut b[..]).set_id(0x1234);
        assert_eq!(&b[..2], &[0x12, 0x34]);
        assert_eq!(&b[2..], &A_QUERY[2..]);
    }

    #[test]
    fn compressed_answer_name() {
        // The answer record's owner is the pointer c00c back to the question.
        let q = Question::parse(A_ANSWER, HEADER_LEN).unwrap();
        assert_eq!(&A_ANSWER[q.end..q.end + 2], &[0xc0, 0x0c]);
        let mut n = NameBuf::default();
        let end = parse_name(A_ANSWER, q.end, &mut n).unwrap();
        assert_eq!(end, q.end + 2);
        assert_eq!(n.to_string(), "www.example.test.");
    }

    fn msg(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn pointer_to_itself_is_a_loop() {
        let m = msg(&[0xc0, 12]);
        let mut n = NameBuf::default();
        assert_eq!(parse_name(&m, 12, &mut n), Err(NameError::PointerLoop));
    }

    #[test]
    fn two_pointer_loop() {
        // 12: "a" ptr->17 ; 17: ptr->12
        let m = msg(&[1, b'a', 0xc0, 17, 0, 0xc0, 12]);
        let mut n = NameBuf::default();
        assert_eq!(parse_name(&m, 12, &mut n), Err(NameError::PointerLoop));
        assert_eq!(parse_name(&m, 17, &mut n), Err(NameError::PointerLoop));
    }

    #[test]
    fn pointer_into_header_or_beyond() {
        let m = msg(&[0xc0, 3]);
        let mut n = NameBuf::default();
        assert_eq!(
            parse_name(&m, 12, &mut n),
            Err(NameError::PointerOutOfRange)
        );
        let m = msg(&[0xff, 0xff]);
        assert_eq!(
            parse_name(&m, 12, &mut n),
            Err(NameError::PointerOutOfRange)
        );
    }

    #[test]
    fn bad_label_types_and_truncation() {
        let mut n = NameBuf::default();
        assert_eq!(
            parse_name(&msg(&[0x41, 0]), 12, &mut n),
            Err(NameError::BadLabelType)
        );
        assert_eq!(
            parse_name(&msg(&[0x81, 0]), 12, &mut n),
            Err(NameError::BadLabelType)
        );
        assert_eq!(
            parse_name(&msg(&[3, b'a', b'b']), 12, &mut n),
            Err(NameError::Truncated)
        );
        assert_eq!(
            parse_name(&msg(&[1, b'a']), 12, &mut n),
            Err(NameError::Truncated)
        );
        assert_eq!(
            parse_name(&msg(&[0xc0]), 12, &mut n),
            Err(NameError::Truncated)
        );
        assert_eq!(
            Question::parse(&msg(&[0, 0, 1, 0]), 12).err(),
            Some(NameError::Truncated)
        );
    }

    #[test]
    fn name_too_long() {
        let mut body = Vec::new();
        for _ in 0..5 {
            body.push(63);
            body.extend_from_slice(&[b'x'; 63]);
        }
        body.push(0);
        let mut n = NameBuf::default();
        assert_eq!(parse_name(&msg(&body), 12, &mut n), Err(NameError::TooLong));
        // 4 * 64 - 1 = 255 with the root label: 3 labels of 63 + one of 61.
        let mut body = Vec::new();
        for _ in 0..3 {
            body.push(63);
            body.extend_from_slice(&[b'x'; 63]);
        }
        body.push(61);
        body.extend_from_slice(&[b'y'; 61]);
        body.push(0);
        assert_eq!(parse_name(&msg(&body), 12, &mut n), Ok(12 + 255));
        assert_eq!(n.as_wire().len(), 255);
    }

    #[test]
    fn long_backward_chain_is_bounded() {
        // Each name at 12 + 2k is a pointer to 12 + 2(k-1); the first is root.
        let mut body = vec![0u8, 0];
        for k in 1..100u16 {
            let t = 12 + 2 * (k - 1);
            body.extend_from_slice(&(0xc000 | t).to_be_bytes());
        }
        let m = msg(&body);
        let mut n = NameBuf::default();
        assert_eq!(parse_name(&m, 12 + 2 * 10, &mut n), Ok(12 + 22));
        assert_eq!(
            parse_name(&m, 12 + 2 * 99, &mut n),
            Err(NameError::PointerLoop)
        );
    }

    #[test]
    fn encode_and_display() {
        let n = encode_name("Host.usernet.internal.").unwrap();
        assert_eq!(n.as_wire(), b"\x04Host\x07usernet\x08internal\x00");
        assert!(n.eq_ignore_case(b"\x04HOST\x07UserNet\x08internal\x00"));
        assert_eq!(encode_name("").unwrap().as_wire(), &[0]);
        assert_eq!(encode_name(".").unwrap().to_string(), ".");
        assert!(encode_name("a..b").is_none());
        assert!(encode_name(&"x".repeat(64)).is_none());
        let mut weird = NameBuf::default();
        parse_name(&msg(&[3, b'a', b'.', 0xff, 0]), 12, &mut weird).unwrap();
        assert_eq!(weird.to_string(), "a\\046\\255.");
    }
}
