//! DHCPv6 message format (RFC 8415 §8, §21): a borrowed view of a client message and a
//! writer that builds a reply in the caller's buffer.
//!
//! A client message is a message type, a three-byte transaction id and a list of
//! options, each a 16-bit code, a 16-bit length and that many bytes; IA_NA and IAADDR
//! options carry further options inside. [`Message::parse`] walks every level once and
//! refuses the message if any option runs past its container or has the wrong length,
//! so the iterators handed out afterwards ([`Message::options`], [`IaNa::addrs`]) never
//! meet a malformed byte and simply stop at the end.

use std::net::Ipv6Addr;

/// Option codes this crate reads or writes (RFC 8415 §21, RFC 3646).
pub(crate) mod opt {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_TA: u16 = 4;
    pub const IAADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const PREFERENCE: u16 = 7;
    pub const STATUS_CODE: u16 = 13;
    pub const RAPID_COMMIT: u16 = 14;
    pub const DNS_SERVERS: u16 = 23;
    pub const DOMAIN_LIST: u16 = 24;
    pub const IA_PD: u16 = 25;
    pub const INFORMATION_REFRESH_TIME: u16 = 32;
}

/// Status codes (RFC 8415 §21.13).
pub(crate) mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NO_BINDING: u16 = 3;
    pub const NOT_ON_LINK: u16 = 4;
    pub const NO_PREFIX_AVAIL: u16 = 6;
}

/// The longest DUID a client may send: 128 bytes plus the two-byte type (RFC 8415 §11.1).
pub(crate) const MAX_DUID_LEN: usize = 130;

/// Fixed part of an IA_NA: IAID, T1, T2.
const IA_NA_FIXED: usize = 12;
/// Fixed part of an IAADDR: address, preferred and valid lifetimes.
const IAADDR_FIXED: usize = 24;

/// DHCPv6 message type (RFC 8415 §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType6 {
    /// Client looking for servers.
    Solicit = 1,
    /// Server offering to serve, answering a Solicit.
    Advertise = 2,
    /// Client asking for addresses and parameters.
    Request = 3,
    /// Client checking that its addresses still suit the link.
    Confirm = 4,
    /// Client extending its lease with the server that gave it.
    Renew = 5,
    /// Client extending its lease with any server.
    Rebind = 6,
    /// Server answer to every other client message.
    Reply = 7,
    /// Client giving addresses back.
    Release = 8,
    /// Client reporting an address already in use on the link.
    Decline = 9,
    /// Server asking the client to renew or ask again.
    Reconfigure = 10,
    /// Client asking for parameters only (stateless DHCPv6).
    InformationRequest = 11,
    /// Relay agent forwarding a client message.
    RelayForw = 12,
    /// Server answer through a relay agent.
    RelayRepl = 13,
}

impl MessageType6 {
    /// The message type for a first-byte value, if it is one of RFC 8415's thirteen.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Solicit,
            2 => Self::Advertise,
            3 => Self::Request,
            4 => Self::Confirm,
            5 => Self::Renew,
            6 => Self::Rebind,
            7 => Self::Reply,
            8 => Self::Release,
            9 => Self::Decline,
            10 => Self::Reconfigure,
            11 => Self::InformationRequest,
            12 => Self::RelayForw,
            13 => Self::RelayRepl,
            _ => return None,
        })
    }
}

/// The message is not a readable DHCPv6 client message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Iterates over `(code, value)` of a well-formed option list; stops at the first
/// byte that does not start a whole option.
#[derive(Clone, Debug)]
pub(crate) struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Options<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Options { rest: buf }
    }

    /// Checks that `buf` is exactly a sequence of whole options.
    fn check(buf: &[u8]) -> Result<(), Malformed> {
        let mut it = Options::new(buf);
        while it.next().is_some() {}
        if it.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let code = u16::from_be_bytes([*self.rest.first()?, *self.rest.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*self.rest.get(2)?, *self.rest.get(3)?]));
        let data = self.rest.get(4..4 + len)?;
        self.rest = self.rest.get(4 + len..).unwrap_or_default();
        Some((code, data))
    }
}

fn be32(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_be_bytes)
}

/// An IA_NA option (RFC 8415 §21.4), already checked by [`Message::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IaNa<'a> {
    pub iaid: u32,
    options: &'a [u8],
}

