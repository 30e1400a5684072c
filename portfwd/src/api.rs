//! The slirp4netns-compatible JSON API, both the server's half and the client's.
//!
//! # Theory of operation
//!
//! The transport (owned by the engine) is slirp4netns's: one request per connection
//! on a UNIX stream socket. The client writes a JSON object and shuts down its write
//! side; the server answers with one JSON object and closes. This module only turns
//! bytes into a [`Request`] and replies into bytes:
//!
//! * [`RequestReader`] gathers one request's bytes until the client's EOF, up to
//!   [`MAX_REQUEST_BYTES`], so a request split across several reads is reassembled
//!   (slirp4netns does a single `read()` and would misparse it).
//!   [`RequestReader::is_complete`] also lets the engine answer a client that sends
//!   a whole JSON object but never shuts down its write side, which slirp4netns's
//!   single read tolerates.
//! * [`parse_request`] validates the request completely and fails with an
//!   [`ApiError`] whose [`ApiError::desc`] is slirp4netns's exact text.
//! * `reply_*` build the replies byte for byte as slirp4netns does, without a
//!   trailing newline.
//! * `request_*`, [`parse_reply`] and [`format_table`] are the `usernet fwd` client.
//!
//! Requests (`execute` values): `add_hostfwd`, `list_hostfwd`, `remove_hostfwd`
//! as in slirp4netns, plus `stats`, a usernet extension answered with
//! `{"return":{...counters...}}`.
//!
//! # Where we differ from slirp4netns, on purpose
//!
//! * **`list_hostfwd` answers with both shapes.** slirp4netns's man page documents
//!   `{"return":{"entries":[...]}}`, but its code sends `{"entries":[...]}` without
//!   the wrapper (its own test never noticed, having lost `set -e` to a typo). Clients
//!   were written against either. We send
//!   `{"return":{"entries":[...]},"entries":[...]}`, so `.return.entries[0].id` and
//!   `.entries[0].id` both work; JSON clients ignore the key they do not read.
//! * **Arguments are validated.** slirp4netns crashes on a missing `proto`, reads
//!   numbers as doubles and truncates them to `int`, and never checks ports above
//!   65535. Here ports must be integers in 1-65535 and ids in 1-4294967295, or the
//!   request fails with the matching `bad arguments.FIELD` text. A number with a zero
//!   fraction (`8080.0`, `8.08e3`) is accepted, since slirp4netns accepts it and
//!   clients in languages without an integer type may send one; `8080.5` is refused
//!   rather than truncated. A string where a number is expected (`"8080"`) is refused,
//!   as slirp4netns does (it reads it as 0).
//! * **Addresses.** `host_addr` absent, `null` or `""` means `0.0.0.0` (podman sends
//!   `"0.0.0.0"`; other clients send `""`); `guest_addr` absent, `null` or `""` means
//!   the default guest (podman always sends `""`). IPv6 addresses are accepted on
//!   either side (slirp4netns takes IPv4 only). An address of the wrong JSON type is
//!   refused rather than taken as absent.
//! * **Size.** slirp4netns refuses requests of 4096 bytes or more; we accept up to
//!   [`MAX_REQUEST_BYTES`] (64 KiB), which still bounds memory per connection.
//! * **One JSON value.** Anything but whitespace after the object makes the request
//!   `cannot parse JSON` (slirp4netns's parser stops at the end of the first value
//!   and ignores the rest).
//! * **NUL.** Bytes after a first NUL are ignored, as slirp4netns's C string parsing
//!   does, so a client that sends `strlen + 1` bytes keeps working.
//! * The `add_hostfwd` and `remove_hostfwd` failure texts keep slirp4netns's
//!   wording (`slirp_add_hostfwd failed`), since clients show them verbatim; the
//!   engine logs the real cause.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::rule::{Proto, RuleSpec};
use crate::table::Rule;

/// The largest request accepted, in bytes.
///
/// slirp4netns refuses requests of 4096 bytes or more; real requests are about
/// 120 bytes. 64 KiB leaves room for future arguments while bounding what one
/// connection can make the engine hold.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A field of `add_hostfwd`'s arguments, named in its error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddField {
    /// `arguments.proto`
    Proto,
    /// `arguments.host_addr`
    HostAddr,
    /// `arguments.host_port`
    HostPort,
    /// `arguments.guest_addr`
    GuestAddr,
    /// `arguments.guest_port`
    GuestPort,
    /// `arguments.guest_mac` (usernet extension; not together with `guest_addr`)
    GuestMac,
}

impl AddField {
    /// The JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            AddField::Proto => "proto",
            AddField::HostAddr => "host_addr",
            AddField::HostPort => "host_port",
            AddField::GuestAddr => "guest_addr",
            AddField::GuestPort => "guest_port",
            AddField::GuestMac => "guest_mac",
        }
    }
}

/// A failed request, or (on the client side) an unreadable reply.
///
/// Each server-side variant displays as slirp4netns's exact error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The bytes are not JSON.
    #[error("bad request: cannot parse JSON")]
    CannotParseJson,
    /// The JSON is not an object.
    #[error("bad request: json_object() failed")]
    NotAnObject,
    /// There is no string `execute` member.
    #[error("bad request: no execute found")]
    NoExecute,
    /// `execute` names no known request.
    #[error("bad request: unknown execute")]
    UnknownExecute,
    /// The request exceeds [`MAX_REQUEST_BYTES`].
    #[error("bad request: too large message")]
    TooLarge,
    /// An `add_hostfwd` argument is missing or invalid.
    #[error("bad request: add_hostfwd: bad arguments.{}", .0.as_str())]
    AddBadArgument(AddField),
    /// The engine could not add the forward (bind failed, conflict, table full).
    #[error("bad request: add_hostfwd: slirp_add_hostfwd failed")]
    AddFailed,
    /// `remove_hostfwd`'s id is missing, invalid, or names no rule.
    #[error("bad request: remove_hostfwd: bad arguments.id")]
    RemoveBadId,
    /// The engine could not remove the forward.
    #[error("bad request: remove_hostfwd: slirp_remove_hostfwd failed")]
    RemoveFailed,
    /// An argument of a usernet extension request is missing or invalid.
    #[error("bad request: {0}")]
    BadArgument(String),
    /// Client side: the server's reply is not one this module understands.
    #[error("bad reply from the API socket: {0}")]
    BadReply(String),
}

impl ApiError {
    /// The text for the `desc` member of an error reply.
    pub fn desc(&self) -> String {
        self.to_string()
    }

