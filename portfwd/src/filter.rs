//! IP filter rules for the traffic guests start: which new flows may leave.
//!
//! # Theory of operation
//!
//! A filter rule names an action, a protocol, a destination network and, for TCP
//! and UDP, a destination port range. Its text form, read by [`parse_filter`] and
//! written by [`FilterRule`]'s `Display`, is
//!
//! ```text
//! ACTION:PROTO:CIDR[:PORTS]
//! ```
//!
//! * `ACTION` is `allow` or `deny`.
//! * `PROTO` is `tcp`, `udp`, `icmp` (ICMP and ICMPv6 echo) or `any`.
//! * `CIDR` is an IPv4 network `A.B.C.D/N` (`N` 0-32; a bare address means `/32`),
//!   an IPv6 network in brackets, `[2001:db8::]/32` or `[2001:db8::/32]` (a bare
//!   bracketed address means `/128`), or the word `any`, which matches every
//!   address of both families. The address must be the network's first address:
//!   `10.0.2.5/24` is refused with a suggestion of `10.0.2.0/24`, since a rule that
//!   silently covered more than it says is a rule the user did not mean.
//! * `PORTS`, only with `tcp` and `udp`, is `N` or `N-M` (1-65535, `N <= M`);
//!   without it the rule covers every port.
//!
//! The words are read regardless of ASCII case and written in lower case. Examples:
//! `deny:any:169.254.169.254/32`, `deny:tcp:198.51.100.1/32:25`,
//! `allow:udp:10.0.2.3/32:53`, `deny:any:10.0.2.0/24`,
//! `deny:tcp:[2001:db8::]/32:80-90`.
//!
//! # Matching
//!
//! Rules form ordered lists, and the first rule of a list that matches a [`Flow`]
//! decides it. [`decide`] layers three sources: the guest's own rules are tried
//! first, then the rules of the network the guest is attached to, then a default
//! action. The [`Verdict`] says which rule decided ([`Matched`]), for logs and
//! counters.
//!
//! Address families are separate: an IPv4 rule never matches an IPv6 destination
//! and the reverse, and only the `any` network matches both. The one exception is an
//! IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`): it is matched as the IPv4
//! address it carries, the way the engine reaches it, so `deny:any:10.0.0.0/8` also
//! stops `::ffff:10.0.0.1`, and IPv6 rules (even `[::]/0`) never match it. For the
//! same reason an IPv6 network inside `::ffff:0:0/96` could never match anything and
//! is refused with the IPv4 network to write instead.
//!
//! # Blocking the cloud metadata service
//!
//! The usual first rule: `--filter deny:any:169.254.169.254/32` stops guests from
//! reaching the instance metadata address of the cloud the host runs in, while
//! every other destination stays reachable.
//!
//! Nothing here does I/O or reads a clock: the engine asks [`decide`] once per new
//! flow and acts on the answer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The most rules one list (a guest's, or a network's) may hold.
///
/// [`decide`] walks the lists for every new flow a guest starts, so their length is
/// a per-flow cost; 256 rules cover any hand-written policy. [`decide`] itself tries
/// every rule it is given: the code that builds a list (the command line, the
/// control API) refuses to make it longer than this.
pub const MAX_FILTER_RULES: usize = 256;

/// The grammar, quoted by the errors that say a part is missing or extra.
const SYNTAX: &str = "ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25";

/// What a rule does to the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the flow through.
    Allow,
    /// Drop the flow.
    Deny,
}

impl Action {
    /// The lower-case word, as rules write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Action::from_str`]: the text was neither `allow` nor `deny`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?} (expected allow or deny)")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    /// Parses `allow` or `deny`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("allow") {
            Ok(Action::Allow)
        } else if s.eq_ignore_ascii_case("deny") {
            Ok(Action::Deny)
        } else {
            Err(UnknownAction(s.to_owned()))
        }
    }
}

/// The protocol a rule covers, or a flow uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterProto {
    /// Every protocol (in a rule only; flows always have a protocol).
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo over IPv4 and ICMPv6 echo over IPv6.
    Icmp,
}

impl FilterProto {
    /// The lower-case word, as rules write it.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterProto::Any => "any",
            FilterProto::Tcp => "tcp",
            FilterProto::Udp => "udp",
            FilterProto::Icmp => "icmp",
        }
    }

    /// Whether the protocol has ports (TCP and UDP do).
    pub fn has_ports(self) -> bool {
        matches!(self, FilterProto::Tcp | FilterProto::Udp)
    }
}

impl fmt::Display for FilterProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`FilterProto::from_str`]: the text was not a protocol of the
/// filter grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected tcp, udp, icmp or any)")]
pub struct UnknownFilterProto(pub String);

impl FromStr for FilterProto {
    type Err = UnknownFilterProto;

    /// Parses `tcp`, `udp`, `icmp` or `any`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FilterProto::Any,
            FilterProto::Tcp,
            FilterProto::Udp,
            FilterProto::Icmp,
        ]
        .into_iter()
        .find(|p| s.eq_ignore_ascii_case(p.as_str()))
        .ok_or_else(|| UnknownFilterProto(s.to_owned()))
    }
}

/// One filter rule: what to do with the flows to a network (and ports).
///
/// [`parse_filter`] only returns rules in which `net` has no bits set beyond
/// `prefix_len`, `prefix_len` fits the family (0-32 or 0-128), `ports` is `None`
/// unless `proto` is TCP or UDP, and a port range is `1 <= start <= end`.
/// [`FilterRule::matches`] never panics on other values either, but `Display` only
/// round-trips through [`parse_filter`] for rules that hold those properties.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterRule {
    /// What to do with a matching flow.
    pub action: Action,
    /// The protocol the rule covers.
    pub proto: FilterProto,
    /// The destination network's address; `0.0.0.0` when `any_addr` is set.
    pub net: IpAddr,
    /// The destination network's prefix length; 0 when `any_addr` is set.
    pub prefix_len: u8,
    /// Whether the rule covers every destination of both families (`any`); `net`
    /// and `prefix_len` are then ignored.
    pub any_addr: bool,
    /// The inclusive destination port range, or `None` for every port.
    pub ports: Option<(u16, u16)>,
}

