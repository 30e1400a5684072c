//! The port-forward rule grammar of the command line.
//!
//! # Theory of operation
//!
//! Two syntaxes describe the same thing, a [`RuleSpec`]:
//!
//! * `-p/--publish [HOSTADDR:]HOSTPORT[-END]:[GUESTADDR:]GUESTPORT[-END][/tcp|/udp]`,
//!   Docker's syntax, parsed by [`parse_publish`]. The string is split on the
//!   `:` characters that are not inside `[...]`, so IPv6 addresses are written in
//!   brackets (`[::1]:8080:80`). With three parts `A:B:C` the position of the
//!   address decides: `127.0.0.1:2222:22` names the host address, `2222:10.0.2.15:22`
//!   the guest address (B is read as an address when A looks like a port and B does
//!   not). As an extension the protocol may also come first, as in QEMU's
//!   `hostfwd=tcp:...`: `udp:5353:53` is `5353:53/udp`. Four parts are `HOSTADDR:HOSTPORT:GUESTADDR:GUESTPORT`. Empty address
//!   parts mean the default: `0.0.0.0` on the host, the engine's default guest
//!   address in the guest. Port ranges (`8080-8089:80-89`) must have the same length
//!   on both sides and expand into one rule per port, at most [`MAX_RANGE_PORTS`].
//! * `--natpf [NAME],tcp|udp,[HOSTIP],HOSTPORT,[GUESTIP],GUESTPORT`, VirtualBox's
//!   syntax, parsed by [`parse_natpf`]. Addresses may be bracketed or not, since
//!   commas separate the fields; ports are single ports.
//!
//! Port 0 is refused on both sides: the engine never picks a random host port, and
//! nothing can listen on guest port 0.
//!
//! The host and guest address families may differ (an IPv6 listener forwarding to an
//! IPv4 guest is a valid NAT); whether the engine supports a combination is its
//! decision, not the grammar's.
//!
//! Nothing here does I/O: the result is plain data that [`crate::table::Table`]
//! stores and the engine binds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The most ports one `--publish` rule may expand into.
///
/// Each port becomes one host socket, so a typo such as `1-65535:1-65535` must not
/// open 65535 sockets; 1024 covers real ranges (passive FTP, RTP) with room to spare.
pub const MAX_RANGE_PORTS: u32 = 1024;

/// The longest `--natpf` rule name accepted, in bytes.
///
/// VirtualBox names are short identifiers; the bound keeps listings readable.
pub const MAX_NAME_BYTES: usize = 64;

/// The transport protocol a rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP: a listening socket on the host, a connection per client.
    Tcp,
    /// UDP: a bound socket on the host, a flow per remote address.
    Udp,
}

impl Proto {
    /// The lower-case name, as the CLI and the JSON API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Proto::from_str`]: the text was neither `tcp` nor `udp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected tcp or udp)")]
pub struct UnknownProto(pub String);

impl FromStr for Proto {
    type Err = UnknownProto;

    /// Parses `tcp` or `udp`, ignoring ASCII case as Docker does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Proto::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Proto::Udp)
        } else {
            Err(UnknownProto(s.to_owned()))
        }
    }
}

/// One port forward: host `host_addr:host_port` to guest `guest_addr:guest_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// The protocol forwarded.
    pub proto: Proto,
    /// The host address to listen on; `0.0.0.0` (or `::`) means every address.
    pub host_addr: IpAddr,
    /// The host port to listen on, 1-65535.
    pub host_port: u16,
    /// The guest address to forward to; `None` means the engine's default guest
    /// (or the guest holding `guest_mac`'s lease).
    pub guest_addr: Option<IpAddr>,
    /// The guest named by its MAC instead of an address (on networks of several
    /// guests): the engine resolves it through that MAC's DHCP lease per connection.
    pub guest_mac: Option<[u8; 6]>,
    /// The guest port to forward to, 1-65535.
    pub guest_port: u16,
    /// A label (from `--natpf`), shown in listings; `None` for unnamed rules.
    pub name: Option<String>,
}

impl RuleSpec {
    /// A TCP or UDP rule from every host address to the default guest.
    pub fn new(proto: Proto, host_port: u16, guest_port: u16) -> Self {
        RuleSpec {
            proto,
            host_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_port,
            guest_addr: None,
            guest_mac: None,
            guest_port,
            name: None,
        }
    }
}

