//! DHCPv4 message layout (RFC 2131 §2, RFC 2132): a read-only view of a client message
//! and a writer that emits a reply into the caller's buffer.
//!
//! Nothing in this module panics on any input: every read goes through `slice::get`,
//! and every write is checked against the writer's limit before it happens. Parsing
//! borrows from the input and allocates nothing; emission allocates nothing.
//!
//! Only the options the server acts on are decoded. The first occurrence of an option
//! wins; RFC 3396 concatenation of split options is not done on input (clients split
//! none of the options read here), but it is done on output for long options.
//! Option overload (52) is not followed: clients never put these options into
//! `sname`/`file`.

use std::net::Ipv4Addr;

/// BOOTP `op` of a client message.
pub(crate) const BOOTREQUEST: u8 = 1;
/// BOOTP `op` of a server message.
const BOOTREPLY: u8 = 2;
/// The DHCP magic cookie that starts the options area (RFC 2131 §3).
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Length of the fixed BOOTP header plus the magic cookie, in bytes.
pub(crate) const HEADER_LEN: usize = 240;
/// The smallest reply we send, in bytes: BOOTP's minimum message (RFC 951), which
/// some clients still expect. Shorter replies are padded with zeros.
pub(crate) const MIN_MESSAGE_LEN: usize = 300;
/// The BROADCAST bit of `flags` (RFC 2131 §2, figure 2).
pub(crate) const BROADCAST_FLAG: u16 = 0x8000;
/// Ethernet hardware type (`htype`).
pub(crate) const HTYPE_ETHERNET: u8 = 1;

/// Byte ranges of the fixed header fields.
mod field {
    use std::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const XID: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const COOKIE: Range<usize> = 236..240;
}

/// Option codes this crate reads or writes (RFC 2132, RFC 3397, RFC 3442).
pub(crate) mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const DOMAIN_SEARCH: u8 = 119;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// DHCP message type, option 53 (RFC 2132 §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Client broadcast to locate servers.
    Discover = 1,
    /// Server offer of an address, answering a DISCOVER.
    Offer = 2,
    /// Client request for offered parameters, or confirmation or extension of a lease.
    Request = 3,
    /// Client telling the server the address is already in use.
    Decline = 4,
    /// Server acknowledgement carrying the committed parameters.
    Ack = 5,
    /// Server refusal: the client's notion of its address is wrong or its lease expired.
    Nak = 6,
    /// Client giving up its lease.
    Release = 7,
    /// Client with an externally configured address asking for other parameters.
    Inform = 8,
}

impl MessageType {
    /// The message type for an option-53 value, if it is one of RFC 2131's eight.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// Why a buffer is not a readable DHCP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireError {
    /// Shorter than the fixed header plus magic cookie.
    TooShort,
    /// The magic cookie is missing: plain BOOTP, which we do not serve.
    NoCookie,
    /// An option runs past the end of the buffer, or has the wrong length.
    BadOption,
}

/// The fields of a client message that the server acts on, borrowed from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: [u8; 4],
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: [u8; 4],
    pub chaddr: [u8; 16],
    /// Raw option 53 value; `None` for plain BOOTP.
    pub message_type: Option<u8>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub parameter_request_list: Option<&'a [u8]>,
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a [u8]>,
    pub max_message_size: Option<u16>,
}

fn array<const N: usize>(buf: &[u8], range: std::ops::Range<usize>) -> Result<[u8; N], WireError> {
    buf.get(range)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(WireError::TooShort)
}

fn exact<const N: usize>(data: &[u8]) -> Result<[u8; N], WireError> {
    <[u8; N]>::try_from(data).map_err(|_| WireError::BadOption)
}

