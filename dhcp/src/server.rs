//! The DHCP server state machine: one client message in, at most one reply out.
//!
//! # Theory of operation
//!
//! [`Server::handle`] first expires whatever is due at `now`, then parses the message
//! ([`crate::wire`]), works out which RFC 2131 §4.3 case it is, updates the lease
//! table ([`crate::lease`]) and writes the reply into the caller's buffer. A message
//! that gets no reply ends as [`Outcome::Ignored`] with a reason the engine counts;
//! guest input never becomes an error value, a panic or a log line above debug.
//!
//! The server is authoritative for its subnet (there is no other DHCP server on a
//! user-mode network): a REQUEST from a client we have no record of (INIT-REBOOT,
//! RENEWING, REBINDING after usernet restarted) is acknowledged if the address is
//! free for that client and refused with NAK otherwise, instead of RFC 2131's
//! "remain silent", so guests recover at once instead of after their timeouts.
//! `giaddr` is copied but never acted on: there are no relays.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Prepared, ServerConfig};
use crate::lease::{Client, ClientKey, MAX_HOSTNAME_LEN, State, Table};
use crate::wire::{
    BOOTREQUEST, BROADCAST_FLAG, MessageType, ReplyHeader, Request, WireError, Writer, opt,
};

/// How long an OFFER holds its address for a client that never REQUESTs it. Clients
/// request within a second or two; RFC 2131 §4.3.1 leaves the time to the server.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most leases (offered or bound) one MAC may hold under different client
/// identifiers (option 61), so that one guest cannot take the whole pool by making
/// identifiers up. A reservation is always served.
pub const MAX_LEASES_PER_MAC: u32 = 4;

/// How long a DECLINEd address is kept out of the pool. Long enough that whatever
/// squats on it is likely gone; dnsmasq uses the same ten minutes.
pub const DECLINE_HOLD: Duration = Duration::from_secs(10 * 60);

/// The smallest `out` buffer [`Server::handle`] writes into, in bytes: the BOOTP
/// minimum message. Callers pass an MTU-sized buffer.
pub const MIN_OUT_LEN: usize = crate::wire::MIN_MESSAGE_LEN;

/// The smallest reply size every client accepts, in bytes of UDP payload: RFC 2131
/// §2's 576-byte IP datagram minus 20 bytes of IP and 8 of UDP header. A client's
/// option 57 can raise it.
const DEFAULT_MAX_PAYLOAD: usize = 576 - 28;

/// Options sent when the client sends no parameter request list.
const DEFAULT_OPTIONS: [u8; 9] = [
    opt::ROUTER,
    opt::DNS,
    opt::HOSTNAME,
    opt::DOMAIN_NAME,
    opt::MTU,
    opt::RENEWAL_TIME,
    opt::REBINDING_TIME,
    opt::DOMAIN_SEARCH,
    opt::CLASSLESS_ROUTES,
];

const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// What [`Server::handle`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply was written to `out`; send it as described.
    Reply(Reply),
    /// No reply is due; the reason is for counters and debug logs.
    Ignored(IgnoreReason),
}

/// Where and what to send: the UDP payload is `out[..len]`, from the server address,
/// port 67, to `dst_ip`, port 68, in an Ethernet frame to `dst_mac`.
///
/// A unicast OFFER or ACK goes to an address the client does not have yet (RFC 2131
/// §4.1): build the frame straight to `dst_mac`, without ARP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Length of the UDP payload written at the start of `out`.
    pub len: usize,
    /// IPv4 destination: the client's address, or 255.255.255.255.
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination: the client's MAC address, or ff:ff:ff:ff:ff:ff.
    pub dst_mac: [u8; 6],
    /// OFFER, ACK or NAK.
    pub message_type: MessageType,
}

/// Why a message got no reply. A closed set, so the engine can keep one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// Too short, or an option runs past the end or has the wrong length.
    Malformed,
    /// `op` is not BOOTREQUEST (a server's message, or garbage).
    NotBootRequest,
    /// No magic cookie or no message type: plain BOOTP, which we do not serve.
    NotDhcp,
    /// A message type a client never sends (OFFER, ACK, NAK) or an unknown one.
    UnexpectedMessageType,
    /// Addressed to another server (server identifier is not ours), or the client
    /// chose another server's offer.
    NotForUs,
    /// A REQUEST, RELEASE or DECLINE that fits none of RFC 2131's cases, or names an
    /// address the client does not hold.
    UnknownClient,
    /// No free address for a DISCOVER.
    PoolExhausted,
    /// A RELEASE was applied: the address is free (and kept for that client). DHCP
    /// defines no reply.
    Released,
    /// A DECLINE was applied: the address is held back for [`DECLINE_HOLD`]. DHCP
    /// defines no reply.
    Declined,
    /// `out` is shorter than [`MIN_OUT_LEN`].
    OutputTooSmall,
    /// A new client identifier from a MAC that holds [`MAX_LEASES_PER_MAC`] leases
    /// already.
    TooManyLeases,
}