    /// The complete error reply, `{"error":{"desc":"..."}}`.
    pub fn reply(&self) -> Vec<u8> {
        reply_error(&self.desc())
    }
}

/// A valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `add_hostfwd`: add a forward (the spec's `name` is always `None`; its
    /// `guest_addr` is `None` when absent or `""`).
    AddHostfwd(RuleSpec),
    /// `list_hostfwd`: list the forwards.
    ListHostfwd,
    /// `remove_hostfwd`: remove forward `id`.
    RemoveHostfwd {
        /// The id `add_hostfwd` returned.
        id: u32,
    },
    /// `stats` (usernet extension): the engine's counters.
    Stats,
    /// `list_ports` (usernet extension): the ports of a network's switch.
    ListPorts,
    /// `list_leases` (usernet extension): the DHCP leases.
    ListLeases,
    /// `attach` (usernet extension, networks only): the file descriptor passed with
    /// the request (`SCM_RIGHTS`) becomes a new port of the switch.
    Attach {
        /// What the descriptor is: a TAP device or a connected stream socket.
        kind: AttachKind,
        /// A label shown in listings (at most 64 bytes, no control characters).
        name: String,
        /// The guest interface's MAC, when its owner knows it (pinned at once).
        mac: Option<[u8; 6]>,
        /// The guest's configured IPv4 address, if any (pinned at once).
        addr: Option<std::net::Ipv4Addr>,
    },
    /// `set_policy` (usernet extension, networks): change the isolation flags of the
    /// network (`guest` absent) or of one guest.
    SetPolicy {
        /// The guest, or the whole network.
        guest: Option<GuestRef>,
        /// The changes.
        change: PolicyChange,
    },
    /// `set_filters` (usernet extension): replace the IP filter rules of the network
    /// (`guest` absent) or of one guest, and optionally the default policy.
    SetFilters {
        /// The guest, or the whole network.
        guest: Option<GuestRef>,
        /// The new rules, in order.
        rules: Vec<crate::filter::FilterRule>,
        /// The new default policy.
        default: Option<crate::filter::Action>,
    },
    /// `list_policy` (usernet extension): flags, rules and their counters.
    ListPolicy,
    /// `detach` (usernet extension, networks): remove port `port` (its device closes).
    Detach {
        /// The id `attach` returned.
        port: u32,
    },
    /// `request_lease` (usernet extension): lease an address to `mac` without a DHCP
    /// exchange, for a guest configured statically from it.
    RequestLease {
        /// The guest interface's MAC.
        mac: [u8; 6],
        /// Its host name, recorded with the lease.
        hostname: Option<String>,
    },
}

/// How a per-guest request names its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRef {
    /// By MAC.
    Mac([u8; 6]),
    /// By address (its lease, configured or pinned address).
    Addr(IpAddr),
}

impl GuestRef {
    /// Read `52:54:00:12:34:56`, `52-54-00-12-34-56` or an IP address.
    pub fn parse(s: &str) -> Option<GuestRef> {
        if let Some(m) = crate::rule::parse_mac(s) {
            return Some(GuestRef::Mac(m));
        }
        s.parse().ok().map(GuestRef::Addr)
    }
}

impl std::fmt::Display for GuestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestRef::Mac(m) => f.write_str(&crate::rule::mac_dashes(*m).replace('-', ":")),
            GuestRef::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// The flags a `set_policy` request changes; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// No traffic with other guests.
    pub isolate: Option<bool>,
    /// Nothing to the host.
    pub block_host: Option<bool>,
    /// Nothing but forwards in.
    pub restrict: Option<bool>,
    /// Turn the anti-spoofing checks off (`true`) or on.
    pub allow_spoofing: Option<bool>,
}

/// What an `attach` request hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachKind {
    /// A TAP device's fd (one frame per read and write).
    Tap,
    /// A connected stream socket with QEMU's framing (4-byte length, frame).
    Stream,
}

impl AttachKind {
    /// The JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachKind::Tap => "tap",
            AttachKind::Stream => "stream",
        }
    }
}

/// The longest `attach` name.
pub const MAX_PORT_NAME: usize = 64;

/// The bytes before the first NUL, as a C string parser sees them.
fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    }
}

/// A JSON number that is a whole number in `lo..=hi`.
fn whole_number(v: Option<&Value>, lo: u64, hi: u64) -> Option<u64> {
    let n = v?.as_number()?;
    let x = if let Some(u) = n.as_u64() {
        u
    } else {
        let f = n.as_f64()?;
        if f.fract() != 0.0 || !(0.0..=4_294_967_295.0).contains(&f) {
            return None;
        }
        // Whole and within u32: the conversion is exact.
        f as u64
    };
    (lo..=hi).contains(&x).then_some(x)
}

fn port(v: Option<&Value>) -> Option<u16> {
    whole_number(v, 1, 65535).and_then(|x| u16::try_from(x).ok())
}

/// A MAC argument (`"52:54:00:12:34:56"` or with dashes): `Ok(None)` when absent,
/// `null` or `""`.
fn mac(v: Option<&Value>) -> Result<Option<[u8; 6]>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => crate::rule::parse_mac(s).map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

/// An address argument: `Ok(None)` when absent, `null` or `""`.
fn addr(v: Option<&Value>) -> Result<Option<IpAddr>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn parse_add(args: Option<&Map<String, Value>>) -> Result<RuleSpec, ApiError> {
    let bad = ApiError::AddBadArgument;
    let args = args.ok_or(bad(AddField::Proto))?;
    let proto = match args.get("proto").and_then(Value::as_str) {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => return Err(bad(AddField::Proto)),
    };
    let host_addr = addr(args.get("host_addr"))
        .map_err(|()| bad(AddField::HostAddr))?
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let host_port = port(args.get("host_port")).ok_or(bad(AddField::HostPort))?;
    let guest_addr = addr(args.get("guest_addr")).map_err(|()| bad(AddField::GuestAddr))?;
    let guest_mac = mac(args.get("guest_mac")).map_err(|()| bad(AddField::GuestMac))?;
    if guest_addr.is_some() && guest_mac.is_some() {
        return Err(bad(AddField::GuestMac));
    }
    let guest_port = port(args.get("guest_port")).ok_or(bad(AddField::GuestPort))?;
    Ok(RuleSpec {
        proto,
        host_addr,
        host_port,
        guest_addr,
        guest_mac,
        guest_port,
        name: None,
    })
}