impl FilterRule {
    /// Whether the rule matches a flow: same protocol (or the rule's is `any`),
    /// destination inside the network, and destination port inside the range.
    ///
    /// An IPv4-mapped IPv6 destination is taken as the IPv4 address it carries. An
    /// ICMP flow's port is ignored. A flow whose protocol is [`FilterProto::Any`]
    /// (not a real flow) only matches rules whose protocol is `any`.
    pub fn matches(&self, flow: &Flow) -> bool {
        if self.proto != FilterProto::Any && self.proto != flow.proto {
            return false;
        }
        if let Some((start, end)) = self.ports
            && flow.proto.has_ports()
            && !(start..=end).contains(&flow.dst_port)
        {
            return false;
        }
        if self.any_addr {
            return true;
        }
        match (self.net, flow.dst.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(dst)) => {
                let mask = mask_v4(self.prefix_len);
                u32::from(net) & mask == u32::from(dst) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(dst)) => {
                let mask = mask_v6(self.prefix_len);
                u128::from(net) & mask == u128::from(dst) & mask
            }
            _ => false,
        }
    }
}

/// The IPv4 netmask of a prefix length; lengths above 32 count as 32.
fn mask_v4(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << 32u8.saturating_sub(n),
    }
}

/// The IPv6 netmask of a prefix length; lengths above 128 count as 128.
fn mask_v6(prefix_len: u8) -> u128 {
    match prefix_len {
        0 => 0,
        n => u128::MAX << 128u8.saturating_sub(n),
    }
}

/// Writes a network as rules do: `10.0.2.0/24`, `[2001:db8::]/32`.
fn write_net(f: &mut fmt::Formatter<'_>, net: IpAddr, prefix_len: u8) -> fmt::Result {
    match net {
        IpAddr::V4(a) => write!(f, "{a}/{prefix_len}"),
        IpAddr::V6(a) => write!(f, "[{a}]/{prefix_len}"),
    }
}

/// A network and prefix, displayed as rules write it (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net(pub IpAddr, pub u8);

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_net(f, self.0, self.1)
    }
}

impl fmt::Display for FilterRule {
    /// Writes the canonical text, which [`parse_filter`] reads back: lower-case
    /// words, `any` or a network with its prefix length (IPv6 as `[ADDR]/N`), and
    /// the ports as `N` or `N-M`: `deny:tcp:[2001:db8::]/32:80-90`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.action, self.proto)?;
        if self.any_addr {
            f.write_str("any")?;
        } else {
            write_net(f, self.net, self.prefix_len)?;
        }
        match self.ports {
            Some((start, end)) if start == end => write!(f, ":{start}"),
            Some((start, end)) => write!(f, ":{start}-{end}"),
            None => Ok(()),
        }
    }
}

/// What exactly is wrong with a filter rule; the detail of a [`FilterError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterErrorKind {
    /// The whole rule is empty.
    #[error("the rule is empty (expected {SYNTAX})")]
    Empty,
    /// A required part is absent or empty, e.g. the network of `deny:tcp`.
    #[error("the {0} is missing (expected {SYNTAX})")]
    Missing(&'static str),
    /// More `:`-separated parts than the grammar has.
    #[error(
        "it has {0} ':'-separated parts (expected at most 4, {SYNTAX}; write IPv6 networks in brackets, e.g. [2001:db8::]/32)"
    )]
    TooManyParts(usize),
    /// A `[` without its `]`, or the reverse, or nested brackets.
    #[error(
        "its brackets do not match (expected IPv6 networks written as [ADDR]/N or [ADDR/N], e.g. [2001:db8::]/32)"
    )]
    UnbalancedBrackets,
    /// An action other than allow or deny.
    #[error("unknown action {0:?} (expected allow or deny)")]
    UnknownAction(String),
    /// A protocol other than tcp, udp, icmp or any.
    #[error("unknown protocol {0:?} (expected tcp, udp, icmp or any)")]
    UnknownProto(String),
    /// A network whose address part is not an IP address, or that is shaped wrong.
    #[error(
        "network {0:?} is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"
    )]
    BadNetwork(String),
    /// A prefix length that is not a number, or too long for the family.
    #[error(
        "prefix length {value:?} of network {net:?} is not valid (expected 0-{max} for an {family} network)"
    )]
    BadPrefix {
        /// The network as written.
        net: String,
        /// The prefix length as written.
        value: String,
        /// The longest prefix of the family: 32 or 128.
        max: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// An address with bits set beyond the prefix, such as `10.0.2.5/24`.
    #[error(
        "network {net:?} has host bits set beyond its /{prefix_len} prefix (expected the network's first address, e.g. {suggestion})"
    )]
    HostBits {
        /// The network as written.
        net: String,
        /// The prefix length.
        prefix_len: u8,
        /// The same prefix with the host bits cleared.
        suggestion: Net,
    },
    /// An IPv6 network inside `::ffff:0:0/96`, which no flow can match since
    /// IPv4-mapped destinations are matched as IPv4.
    #[error(
        "network {net:?} is IPv4-mapped IPv6, and mapped destinations are matched as IPv4 (expected the IPv4 network, e.g. {suggestion})"
    )]
    Mapped {
        /// The network as written.
        net: String,
        /// The IPv4 network it stands for.
        suggestion: Net,
    },
    /// Ports given with a protocol that has none (icmp) or that is not one (any).
    #[error(
        "ports {ports:?} are given with protocol {proto} (expected ports only with tcp or udp)"
    )]
    PortsNotAllowed {
        /// The protocol of the rule.
        proto: FilterProto,
        /// The ports as written.
        ports: String,
    },
    /// A port text that is not a decimal number.
    #[error("port {0:?} is not a number (expected 1-65535)")]
    PortNotNumeric(String),
    /// A port number outside 1-65535.
    #[error("port {0} is out of range (expected 1-65535)")]
    PortOutOfRange(String),
    /// A range such as `80-` or `-80`.
    #[error("port range {0:?} is malformed (expected N or N-M, e.g. 80-90)")]
    BadRange(String),
    /// A range whose end is below its start.
    #[error("port range {start}-{end} is reversed (expected N <= M)")]
    ReversedRange {
        /// The first port.
        start: u16,
        /// The last port.
        end: u16,
    },
}