/// Writes a MAC as the rules do: six hex pairs joined by dashes.
pub fn mac_dashes(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Reads a MAC written with dashes or colons (`52-54-00-12-34-56`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(sep) {
        if n == 6 || part.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// Whether a part of a rule is a MAC written with dashes (the only MAC form a
/// `:`-separated rule can hold).
fn is_dashed_mac(s: &str) -> bool {
    s.contains('-') && parse_mac(s).is_some()
}

/// Writes an address for a `:`-separated rule: IPv6 in brackets.
fn write_addr(f: &mut fmt::Formatter<'_>, addr: IpAddr) -> fmt::Result {
    match addr {
        IpAddr::V4(a) => write!(f, "{a}"),
        IpAddr::V6(a) => write!(f, "[{a}]"),
    }
}

impl fmt::Display for RuleSpec {
    /// Writes the rule in `--publish` syntax, which [`parse_publish`] reads back
    /// (the name is not part of that syntax and is left out):
    /// `0.0.0.0:8080:80/tcp`, `[::1]:8080:[fd00::15]:80/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_addr(f, self.host_addr)?;
        write!(f, ":{}:", self.host_port)?;
        if let Some(guest) = self.guest_addr {
            write_addr(f, guest)?;
            f.write_str(":")?;
        } else if let Some(mac) = self.guest_mac {
            write!(f, "{}:", mac_dashes(mac))?;
        }
        write!(f, "{}/{}", self.guest_port, self.proto)
    }
}

/// Which side of a forward a part of a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host side: where the engine listens.
    Host,
    /// The guest side: where the engine connects to.
    Guest,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Host => "host",
            Side::Guest => "guest",
        })
    }
}

/// What exactly is wrong with a rule; the detail of a [`RuleError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    /// The whole rule is empty.
    #[error("the rule is empty (expected {0})")]
    Empty(&'static str),
    /// A required part is absent, e.g. the guest port of `8080`.
    #[error("the {0} is missing (expected {1})")]
    Missing(&'static str, &'static str),
    /// A `--publish` rule with a single port, for which Docker picks a random host
    /// port; usernet never picks host ports.
    #[error(
        "only one port is given (expected both a host and a guest port, e.g. 8080:80; a random host port is not supported)"
    )]
    OnePort,
    /// A `[` without its `]`, or the reverse.
    #[error(
        "its brackets do not match (expected IPv6 addresses written as [ADDR], e.g. [::1]:8080:80)"
    )]
    UnbalancedBrackets,
    /// Both a `PROTO:` prefix and a `/PROTO` suffix.
    #[error(
        "the protocol is given twice (expected either a tcp:/udp: prefix or a /tcp|/udp suffix)"
    )]
    ProtoTwice,
    /// More `:`-separated parts than the grammar has.
    #[error(
        "it has {0} ':'-separated parts (expected at most 4, HOSTADDR:HOSTPORT:GUESTADDR:GUESTPORT; write IPv6 addresses in brackets, e.g. [::1]:8080:80)"
    )]
    TooManyParts(usize),
    /// A `--natpf` rule without exactly six comma-separated fields.
    #[error(
        "it has {0} comma-separated fields (expected 6: NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"
    )]
    WrongFieldCount(usize),
    /// A port text that is not a decimal number.
    #[error("{side} port {value:?} is not a number (expected 1-65535)")]
    PortNotNumeric {
        /// The side of the port.
        side: Side,
        /// The text as written.
        value: String,
    },
    /// A port number outside 1-65535.
    #[error("{side} port {value} is out of range (expected 1-65535)")]
    PortOutOfRange {
        /// The side of the port.
        side: Side,
        /// The number as written.
        value: String,
    },
    /// A range such as `8080-` or `-80`.
    #[error("{side} port range {value:?} is malformed (expected START-END, e.g. 8080-8089)")]
    BadRange {
        /// The side of the range.
        side: Side,
        /// The text as written.
        value: String,
    },
    /// A range whose end is below its start.
    #[error("{side} port range {start}-{end} is reversed (expected START <= END)")]
    ReversedRange {
        /// The side of the range.
        side: Side,
        /// The first port.
        start: u16,
        /// The last port.
        end: u16,
    },
    /// A range longer than [`MAX_RANGE_PORTS`].
    #[error("{side} port range {start}-{end} spans {len} ports (expected at most {max})", max = MAX_RANGE_PORTS)]
    RangeTooLarge {
        /// The side of the range.
        side: Side,
        /// The first port.
        start: u16,
        /// The last port.
        end: u16,
        /// How many ports it spans.
        len: u32,
    },
    /// Host and guest ranges of different lengths.
    #[error(
        "the host range has {host} ports but the guest range has {guest} (expected ranges of equal length)"
    )]
    UnequalRanges {
        /// Ports in the host range.
        host: u32,
        /// Ports in the guest range.
        guest: u32,
    },
    /// A protocol other than tcp or udp.
    #[error("unknown protocol {0:?} (expected tcp or udp)")]
    UnknownProto(String),
    /// An address that is not an IPv4 or IPv6 address.
    #[error(
        "{side} address {value:?} is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"
    )]
    BadAddress {
        /// The side of the address.
        side: Side,
        /// The text as written.
        value: String,
    },
    /// A `--natpf` name that is too long or holds control characters.
    #[error(
        "the name {0:?} is not usable (expected at most {max} bytes without control characters)",
        max = MAX_NAME_BYTES
    )]
    BadName(String),
}