impl<'a> Request<'a> {
    /// Reads a client message. `op` is returned as found; the caller decides what a
    /// non-request means.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::TooShort);
        }
        let byte = |i: usize| buf.get(i).copied().ok_or(WireError::TooShort);
        let mut req = Request {
            op: byte(field::OP)?,
            htype: byte(field::HTYPE)?,
            hlen: byte(field::HLEN)?,
            xid: array(buf, field::XID)?,
            flags: u16::from_be_bytes(array(buf, field::FLAGS)?),
            ciaddr: Ipv4Addr::from(array::<4>(buf, field::CIADDR)?),
            giaddr: array(buf, field::GIADDR)?,
            chaddr: array(buf, field::CHADDR)?,
            message_type: None,
            requested_ip: None,
            server_id: None,
            parameter_request_list: None,
            client_id: None,
            hostname: None,
            max_message_size: None,
        };
        if array::<4>(buf, field::COOKIE)? != MAGIC {
            return Err(WireError::NoCookie);
        }
        let mut i = HEADER_LEN;
        while let Some(&code) = buf.get(i) {
            match code {
                opt::PAD => {
                    i += 1;
                    continue;
                }
                opt::END => break,
                _ => {}
            }
            let len = usize::from(*buf.get(i + 1).ok_or(WireError::BadOption)?);
            let data = buf.get(i + 2..i + 2 + len).ok_or(WireError::BadOption)?;
            i += 2 + len;
            match code {
                opt::MESSAGE_TYPE if req.message_type.is_none() => {
                    req.message_type = Some(exact::<1>(data)?[0]);
                }
                opt::REQUESTED_IP if req.requested_ip.is_none() => {
                    req.requested_ip = Some(Ipv4Addr::from(exact::<4>(data)?));
                }
                opt::SERVER_ID if req.server_id.is_none() => {
                    req.server_id = Some(Ipv4Addr::from(exact::<4>(data)?));
                }
                opt::MAX_MESSAGE_SIZE if req.max_message_size.is_none() => {
                    req.max_message_size = Some(u16::from_be_bytes(exact::<2>(data)?));
                }
                opt::PARAMETER_REQUEST_LIST if req.parameter_request_list.is_none() => {
                    req.parameter_request_list = Some(data);
                }
                // RFC 2132 §9.14: at least a type byte and one byte of identifier.
                opt::CLIENT_ID if req.client_id.is_none() && data.len() >= 2 => {
                    req.client_id = Some(data);
                }
                opt::HOSTNAME if req.hostname.is_none() => req.hostname = Some(data),
                _ => {}
            }
        }
        Ok(req)
    }

    /// The client's Ethernet address from `chaddr`, when `htype`/`hlen` say Ethernet.
    pub fn ethernet_chaddr(&self) -> Option<[u8; 6]> {
        if self.htype != HTYPE_ETHERNET || self.hlen != 6 {
            return None;
        }
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.chaddr[..6]);
        Some(mac)
    }
}

/// The fixed-header fields of a reply that differ from the request.
pub(crate) struct ReplyHeader<'r, 'a> {
    pub request: &'r Request<'a>,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
}