impl IgnoreReason {
    /// Every reason, in declaration order: `ALL[r.index()] == r`, for counter arrays.
    pub const ALL: [IgnoreReason; 11] = [
        IgnoreReason::Malformed,
        IgnoreReason::NotBootRequest,
        IgnoreReason::NotDhcp,
        IgnoreReason::UnexpectedMessageType,
        IgnoreReason::NotForUs,
        IgnoreReason::UnknownClient,
        IgnoreReason::PoolExhausted,
        IgnoreReason::Released,
        IgnoreReason::Declined,
        IgnoreReason::OutputTooSmall,
        IgnoreReason::TooManyLeases,
    ];

    /// Position in [`IgnoreReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name for logs and the stats API.
    pub fn name(self) -> &'static str {
        match self {
            IgnoreReason::Malformed => "malformed",
            IgnoreReason::NotBootRequest => "not_boot_request",
            IgnoreReason::NotDhcp => "not_dhcp",
            IgnoreReason::UnexpectedMessageType => "unexpected_message_type",
            IgnoreReason::NotForUs => "not_for_us",
            IgnoreReason::UnknownClient => "unknown_client",
            IgnoreReason::PoolExhausted => "pool_exhausted",
            IgnoreReason::Released => "released",
            IgnoreReason::Declined => "declined",
            IgnoreReason::OutputTooSmall => "output_too_small",
            IgnoreReason::TooManyLeases => "too_many_leases",
        }
    }
}

/// What a lease entry is doing, as reported by [`Server::leases`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Offered, not yet requested; lapses after [`OFFER_TIMEOUT`].
    Offered,
    /// Acknowledged, in use until `expires`.
    Bound,
    /// Reported in use by a DECLINE; not handed out until `expires`.
    Declined,
    /// Acknowledged to the MAC it is reserved for (`--dhcp-host`).
    Reserved,
}

/// One entry of the lease table, for the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The address.
    pub addr: Ipv4Addr,
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// The client identifier (option 61), if the client sent one.
    pub client_id: Option<Vec<u8>>,
    /// The host name the client sent (option 12), if any and printable.
    pub hostname: Option<String>,
    /// When the offer, lease or decline hold ends.
    pub expires: Instant,
    /// What the entry is.
    pub state: LeaseState,
}

/// A sans-IO DHCPv4 server for one guest network. See the crate documentation.
#[derive(Debug)]
pub struct Server {
    cfg: Prepared,
    table: Table,
}

impl Server {
    /// Validates `cfg` and builds an empty lease table.
    pub fn new(cfg: ServerConfig) -> Result<Server, ConfigError> {
        let cfg = Prepared::new(cfg)?;
        let (start, end) = (u32::from(cfg.cfg.pool_start), u32::from(cfg.cfg.pool_end));
        let pool = (start..=end).filter(|&a| cfg.is_host_addr(a) && !cfg.excluded.contains(&a));
        let reservations: Vec<([u8; 6], u32)> = cfg
            .cfg
            .reservations
            .iter()
            .map(|&(m, a)| (m, u32::from(a)))
            .collect();
        let table = Table::new(pool, &reservations);
        Ok(Server { cfg, table })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg.cfg
    }

    /// Handles one client message. `msg` is the UDP payload sent to port 67 and
    /// `src_mac` the Ethernet source of its frame. A reply is written to the start of
    /// `out` (never past `out.len()`, nor past the size the client accepts).
    pub fn handle(
        &mut self,
        now: Instant,
        src_mac: [u8; 6],
        msg: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        self.expire(now);
        if out.len() < MIN_OUT_LEN {
            return Outcome::Ignored(IgnoreReason::OutputTooSmall);
        }
        let req = match Request::parse(msg) {
            Ok(req) => req,
            Err(WireError::TooShort | WireError::BadOption) => {
                return Outcome::Ignored(IgnoreReason::Malformed);
            }
            Err(WireError::NoCookie) => return Outcome::Ignored(IgnoreReason::NotDhcp),
        };
        if req.op != BOOTREQUEST {
            return Outcome::Ignored(IgnoreReason::NotBootRequest);
        }
        let Some(mt) = req.message_type else {
            return Outcome::Ignored(IgnoreReason::NotDhcp);
        };
        let mac = req.ethernet_chaddr().unwrap_or(src_mac);
        let cx = Ctx {
            now,
            src_mac,
            mac,
            req: &req,
        };
        match MessageType::from_u8(mt) {
            Some(MessageType::Discover) => self.discover(&cx, out),
            Some(MessageType::Request) => self.request(&cx, out),
            Some(MessageType::Decline) => self.decline(&cx),
            Some(MessageType::Release) => self.release(&cx),
            Some(MessageType::Inform) => self.inform(&cx, out),
            Some(MessageType::Offer | MessageType::Ack | MessageType::Nak) | None => {
                Outcome::Ignored(IgnoreReason::UnexpectedMessageType)
            }
        }
    }