/// A rule the user wrote that cannot be used: the rule text and what is wrong.
///
/// Displays as one sentence, e.g. `port-forward rule "tcp:99999:80": ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port-forward rule {rule:?}: {kind}")]
pub struct RuleError {
    rule: String,
    kind: RuleErrorKind,
}

impl RuleError {
    fn new(rule: &str, kind: RuleErrorKind) -> Self {
        RuleError {
            rule: rule.to_owned(),
            kind,
        }
    }

    /// The rule as the user wrote it.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &RuleErrorKind {
        &self.kind
    }
}

const PUBLISH_SYNTAX: &str = "[HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT[/tcp|/udp]";
const NATPF_SYNTAX: &str = "NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT";

/// Parses one port number: decimal digits only, 1-65535.
fn parse_port(side: Side, s: &str) -> Result<u16, RuleErrorKind> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleErrorKind::PortNotNumeric {
            side,
            value: s.to_owned(),
        });
    }
    let significant = s.trim_start_matches('0');
    let out_of_range = || RuleErrorKind::PortOutOfRange {
        side,
        value: s.to_owned(),
    };
    if significant.len() > 5 {
        return Err(out_of_range());
    }
    // At most five digits: fits in u32 without overflow.
    let n: u32 = significant.parse().unwrap_or(0);
    if n == 0 || n > u32::from(u16::MAX) {
        return Err(out_of_range());
    }
    u16::try_from(n).map_err(|_| out_of_range())
}

/// Parses `PORT` or `START-END` into an inclusive range.
fn parse_port_range(side: Side, s: &str) -> Result<(u16, u16), RuleErrorKind> {
    let Some((a, b)) = s.split_once('-') else {
        let p = parse_port(side, s)?;
        return Ok((p, p));
    };
    if a.is_empty() || b.is_empty() || b.contains('-') {
        return Err(RuleErrorKind::BadRange {
            side,
            value: s.to_owned(),
        });
    }
    let start = parse_port(side, a)?;
    let end = parse_port(side, b)?;
    if end < start {
        return Err(RuleErrorKind::ReversedRange { side, start, end });
    }
    let len = u32::from(end) - u32::from(start) + 1;
    if len > MAX_RANGE_PORTS {
        return Err(RuleErrorKind::RangeTooLarge {
            side,
            start,
            end,
            len,
        });
    }
    Ok((start, end))
}

/// Parses an address, bracketed or not; the empty text means "default" (`None`).
fn parse_addr(side: Side, s: &str) -> Result<Option<IpAddr>, RuleErrorKind> {
    if s.is_empty() {
        return Ok(None);
    }
    let inner = match s.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| RuleErrorKind::BadAddress {
                side,
                value: s.to_owned(),
            })?,
        None => s,
    };
    inner
        .parse::<IpAddr>()
        .map(Some)
        .map_err(|_| RuleErrorKind::BadAddress {
            side,
            value: s.to_owned(),
        })
}

/// Parses the guest side's address: an IP address, a MAC with dashes, or nothing.
fn parse_guest(s: &str) -> Result<(Option<IpAddr>, Option<[u8; 6]>), RuleErrorKind> {
    if is_dashed_mac(s) {
        return Ok((None, parse_mac(s)));
    }
    Ok((parse_addr(Side::Guest, s)?, None))
}

/// Splits on `:` outside brackets; fails on unbalanced or nested brackets.
fn split_colons(s: &str) -> Result<Vec<&str>, RuleErrorKind> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(RuleErrorKind::UnbalancedBrackets),
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(RuleErrorKind::UnbalancedBrackets);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// Whether a part reads as a port or a port range rather than an address.
fn looks_like_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