/// A filter rule the user wrote that cannot be used: the rule text and what is
/// wrong.
///
/// Displays as one sentence, e.g. `filter rule "deny:any:10.0.2.5/24": ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter rule {rule:?}: {kind}")]
pub struct FilterError {
    rule: String,
    kind: FilterErrorKind,
}

impl FilterError {
    /// The rule as the user wrote it.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &FilterErrorKind {
        &self.kind
    }
}

/// Splits on `:` outside brackets; fails on unbalanced or nested brackets.
fn split_colons(s: &str) -> Result<Vec<&str>, FilterErrorKind> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(FilterErrorKind::UnbalancedBrackets),
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(FilterErrorKind::UnbalancedBrackets);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A parsed `CIDR` part: `None` for `any`, else the network and prefix length.
fn parse_cidr(s: &str) -> Result<Option<(IpAddr, u8)>, FilterErrorKind> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    let bad = || FilterErrorKind::BadNetwork(s.to_owned());
    let (addr, prefix) = match s.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            match (inside.split_once('/'), after) {
                (None, "") => (inside, None),
                (None, after) => (inside, Some(after.strip_prefix('/').ok_or_else(bad)?)),
                (Some((addr, prefix)), "") => (addr, Some(prefix)),
                (Some(_), _) => return Err(bad()),
            }
        }
        None => match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        },
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let (max, family) = match addr {
        IpAddr::V4(_) => (32u8, "IPv4"),
        IpAddr::V6(_) => (128u8, "IPv6"),
    };
    let prefix_len = match prefix {
        None => max,
        Some(p) => parse_prefix(p, max).ok_or_else(|| FilterErrorKind::BadPrefix {
            net: s.to_owned(),
            value: p.to_owned(),
            max,
            family,
        })?,
    };
    if let IpAddr::V6(a) = addr
        && prefix_len >= 96
        && let Some(v4) = a.to_ipv4_mapped()
    {
        let prefix_len = prefix_len - 96;
        let v4 = Ipv4Addr::from(u32::from(v4) & mask_v4(prefix_len));
        return Err(FilterErrorKind::Mapped {
            net: s.to_owned(),
            suggestion: Net(IpAddr::V4(v4), prefix_len),
        });
    }
    let masked = match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
    };
    if masked != addr {
        return Err(FilterErrorKind::HostBits {
            net: s.to_owned(),
            prefix_len,
            suggestion: Net(masked, prefix_len),
        });
    }
    Ok(Some((addr, prefix_len)))
}

/// Parses a prefix length: decimal digits only, at most `max`.
fn parse_prefix(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = s.trim_start_matches('0');
    if significant.len() > 3 {
        return None;
    }
    // At most three digits: fits in u16.
    let n: u16 = significant.parse().unwrap_or(0);
    u8::try_from(n).ok().filter(|&n| n <= max)
}

/// Parses one port number: decimal digits only, 1-65535.
fn parse_port(s: &str) -> Result<u16, FilterErrorKind> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FilterErrorKind::PortNotNumeric(s.to_owned()));
    }
    let significant = s.trim_start_matches('0');
    let out_of_range = || FilterErrorKind::PortOutOfRange(s.to_owned());
    if significant.len() > 5 {
        return Err(out_of_range());
    }
    // At most five digits: fits in u32 without overflow.
    let n: u32 = significant.parse().unwrap_or(0);
    if n == 0 {
        return Err(out_of_range());
    }
    u16::try_from(n).map_err(|_| out_of_range())
}

/// Parses `N` or `N-M` into an inclusive range.
fn parse_ports(s: &str) -> Result<(u16, u16), FilterErrorKind> {
    let Some((a, b)) = s.split_once('-') else {
        let p = parse_port(s)?;
        return Ok((p, p));
    };
    if a.is_empty() || b.is_empty() || b.contains('-') {
        return Err(FilterErrorKind::BadRange(s.to_owned()));
    }
    let start = parse_port(a)?;
    let end = parse_port(b)?;
    if end < start {
        return Err(FilterErrorKind::ReversedRange { start, end });
    }
    Ok((start, end))
}

/// Parses one filter rule, `ACTION:PROTO:CIDR[:PORTS]` (see the module doc).
///
/// The parts are checked left to right and the first problem is reported, quoting
/// the rule and saying what was expected.
pub fn parse_filter(s: &str) -> Result<FilterRule, FilterError> {
    parse_filter_inner(s).map_err(|kind| FilterError {
        rule: s.to_owned(),
        kind,
    })
}