    /// When [`Server::expire`] next has work: the earliest end of an offer, lease or
    /// decline hold.
    pub fn poll_at(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// Ends every offer, lease and decline hold due at or before `now`. Expired and
    /// released addresses are remembered for their client, which gets them back first.
    pub fn expire(&mut self, now: Instant) {
        self.table.expire(now);
    }

    /// Offers, leases and decline holds, sorted by address. A reservation appears
    /// only while its MAC holds it.
    pub fn leases(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.table.leases.iter().map(|(&addr, l)| LeaseInfo {
            addr: Ipv4Addr::from(addr),
            mac: l.mac,
            client_id: l.client_id.clone(),
            hostname: l.hostname.clone(),
            expires: l.expires,
            state: match l.state {
                State::Offered => LeaseState::Offered,
                State::Bound if self.table.is_reserved(addr) => LeaseState::Reserved,
                State::Bound => LeaseState::Bound,
                State::Declined => LeaseState::Declined,
            },
        })
    }

    /// The address bound (acknowledged) to `mac`, if any. Linear in the table size;
    /// meant for the control plane, not per frame.
    pub fn lease_for_mac(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.table
            .leases
            .iter()
            .find(|(_, l)| l.mac == mac && l.state == State::Bound)
            .map(|(&a, _)| Ipv4Addr::from(a))
    }

    /// Whether `mac` holds a bound (acknowledged or reserved) lease. O(1): the
    /// network's anti-spoofing checks ask it per frame.
    pub fn holds_lease(&self, mac: [u8; 6]) -> bool {
        self.table.holds_bound(mac)
    }

    /// The MAC an address is offered, leased or reserved to, if any. O(1): the data
    /// path may ask it per unresolved destination.
    pub fn mac_for_addr(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.table.get(u32::from(addr)).map(|l| l.mac)
    }

    /// Lease an address to `mac` without a DHCP exchange, as a DISCOVER and REQUEST
    /// would (reservation, current binding, remembered address, lowest free), for a
    /// guest whose interface is configured statically from the lease (`usernet run
    /// --network`). `None` when the pool is exhausted.
    pub fn allocate(
        &mut self,
        now: Instant,
        mac: [u8; 6],
        hostname: Option<&str>,
    ) -> Option<Ipv4Addr> {
        self.expire(now);
        let key = ClientKey::new(None, mac);
        let addr = self
            .table
            .reservation(mac)
            .or_else(|| self.table.current(&key))
            .or_else(|| self.table.remembered_for(&key))
            .or_else(|| self.table.lowest_free())
            .filter(|&a| self.table.available_for(a, &key, mac))?;
        let client = Client {
            key,
            mac,
            client_id: None,
            hostname: hostname.and_then(|h| sanitize_hostname(h.as_bytes())),
        };
        let expires = deadline(now, self.cfg.cfg.lease_time);
        self.table.assign(addr, client, State::Bound, expires);
        Some(Ipv4Addr::from(addr))
    }

    /// Checks the lease table's bookkeeping (tests and the fuzz target).
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        self.table.check_invariants()
    }

    fn client(&self, cx: &Ctx<'_, '_>) -> Client {
        Client {
            key: ClientKey::new(cx.req.client_id, cx.mac),
            mac: cx.mac,
            client_id: cx.req.client_id.map(<[u8]>::to_vec),
            hostname: cx.req.hostname.and_then(sanitize_hostname),
        }
    }

    fn in_pool(&self, addr: u32) -> bool {
        (u32::from(self.cfg.cfg.pool_start)..=u32::from(self.cfg.cfg.pool_end)).contains(&addr)
    }

    /// Whether `key` (holding nothing yet, no reservation) would be one lease too many
    /// for `mac`.
    fn over_mac_quota(&self, mac: [u8; 6], key: &ClientKey) -> bool {
        self.table.current(key).is_none()
            && self.table.reservation(mac).is_none()
            && self.table.held_by(mac) >= MAX_LEASES_PER_MAC
    }