/// Parses a `-p/--publish` rule (Docker syntax) into one spec per port.
///
/// `[HOSTADDR:]HOSTPORT[-END]:[GUESTADDR:]GUESTPORT[-END][/tcp|/udp]`; see the
/// module doc for how three-part rules are read. The protocol defaults to TCP and
/// the host address to `0.0.0.0`.
pub fn parse_publish(s: &str) -> Result<Vec<RuleSpec>, RuleError> {
    parse_publish_inner(s).map_err(|kind| RuleError::new(s, kind))
}

fn parse_publish_inner(s: &str) -> Result<Vec<RuleSpec>, RuleErrorKind> {
    if s.is_empty() {
        return Err(RuleErrorKind::Empty(PUBLISH_SYNTAX));
    }
    let (body, suffix) = match s.split_once('/') {
        Some((body, p)) => (
            body,
            Some(
                p.parse::<Proto>()
                    .map_err(|e| RuleErrorKind::UnknownProto(e.0))?,
            ),
        ),
        None => (s, None),
    };
    let mut parts = split_colons(body)?;
    // usernet extension: a `tcp:`/`udp:` prefix, as in QEMU's hostfwd. Neither word
    // can be an address or a port, so the prefix is unambiguous.
    let prefix = match parts.first().map(|p| p.parse::<Proto>()) {
        Some(Ok(proto)) if parts.len() > 1 => {
            parts.remove(0);
            Some(proto)
        }
        _ => None,
    };
    let proto = match (prefix, suffix) {
        (Some(_), Some(_)) => return Err(RuleErrorKind::ProtoTwice),
        (Some(p), None) | (None, Some(p)) => p,
        (None, None) => Proto::Tcp,
    };
    let (host_addr, host_ports, guest_addr, guest_ports) = match parts.as_slice() {
        [] | [_] => return Err(RuleErrorKind::OnePort),
        [hp, gp] => ("", *hp, "", *gp),
        [a, b, c] => {
            if looks_like_port(a) && (!looks_like_port(b) || is_dashed_mac(b)) {
                ("", *a, *b, *c)
            } else {
                (*a, *b, "", *c)
            }
        }
        [ha, hp, ga, gp] => (*ha, *hp, *ga, *gp),
        more => return Err(RuleErrorKind::TooManyParts(more.len())),
    };
    let host_addr = parse_addr(Side::Host, host_addr)?;
    if host_ports.is_empty() {
        return Err(RuleErrorKind::Missing("host port", PUBLISH_SYNTAX));
    }
    let (hs, he) = parse_port_range(Side::Host, host_ports)?;
    let (guest_addr, guest_mac) = parse_guest(guest_addr)?;
    if guest_ports.is_empty() {
        return Err(RuleErrorKind::Missing("guest port", PUBLISH_SYNTAX));
    }
    let (gs, ge) = parse_port_range(Side::Guest, guest_ports)?;
    let host_len = u32::from(he) - u32::from(hs) + 1;
    let guest_len = u32::from(ge) - u32::from(gs) + 1;
    if host_len != guest_len {
        return Err(RuleErrorKind::UnequalRanges {
            host: host_len,
            guest: guest_len,
        });
    }
    let host_addr = host_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Ok((hs..=he)
        .zip(gs..=ge)
        .map(|(host_port, guest_port)| RuleSpec {
            proto,
            host_addr,
            host_port,
            guest_addr,
            guest_mac,
            guest_port,
            name: None,
        })
        .collect())
}

/// Parses a `--natpf` rule (VirtualBox syntax) into one spec.
///
/// `[NAME],tcp|udp,[HOSTIP],HOSTPORT,[GUESTIP],GUESTPORT`: an empty name means
/// unnamed, an empty host IP means `0.0.0.0`, an empty guest IP the default guest.
pub fn parse_natpf(s: &str) -> Result<RuleSpec, RuleError> {
    parse_natpf_inner(s).map_err(|kind| RuleError::new(s, kind))
}