/// Emits a reply into a caller buffer, never past `limit`.
///
/// Options are written whole or not at all: [`Writer::option`] reports `false` and
/// writes nothing when an option (plus the END byte still owed) would not fit, so the
/// caller can drop an optional option and carry on.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// Starts a reply: writes the fixed header and magic cookie. `None` if the buffer
    /// (cut to `limit`) cannot hold a minimal message.
    pub fn new(out: &'b mut [u8], limit: usize, header: &ReplyHeader<'_, '_>) -> Option<Self> {
        let limit = limit.min(out.len());
        let buf = out.get_mut(..limit)?;
        if buf.len() < MIN_MESSAGE_LEN {
            return None;
        }
        let req = header.request;
        buf.get_mut(..HEADER_LEN)?.fill(0);
        let mut w = Writer { buf, len: 0 };
        w.put_at(field::OP, &[BOOTREPLY, req.htype, req.hlen, 0]);
        w.put_at(field::XID.start, &req.xid);
        w.put_at(field::FLAGS.start, &req.flags.to_be_bytes());
        w.put_at(field::CIADDR.start, &header.ciaddr.octets());
        w.put_at(field::YIADDR.start, &header.yiaddr.octets());
        w.put_at(field::GIADDR.start, &req.giaddr);
        w.put_at(field::CHADDR.start, &req.chaddr);
        w.put_at(field::COOKIE.start, &MAGIC);
        w.len = HEADER_LEN;
        Some(w)
    }

    fn put_at(&mut self, at: usize, data: &[u8]) {
        if let Some(dst) = self.buf.get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Bytes `data` takes as one or more options of at most 255 bytes each
    /// (RFC 3396 splitting). An empty value still takes one option header.
    fn encoded_len(data: &[u8]) -> usize {
        let chunks = data.len().div_ceil(255).max(1);
        data.len() + 2 * chunks
    }

    /// Appends option `code` with value `data`, split per RFC 3396 if longer than
    /// 255 bytes. Returns `false`, writing nothing, if it does not fit.
    pub fn option(&mut self, code: u8, data: &[u8]) -> bool {
        let need = Self::encoded_len(data);
        // One byte stays reserved for END.
        if self.len + need + 1 > self.buf.len() {
            return false;
        }
        let mut chunks = data.chunks(255).peekable();
        if chunks.peek().is_none() {
            self.put_at(self.len, &[code, 0]);
            self.len += 2;
            return true;
        }
        for chunk in chunks {
            // `chunks(255)` yields at most 255 bytes, so the cast is exact.
            let len = u8::try_from(chunk.len()).unwrap_or(u8::MAX);
            self.put_at(self.len, &[code, len]);
            self.put_at(self.len + 2, chunk);
            self.len += 2 + chunk.len();
        }
        true
    }

    /// Writes END, pads to the BOOTP minimum, and returns the message length.
    pub fn finish(mut self) -> usize {
        self.put_at(self.len, &[opt::END]);
        self.len += 1;
        if self.len < MIN_MESSAGE_LEN {
            if let Some(pad) = self.buf.get_mut(self.len..MIN_MESSAGE_LEN) {
                pad.fill(0);
            }
            self.len = MIN_MESSAGE_LEN;
        }
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{DHCLIENT_REQUEST, UDHCPC_DISCOVER};

    #[test]
    fn parses_real_udhcpc_discover() {
        let r = Request::parse(&UDHCPC_DISCOVER).unwrap();
        assert_eq!((r.op, r.htype, r.hlen), (BOOTREQUEST, 1, 6));
        assert_eq!(r.message_type, Some(MessageType::Discover as u8));
        assert_eq!(
            r.ethernet_chaddr(),
            Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(r.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.flags, 0);
        assert_eq!(r.max_message_size, Some(576));
        assert_eq!(
            r.parameter_request_list,
            Some(&[1, 3, 6, 12, 15, 28, 42][..])
        );
        assert_eq!(r.hostname, Some(&b"guest1"[..]));
        assert_eq!(
            r.client_id,
            Some(&[1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56][..])
        );
        assert_eq!((r.requested_ip, r.server_id), (None, None));
    }

    #[test]
    fn parses_real_dhclient_request() {
        let r = Request::parse(&DHCLIENT_REQUEST).unwrap();
        assert_eq!(r.message_type, Some(MessageType::Request as u8));
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 2, 30)));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.client_id, None);
        assert_eq!(r.hostname, Some(&b"vm"[..]));
    }

    #[test]
    fn first_occurrence_wins_and_short_client_ids_are_dropped() {
        let mut m = UDHCPC_DISCOVER[..240].to_vec();
        m.extend_from_slice(&[
            53, 1, 3, 53, 1, 1, 61, 1, 7, 50, 4, 1, 2, 3, 4, 50, 4, 5, 6, 7, 8, 255,
        ]);
        let r = Request::parse(&m).unwrap();
        assert_eq!(r.message_type, Some(3));
        assert_eq!(r.client_id, None);
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(1, 2, 3, 4)));
    }

    fn header<'r, 'a>(req: &'r Request<'a>) -> ReplyHeader<'r, 'a> {
        ReplyHeader {
            request: req,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 0, 2, 15),
        }
    }

    #[test]
    fn writer_splits_long_options_at_255_bytes() {
        let req = Request::parse(&UDHCPC_DISCOVER).unwrap();
        let mut out = [0u8; 1500];
        let mut w = Writer::new(&mut out, 1500, &header(&req)).unwrap();
        let data: Vec<u8> = (0..=255u8).chain(0..10).collect(); // 266 bytes
        assert!(w.option(119, &data));
        assert!(w.option(12, &[]));
        let len = w.finish();
        assert_eq!(&out[240..242], &[119, 255]);
        assert_eq!(&out[242..497], &data[..255]);
        assert_eq!(&out[497..499], &[119, 11]);
        assert_eq!(&out[499..510], &data[255..]);
        assert_eq!(&out[510..513], &[12, 0, 255]);
        assert_eq!(len, 513);
    }

    #[test]
    fn writer_never_passes_its_limit() {
        let req = Request::parse(&UDHCPC_DISCOVER).unwrap();
        let mut out = [0x55u8; 400];
        assert!(Writer::new(&mut out, 299, &header(&req)).is_none());
        assert!(Writer::new(&mut out[..299], 1500, &header(&req)).is_none());
        let mut w = Writer::new(&mut out, 310, &header(&req)).unwrap();
        // 240 + 2 + 66 = 308, plus END = 309: fits. Another byte would not.
        assert!(!w.option(1, &[0; 68]));
        assert!(w.option(1, &[0; 67]));
        assert!(!w.option(2, &[]));
        assert_eq!(w.finish(), 310);
        assert!(
            out[310..].iter().all(|&b| b == 0x55),
            "nothing written past the limit"
        );
        assert_eq!(out[0], BOOTREPLY);
        assert_eq!(&out[16..20], &[10, 0, 2, 15]);
        assert_eq!(&out[28..44], &UDHCPC_DISCOVER[28..44]);
    }

    #[test]
    fn short_replies_are_padded_to_300() {
        let req = Request::parse(&UDHCPC_DISCOVER).unwrap();
        let mut out = [0x55u8; 600];
        let w = Writer::new(&mut out, 600, &header(&req)).unwrap();
        assert_eq!(w.finish(), MIN_MESSAGE_LEN);
        assert_eq!(out[240], opt::END);
        assert!(out[241..300].iter().all(|&b| b == 0));
        assert_eq!(out[300], 0x55);
    }
}