fn parse_filter_inner(s: &str) -> Result<FilterRule, FilterErrorKind> {
    if s.is_empty() {
        return Err(FilterErrorKind::Empty);
    }
    let parts = split_colons(s)?;
    if parts.len() > 4 {
        return Err(FilterErrorKind::TooManyParts(parts.len()));
    }
    let part = |i: usize, what: &'static str| match parts.get(i) {
        Some(p) if !p.is_empty() => Ok(*p),
        _ => Err(FilterErrorKind::Missing(what)),
    };
    let action = part(0, "action")?
        .parse::<Action>()
        .map_err(|e| FilterErrorKind::UnknownAction(e.0))?;
    let proto = part(1, "protocol")?
        .parse::<FilterProto>()
        .map_err(|e| FilterErrorKind::UnknownProto(e.0))?;
    let net = parse_cidr(part(2, "network")?)?;
    let ports = match parts.get(3) {
        None => None,
        Some(_) => {
            let text = part(3, "port range")?;
            if !proto.has_ports() {
                return Err(FilterErrorKind::PortsNotAllowed {
                    proto,
                    ports: text.to_owned(),
                });
            }
            Some(parse_ports(text)?)
        }
    };
    let (net, prefix_len, any_addr) = match net {
        Some((net, prefix_len)) => (net, prefix_len, false),
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, true),
    };
    Ok(FilterRule {
        action,
        proto,
        net,
        prefix_len,
        any_addr,
        ports,
    })
}

/// One new flow a guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The flow's protocol: TCP, UDP or ICMP, never [`FilterProto::Any`].
    pub proto: FilterProto,
    /// The destination address; an IPv4-mapped IPv6 address counts as IPv4.
    pub dst: IpAddr,
    /// The destination port; 0 for ICMP (and ignored there).
    pub dst_port: u16,
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Matched {
    /// The guest's rule at this index (0-based).
    Guest(usize),
    /// The network's rule at this index (0-based).
    Network(usize),
    /// No rule matched: the default action.
    Default,
}

/// What to do with a flow, and which rule said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Allow or deny the flow.
    pub action: Action,
    /// The rule that decided, or the default.
    pub matched: Matched,
}