fn parse_natpf_inner(s: &str) -> Result<RuleSpec, RuleErrorKind> {
    if s.is_empty() {
        return Err(RuleErrorKind::Empty(NATPF_SYNTAX));
    }
    let fields: Vec<&str> = s.split(',').collect();
    let [name, proto, host_ip, host_port, guest_ip, guest_port] = fields.as_slice() else {
        return Err(RuleErrorKind::WrongFieldCount(fields.len()));
    };
    if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(RuleErrorKind::BadName((*name).to_owned()));
    }
    if proto.is_empty() {
        return Err(RuleErrorKind::Missing("protocol", NATPF_SYNTAX));
    }
    let proto = proto
        .parse::<Proto>()
        .map_err(|e| RuleErrorKind::UnknownProto(e.0))?;
    let host_addr = parse_addr(Side::Host, host_ip)?;
    if host_port.is_empty() {
        return Err(RuleErrorKind::Missing("host port", NATPF_SYNTAX));
    }
    let host_port = parse_port(Side::Host, host_port)?;
    let (guest_addr, guest_mac) = parse_guest(guest_ip)?;
    if guest_port.is_empty() {
        return Err(RuleErrorKind::Missing("guest port", NATPF_SYNTAX));
    }
    let guest_port = parse_port(Side::Guest, guest_port)?;
    Ok(RuleSpec {
        proto,
        host_addr: host_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        host_port,
        guest_addr,
        guest_mac,
        guest_port,
        name: (!name.is_empty()).then(|| (*name).to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn one(s: &str) -> RuleSpec {
        let v = parse_publish(s).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v.into_iter().next().unwrap()
    }

    fn err(s: &str) -> String {
        parse_publish(s).unwrap_err().to_string()
    }

    fn natpf_err(s: &str) -> String {
        parse_natpf(s).unwrap_err().to_string()
    }

    #[test]
    fn proto_display_and_parse() {
        assert_eq!(Proto::Tcp.to_string(), "tcp");
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert_eq!("tcp".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
        assert_eq!(
            "sctp".parse::<Proto>().unwrap_err().to_string(),
            r#"unknown protocol "sctp" (expected tcp or udp)"#
        );
    }

    #[test]
    fn publish_two_parts() {
        assert_eq!(one("8080:80"), RuleSpec::new(Proto::Tcp, 8080, 80));
        assert_eq!(one("8080:80/udp"), RuleSpec::new(Proto::Udp, 8080, 80));
        assert_eq!(one("8080:80/TCP"), RuleSpec::new(Proto::Tcp, 8080, 80));
    }

    #[test]
    fn publish_proto_prefix() {
        assert_eq!(one("udp:5353:53"), RuleSpec::new(Proto::Udp, 5353, 53));
        assert_eq!(one("TCP:8080:80"), RuleSpec::new(Proto::Tcp, 8080, 80));
        let r = one("tcp:127.0.0.1:2222:22");
        assert_eq!(r.host_addr, ip("127.0.0.1"));
        let r = one("udp:[::1]:5353:[fd00::15]:53");
        assert_eq!(r.guest_addr, Some(ip("fd00::15")));
        assert_eq!(
            err("udp:5353:53/udp"),
            r#"port-forward rule "udp:5353:53/udp": the protocol is given twice (expected either a tcp:/udp: prefix or a /tcp|/udp suffix)"#
        );
        assert_eq!(
            err("tcp:80"),
            r#"port-forward rule "tcp:80": only one port is given (expected both a host and a guest port, e.g. 8080:80; a random host port is not supported)"#
        );
    }

    #[test]
    fn publish_three_parts_host_addr() {
        let r = one("127.0.0.1:2222:22");
        assert_eq!(r.host_addr, ip("127.0.0.1"));
        assert_eq!((r.host_port, r.guest_port, r.guest_addr), (2222, 22, None));
        let r = one(":8080:80");
        assert_eq!(r.host_addr, ip("0.0.0.0"));
        let r = one("[::1]:8080:80/udp");
        assert_eq!(r.host_addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(r.proto, Proto::Udp);
    }

    #[test]
    fn publish_three_parts_guest_addr() {
        let r = one("2222:10.0.2.15:22");
        assert_eq!(r.host_addr, ip("0.0.0.0"));
        assert_eq!(r.guest_addr, Some(ip("10.0.2.15")));
        assert_eq!((r.host_port, r.guest_port), (2222, 22));
        let r = one("2222:[fd00::15]:22");
        assert_eq!(r.guest_addr, Some(ip("fd00::15")));
        let v = parse_publish("8080-8081:10.0.2.15:80-81/udp").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].guest_addr, Some(ip("10.0.2.15")));
        assert_eq!((v[1].host_port, v[1].guest_port), (8081, 81));
        // An empty guest address is the default guest.
        assert_eq!(one("8080::80"), RuleSpec::new(Proto::Tcp, 8080, 80));
    }

    #[test]
    fn publish_four_parts() {
        let r = one("127.0.0.1:8080:10.0.2.15:80/udp");
        assert_eq!(r.host_addr, ip("127.0.0.1"));
        assert_eq!(r.guest_addr, Some(ip("10.0.2.15")));
        assert_eq!(r.proto, Proto::Udp);
        let r = one("[::]:8080:[fd00::100]:80");
        assert_eq!(r.host_addr, ip("::"));
        assert_eq!(r.guest_addr, Some(ip("fd00::100")));
        let r = one(":8080::80");
        assert_eq!(r, RuleSpec::new(Proto::Tcp, 8080, 80));
    }

    #[test]
    fn publish_ranges_expand() {
        let v = parse_publish("127.0.0.1:8080-8082:80-82/udp").unwrap();
        let ports: Vec<(u16, u16)> = v.iter().map(|r| (r.host_port, r.guest_port)).collect();
        assert_eq!(ports, [(8080, 80), (8081, 81), (8082, 82)]);
        assert!(v.iter().all(|r| r.proto == Proto::Udp));
        assert_eq!(parse_publish("1-1024:1-1024").unwrap().len(), 1024);
        assert_eq!(parse_publish("5-5:6").unwrap().len(), 1);
    }

    #[test]
    fn publish_leading_zeros_are_decimal() {
        assert_eq!(one("08080:080").host_port, 8080);
    }

    #[test]
    fn publish_port_errors() {
        assert_eq!(
            err("99999:80"),
            r#"port-forward rule "99999:80": host port 99999 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("8080:65536"),
            r#"port-forward rule "8080:65536": guest port 65536 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("0:80"),
            r#"port-forward rule "0:80": host port 0 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("8080:00"),
            r#"port-forward rule "8080:00": guest port 00 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("8080:99999999999999999999"),
            r#"port-forward rule "8080:99999999999999999999": guest port 99999999999999999999 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("http:80"),
            r#"port-forward rule "http:80": host port "http" is not a number (expected 1-65535)"#
        );
        assert_eq!(
            err("8080:http"),
            r#"port-forward rule "8080:http": guest port "http" is not a number (expected 1-65535)"#
        );
        assert_eq!(
            err("+80:80"),
            r#"port-forward rule "+80:80": host port "+80" is not a number (expected 1-65535)"#
        );
        assert_eq!(
            err("tcp:99999:80"),
            r#"port-forward rule "tcp:99999:80": host port 99999 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            err("1.2.3.4:99999:80"),
            r#"port-forward rule "1.2.3.4:99999:80": host port 99999 is out of range (expected 1-65535)"#
        );
    }

    #[test]
    fn publish_range_errors() {
        assert_eq!(
            err("8080-8082:80-81"),
            r#"port-forward rule "8080-8082:80-81": the host range has 3 ports but the guest range has 2 (expected ranges of equal length)"#
        );
        assert_eq!(
            err("8000-8010:80"),
            r#"port-forward rule "8000-8010:80": the host range has 11 ports but the guest range has 1 (expected ranges of equal length)"#
        );
        assert_eq!(
            err("8090-8080:90-80"),
            r#"port-forward rule "8090-8080:90-80": host port range 8090-8080 is reversed (expected START <= END)"#
        );
        assert_eq!(
            err("1-65535:1-65535"),
            r#"port-forward rule "1-65535:1-65535": host port range 1-65535 spans 65535 ports (expected at most 1024)"#
        );
        assert_eq!(
            err("8080-:80"),
            r#"port-forward rule "8080-:80": host port range "8080-" is malformed (expected START-END, e.g. 8080-8089)"#
        );
        assert_eq!(
            err("8080:-80"),
            r#"port-forward rule "8080:-80": guest port range "-80" is malformed (expected START-END, e.g. 8080-8089)"#
        );
        assert_eq!(
            err("1-2-3:1-2-3"),
            r#"port-forward rule "1-2-3:1-2-3": host port range "1-2-3" is malformed (expected START-END, e.g. 8080-8089)"#
        );
        assert_eq!(
            err("8080-99999:80-91999"),
            r#"port-forward rule "8080-99999:80-91999": host port 99999 is out of range (expected 1-65535)"#
        );
    }

    #[test]
    fn publish_proto_errors() {
        assert_eq!(
            err("8080:80/sctp"),
            r#"port-forward rule "8080:80/sctp": unknown protocol "sctp" (expected tcp or udp)"#
        );
        assert_eq!(
            err("8080:80/"),
            r#"port-forward rule "8080:80/": unknown protocol "" (expected tcp or udp)"#
        );
        assert_eq!(
            err("8080:80/tcp/udp"),
            r#"port-forward rule "8080:80/tcp/udp": unknown protocol "tcp/udp" (expected tcp or udp)"#
        );
    }

    #[test]
    fn publish_address_errors() {
        assert_eq!(
            err("1.2.3:8080:80"),
            r#"port-forward rule "1.2.3:8080:80": host address "1.2.3" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
        assert_eq!(
            err("8080:10.0.2.300:80"),
            r#"port-forward rule "8080:10.0.2.300:80": guest address "10.0.2.300" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
        for bad in ["[::1:8080:80", "::1]:8080:80", "[[::1]]:8080:80"] {
            assert_eq!(
                err(bad),
                format!(
                    r#"port-forward rule "{bad}": its brackets do not match (expected IPv6 addresses written as [ADDR], e.g. [::1]:8080:80)"#
                )
            );
        }
        assert_eq!(
            err("1.2.3.4:8080:bad:80"),
            r#"port-forward rule "1.2.3.4:8080:bad:80": guest address "bad" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
        assert_eq!(
            err("[zz]:8080:80"),
            r#"port-forward rule "[zz]:8080:80": host address "[zz]" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
    }

    #[test]
    fn publish_missing_and_too_many_parts() {
        assert_eq!(
            err(""),
            r#"port-forward rule "": the rule is empty (expected [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT[/tcp|/udp])"#
        );
        assert_eq!(
            err("80"),
            r#"port-forward rule "80": only one port is given (expected both a host and a guest port, e.g. 8080:80; a random host port is not supported)"#
        );
        assert_eq!(
            err("80/udp"),
            r#"port-forward rule "80/udp": only one port is given (expected both a host and a guest port, e.g. 8080:80; a random host port is not supported)"#
        );
        assert_eq!(
            err("8080:"),
            r#"port-forward rule "8080:": the guest port is missing (expected [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT[/tcp|/udp])"#
        );
        assert_eq!(
            err(":80"),
            r#"port-forward rule ":80": the host port is missing (expected [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT[/tcp|/udp])"#
        );
        assert_eq!(
            err("127.0.0.1::80"),
            r#"port-forward rule "127.0.0.1::80": the host port is missing (expected [HOSTADDR:]HOSTPORT:[GUESTADDR:]GUESTPORT[/tcp|/udp])"#
        );
        assert_eq!(
            err("::1:8080:80"),
            r#"port-forward rule "::1:8080:80": it has 5 ':'-separated parts (expected at most 4, HOSTADDR:HOSTPORT:GUESTADDR:GUESTPORT; write IPv6 addresses in brackets, e.g. [::1]:8080:80)"#
        );
    }

    #[test]
    fn guests_named_by_mac() {
        let mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let r = one("127.0.0.1:2222:52-54-00-12-34-56:22");
        assert_eq!((r.guest_addr, r.guest_mac, r.guest_port), (None, mac, 22));
        assert_eq!(r.to_string(), "127.0.0.1:2222:52-54-00-12-34-56:22/tcp");
        // Three parts: HOSTPORT:MAC:GUESTPORT, even though a dashed MAC of digits
        // looks like a port range.
        let r = one("2222:52-54-00-12-34-56:22");
        assert_eq!((r.host_port, r.guest_mac), (2222, mac));
        let r = parse_natpf("ssh,tcp,,2222,52-54-00-12-34-56,22").unwrap();
        assert_eq!(r.guest_mac, mac);
        assert_eq!(parse_mac("52:54:00:12:34:56"), mac);
        assert_eq!(parse_mac("52-54-00-12-34"), None);
        assert_eq!(parse_mac("52-54-00-12-34-5g"), None);
        assert_eq!(
            mac_dashes([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "52-54-00-12-34-56"
        );
    }

    #[test]
    fn natpf_forms() {
        let r = parse_natpf("guestssh,tcp,,2222,,22").unwrap();
        assert_eq!(
            r,
            RuleSpec {
                name: Some("guestssh".into()),
                ..RuleSpec::new(Proto::Tcp, 2222, 22)
            }
        );
        let r = parse_natpf(",udp,127.0.0.1,5353,10.0.2.15,53").unwrap();
        assert_eq!(r.name, None);
        assert_eq!(r.proto, Proto::Udp);
        assert_eq!(r.host_addr, ip("127.0.0.1"));
        assert_eq!(r.guest_addr, Some(ip("10.0.2.15")));
        assert_eq!((r.host_port, r.guest_port), (5353, 53));
        let r = parse_natpf("v6,TCP,::1,8080,[fd00::15],80").unwrap();
        assert_eq!(r.host_addr, ip("::1"));
        assert_eq!(r.guest_addr, Some(ip("fd00::15")));
    }

    #[test]
    fn natpf_errors() {
        assert_eq!(
            natpf_err(""),
            r#"port-forward rule "": the rule is empty (expected NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,2222,22"),
            r#"port-forward rule "ssh,tcp,,2222,22": it has 5 comma-separated fields (expected 6: NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,2222,,22,x"),
            r#"port-forward rule "ssh,tcp,,2222,,22,x": it has 7 comma-separated fields (expected 6: NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,icmp,,2222,,22"),
            r#"port-forward rule "ssh,icmp,,2222,,22": unknown protocol "icmp" (expected tcp or udp)"#
        );
        assert_eq!(
            natpf_err("ssh,,,2222,,22"),
            r#"port-forward rule "ssh,,,2222,,22": the protocol is missing (expected NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,,,22"),
            r#"port-forward rule "ssh,tcp,,,,22": the host port is missing (expected NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,22,,"),
            r#"port-forward rule "ssh,tcp,,22,,": the guest port is missing (expected NAME,PROTO,HOSTIP,HOSTPORT,GUESTIP,GUESTPORT)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,0,,22"),
            r#"port-forward rule "ssh,tcp,,0,,22": host port 0 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,22,,70000"),
            r#"port-forward rule "ssh,tcp,,22,,70000": guest port 70000 is out of range (expected 1-65535)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,2222-2223,,22"),
            r#"port-forward rule "ssh,tcp,,2222-2223,,22": host port "2222-2223" is not a number (expected 1-65535)"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,localhost,2222,,22"),
            r#"port-forward rule "ssh,tcp,localhost,2222,,22": host address "localhost" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
        assert_eq!(
            natpf_err("ssh,tcp,,2222,10.0.2,22"),
            r#"port-forward rule "ssh,tcp,,2222,10.0.2,22": guest address "10.0.2" is not a valid IP address (expected e.g. 127.0.0.1 or [::1])"#
        );
        assert_eq!(
            natpf_err("a\tb,tcp,,2222,,22"),
            r#"port-forward rule "a\tb,tcp,,2222,,22": the name "a\tb" is not usable (expected at most 64 bytes without control characters)"#
        );
        let long = "n".repeat(65);
        assert!(natpf_err(&format!("{long},tcp,,1,,1")).contains("is not usable"));
    }

    #[test]
    fn error_accessors() {
        let e = parse_publish("8080:80/sctp").unwrap_err();
        assert_eq!(e.rule(), "8080:80/sctp");
        assert_eq!(e.kind(), &RuleErrorKind::UnknownProto("sctp".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "8080:80",
            "127.0.0.1:2222:22/udp",
            "2222:10.0.2.15:22",
            "[::1]:8080:[fd00::15]:80",
        ] {
            let r = one(s);
            assert_eq!(one(&r.to_string()), r, "{s} -> {r}");
        }
        assert_eq!(one("8080:80").to_string(), "0.0.0.0:8080:80/tcp");
        assert_eq!(
            one("[::1]:8080:10.0.2.15:80/udp").to_string(),
            "[::1]:8080:10.0.2.15:80/udp"
        );
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    prop_compose! {
        fn arb_spec()(
            udp in any::<bool>(),
            host_addr in arb_addr(),
            host_port in 1u16..,
            guest_addr in proptest::option::of(arb_addr()),
            mac in any::<[u8; 6]>(),
            by_mac in any::<bool>(),
            guest_port in 1u16..,
        ) -> RuleSpec {
            let (guest_addr, guest_mac) = match (by_mac, guest_addr) {
                (true, None) => (None, Some(mac)),
                (_, a) => (a, None),
            };
            RuleSpec {
                proto: if udp { Proto::Udp } else { Proto::Tcp },
                host_addr, host_port, guest_addr, guest_mac, guest_port, name: None,
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = parse_publish(&s);
            let _ = parse_natpf(&s);
        }

        #[test]
        fn never_panics_on_rule_like_text(s in "[0-9a-f:.\\[\\]/,tcpudp-]{0,40}") {
            let _ = parse_publish(&s);
            let _ = parse_natpf(&s);
        }

        #[test]
        fn display_parses_back(spec in arb_spec()) {
            let text = spec.to_string();
            let back = parse_publish(&text).unwrap();
            prop_assert_eq!(back, vec![spec]);
        }
    }
}
