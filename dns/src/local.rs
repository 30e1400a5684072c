//! Answers for the engine's own names (`host.usernet.internal` and friends).
//!
//! This is the only place the crate writes a DNS message of its own. The
//! answer is minimal and fixed in shape: the query's header id and question
//! copied verbatim (so the guest's letter case and any 0x20 randomisation
//! survive), QR/AA/RA set, RD and CD echoed, NOERROR, and zero, one or two
//! address records whose owner is a pointer to the question. No EDNS OPT is
//! added: a responder without EDNS support is legal (RFC 6891 §7).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{HEADER_LEN, Header, Question, class, flags, rtype};

/// TTL of local answers, in seconds. Zero: the gateway address can change
/// with the configuration, and a lookup costs the guest one local round trip.
pub const LOCAL_TTL_SECS: u32 = 0;

/// Pointer to offset 12, where the (only) question's name starts.
const NAME_PTR: [u8; 2] = [0xc0, HEADER_LEN as u8];

/// Bytes of one A record with a compressed owner: ptr(2) type(2) class(2)
/// ttl(4) rdlength(2) rdata(4).
const A_RECORD_LEN: usize = 16;
/// Bytes of one AAAA record with a compressed owner.
const AAAA_RECORD_LEN: usize = 28;

/// Writes the local answer to `query` (already validated: one question,
/// parsed as `q`) into `out`. Returns its length, or `None` if `out` is too
/// small.
pub(crate) fn write_answer(
    query: &[u8],
    q: &Question,
    addr4: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
    out: &mut [u8],
) -> Option<usize> {
    let want_a = matches!(q.qtype, rtype::A | rtype::ANY);
    let aaaa = match q.qtype {
        rtype::AAAA | rtype::ANY => addr6,
        _ => None,
    };
    let question = query.get(HEADER_LEN..q.end)?;
    let total = HEADER_LEN
        + question.len()
        + if want_a { A_RECORD_LEN } else { 0 }
        + if aaaa.is_some() { AAAA_RECORD_LEN } else { 0 };
    let buf = out.get_mut(..total)?;

    let qh = Header::new_unchecked(query);
    let echoed = qh.flags() & (flags::RD | flags::CD);
    let mut w = Writer { buf, pos: 0 };
    w.put(&qh.id().to_be_bytes());
    w.put(&(flags::QR | flags::AA | flags::RA | echoed).to_be_bytes());
    let ancount = u16::from(want_a) + u16::from(aaaa.is_some());
    for count in [1, ancount, 0, 0] {
        w.put(&u16::to_be_bytes(count));
    }
    w.put(question);
    if want_a {
        w.record(rtype::A, &addr4.octets());
    }
    if let Some(a6) = aaaa {
        w.record(rtype::AAAA, &a6.octets());
    }
    Some(w.pos)
}

/// A cursor over a buffer already checked to be large enough; writes past
/// its end are ignored rather than panicking.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.pos += bytes.len();
    }

    fn record(&mut self, rtype: u16, rdata: &[u8]) {
        self.put(&NAME_PTR);
        self.put(&rtype.to_be_bytes());
        self.put(&class::IN.to_be_bytes());
        self.put(&LOCAL_TTL_SECS.to_be_bytes());
        self.put(&(rdata.len() as u16).to_be_bytes());
        self.put(rdata);
    }
}