impl<'a> IaNa<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let options = data.get(IA_NA_FIXED..).ok_or(Malformed)?;
        Options::check(options)?;
        for (code, inner) in Options::new(options) {
            if code == opt::IAADDR {
                Options::check(inner.get(IAADDR_FIXED..).ok_or(Malformed)?)?;
            }
        }
        Ok(IaNa {
            iaid: be32(data, 0),
            options,
        })
    }

    /// The addresses the client lists in this IA.
    pub fn addrs(&self) -> impl Iterator<Item = Ipv6Addr> + 'a {
        Options::new(self.options)
            .filter(|&(code, _)| code == opt::IAADDR)
            .filter_map(|(_, d)| {
                let octets = <[u8; 16]>::try_from(d.get(..16)?).ok()?;
                Some(Ipv6Addr::from(octets))
            })
    }
}

/// The parts of a client message the server acts on, borrowed from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    /// Raw message type byte.
    pub msg_type: u8,
    pub xid: [u8; 3],
    pub client_id: Option<&'a [u8]>,
    pub server_id: Option<&'a [u8]>,
    /// Option request option: pairs of bytes, already checked to be even in length.
    pub oro: Option<&'a [u8]>,
    pub rapid_commit: bool,
    /// Whether any IA option (IA_NA, IA_TA, IA_PD) is present.
    pub has_ia: bool,
    options: &'a [u8],
}

impl<'a> Message<'a> {
    /// Reads a client message. Relay messages (whose layout differs) are returned with
    /// their type only; the caller ignores them.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Malformed> {
        let (&msg_type, rest) = buf.split_first().ok_or(Malformed)?;
        let xid = <[u8; 3]>::try_from(rest.get(..3).ok_or(Malformed)?).map_err(|_| Malformed)?;
        let options = rest.get(3..).unwrap_or_default();
        let mut m = Message {
            msg_type,
            xid,
            client_id: None,
            server_id: None,
            oro: None,
            rapid_commit: false,
            has_ia: false,
            options,
        };
        if matches!(
            MessageType6::from_u8(msg_type),
            Some(MessageType6::RelayForw | MessageType6::RelayRepl)
        ) {
            return Ok(m);
        }
        Options::check(options)?;
        for (code, data) in Options::new(options) {
            match code {
                // RFC 8415 §16: exactly one of each; a second copy is a broken message.
                opt::CLIENTID | opt::SERVERID if !(2..=MAX_DUID_LEN).contains(&data.len()) => {
                    return Err(Malformed);
                }
                opt::CLIENTID if m.client_id.replace(data).is_some() => return Err(Malformed),
                opt::SERVERID if m.server_id.replace(data).is_some() => return Err(Malformed),
                opt::ORO if data.len() % 2 != 0 => return Err(Malformed),
                opt::ORO => m.oro = m.oro.or(Some(data)),
                opt::RAPID_COMMIT => m.rapid_commit = true,
                opt::IA_NA => {
                    IaNa::parse(data)?;
                    m.has_ia = true;
                }
                opt::IA_TA | opt::IA_PD => {
                    if data.len() < 4 {
                        return Err(Malformed);
                    }
                    m.has_ia = true;
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Every top-level option, in order.
    pub fn options(&self) -> Options<'a> {
        Options::new(self.options)
    }

    /// The IA_NA options, in order.
    pub fn ia_nas(&self) -> impl Iterator<Item = IaNa<'a>> + 'a {
        self.options()
            .filter(|&(code, _)| code == opt::IA_NA)
            .filter_map(|(_, d)| IaNa::parse(d).ok())
    }

    /// Whether the option request option lists `code`; `None` without an ORO.
    pub fn requests(&self, code: u16) -> Option<bool> {
        self.oro.map(|oro| {
            oro.chunks_exact(2)
                .any(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]) == code)
        })
    }
}