/// Parses one complete request.
///
/// Checks in slirp4netns's order: JSON, object, `execute`, then the arguments of
/// the request (for `add_hostfwd`: proto, host_addr, host_port, guest_addr,
/// guest_port). Unknown members are ignored.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ApiError> {
    let bytes = until_nul(bytes);
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::TooLarge);
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|_| ApiError::CannotParseJson)?;
    let obj = v.as_object().ok_or(ApiError::NotAnObject)?;
    let execute = obj
        .get("execute")
        .and_then(Value::as_str)
        .ok_or(ApiError::NoExecute)?;
    let args = obj.get("arguments").and_then(Value::as_object);
    match execute {
        "add_hostfwd" => parse_add(args).map(Request::AddHostfwd),
        "list_hostfwd" => Ok(Request::ListHostfwd),
        "remove_hostfwd" => {
            let id = whole_number(args.and_then(|a| a.get("id")), 1, u64::from(u32::MAX))
                .and_then(|x| u32::try_from(x).ok())
                .ok_or(ApiError::RemoveBadId)?;
            Ok(Request::RemoveHostfwd { id })
        }
        "stats" => Ok(Request::Stats),
        "list_ports" => Ok(Request::ListPorts),
        "list_leases" => Ok(Request::ListLeases),
        "attach" => {
            let bad = |what: &str| ApiError::BadArgument(what.to_string());
            let kind = match args.and_then(|a| a.get("kind")).and_then(Value::as_str) {
                Some("tap") => AttachKind::Tap,
                Some("stream") => AttachKind::Stream,
                _ => return Err(bad("arguments.kind must be \"tap\" or \"stream\"")),
            };
            let name = match args.and_then(|a| a.get("name")) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s))
                    if s.len() <= MAX_PORT_NAME && !s.chars().any(char::is_control) =>
                {
                    s.clone()
                }
                Some(_) => {
                    return Err(bad(
                        "arguments.name must be a string of at most 64 bytes without control characters",
                    ));
                }
            };
            let mac = mac(args.and_then(|a| a.get("mac")))
                .map_err(|()| bad("arguments.mac must be a MAC address"))?;
            let addr = match addr(args.and_then(|a| a.get("addr"))) {
                Ok(None) => None,
                Ok(Some(IpAddr::V4(a))) => Some(a),
                _ => return Err(bad("arguments.addr must be an IPv4 address")),
            };
            Ok(Request::Attach {
                kind,
                name,
                mac,
                addr,
            })
        }
        "list_policy" => Ok(Request::ListPolicy),
        "detach" => {
            let port = whole_number(args.and_then(|a| a.get("port")), 1, u64::from(u32::MAX))
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    ApiError::BadArgument("arguments.port must be a port id (1 or more)".into())
                })?;
            Ok(Request::Detach { port })
        }
        "set_policy" => {
            let guest = guest_ref(args)?;
            let flag = |k: &str| -> Result<Option<bool>, ApiError> {
                match args.and_then(|a| a.get(k)) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(ApiError::BadArgument(format!(
                        "arguments.{k} must be true, false or null"
                    ))),
                }
            };
            let change = PolicyChange {
                isolate: flag("isolate")?,
                block_host: flag("block_host")?,
                restrict: flag("restrict")?,
                allow_spoofing: flag("allow_spoofing")?,
            };
            Ok(Request::SetPolicy { guest, change })
        }
        "set_filters" => {
            let guest = guest_ref(args)?;
            let list = match args.and_then(|a| a.get("rules")) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(v)) => v.clone(),
                Some(_) => {
                    return Err(ApiError::BadArgument(
                        "arguments.rules must be an array of rule strings".into(),
                    ));
                }
            };
            if list.len() > crate::filter::MAX_FILTER_RULES {
                return Err(ApiError::BadArgument(format!(
                    "arguments.rules has {} rules (at most {})",
                    list.len(),
                    crate::filter::MAX_FILTER_RULES
                )));
            }
            let mut rules = Vec::with_capacity(list.len());
            for (i, r) in list.iter().enumerate() {
                let Some(text) = r.as_str() else {
                    return Err(ApiError::BadArgument(format!(
                        "arguments.rules[{i}] is not a string"
                    )));
                };
                let rule = crate::filter::parse_filter(text)
                    .map_err(|e| ApiError::BadArgument(format!("arguments.rules[{i}]: {e}")))?;
                rules.push(rule);
            }
            let default = match args.and_then(|a| a.get("default")) {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) if d == "allow" => Some(crate::filter::Action::Allow),
                Some(Value::String(d)) if d == "deny" => Some(crate::filter::Action::Deny),
                Some(_) => {
                    return Err(ApiError::BadArgument(
                        "arguments.default must be \"allow\" or \"deny\"".into(),
                    ));
                }
            };
            Ok(Request::SetFilters {
                guest,
                rules,
                default,
            })
        }
        "request_lease" => {
            let bad = |what: &str| ApiError::BadArgument(what.to_string());
            let mac = match mac(args.and_then(|a| a.get("mac"))) {
                Ok(Some(m)) if m[0] & 1 == 0 && m != [0; 6] => m,
                _ => return Err(bad("arguments.mac must be a unicast MAC address")),
            };
            let hostname = match args.and_then(|a| a.get("hostname")) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.len() <= 253 => Some(s.clone()),
                Some(_) => return Err(bad("arguments.hostname must be a string")),
            };
            Ok(Request::RequestLease { mac, hostname })
        }
        _ => Err(ApiError::UnknownExecute),
    }
}

/// The optional `arguments.guest` of a per-guest request.
fn guest_ref(args: Option<&Map<String, Value>>) -> Result<Option<GuestRef>, ApiError> {
    match args.and_then(|a| a.get("guest")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => GuestRef::parse(s).map(Some).ok_or_else(|| {
            ApiError::BadArgument(format!(
                "arguments.guest \"{s}\" is neither a MAC address nor an IP address"
            ))
        }),
        Some(_) => Err(ApiError::BadArgument(
            "arguments.guest must be a MAC or IP address string".into(),
        )),
    }
}

/// Gathers the bytes of one request, from any number of reads, until the client's
/// EOF; bounded by [`MAX_REQUEST_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    too_large: bool,
}

impl RequestReader {
    /// An empty reader.
    pub fn new() -> Self {
        RequestReader::default()
    }