/// Decides a new flow: a guest's rules are tried first, then the network's, then
/// the default.
///
/// Within each list the first matching rule wins. The cost is one
/// [`FilterRule::matches`] per rule tried, at most the two lists' lengths (each
/// bounded by [`MAX_FILTER_RULES`] where they are built).
pub fn decide(
    guest: &[FilterRule],
    network: &[FilterRule],
    default: Action,
    flow: &Flow,
) -> Verdict {
    let first = |rules: &[FilterRule]| rules.iter().position(|r| r.matches(flow));
    if let Some(i) = first(guest) {
        return Verdict {
            action: guest[i].action,
            matched: Matched::Guest(i),
        };
    }
    if let Some(i) = first(network) {
        return Verdict {
            action: network[i].action,
            matched: Matched::Network(i),
        };
    }
    Verdict {
        action: default,
        matched: Matched::Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(s: &str) -> FilterRule {
        parse_filter(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(s: &str) -> String {
        parse_filter(s).unwrap_err().to_string()
    }

    fn kind(s: &str) -> FilterErrorKind {
        parse_filter(s).unwrap_err().kind().clone()
    }

    fn flow(proto: FilterProto, dst: &str, dst_port: u16) -> Flow {
        Flow {
            proto,
            dst: ip(dst),
            dst_port,
        }
    }

    fn tcp(dst: &str, port: u16) -> Flow {
        flow(FilterProto::Tcp, dst, port)
    }

    fn udp(dst: &str, port: u16) -> Flow {
        flow(FilterProto::Udp, dst, port)
    }

    fn icmp(dst: &str) -> Flow {
        flow(FilterProto::Icmp, dst, 0)
    }

    fn rules(texts: &[&str]) -> Vec<FilterRule> {
        texts.iter().map(|t| rule(t)).collect()
    }

    #[test]
    fn words_display_and_parse() {
        for a in [Action::Allow, Action::Deny] {
            assert_eq!(a.to_string().parse::<Action>(), Ok(a));
        }
        assert_eq!("DENY".parse::<Action>(), Ok(Action::Deny));
        assert_eq!(
            "drop".parse::<Action>().unwrap_err().to_string(),
            r#"unknown action "drop" (expected allow or deny)"#
        );
        for p in [
            FilterProto::Any,
            FilterProto::Tcp,
            FilterProto::Udp,
            FilterProto::Icmp,
        ] {
            assert_eq!(p.to_string().parse::<FilterProto>(), Ok(p));
        }
        assert_eq!(FilterProto::Icmp.to_string(), "icmp");
        assert_eq!("Udp".parse::<FilterProto>(), Ok(FilterProto::Udp));
        assert_eq!(
            "sctp".parse::<FilterProto>().unwrap_err().to_string(),
            r#"unknown protocol "sctp" (expected tcp, udp, icmp or any)"#
        );
    }

    /// A rule text, the fields it parses into, and its canonical text.
    type Form = (
        &'static str,
        Action,
        FilterProto,
        (IpAddr, u8, bool),
        Option<(u16, u16)>,
        &'static str,
    );

    #[test]
    fn parses_every_form() {
        use Action::{Allow, Deny};
        use FilterProto::{Any, Icmp, Tcp, Udp};
        let net = |addr: &str, prefix_len| (ip(addr), prefix_len, false);
        let any = (ip("0.0.0.0"), 0, true);
        #[rustfmt::skip]
        let table: &[Form] = &[
            ("deny:any:169.254.169.254/32", Deny, Any, net("169.254.169.254", 32), None,
             "deny:any:169.254.169.254/32"),
            ("deny:any:169.254.169.254", Deny, Any, net("169.254.169.254", 32), None,
             "deny:any:169.254.169.254/32"),
            ("deny:tcp:198.51.100.1/32:25", Deny, Tcp, net("198.51.100.1", 32), Some((25, 25)),
             "deny:tcp:198.51.100.1/32:25"),
            ("allow:udp:10.0.2.3/32:53", Allow, Udp, net("10.0.2.3", 32), Some((53, 53)),
             "allow:udp:10.0.2.3/32:53"),
            ("deny:any:10.0.2.0/24", Deny, Any, net("10.0.2.0", 24), None, "deny:any:10.0.2.0/24"),
            ("allow:tcp:0.0.0.0/0:1-65535", Allow, Tcp, net("0.0.0.0", 0), Some((1, 65535)),
             "allow:tcp:0.0.0.0/0:1-65535"),
            ("deny:tcp:[2001:db8::]/32:80-90", Deny, Tcp, net("2001:db8::", 32), Some((80, 90)),
             "deny:tcp:[2001:db8::]/32:80-90"),
            ("deny:tcp:[2001:db8::/32]:80-90", Deny, Tcp, net("2001:db8::", 32), Some((80, 90)),
             "deny:tcp:[2001:db8::]/32:80-90"),
            ("allow:icmp:[fd00::1]", Allow, Icmp, net("fd00::1", 128), None,
             "allow:icmp:[fd00::1]/128"),
            ("deny:udp:[::]/0", Deny, Udp, net("::", 0), None, "deny:udp:[::]/0"),
            ("deny:any:[::fffe:0:0]/95", Deny, Any, net("::fffe:0:0", 95), None,
             "deny:any:[::fffe:0:0]/95"),
            ("allow:any:any", Allow, Any, any, None, "allow:any:any"),
            ("deny:tcp:ANY:443", Deny, Tcp, any, Some((443, 443)), "deny:tcp:any:443"),
            ("Allow:UDP:10.0.0.0/8:00053-053", Allow, Udp, net("10.0.0.0", 8), Some((53, 53)),
             "allow:udp:10.0.0.0/8:53"),
            ("deny:any:10.0.0.0/08", Deny, Any, net("10.0.0.0", 8), None, "deny:any:10.0.0.0/8"),
            ("deny:tcp:[10.0.0.0]/8:22", Deny, Tcp, net("10.0.0.0", 8), Some((22, 22)),
             "deny:tcp:10.0.0.0/8:22"),
        ];
        for (text, action, proto, (net, prefix_len, any_addr), ports, canonical) in table {
            let r = rule(text);
            let want = FilterRule {
                action: *action,
                proto: *proto,
                net: *net,
                prefix_len: *prefix_len,
                any_addr: *any_addr,
                ports: *ports,
            };
            assert_eq!(r, want, "{text}");
            assert_eq!(r.to_string(), *canonical, "{text}");
            assert_eq!(rule(canonical), r, "{canonical}");
        }
        // `::fffe:0:0/95` holds the mapped range but is not inside it: accepted,
        // though mapped destinations never match it.
        assert!(!rule("deny:any:[::fffe:0:0]/95").matches(&icmp("::ffff:1.2.3.4")));
    }

    #[test]
    fn error_sentences() {
        #[rustfmt::skip]
        let table: &[(&str, &str)] = &[
            ("", "the rule is empty (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny", "the protocol is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny:tcp", "the network is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny:tcp:", "the network is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            (":tcp:any", "the action is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny::any", "the protocol is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny:tcp:any:", "the port range is missing (expected ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25)"),
            ("deny:tcp:2001:db8::/32", "it has 6 ':'-separated parts (expected at most 4, ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25; write IPv6 networks in brackets, e.g. [2001:db8::]/32)"),
            ("deny:tcp:any:80:x", "it has 5 ':'-separated parts (expected at most 4, ACTION:PROTO:CIDR[:PORTS], e.g. deny:tcp:198.51.100.1/32:25; write IPv6 networks in brackets, e.g. [2001:db8::]/32)"),
            ("deny:tcp:[2001:db8::/32", "its brackets do not match (expected IPv6 networks written as [ADDR]/N or [ADDR/N], e.g. [2001:db8::]/32)"),
            ("deny:tcp:[[::1]]", "its brackets do not match (expected IPv6 networks written as [ADDR]/N or [ADDR/N], e.g. [2001:db8::]/32)"),
            ("drop:tcp:any", r#"unknown action "drop" (expected allow or deny)"#),
            ("deny:sctp:any", r#"unknown protocol "sctp" (expected tcp, udp, icmp or any)"#),
            ("deny:icmpv6:any", r#"unknown protocol "icmpv6" (expected tcp, udp, icmp or any)"#),
            ("deny:any:10.0.2/24", r#"network "10.0.2/24" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:localhost", r#"network "localhost" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:any/0", r#"network "any/0" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:[2001:db8::/32]/32", r#"network "[2001:db8::/32]/32" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:[2001:db8::]32", r#"network "[2001:db8::]32" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:x[::1]", r#"network "x[::1]" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#),
            ("deny:any:10.0.0.0/33", r#"prefix length "33" of network "10.0.0.0/33" is not valid (expected 0-32 for an IPv4 network)"#),
            ("deny:any:10.0.0.0/", r#"prefix length "" of network "10.0.0.0/" is not valid (expected 0-32 for an IPv4 network)"#),
            ("deny:any:10.0.0.0/+8", r#"prefix length "+8" of network "10.0.0.0/+8" is not valid (expected 0-32 for an IPv4 network)"#),
            ("deny:any:10.0.0.0/8/8", r#"prefix length "8/8" of network "10.0.0.0/8/8" is not valid (expected 0-32 for an IPv4 network)"#),
            ("deny:any:[::]/129", r#"prefix length "129" of network "[::]/129" is not valid (expected 0-128 for an IPv6 network)"#),
            ("deny:any:[::/99999999999]", r#"prefix length "99999999999" of network "[::/99999999999]" is not valid (expected 0-128 for an IPv6 network)"#),
            ("deny:any:10.0.2.5/24", r#"network "10.0.2.5/24" has host bits set beyond its /24 prefix (expected the network's first address, e.g. 10.0.2.0/24)"#),
            ("deny:any:0.0.0.1/0", r#"network "0.0.0.1/0" has host bits set beyond its /0 prefix (expected the network's first address, e.g. 0.0.0.0/0)"#),
            ("deny:tcp:[2001:db8::1]/32:80", r#"network "[2001:db8::1]/32" has host bits set beyond its /32 prefix (expected the network's first address, e.g. [2001:db8::]/32)"#),
            ("deny:any:[::ffff:10.0.2.5]/120", r#"network "[::ffff:10.0.2.5]/120" is IPv4-mapped IPv6, and mapped destinations are matched as IPv4 (expected the IPv4 network, e.g. 10.0.2.0/24)"#),
            ("deny:any:[::ffff:0:0/96]", r#"network "[::ffff:0:0/96]" is IPv4-mapped IPv6, and mapped destinations are matched as IPv4 (expected the IPv4 network, e.g. 0.0.0.0/0)"#),
            ("deny:icmp:10.0.0.0/8:80", r#"ports "80" are given with protocol icmp (expected ports only with tcp or udp)"#),
            ("deny:any:any:1-1024", r#"ports "1-1024" are given with protocol any (expected ports only with tcp or udp)"#),
            ("deny:tcp:any:http", r#"port "http" is not a number (expected 1-65535)"#),
            ("deny:tcp:any:+80", r#"port "+80" is not a number (expected 1-65535)"#),
            ("deny:tcp:any:0", "port 0 is out of range (expected 1-65535)"),
            ("deny:udp:any:65536", "port 65536 is out of range (expected 1-65535)"),
            ("deny:udp:any:1-99999999999999999999", "port 99999999999999999999 is out of range (expected 1-65535)"),
            ("deny:tcp:any:80-", r#"port range "80-" is malformed (expected N or N-M, e.g. 80-90)"#),
            ("deny:tcp:any:-80", r#"port range "-80" is malformed (expected N or N-M, e.g. 80-90)"#),
            ("deny:tcp:any:1-2-3", r#"port range "1-2-3" is malformed (expected N or N-M, e.g. 80-90)"#),
            ("deny:tcp:any:90-80", "port range 90-80 is reversed (expected N <= M)"),
        ];
        for (text, sentence) in table {
            assert_eq!(
                err(text),
                format!("filter rule {text:?}: {sentence}"),
                "{text}"
            );
        }
        // The rule is quoted with escapes.
        assert_eq!(
            err("deny:any:any\n"),
            r#"filter rule "deny:any:any\n": network "any\n" is not a valid network (expected A.B.C.D/N, [IPV6]/N or any, e.g. 10.0.2.0/24 or [2001:db8::]/32)"#
        );
    }

    #[test]
    fn error_accessors() {
        let e = parse_filter("deny:any:10.0.2.5/24").unwrap_err();
        assert_eq!(e.rule(), "deny:any:10.0.2.5/24");
        assert_eq!(
            e.kind(),
            &FilterErrorKind::HostBits {
                net: "10.0.2.5/24".into(),
                prefix_len: 24,
                suggestion: Net(ip("10.0.2.0"), 24),
            }
        );
        assert_eq!(
            kind("deny:any:any:80"),
            FilterErrorKind::PortsNotAllowed {
                proto: FilterProto::Any,
                ports: "80".into()
            }
        );
        assert_eq!(
            kind("deny:tcp:any:9-8"),
            FilterErrorKind::ReversedRange { start: 9, end: 8 }
        );
        assert_eq!(kind("a:b:c:d:e"), FilterErrorKind::TooManyParts(5));
    }

    #[test]
    fn matches_table() {
        #[rustfmt::skip]
        let table: &[(&str, Flow, bool)] = &[
            // Protocols.
            ("deny:tcp:any", tcp("1.2.3.4", 80), true),
            ("deny:tcp:any", udp("1.2.3.4", 80), false),
            ("deny:tcp:any", icmp("1.2.3.4"), false),
            ("deny:udp:any", udp("::1", 53), true),
            ("deny:icmp:any", icmp("::1"), true),
            ("deny:icmp:any", tcp("::1", 1), false),
            ("deny:any:any", icmp("1.2.3.4"), true),
            ("deny:any:any", udp("1.2.3.4", 65535), true),
            // Port range edges.
            ("deny:tcp:any:80-90", tcp("1.2.3.4", 79), false),
            ("deny:tcp:any:80-90", tcp("1.2.3.4", 80), true),
            ("deny:tcp:any:80-90", tcp("1.2.3.4", 85), true),
            ("deny:tcp:any:80-90", tcp("1.2.3.4", 90), true),
            ("deny:tcp:any:80-90", tcp("1.2.3.4", 91), false),
            ("deny:udp:any:53", udp("1.2.3.4", 53), true),
            ("deny:udp:any:53", udp("1.2.3.4", 54), false),
            ("deny:udp:any:1-65535", udp("1.2.3.4", 1), true),
            ("deny:udp:any:1-65535", udp("1.2.3.4", 65535), true),
            ("deny:udp:any:1-65535", udp("1.2.3.4", 0), false),
            ("deny:tcp:any:65535", tcp("1.2.3.4", 65535), true),
            // ICMP ignores ports: an icmp or any rule matches whatever the port.
            ("deny:icmp:1.2.3.4", flow(FilterProto::Icmp, "1.2.3.4", 777), true),
            ("deny:any:1.2.3.4", flow(FilterProto::Icmp, "1.2.3.4", 777), true),
            // IPv4 networks.
            ("deny:any:10.0.2.0/24", tcp("10.0.2.0", 1), true),
            ("deny:any:10.0.2.0/24", tcp("10.0.2.255", 1), true),
            ("deny:any:10.0.2.0/24", tcp("10.0.3.0", 1), false),
            ("deny:any:10.0.2.0/24", tcp("10.0.1.255", 1), false),
            ("deny:any:10.0.2.0/23", tcp("10.0.3.7", 1), true),
            ("deny:any:0.0.0.0/0", tcp("255.255.255.255", 1), true),
            ("deny:any:198.51.100.1", tcp("198.51.100.1", 1), true),
            ("deny:any:198.51.100.1", tcp("198.51.100.2", 1), false),
            // IPv6 networks.
            ("deny:any:[2001:db8::]/32", tcp("2001:db8:ffff::1", 1), true),
            ("deny:any:[2001:db8::]/32", tcp("2001:db9::", 1), false),
            ("deny:any:[::]/0", udp("fe80::1", 1), true),
            ("deny:any:[fd00::1]", icmp("fd00::1"), true),
            ("deny:any:[fd00::1]", icmp("fd00::2"), false),
            // Families are separate; `any` spans both.
            ("deny:any:0.0.0.0/0", tcp("::", 1), false),
            ("deny:any:0.0.0.0/0", tcp("2001:db8::1", 1), false),
            ("deny:any:[::]/0", tcp("0.0.0.0", 1), false),
            ("deny:any:[::]/0", tcp("10.0.2.2", 1), false),
            ("deny:any:any", tcp("10.0.2.2", 1), true),
            ("deny:any:any", tcp("2001:db8::1", 1), true),
            // Mapped destinations are their IPv4 address.
            ("deny:any:10.0.2.0/24", tcp("::ffff:10.0.2.9", 1), true),
            ("deny:any:10.0.2.0/24", tcp("::ffff:10.0.3.9", 1), false),
            ("deny:any:169.254.169.254", icmp("::ffff:169.254.169.254"), true),
            ("deny:any:[::]/0", tcp("::ffff:10.0.2.9", 1), false),
            ("deny:any:[::]/80", tcp("::ffff:10.0.2.9", 1), false),
            // ... but the deprecated compatible form `::a.b.c.d` is plain IPv6.
            ("deny:any:10.0.2.0/24", tcp("::10.0.2.9", 1), false),
            ("deny:any:[::]/96", tcp("::10.0.2.9", 1), true),
        ];
        for (text, f, want) in table {
            assert_eq!(rule(text).matches(f), *want, "{text} vs {f:?}");
        }
    }

    #[test]
    fn matches_survives_rules_parse_never_returns() {
        let odd = FilterRule {
            action: Action::Deny,
            proto: FilterProto::Any,
            net: ip("10.0.2.9"),
            prefix_len: 200,
            any_addr: false,
            ports: Some((90, 80)),
        };
        // Prefix clamped to /32; ports ignored for ICMP, an empty range for TCP.
        assert!(odd.matches(&icmp("10.0.2.9")));
        assert!(!odd.matches(&icmp("10.0.2.8")));
        assert!(!odd.matches(&tcp("10.0.2.9", 85)));
        let v6 = FilterRule {
            net: ip("fd00::1"),
            ports: None,
            ..odd.clone()
        };
        assert!(v6.matches(&tcp("fd00::1", 1)));
        assert!(!v6.matches(&tcp("fd00::2", 1)));
        // A flow of protocol Any matches only `any` rules.
        let any_flow = flow(FilterProto::Any, "10.0.2.9", 0);
        assert!(rule("deny:any:any").matches(&any_flow));
        assert!(!rule("deny:tcp:any").matches(&any_flow));
        // Display of an `any_addr` rule ignores the net.
        let any = FilterRule {
            any_addr: true,
            ..v6
        };
        assert_eq!(any.to_string(), "deny:any:any");
    }

    #[test]
    fn decide_first_match_and_layers() {
        let guest = rules(&[
            "allow:tcp:198.51.100.0/24:443",
            "deny:tcp:198.51.100.0/24",
            "allow:tcp:198.51.100.0/24:80",
        ]);
        let network = rules(&[
            "deny:any:169.254.169.254/32",
            "allow:udp:10.0.2.3/32:53",
            "deny:udp:10.0.2.0/24",
            "deny:any:[2001:db8::]/32",
        ]);
        let v = |action, matched| Verdict { action, matched };
        use Action::{Allow, Deny};
        use Matched::{Default, Guest, Network};
        let table: &[(Flow, Action, Verdict)] = &[
            // First match wins within the guest's list: 80 is denied by rule 1
            // before rule 2 could allow it.
            (tcp("198.51.100.7", 443), Deny, v(Allow, Guest(0))),
            (tcp("198.51.100.7", 80), Allow, v(Deny, Guest(1))),
            // The guest's rules come before the network's.
            (tcp("198.51.100.7", 22), Allow, v(Deny, Guest(1))),
            // Then the network's, in order.
            (udp("10.0.2.3", 53), Deny, v(Allow, Network(1))),
            (udp("10.0.2.3", 54), Allow, v(Deny, Network(2))),
            (udp("10.0.2.4", 53), Allow, v(Deny, Network(2))),
            (tcp("2001:db8::5", 80), Allow, v(Deny, Network(3))),
            // Then the default, whichever it is.
            (tcp("10.0.2.3", 53), Allow, v(Allow, Default)),
            (tcp("10.0.2.3", 53), Deny, v(Deny, Default)),
            (tcp("2001:db9::5", 80), Deny, v(Deny, Default)),
            (icmp("203.0.113.8"), Allow, v(Allow, Default)),
        ];
        for (f, default, want) in table {
            assert_eq!(decide(&guest, &network, *default, f), *want, "{f:?}");
        }
        // A guest rule can override the network's.
        let mine = rules(&["allow:udp:10.0.2.0/24"]);
        assert_eq!(
            decide(&mine, &network, Deny, &udp("10.0.2.4", 53)),
            v(Allow, Guest(0))
        );
        // Empty lists: the default.
        assert_eq!(decide(&[], &[], Allow, &icmp("::1")), v(Allow, Default));
    }

    #[test]
    fn metadata_address_blocked_by_one_rule() {
        let network = rules(&["deny:any:169.254.169.254/32"]);
        let verdict = |f: Flow| decide(&[], &network, Action::Allow, &f);
        for f in [
            tcp("169.254.169.254", 80),
            udp("169.254.169.254", 53),
            icmp("169.254.169.254"),
            tcp("::ffff:169.254.169.254", 80),
        ] {
            assert_eq!(
                verdict(f),
                Verdict {
                    action: Action::Deny,
                    matched: Matched::Network(0)
                },
                "{f:?}"
            );
        }
        for f in [
            tcp("169.254.169.253", 80),
            tcp("169.254.169.255", 80),
            tcp("93.184.216.34", 443),
            tcp("2001:db8::1", 80),
        ] {
            assert_eq!(
                verdict(f),
                Verdict {
                    action: Action::Allow,
                    matched: Matched::Default
                },
                "{f:?}"
            );
        }
    }

    #[test]
    fn fuzz_target_survives_edge_inputs() {
        for input in [
            &b""[..],
            b"\0",
            b"\xff",
            b"[",
            b"deny:any:any",
            b"allow:tcp:0.0.0.0/0:1-65535",
            b"deny:udp:[::]/0:65535",
            b"deny:icmp:[fd00::1]",
            b"deny:any:10.0.2.5/24",
        ] {
            crate::fuzz::filter_rule(input);
        }
    }

    #[test]
    fn fuzz_seeds_are_what_their_names_say() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/filter_rule");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Inputs the fuzzer found are named by their SHA-1 and may be anything; only
            // the named seeds promise something.
            if name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = parse_filter(&text);
            assert_eq!(
                parsed.is_err(),
                name.starts_with("err_"),
                "{name}: {parsed:?}"
            );
            crate::fuzz::filter_rule(text.as_bytes());
            n += 1;
        }
        assert!(n >= 10, "{}: too few seeds", dir.display());
    }

    fn arb_net() -> impl Strategy<Value = (IpAddr, u8, bool)> {
        prop_oneof![
            Just((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, true)),
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, p)| { (IpAddr::V4(Ipv4Addr::from(a & mask_v4(p))), p, false) }),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, p)| (IpAddr::V6(Ipv6Addr::from(a & mask_v6(p))), p, false))
                .prop_filter("IPv4-mapped networks are refused", |(a, p, _)| {
                    !matches!(a, IpAddr::V6(v6) if *p >= 96 && v6.to_ipv4_mapped().is_some())
                }),
        ]
    }

    fn arb_proto() -> impl Strategy<Value = FilterProto> {
        prop_oneof![
            Just(FilterProto::Any),
            Just(FilterProto::Tcp),
            Just(FilterProto::Udp),
            Just(FilterProto::Icmp),
        ]
    }

    prop_compose! {
        fn arb_rule()(
            deny in any::<bool>(),
            proto in arb_proto(),
            (net, prefix_len, any_addr) in arb_net(),
            a in 1u16..,
            b in 1u16..,
            with_ports in any::<bool>(),
        ) -> FilterRule {
            FilterRule {
                action: if deny { Action::Deny } else { Action::Allow },
                proto,
                net,
                prefix_len,
                any_addr,
                ports: (with_ports && proto.has_ports()).then_some((a.min(b), a.max(b))),
            }
        }
    }

    fn arb_flow() -> impl Strategy<Value = Flow> {
        (
            prop_oneof![
                Just(FilterProto::Tcp),
                Just(FilterProto::Udp),
                Just(FilterProto::Icmp)
            ],
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
                any::<[u8; 4]>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
            ],
            any::<u16>(),
        )
            .prop_map(|(proto, dst, dst_port)| Flow {
                proto,
                dst,
                dst_port,
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = parse_filter(&s);
        }

        #[test]
        fn parse_never_panics_on_rule_like_text(
            s in "(allow|deny|x)?:(tcp|udp|icmp|any)?:[0-9a-f:.\\[\\]/any-]{0,40}"
        ) {
            if let Ok(r) = parse_filter(&s) {
                prop_assert_eq!(parse_filter(&r.to_string()), Ok(r));
            }
        }

        #[test]
        fn display_parses_back(r in arb_rule()) {
            let text = r.to_string();
            prop_assert_eq!(parse_filter(&text), Ok(r));
        }

        #[test]
        fn rule_matches_its_own_network(r in arb_rule(), f in arb_flow()) {
            // A flow to the network's first address, on a port of the range, with
            // the rule's protocol, matches.
            let proto = if r.proto == FilterProto::Any { f.proto } else { r.proto };
            let dst = if r.any_addr { f.dst } else { r.net };
            let dst_port = r.ports.map_or(f.dst_port, |(start, _)| start);
            let own = Flow { proto, dst, dst_port };
            prop_assert!(r.matches(&own), "{} {:?}", r, own);
        }

        #[test]
        fn mapped_destination_matches_as_ipv4(r in arb_rule(), a in any::<[u8; 4]>(), f in arb_flow()) {
            let v4 = Flow { dst: IpAddr::from(a), ..f };
            let mapped = Flow { dst: IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()), ..f };
            prop_assert_eq!(r.matches(&v4), r.matches(&mapped));
        }

        #[test]
        fn decide_is_first_match_of_the_concatenation(
            guest in proptest::collection::vec(arb_rule(), 0..6),
            network in proptest::collection::vec(arb_rule(), 0..6),
            deny in any::<bool>(),
            f in arb_flow(),
        ) {
            let default = if deny { Action::Deny } else { Action::Allow };
            let got = decide(&guest, &network, default, &f);
            let all: Vec<&FilterRule> = guest.iter().chain(&network).collect();
            let want = all.iter().position(|r| r.matches(&f)).map_or(
                Verdict { action: default, matched: Matched::Default },
                |i| Verdict {
                    action: all[i].action,
                    matched: if i < guest.len() {
                        Matched::Guest(i)
                    } else {
                        Matched::Network(i - guest.len())
                    },
                },
            );
            prop_assert_eq!(got, want);
        }
    }
}