/// Emits a reply into a caller buffer, never past its end.
///
/// Options are written whole or not at all: [`Writer::option`] and [`Writer::nested`]
/// report `false` and leave the buffer as it was when an option does not fit, so the
/// caller can drop an optional one and carry on.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// Starts a reply of type `mt` with transaction id `xid`; `None` if not even the
    /// four-byte header fits.
    pub fn new(buf: &'b mut [u8], mt: MessageType6, xid: [u8; 3]) -> Option<Self> {
        let head = buf.get_mut(..4)?;
        head[0] = mt as u8;
        head[1..].copy_from_slice(&xid);
        Some(Writer { buf, len: 4 })
    }

    fn put(&mut self, data: &[u8]) -> bool {
        match self.buf.get_mut(self.len..self.len + data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                self.len += data.len();
                true
            }
            None => false,
        }
    }

    /// Appends option `code` whose value is the concatenation of `parts`.
    pub fn option(&mut self, code: u16, parts: &[&[u8]]) -> bool {
        self.nested(code, |w| parts.iter().all(|p| w.put(p)))
    }

    /// Appends option `code` whose value `body` writes (fixed fields via
    /// [`Writer::raw`], then inner options). If `body` returns `false` or the option
    /// outgrows 65535 bytes, everything it wrote is taken back and `false` returned.
    pub fn nested(&mut self, code: u16, body: impl FnOnce(&mut Self) -> bool) -> bool {
        let start = self.len;
        if !self.put(&code.to_be_bytes()) || !self.put(&[0, 0]) {
            self.len = start;
            return false;
        }
        let ok = body(self);
        let len = u16::try_from(self.len - start - 4);
        match (ok, len) {
            (true, Ok(len)) => {
                if let Some(dst) = self.buf.get_mut(start + 2..start + 4) {
                    dst.copy_from_slice(&len.to_be_bytes());
                }
                true
            }
            _ => {
                self.len = start;
                false
            }
        }
    }

    /// Appends raw bytes (the fixed fields of a nested option).
    pub fn raw(&mut self, data: &[u8]) -> bool {
        self.put(data)
    }

    /// The message length so far.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v6::testdata::{DHCLIENT6_INFO_REQUEST, DHCLIENT6_SOLICIT};

    #[test]
    fn parses_real_dhclient_solicit() {
        let m = Message::parse(&DHCLIENT6_SOLICIT).unwrap();
        assert_eq!(m.msg_type, MessageType6::Solicit as u8);
        assert!(m.client_id.is_some());
        assert_eq!(m.server_id, None);
        assert!(!m.rapid_commit);
        assert_eq!(m.requests(opt::DNS_SERVERS), Some(true));
        assert_eq!(m.requests(opt::DOMAIN_LIST), Some(true));
        let ias: Vec<_> = m.ia_nas().collect();
        assert_eq!(ias.len(), 1);
        assert_eq!(ias[0].addrs().count(), 0);
    }

    #[test]
    fn parses_real_dhclient_information_request() {
        let m = Message::parse(&DHCLIENT6_INFO_REQUEST).unwrap();
        assert_eq!(m.msg_type, MessageType6::InformationRequest as u8);
        assert!(!m.has_ia);
        assert_eq!(m.ia_nas().count(), 0);
        assert_eq!(m.requests(opt::DNS_SERVERS), Some(true));
    }

    #[test]
    fn truncated_and_duplicated_options_are_malformed() {
        let good = [1, 0, 0, 1, 0, 1, 0, 2, 0, 3];
        assert!(Message::parse(&good).is_ok());
        for n in 0..good.len() {
            if n != 4 {
                assert_eq!(Message::parse(&good[..n]), Err(Malformed), "{n} bytes");
            }
        }
        let twice = [1, 0, 0, 1, 0, 1, 0, 2, 0, 3, 0, 1, 0, 2, 0, 3];
        assert_eq!(Message::parse(&twice), Err(Malformed));
        // An IA_NA whose IAADDR's own options overrun it.
        let bad_ia = [
            3, 0, 0, 1, 0, 3, 0, 44, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 28, 0xfd, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
        ];
        assert_eq!(Message::parse(&bad_ia), Err(Malformed));
        // Odd-length ORO.
        assert_eq!(
            Message::parse(&[11, 0, 0, 1, 0, 6, 0, 1, 23]),
            Err(Malformed)
        );
    }

    #[test]
    fn writer_takes_back_what_does_not_fit() {
        let mut out = [0x55u8; 20];
        let mut w = Writer::new(&mut out, MessageType6::Reply, [1, 2, 3]).unwrap();
        assert!(w.option(opt::PREFERENCE, &[&[255]]));
        assert!(!w.option(opt::DNS_SERVERS, &[&[0; 16]]));
        assert!(!w.nested(opt::IA_NA, |w| w.raw(&[0; 8]) && w.raw(&[0; 8])));
        assert!(w.option(opt::RAPID_COMMIT, &[]));
        let len = w.finish();
        assert_eq!(len, 13);
        assert_eq!(&out[..13], &[7, 1, 2, 3, 0, 7, 0, 1, 255, 0, 14, 0, 0]);
        assert!(Writer::new(&mut out[..3], MessageType6::Reply, [0; 3]).is_none());
    }
}