    fn discover(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome {
        let client = self.client(cx);
        let key = &client.key;
        let requested = cx.req.requested_ip.map(u32::from);
        if self.over_mac_quota(cx.mac, key) {
            return Outcome::Ignored(IgnoreReason::TooManyLeases);
        }
        // RFC 2131 §4.3.1, in order: reservation (our policy), current binding,
        // previous binding, requested address, a new address.
        let addr = self
            .table
            .reservation(cx.mac)
            .or_else(|| self.table.current(key))
            .or_else(|| self.table.remembered_for(key))
            .or_else(|| {
                requested.filter(|&a| self.in_pool(a) && self.table.available_for(a, key, cx.mac))
            })
            .or_else(|| self.table.lowest_free());
        let Some(addr) = addr.filter(|&a| self.table.available_for(a, key, cx.mac)) else {
            return Outcome::Ignored(IgnoreReason::PoolExhausted);
        };
        let expires = deadline(cx.now, OFFER_TIMEOUT);
        self.table.assign(addr, client, State::Offered, expires);
        self.reply(cx, MessageType::Offer, Ipv4Addr::from(addr), out)
    }

    fn request(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome {
        let req = cx.req;
        let key = ClientKey::new(req.client_id, cx.mac);
        let ciaddr = (!req.ciaddr.is_unspecified()).then_some(req.ciaddr);
        let addr = match (req.server_id, req.requested_ip, ciaddr) {
            // SELECTING: the client picked an offer.
            (Some(sid), _, _) if sid != self.cfg.cfg.server_addr => {
                // It chose another server: withdraw our offer.
                if let Some(a) = self.table.current(&key)
                    && self.table.get(a).is_some_and(|l| l.state == State::Offered)
                {
                    self.table.remove(a, true);
                }
                return Outcome::Ignored(IgnoreReason::NotForUs);
            }
            (Some(_), Some(a), _) | (Some(_), None, Some(a)) => a,
            // INIT-REBOOT: a client verifying its remembered address.
            (None, Some(a), None) => a,
            // RENEWING (unicast) or REBINDING (broadcast).
            (None, _, Some(a)) => a,
            (Some(_), None, None) | (None, None, None) => {
                return Outcome::Ignored(IgnoreReason::UnknownClient);
            }
        };
        let a = u32::from(addr);
        if self.over_mac_quota(cx.mac, &key) {
            return Outcome::Ignored(IgnoreReason::TooManyLeases);
        }
        let wrong = match (self.table.reservation(cx.mac), self.table.current(&key)) {
            (Some(r), _) => r != a,
            (None, Some(cur)) => cur != a,
            (None, None) => !self.in_pool(a),
        };
        if wrong || !self.table.available_for(a, &key, cx.mac) {
            return self.reply(cx, MessageType::Nak, Ipv4Addr::UNSPECIFIED, out);
        }
        let client = self.client(cx);
        let expires = deadline(cx.now, self.cfg.cfg.lease_time);
        self.table.assign(a, client, State::Bound, expires);
        self.reply(cx, MessageType::Ack, addr, out)
    }

    fn decline(&mut self, cx: &Ctx<'_, '_>) -> Outcome {
        let req = cx.req;
        if req.server_id.is_some_and(|s| s != self.cfg.cfg.server_addr) {
            return Outcome::Ignored(IgnoreReason::NotForUs);
        }
        let key = ClientKey::new(req.client_id, cx.mac);
        let addr = req
            .requested_ip
            .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
        match (addr, self.table.current(&key)) {
            (Some(a), Some(cur)) if u32::from(a) == cur => {
                self.table.decline(cur, deadline(cx.now, DECLINE_HOLD));
                Outcome::Ignored(IgnoreReason::Declined)
            }
            _ => Outcome::Ignored(IgnoreReason::UnknownClient),
        }
    }

    fn release(&mut self, cx: &Ctx<'_, '_>) -> Outcome {
        let req = cx.req;
        if req.server_id.is_some_and(|s| s != self.cfg.cfg.server_addr) {
            return Outcome::Ignored(IgnoreReason::NotForUs);
        }
        let key = ClientKey::new(req.client_id, cx.mac);
        match self.table.current(&key) {
            Some(cur) if cur == u32::from(req.ciaddr) => {
                self.table.remove(cur, true);
                Outcome::Ignored(IgnoreReason::Released)
            }
            _ => Outcome::Ignored(IgnoreReason::UnknownClient),
        }
    }

    fn inform(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome {
        self.reply(cx, MessageType::Ack, Ipv4Addr::UNSPECIFIED, out)
    }

    /// Writes an OFFER, ACK or NAK and says where it goes (RFC 2131 §4.1, without
    /// relays). An ACK with an unspecified `yiaddr` answers an INFORM.
    fn reply(
        &self,
        cx: &Ctx<'_, '_>,
        mt: MessageType,
        yiaddr: Ipv4Addr,
        out: &mut [u8],
    ) -> Outcome {
        let req = cx.req;
        let inform = mt == MessageType::Ack && yiaddr.is_unspecified();
        let ciaddr = match mt {
            MessageType::Ack => req.ciaddr,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        let max_payload = req
            .max_message_size
            .map_or(DEFAULT_MAX_PAYLOAD, |m| usize::from(m).saturating_sub(28))
            .max(DEFAULT_MAX_PAYLOAD);
        let header = ReplyHeader {
            request: req,
            ciaddr,
            yiaddr,
        };
        let Some(mut w) = Writer::new(out, max_payload, &header) else {
            return Outcome::Ignored(IgnoreReason::OutputTooSmall);
        };
        let cfg = &self.cfg;
        let server_id = cfg.cfg.server_addr.octets();
        // Mandatory options first; they always fit in the BOOTP minimum.
        w.option(opt::MESSAGE_TYPE, &[mt as u8]);
        w.option(opt::SERVER_ID, &server_id);
        if mt == MessageType::Nak {
            w.option(opt::MESSAGE, b"requested address not available");
        } else {
            let lease = cfg.lease_secs;
            if !inform {
                w.option(opt::LEASE_TIME, &lease.to_be_bytes());
            }
            w.option(opt::SUBNET_MASK, &cfg.mask);
            let list = req.parameter_request_list.unwrap_or(&DEFAULT_OPTIONS);
            let mut sent = [false; 256];
            for &code in list {
                let seen = &mut sent[usize::from(code)];
                if std::mem::replace(seen, true) {
                    continue;
                }
                // Every option is optional from here: one that does not fit is skipped.
                let t1 = (lease / 2).to_be_bytes();
                let t2 = u32::try_from(u64::from(lease) * 7 / 8)
                    .unwrap_or(lease)
                    .to_be_bytes();
                let mtu = cfg.cfg.mtu.map(u16::to_be_bytes);
                let value: Option<&[u8]> = match code {
                    opt::ROUTER if cfg.cfg.advertise_router => Some(&server_id),
                    opt::DNS if !cfg.dns.is_empty() => Some(&cfg.dns),
                    opt::HOSTNAME => cfg.cfg.hostname.as_deref().map(str::as_bytes),
                    opt::DOMAIN_NAME => cfg.cfg.domain_name.as_deref().map(str::as_bytes),
                    opt::MTU => mtu.as_ref().map(|m| &m[..]),
                    opt::RENEWAL_TIME if !inform => Some(&t1),
                    opt::REBINDING_TIME if !inform => Some(&t2),
                    opt::DOMAIN_SEARCH if !cfg.search.is_empty() => Some(&cfg.search),
                    opt::CLASSLESS_ROUTES if !cfg.routes.is_empty() => Some(&cfg.routes),
                    _ => None,
                };
                if let Some(value) = value {
                    w.option(code, value);
                }
            }
        }
        let len = w.finish();
        let broadcast = (Ipv4Addr::BROADCAST, BROADCAST_MAC);
        let (dst_ip, dst_mac) = if mt == MessageType::Nak {
            broadcast
        } else if !req.ciaddr.is_unspecified() {
            (req.ciaddr, cx.src_mac)
        } else if req.flags & BROADCAST_FLAG != 0 || yiaddr.is_unspecified() {
            broadcast
        } else {
            (yiaddr, cx.mac)
        };
        Outcome::Reply(Reply {
            len,
            dst_ip,
            dst_mac,
            message_type: mt,
        })
    }
}

/// The per-message facts every handler needs.
struct Ctx<'r, 'a> {
    now: Instant,
    src_mac: [u8; 6],
    /// The client's hardware address: `chaddr` if Ethernet, else the frame source.
    mac: [u8; 6],
    req: &'r Request<'a>,
}

/// `now + d`, saturating instead of panicking on a far-future overflow.
fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

/// A client's host name if it is a plausible one: printable ASCII without spaces,
/// trailing NULs dropped, at most [`MAX_HOSTNAME_LEN`] bytes.
fn sanitize_hostname(raw: &[u8]) -> Option<String> {
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let name = raw.get(..end)?;
    if name.is_empty()
        || name.len() > MAX_HOSTNAME_LEN
        || !name.iter().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    std::str::from_utf8(name).ok().map(str::to_owned)
}