    /// Adds the bytes of one read. Fails with [`ApiError::TooLarge`] once the total
    /// would exceed [`MAX_REQUEST_BYTES`]; the reader then keeps failing and holds
    /// no more bytes, and the engine should reply with that error and close.
    pub fn push(&mut self, data: &[u8]) -> Result<(), ApiError> {
        if self.too_large || self.buf.len() + data.len() > MAX_REQUEST_BYTES {
            self.too_large = true;
            self.buf = Vec::new();
            return Err(ApiError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the bytes so far already decide the answer: a whole JSON value, or
    /// bytes that cannot start one, or too many bytes. The engine may then answer
    /// without waiting for EOF. Costs a parse of the held bytes.
    pub fn is_complete(&self) -> bool {
        if self.too_large {
            return true;
        }
        let bytes = until_nul(&self.buf);
        if bytes.len() < self.buf.len() {
            return true;
        }
        let mut stream =
            serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
        match stream.next() {
            None => false,
            Some(Ok(_)) => true,
            Some(Err(e)) => !e.is_eof(),
        }
    }

    /// Parses the request, once the client's EOF has been seen (or
    /// [`RequestReader::is_complete`] said so).
    pub fn finish(self) -> Result<Request, ApiError> {
        if self.too_large {
            return Err(ApiError::TooLarge);
        }
        parse_request(&self.buf)
    }
}

/// A JSON string literal, escaped.
fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The reply to a successful `add_hostfwd`: `{"return":{"id":N}}`.
pub fn reply_add(id: u32) -> Vec<u8> {
    format!(r#"{{"return":{{"id":{id}}}}}"#).into_bytes()
}

/// The reply to a successful `remove_hostfwd`: `{"return":{}}`.
pub fn reply_remove() -> Vec<u8> {
    br#"{"return":{}}"#.to_vec()
}

/// An error reply: `{"error":{"desc":"..."}}`.
pub fn reply_error(desc: &str) -> Vec<u8> {
    format!(r#"{{"error":{{"desc":{}}}}}"#, json_string(desc)).into_bytes()
}

/// The reply to `stats`: `{"return":V}`.
pub fn reply_stats(v: &Value) -> Vec<u8> {
    format!(r#"{{"return":{v}}}"#).into_bytes()
}

/// An address as the API writes it: no brackets.
fn addr_text(a: Option<IpAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// One `list_hostfwd` entry, keys in slirp4netns's order; `name` only when set.
fn write_entry(out: &mut String, rule: &Rule, default_guest: Option<IpAddr>) {
    let s = &rule.spec;
    let _ = write!(
        out,
        r#"{{"id":{},"proto":"{}","host_addr":"{}","host_port":{},"guest_addr":"{}","guest_port":{}"#,
        rule.id,
        s.proto,
        s.host_addr,
        s.host_port,
        addr_text(
            s.guest_addr
                .or(default_guest.filter(|_| s.guest_mac.is_none()))
        ),
        s.guest_port
    );
    if let Some(m) = s.guest_mac {
        let _ = write!(
            out,
            r#","guest_mac":"{}""#,
            crate::rule::mac_dashes(m).replace('-', ":")
        );
    }
    if let Some(name) = &s.name {
        let _ = write!(out, r#","name":{}"#, json_string(name));
    }
    out.push('}');
}

/// The reply to `list_hostfwd`: `{"return":{"entries":[...]},"entries":[...]}`
/// (both shapes, see the module doc), entries sorted by id.
///
/// A rule without a guest address shows `default_guest`, or `""` when that is
/// `None` too.
pub fn reply_list(rules: &[Rule], default_guest: Option<IpAddr>) -> Vec<u8> {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let mut entries = String::from("[");
    for (i, rule) in sorted.into_iter().enumerate() {
        if i > 0 {
            entries.push(',');
        }
        write_entry(&mut entries, rule, default_guest);
    }
    entries.push(']');
    format!(r#"{{"return":{{"entries":{entries}}},"entries":{entries}}}"#).into_bytes()
}

/// The `add_hostfwd` request for `spec` (the name is not part of the API).
///
/// `guest_addr` is `""` when the spec has none, as podman sends it; `guest_mac` is
/// added only when the spec names its guest by MAC.
pub fn request_add(spec: &RuleSpec) -> Vec<u8> {
    let mut args = format!(
        r#""proto":"{}","host_addr":"{}","host_port":{},"guest_addr":"{}","guest_port":{}"#,
        spec.proto,
        spec.host_addr,
        spec.host_port,
        addr_text(spec.guest_addr),
        spec.guest_port
    );
    if let Some(m) = spec.guest_mac {
        let _ = write!(
            args,
            r#","guest_mac":"{}""#,
            crate::rule::mac_dashes(m).replace('-', ":")
        );
    }
    format!(r#"{{"execute":"add_hostfwd","arguments":{{{args}}}}}"#).into_bytes()
}

/// The `list_hostfwd` request.
pub fn request_list() -> Vec<u8> {
    br#"{"execute":"list_hostfwd"}"#.to_vec()
}

/// The `remove_hostfwd` request for rule `id`.
pub fn request_remove(id: u32) -> Vec<u8> {
    format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#).into_bytes()
}

/// The `stats` request (usernet extension).
pub fn request_stats() -> Vec<u8> {
    br#"{"execute":"stats"}"#.to_vec()
}

/// A request without arguments, e.g. `list_ports` or `list_leases`.
pub fn request_plain(execute: &str) -> Vec<u8> {
    serde_json::json!({ "execute": execute })
        .to_string()
        .into_bytes()
}

/// The `attach` request (its descriptor travels beside it, in `SCM_RIGHTS`).
pub fn request_attach(
    kind: AttachKind,
    name: &str,
    mac: Option<[u8; 6]>,
    addr: Option<std::net::Ipv4Addr>,
) -> Vec<u8> {
    let mac = mac.map(|m| crate::rule::mac_dashes(m).replace('-', ":"));
    serde_json::json!({"execute": "attach", "arguments": {
        "kind": kind.as_str(), "name": name, "mac": mac, "addr": addr.map(|a| a.to_string()),
    }})
    .to_string()
    .into_bytes()
}

/// The `request_lease` request.
pub fn request_lease(mac: [u8; 6], hostname: Option<&str>) -> Vec<u8> {
    let mac = crate::rule::mac_dashes(mac).replace('-', ":");
    serde_json::json!({"execute": "request_lease", "arguments": {"mac": mac, "hostname": hostname}})
        .to_string()
        .into_bytes()
}

/// A reply, as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `{"return":{"id":N}}`.
    Added {
        /// The new rule's id.
        id: u32,
    },
    /// Either list shape; a rule whose `guest_addr` is `""` has `None`.
    List(Vec<Rule>),
    /// `{"return":{}}`.
    Removed,
    /// Any other `{"return":{...}}`, e.g. the answer to `stats`.
    Stats(Value),
    /// `{"error":{"desc":"..."}}`: the desc.
    Error(String),
}

fn bad_reply(what: impl Into<String>) -> ApiError {
    ApiError::BadReply(what.into())
}

fn parse_entry(i: usize, v: &Value) -> Result<Rule, ApiError> {
    let field = |name: &str| format!("entries[{i}].{name} is missing or invalid");
    let o = v
        .as_object()
        .ok_or_else(|| bad_reply(format!("entries[{i}] is not an object")))?;
    let id = whole_number(o.get("id"), 0, u64::from(u32::MAX))
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| bad_reply(field("id")))?;
    let proto = match o.get("proto").and_then(Value::as_str) {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => return Err(bad_reply(field("proto"))),
    };
    let host_addr = addr(o.get("host_addr"))
        .map_err(|()| bad_reply(field("host_addr")))?
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let host_port = port(o.get("host_port")).ok_or_else(|| bad_reply(field("host_port")))?;
    let guest_addr = addr(o.get("guest_addr")).map_err(|()| bad_reply(field("guest_addr")))?;
    let guest_mac = mac(o.get("guest_mac")).map_err(|()| bad_reply(field("guest_mac")))?;
    let guest_port = port(o.get("guest_port")).ok_or_else(|| bad_reply(field("guest_port")))?;
    let name = match o.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad_reply(field("name"))),
    };
    Ok(Rule {
        id,
        spec: RuleSpec {
            proto,
            host_addr,
            host_port,
            guest_addr,
            guest_mac,
            guest_port,
            name,
        },
    })
}

fn parse_entries(v: &Value) -> Result<Vec<Rule>, ApiError> {
    v.as_array()
        .ok_or_else(|| bad_reply("entries is not an array"))?
        .iter()
        .enumerate()
        .map(|(i, e)| parse_entry(i, e))
        .collect()
}

/// Reads a server's reply.
///
/// An `error` member wins; then `entries` (top level, or inside `return`) makes a
/// list; then `return` is `{}` (removed), `{"id":N}` (added) or anything else
/// (stats). A `stats` reply with no counters therefore reads as `Removed`: the
/// caller knows what it asked.
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, ApiError> {
    let v: Value = serde_json::from_slice(until_nul(bytes))
        .map_err(|_| bad_reply("it is not JSON (expected a JSON object)"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad_reply("it is not a JSON object"))?;
    if let Some(err) = obj.get("error") {
        let desc = err
            .get("desc")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_reply("error.desc is missing or not a string"))?;
        return Ok(Reply::Error(desc.to_owned()));
    }
    let ret = obj.get("return");
    if let Some(entries) = obj
        .get("entries")
        .or_else(|| ret.and_then(|r| r.get("entries")))
    {
        return parse_entries(entries).map(Reply::List);
    }
    let ret = ret
        .ok_or_else(|| bad_reply("it has neither return, entries nor error"))?
        .as_object()
        .ok_or_else(|| bad_reply("return is not an object"))?;
    if ret.is_empty() {
        return Ok(Reply::Removed);
    }
    if ret.len() == 1
        && let Some(id) = ret.get("id")
    {
        return whole_number(Some(id), 0, u64::from(u32::MAX))
            .and_then(|x| u32::try_from(x).ok())
            .map(|id| Reply::Added { id })
            .ok_or_else(|| bad_reply("return.id is not a rule id"));
    }
    Ok(Reply::Stats(Value::Object(ret.clone())))
}

/// `host:port` with IPv6 in brackets; `None` shows as `default`.
fn endpoint(a: Option<IpAddr>, port: u16) -> String {
    match a {
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(IpAddr::V4(a)) => format!("{a}:{port}"),
        None => format!("default:{port}"),
    }
}

/// A readable, aligned table of rules: `ID PROTO HOST GUEST`, plus `NAME` when any
/// rule has one. One line per rule in the order given, header first, no trailing
/// spaces, each line ending in `\n`.
pub fn format_table(rules: &[Rule]) -> String {
    let with_names = rules.iter().any(|r| r.spec.name.is_some());
    let mut rows: Vec<Vec<String>> = vec![
        ["ID", "PROTO", "HOST", "GUEST", "NAME"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    ];
    for r in rules {
        rows.push(vec![
            r.id.to_string(),
            r.spec.proto.to_string(),
            endpoint(Some(r.spec.host_addr), r.spec.host_port),
            endpoint(r.spec.guest_addr, r.spec.guest_port),
            r.spec.name.clone().unwrap_or_default(),
        ]);
    }
    let cols = if with_names { 5 } else { 4 };
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for c in 0..cols {
            let _ = write!(line, "{:<w$}  ", row[c], w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// podman 4.x `openSlirp4netnsPort`: `json.Marshal` then `"%s\n"`; host_addr is
    /// "0.0.0.0" when the user gave none, guest_addr always "".
    const PODMAN: &[u8] = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_addr\":\"0.0.0.0\",\"host_port\":8080,\"guest_addr\":\"\",\"guest_port\":80}}\n";
    /// The same request with an empty host_addr, as other clients send it.
    const PODMAN_EMPTY_HOST: &[u8] = br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80}}"#;
    /// rootlesskit 1.1 port driver: `json.Encoder` (trailing newline), the child IP
    /// as guest_addr.
    const ROOTLESSKIT: &[u8] = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"udp\",\"host_addr\":\"127.0.0.1\",\"host_port\":5353,\"guest_addr\":\"10.0.2.100\",\"guest_port\":53}}\n";
    const ROOTLESSKIT_REMOVE: &[u8] =
        b"{\"execute\":\"remove_hostfwd\",\"arguments\":{\"id\":1}}\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn err(bytes: &[u8]) -> String {
        parse_request(bytes).unwrap_err().desc()
    }

    fn add(args: &str) -> Result<Request, ApiError> {
        parse_request(format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#).as_bytes())
    }

    fn add_err(args: &str) -> String {
        add(args).unwrap_err().desc()
    }

    #[test]
    fn podman_request() {
        let want = Request::AddHostfwd(RuleSpec::new(Proto::Tcp, 8080, 80));
        assert_eq!(parse_request(PODMAN).unwrap(), want);
        assert_eq!(parse_request(PODMAN_EMPTY_HOST).unwrap(), want);
    }

    #[test]
    fn rootlesskit_requests() {
        let Request::AddHostfwd(spec) = parse_request(ROOTLESSKIT).unwrap() else {
            panic!("not an add");
        };
        assert_eq!(spec.proto, Proto::Udp);
        assert_eq!(spec.host_addr, ip("127.0.0.1"));
        assert_eq!(spec.guest_addr, Some(ip("10.0.2.100")));
        assert_eq!((spec.host_port, spec.guest_port), (5353, 53));
        assert_eq!(
            parse_request(ROOTLESSKIT_REMOVE).unwrap(),
            Request::RemoveHostfwd { id: 1 }
        );
    }

    #[test]
    fn list_stats_requests() {
        assert_eq!(
            parse_request(br#"{"execute":"list_hostfwd"}"#).unwrap(),
            Request::ListHostfwd
        );
        assert_eq!(
            parse_request(br#" {"execute":"list_hostfwd","arguments":{}} "#).unwrap(),
            Request::ListHostfwd
        );
        assert_eq!(
            parse_request(br#"{"execute":"stats"}"#).unwrap(),
            Request::Stats
        );
        // Go clients whose `arguments` field lacks omitempty send null.
        assert_eq!(
            parse_request(b"{\"execute\":\"list_hostfwd\",\"arguments\":null}\n").unwrap(),
            Request::ListHostfwd
        );
    }

    #[test]
    fn defaults_and_ipv6() {
        let Request::AddHostfwd(s) =
            add(r#"{"proto":"udp","host_port":1,"guest_port":65535}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s, RuleSpec::new(Proto::Udp, 1, 65535));
        let Request::AddHostfwd(s) = add(
            r#"{"proto":"tcp","host_addr":null,"host_port":1,"guest_addr":null,"guest_port":2}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(s, RuleSpec::new(Proto::Tcp, 1, 2));
        let Request::AddHostfwd(s) = add(
            r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd00::100","guest_port":80,"extra":true}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(s.host_addr, ip("::1"));
        assert_eq!(s.guest_addr, Some(ip("fd00::100")));
    }

    #[test]
    fn whole_floats_accepted_fractions_refused() {
        let Request::AddHostfwd(s) =
            add(r#"{"proto":"tcp","host_port":8080.0,"guest_port":8.0e1}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((s.host_port, s.guest_port), (8080, 80));
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_port":8080.5,"guest_port":80}"#),
            "bad request: add_hostfwd: bad arguments.host_port"
        );
        assert_eq!(
            parse_request(br#"{"execute":"remove_hostfwd","arguments":{"id":3.0}}"#).unwrap(),
            Request::RemoveHostfwd { id: 3 }
        );
    }

    #[test]
    fn top_level_errors() {
        assert_eq!(err(b""), "bad request: cannot parse JSON");
        assert_eq!(err(b"{"), "bad request: cannot parse JSON");
        assert_eq!(
            err(b"{\"execute\":\"x\"} trailing"),
            "bad request: cannot parse JSON"
        );
        assert_eq!(err(b"\xff\xfe"), "bad request: cannot parse JSON");
        assert_eq!(err(b"[1,2]"), "bad request: json_object() failed");
        assert_eq!(err(b"\"add_hostfwd\""), "bad request: json_object() failed");
        assert_eq!(err(b"null"), "bad request: json_object() failed");
        assert_eq!(err(b"{}"), "bad request: no execute found");
        assert_eq!(err(br#"{"execute":42}"#), "bad request: no execute found");
        assert_eq!(
            err(br#"{"execute":"shutdown"}"#),
            "bad request: unknown execute"
        );
        assert_eq!(
            err(br#"{"execute":"ADD_HOSTFWD"}"#),
            "bad request: unknown execute"
        );
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(err(&big), "bad request: too large message");
    }

    #[test]
    fn nul_ends_the_request() {
        let mut b = br#"{"execute":"list_hostfwd"}"#.to_vec();
        b.extend_from_slice(b"\0garbage");
        assert_eq!(parse_request(&b).unwrap(), Request::ListHostfwd);
    }

    #[test]
    fn add_argument_errors() {
        let msg = |f: &str| format!("bad request: add_hostfwd: bad arguments.{f}");
        assert_eq!(
            err(br#"{"execute":"add_hostfwd"}"#),
            msg("proto"),
            "missing arguments"
        );
        assert_eq!(
            err(br#"{"execute":"add_hostfwd","arguments":[]}"#),
            msg("proto")
        );
        assert_eq!(add_err(r#"{"host_port":1,"guest_port":1}"#), msg("proto"));
        assert_eq!(add_err(r#"{"proto":"sctp"}"#), msg("proto"));
        assert_eq!(add_err(r#"{"proto":"TCP"}"#), msg("proto"));
        assert_eq!(add_err(r#"{"proto":6}"#), msg("proto"));
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_addr":"localhost"}"#),
            msg("host_addr")
        );
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_addr":"[::1]"}"#),
            msg("host_addr")
        );
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_addr":0}"#),
            msg("host_addr")
        );
        assert_eq!(add_err(r#"{"proto":"tcp"}"#), msg("host_port"));
        for bad in [
            "0", "65536", "-1", "\"8080\"", "true", "null", "[80]", "1e10",
        ] {
            assert_eq!(
                add_err(&format!(
                    r#"{{"proto":"tcp","host_port":{bad},"guest_port":80}}"#
                )),
                msg("host_port"),
                "{bad}"
            );
            assert_eq!(
                add_err(&format!(
                    r#"{{"proto":"tcp","host_port":80,"guest_port":{bad}}}"#
                )),
                msg("guest_port"),
                "{bad}"
            );
        }
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_port":80,"guest_addr":"10.0.2","guest_port":80}"#),
            msg("guest_addr")
        );
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_port":80,"guest_addr":{},"guest_port":80}"#),
            msg("guest_addr")
        );
        // slirp4netns's order: guest_addr is checked before guest_port.
        assert_eq!(
            add_err(r#"{"proto":"tcp","host_port":80,"guest_addr":"x","guest_port":0}"#),
            msg("guest_addr")
        );
    }

    #[test]
    fn remove_errors() {
        let msg = "bad request: remove_hostfwd: bad arguments.id";
        assert_eq!(err(br#"{"execute":"remove_hostfwd"}"#), msg);
        assert_eq!(err(br#"{"execute":"remove_hostfwd","arguments":{}}"#), msg);
        for bad in ["0", "-1", "1.5", "\"1\"", "4294967296", "null"] {
            let req = format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{bad}}}}}"#);
            assert_eq!(err(req.as_bytes()), msg, "{bad}");
        }
        assert_eq!(
            parse_request(br#"{"execute":"remove_hostfwd","arguments":{"id":4294967295}}"#)
                .unwrap(),
            Request::RemoveHostfwd { id: u32::MAX }
        );
    }

    #[test]
    fn engine_side_error_texts() {
        assert_eq!(
            ApiError::AddFailed.desc(),
            "bad request: add_hostfwd: slirp_add_hostfwd failed"
        );
        assert_eq!(
            ApiError::RemoveFailed.desc(),
            "bad request: remove_hostfwd: slirp_remove_hostfwd failed"
        );
        assert_eq!(
            ApiError::RemoveBadId.reply(),
            br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
        );
    }

    #[test]
    fn reader_reassembles_split_requests() {
        for split in 0..=PODMAN.len() {
            let mut r = RequestReader::new();
            r.push(&PODMAN[..split]).unwrap();
            r.push(&PODMAN[split..]).unwrap();
            assert_eq!(r.len(), PODMAN.len());
            assert_eq!(r.finish().unwrap(), parse_request(PODMAN).unwrap());
        }
        let mut r = RequestReader::new();
        for b in ROOTLESSKIT {
            r.push(std::slice::from_ref(b)).unwrap();
        }
        assert!(r.finish().is_ok());
    }

    #[test]
    fn reader_completeness() {
        let mut r = RequestReader::new();
        assert!(r.is_empty());
        assert!(!r.is_complete());
        r.push(&PODMAN[..40]).unwrap();
        assert!(!r.is_complete());
        r.push(&PODMAN[40..PODMAN.len() - 1]).unwrap();
        assert!(r.is_complete(), "a whole object, no newline yet");
        let mut r = RequestReader::new();
        r.push(b"}{").unwrap();
        assert!(r.is_complete(), "a syntax error decides the answer");
        assert_eq!(r.finish().unwrap_err(), ApiError::CannotParseJson);
        let mut r = RequestReader::new();
        r.push(b"  ").unwrap();
        assert!(!r.is_complete());
    }

    #[test]
    fn reader_bounds_size() {
        let mut r = RequestReader::new();
        r.push(&vec![b' '; MAX_REQUEST_BYTES]).unwrap();
        assert_eq!(r.push(b"{").unwrap_err(), ApiError::TooLarge);
        assert_eq!(r.len(), 0);
        assert_eq!(r.push(b"").unwrap_err(), ApiError::TooLarge);
        assert!(r.is_complete());
        assert_eq!(
            r.finish().unwrap_err().reply(),
            br#"{"error":{"desc":"bad request: too large message"}}"#
        );
        // Exactly the limit is fine.
        let mut req = br#"{"execute":"list_hostfwd"}"#.to_vec();
        req.resize(MAX_REQUEST_BYTES, b' ');
        let mut r = RequestReader::new();
        r.push(&req).unwrap();
        assert_eq!(r.finish().unwrap(), Request::ListHostfwd);
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                id: 1,
                spec: RuleSpec::new(Proto::Tcp, 8080, 80),
            },
            Rule {
                id: 3,
                spec: RuleSpec {
                    proto: Proto::Udp,
                    host_addr: ip("::1"),
                    host_port: 5353,
                    guest_addr: Some(ip("fd00::100")),
                    guest_mac: None,
                    guest_port: 53,
                    name: Some("dns \"v6\"".into()),
                },
            },
        ]
    }

    #[test]
    fn reply_bytes() {
        assert_eq!(reply_add(42), br#"{"return":{"id":42}}"#);
        assert_eq!(reply_remove(), br#"{"return":{}}"#);
        assert_eq!(
            reply_error("bad request: unknown execute"),
            br#"{"error":{"desc":"bad request: unknown execute"}}"#
        );
        assert_eq!(
            reply_error("a \"q\"\n"),
            br#"{"error":{"desc":"a \"q\"\n"}}"#
        );
        assert_eq!(
            reply_stats(&serde_json::json!({"flows": 3})),
            br#"{"return":{"flows":3}}"#
        );
        assert_eq!(
            reply_list(&[], None),
            br#"{"return":{"entries":[]},"entries":[]}"#
        );
        let want = concat!(
            r#"{"return":{"entries":["#,
            r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},"#,
            r#"{"id":3,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53,"name":"dns \"v6\""}"#,
            r#"]},"entries":["#,
            r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},"#,
            r#"{"id":3,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"fd00::100","guest_port":53,"name":"dns \"v6\""}"#,
            r#"]}"#
        );
        assert_eq!(
            String::from_utf8(reply_list(&rules(), Some(ip("10.0.2.100")))).unwrap(),
            want
        );
        let mut reversed = rules();
        reversed.reverse();
        assert_eq!(
            String::from_utf8(reply_list(&reversed, Some(ip("10.0.2.100")))).unwrap(),
            want,
            "sorted by id"
        );
        let no_default = String::from_utf8(reply_list(&rules()[..1], None)).unwrap();
        assert!(no_default.contains(r#""guest_addr":"","#), "{no_default}");
    }

    #[test]
    fn list_reply_serves_both_kinds_of_client() {
        // What `jq .return.entries[0].id` and `jq .entries[0].id` read.
        let v: Value = serde_json::from_slice(&reply_list(&rules(), None)).unwrap();
        assert_eq!(v["return"]["entries"][0]["id"], 1);
        assert_eq!(v["entries"][0]["id"], 1);
        assert_eq!(v["return"]["entries"][1]["id"], 3);
        assert_eq!(v["entries"][1]["host_addr"], "::1");
    }

    #[test]
    fn request_bytes() {
        assert_eq!(
            request_add(&RuleSpec::new(Proto::Tcp, 8080, 80)),
            PODMAN.strip_suffix(b"\n").unwrap()
        );
        assert_eq!(request_list(), br#"{"execute":"list_hostfwd"}"#);
        assert_eq!(
            request_remove(1),
            ROOTLESSKIT_REMOVE.strip_suffix(b"\n").unwrap()
        );
        assert_eq!(request_stats(), br#"{"execute":"stats"}"#);
        assert_eq!(parse_request(&request_stats()).unwrap(), Request::Stats);
        assert_eq!(
            parse_request(&request_list()).unwrap(),
            Request::ListHostfwd
        );
        let spec = rules()[1].spec.clone();
        assert_eq!(
            parse_request(&request_add(&spec)).unwrap(),
            Request::AddHostfwd(RuleSpec { name: None, ..spec })
        );
    }

    #[test]
    fn client_reads_replies() {
        assert_eq!(parse_reply(&reply_add(7)).unwrap(), Reply::Added { id: 7 });
        assert_eq!(parse_reply(&reply_remove()).unwrap(), Reply::Removed);
        assert_eq!(
            parse_reply(&ApiError::UnknownExecute.reply()).unwrap(),
            Reply::Error("bad request: unknown execute".into())
        );
        let stats = serde_json::json!({"flows": {"tcp": 2}, "drops": 0});
        assert_eq!(
            parse_reply(&reply_stats(&stats)).unwrap(),
            Reply::Stats(stats)
        );
        // Our shape, slirp4netns's code's shape and its man page's shape.
        let mut want = rules();
        want[0].spec.guest_addr = Some(ip("10.0.2.100"));
        assert_eq!(
            parse_reply(&reply_list(&rules(), Some(ip("10.0.2.100")))).unwrap(),
            Reply::List(want.clone())
        );
        let slirp = br#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}"#;
        let man = br#"{"return":{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}}"#;
        assert_eq!(parse_reply(slirp).unwrap(), Reply::List(want[..1].to_vec()));
        assert_eq!(parse_reply(man).unwrap(), Reply::List(want[..1].to_vec()));
        // No default guest: "" reads back as None.
        assert_eq!(
            parse_reply(&reply_list(&rules(), None)).unwrap(),
            Reply::List(rules())
        );
    }

    #[test]
    fn client_refuses_bad_replies() {
        let e = |b: &[u8]| parse_reply(b).unwrap_err().to_string();
        assert_eq!(
            e(b"nope"),
            "bad reply from the API socket: it is not JSON (expected a JSON object)"
        );
        assert_eq!(
            e(b"[]"),
            "bad reply from the API socket: it is not a JSON object"
        );
        assert_eq!(
            e(b"{}"),
            "bad reply from the API socket: it has neither return, entries nor error"
        );
        assert_eq!(
            e(br#"{"error":{}}"#),
            "bad reply from the API socket: error.desc is missing or not a string"
        );
        assert_eq!(
            e(br#"{"return":5}"#),
            "bad reply from the API socket: return is not an object"
        );
        assert_eq!(
            e(br#"{"return":{"id":-1}}"#),
            "bad reply from the API socket: return.id is not a rule id"
        );
        assert_eq!(
            e(br#"{"entries":{}}"#),
            "bad reply from the API socket: entries is not an array"
        );
        assert_eq!(
            e(br#"{"entries":[1]}"#),
            "bad reply from the API socket: entries[0] is not an object"
        );
        assert_eq!(
            e(br#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":0,"guest_addr":"","guest_port":80}]}"#),
            "bad reply from the API socket: entries[0].host_port is missing or invalid"
        );
    }

    #[test]
    fn table_format() {
        assert_eq!(format_table(&[]), "ID  PROTO  HOST  GUEST\n");
        assert_eq!(
            format_table(&rules()[..1]),
            concat!(
                "ID  PROTO  HOST          GUEST\n",
                "1   tcp    0.0.0.0:8080  default:80\n",
            )
        );
        assert_eq!(
            format_table(&rules()),
            concat!(
                "ID  PROTO  HOST          GUEST           NAME\n",
                "1   tcp    0.0.0.0:8080  default:80\n",
                "3   udp    [::1]:5353    [fd00::100]:53  dns \"v6\"\n",
            )
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&b);
            let _ = parse_reply(&b);
            let mut r = RequestReader::new();
            let _ = r.push(&b);
            let _ = r.is_complete();
            let _ = r.finish();
        }

        #[test]
        fn arbitrary_json_never_panics(s in r#"\{("[a-z_]{0,12}":([0-9.e-]{1,8}|"[a-z0-9.:_]{0,12}"|\{[^{}]{0,40}\}|null|true),?){0,6}\}"#) {
            let _ = parse_request(s.as_bytes());
            let _ = parse_reply(s.as_bytes());
        }

        #[test]
        fn add_round_trips(
            udp in any::<bool>(),
            h in any::<[u8; 4]>(),
            g in proptest::option::of(any::<[u8; 16]>()),
            m in any::<[u8; 6]>(),
            hp in 1u16..,
            gp in 1u16..,
        ) {
            let spec = RuleSpec {
                proto: if udp { Proto::Udp } else { Proto::Tcp },
                host_addr: IpAddr::from(h),
                host_port: hp,
                guest_addr: g.map(IpAddr::from),
                guest_mac: if g.is_none() && m[5] & 1 == 1 { Some(m) } else { None },
                guest_port: gp,
                name: None,
            };
            prop_assert_eq!(parse_request(&request_add(&spec)).unwrap(), Request::AddHostfwd(spec.clone()));
            let rule = Rule { id: 9, spec };
            prop_assert_eq!(parse_reply(&reply_list(std::slice::from_ref(&rule), None)).unwrap(), Reply::List(vec![rule]));
        }
    }

    #[test]
    fn network_requests() {
        assert_eq!(
            parse_request(br#"{"execute":"list_ports"}"#),
            Ok(Request::ListPorts)
        );
        assert_eq!(
            parse_request(&request_plain("list_leases")),
            Ok(Request::ListLeases)
        );
        assert_eq!(
            parse_request(&request_attach(
                AttachKind::Tap,
                "1234:tap0",
                Some([0x52, 0x54, 0, 0, 0, 1]),
                Some([10, 0, 2, 20].into())
            )),
            Ok(Request::Attach {
                kind: AttachKind::Tap,
                name: "1234:tap0".into(),
                mac: Some([0x52, 0x54, 0, 0, 0, 1]),
                addr: Some([10, 0, 2, 20].into()),
            })
        );
        assert_eq!(
            parse_request(br#"{"execute":"attach","arguments":{"kind":"usb"}}"#)
                .unwrap_err()
                .desc(),
            r#"bad request: arguments.kind must be "tap" or "stream""#
        );
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        assert_eq!(
            parse_request(&request_lease(mac, Some("box"))),
            Ok(Request::RequestLease {
                mac,
                hostname: Some("box".into())
            })
        );
        assert!(
            parse_request(
                br#"{"execute":"request_lease","arguments":{"mac":"ff:ff:ff:ff:ff:ff"}}"#
            )
            .is_err()
        );
        // add_hostfwd naming the guest by MAC; not both ways at once.
        let r = parse_request(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":2222,"guest_mac":"52-54-00-01-02-03","guest_port":22}}"#);
        match r {
            Ok(Request::AddHostfwd(spec)) => assert_eq!(spec.guest_mac, Some(mac)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_request(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":2222,"guest_addr":"10.0.2.15","guest_mac":"52:54:00:01:02:03","guest_port":22}}"#)
                .unwrap_err()
                .desc(),
            "bad request: add_hostfwd: bad arguments.guest_mac"
        );
    }
}
