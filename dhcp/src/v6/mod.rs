//! A sans-IO DHCPv6 server (RFC 8415) for the guest's IPv6 network.
//!
//! # What it does
//!
//! Stateless service for every client: an Information-Request gets the DNS servers
//! (option 23) and search list (option 24). With [`Server6Config::stateful`], one
//! address per IA_NA of a client, named by the client's DUID and the IA's IAID: the
//! lowest free address of the pool, or the one it had before (after the guest's DHCP
//! client restarts, or after it released it), held for the valid lifetime and extended
//! by Renew and Rebind. Solicit with Rapid Commit is answered with a committing Reply
//! at once (RFC 8415 §18.3.1: we are the only server on a user-mode link, so there is
//! no choice for the client to make). Confirm says Success or NotOnLink; Release and
//! Decline are applied and acknowledged; a declined address is set aside for
//! [`DECLINE_HOLD`](crate::DECLINE_HOLD).
//!
//! Without `stateful`, Solicit still gets an Advertise: one carrying a top-level
//! status NoAddrsAvail and no IA, as RFC 8415 §18.3.9 requires of a server that will
//! assign nothing, and Request, Renew and Rebind get each IA_NA back with status
//! NoAddrsAvail (§18.3.2). Silence would leave a stateful client retransmitting
//! Solicit forever with nothing in its log; the Advertise tells it (and its log) why.
//!
//! IA_TA and IA_PD are answered with NoAddrsAvail and NoPrefixAvail: no temporary
//! addresses, no prefix delegation.
//!
//! # What it never does
//!
//! As the DHCPv4 server: no I/O (the engine wraps the UDP payload and sends it from its
//! link-local address, port 547, to the client's address and port 546), no clock reads,
//! no randomness, no panics and no unbounded allocation on guest input. The lease table
//! is the DHCPv4 server's (`lease`), keyed by IAID and DUID over pool offsets,
//! so it is bounded by the pool ([`MAX_POOL_SIZE`](crate::MAX_POOL_SIZE)); a DUID is at
//! most 130 bytes; at most [`MAX_IAS`] IA options of one message are served. Replies
//! are at most [`MAX_REPLY_LEN`] bytes, so they cross any IPv6 link unfragmented.
//!
//! No relays (Relay-Forward is ignored), no Reconfigure, no authentication, no
//! Server Unicast option (clients always multicast), no lease persistence.

mod config;
mod wire;

#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

pub use config::{
    ConfigError6, DEFAULT_LIFETIME6, DEFAULT_POOL_END6, DEFAULT_POOL_START6, Server6Config,
};
pub use wire::MessageType6;

use crate::lease::{Client, ClientKey, State, Table};
use crate::{DECLINE_HOLD, OFFER_TIMEOUT};
use config::Prepared6;
use wire::{IaNa, Malformed, Message, Writer, opt, status};

/// The longest reply, in bytes of UDP payload: IPv6's minimum link MTU of 1280 less
/// the IPv6 and UDP headers, so no reply ever needs fragmenting.
pub const MAX_REPLY_LEN: usize = 1280 - 40 - 8;

/// How many IA options of one message are served; further ones get no answer. Real
/// clients send one or two.
pub const MAX_IAS: usize = 8;

/// How many addresses of one IA a Renew or Rebind reply echoes back with zero
/// lifetimes when they are not (or no longer) the client's.
const MAX_STALE_PER_IA: usize = 2;

/// What [`Server6::handle`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome6 {
    /// A reply of `len` bytes was written at the start of `out`. Send it from the
    /// engine's link-local address, port 547, to the client's source address, port
    /// 546, in a frame to the client's MAC.
    Reply {
        /// Length of the UDP payload.
        len: usize,
        /// Advertise or Reply.
        kind: MessageType6,
    },
    /// No reply is due; the reason is for counters and debug logs.
    Ignored(IgnoreReason6),
}

/// Why a message got no reply. A closed set, so the engine can keep one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason6 {
    /// Too short, an option runs past its container, a DUID of a bad length, or a
    /// repeated client or server identifier.
    Malformed,
    /// A message a server sends (Advertise, Reply, Reconfigure), a relay message, or an
    /// unknown type.
    UnexpectedMessageType,
    /// Breaks RFC 8415 §16's rules for its type: no client identifier, a server
    /// identifier where none may be or none where one must be, or an IA in an
    /// Information-Request.
    Invalid,
    /// Carries a server identifier that is not ours.
    NotForUs,
    /// A Confirm that lists no address: RFC 8415 §18.3.3 says not to answer.
    NothingToConfirm,
    /// `out` cannot hold the reply's mandatory options.
    OutputTooSmall,
}

impl IgnoreReason6 {
    /// Every reason, in declaration order: `ALL[r.index()] == r`, for counter arrays.
    pub const ALL: [IgnoreReason6; 6] = [
        IgnoreReason6::Malformed,
        IgnoreReason6::UnexpectedMessageType,
        IgnoreReason6::Invalid,
        IgnoreReason6::NotForUs,
        IgnoreReason6::NothingToConfirm,
        IgnoreReason6::OutputTooSmall,
    ];

    /// Position in [`IgnoreReason6::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name for logs and the stats API.
    pub fn name(self) -> &'static str {
        match self {
            IgnoreReason6::Malformed => "malformed",
            IgnoreReason6::UnexpectedMessageType => "unexpected_message_type",
            IgnoreReason6::Invalid => "invalid",
            IgnoreReason6::NotForUs => "not_for_us",
            IgnoreReason6::NothingToConfirm => "nothing_to_confirm",
            IgnoreReason6::OutputTooSmall => "output_too_small",
        }
    }
}

/// What a lease entry is doing, as reported by [`Server6::leases`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lease6State {
    /// Advertised, not yet requested; lapses after [`OFFER_TIMEOUT`].
    Advertised,
    /// Assigned by a Reply, in use until `expires`.
    Bound,
    /// Reported in use by a Decline; not handed out until `expires`.
    Declined,
}

/// One entry of the DHCPv6 lease table, for the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease6Info {
    /// The address.
    pub addr: Ipv6Addr,
    /// The client's DUID (option 1).
    pub duid: Vec<u8>,
    /// The identity association's IAID.
    pub iaid: u32,
    /// When the advertisement, binding or decline hold ends.
    pub expires: Instant,
    /// What the entry is.
    pub state: Lease6State,
}

/// A sans-IO DHCPv6 server for one guest link. See the module documentation.
#[derive(Debug)]
pub struct Server6 {
    cfg: Prepared6,
    table: Table,
}

/// The per-message facts every handler needs.
struct Ctx<'r, 'a> {
    now: Instant,
    src_mac: [u8; 6],
    msg: &'r Message<'a>,
    /// The client's DUID; `None` only for an Information-Request without one.
    duid: Option<&'a [u8]>,
}

/// What one IA of a reply says.
enum IaAnswer {
    /// These addresses with these (preferred, valid) lifetimes, then stale ones with 0.
    Addrs {
        addr: Option<Ipv6Addr>,
        stale: [Option<Ipv6Addr>; MAX_STALE_PER_IA],
    },
    /// No address, this status inside the IA.
    Status(u16, &'static str),
}

/// One IA of a reply: its option code, IAID and answer.
struct IaReply {
    code: u16,
    iaid: u32,
    answer: IaAnswer,
}

impl Server6 {
    /// Validates `cfg` and builds an empty lease table.
    pub fn new(cfg: Server6Config) -> Result<Server6, ConfigError6> {
        let cfg = Prepared6::new(cfg)?;
        let table = Table::new(cfg.pool(), &[]);
        Ok(Server6 { cfg, table })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Server6Config {
        &self.cfg.cfg
    }

    /// The server's DUID (DUID-LL of [`Server6Config::server_mac`]).
    pub fn duid(&self) -> &[u8] {
        &self.cfg.duid
    }

    /// Handles one client message: `msg` is the UDP payload a client sent to port 547
    /// and `src_mac` the Ethernet source of its frame. A reply is written to the start
    /// of `out` (never past `out.len()` nor [`MAX_REPLY_LEN`]).
    pub fn handle(
        &mut self,
        now: Instant,
        src_mac: [u8; 6],
        msg: &[u8],
        out: &mut [u8],
    ) -> Outcome6 {
        use MessageType6 as T;
        self.expire(now);
        let m = match Message::parse(msg) {
            Ok(m) => m,
            Err(Malformed) => return Outcome6::Ignored(IgnoreReason6::Malformed),
        };
        let Some(mt) = MessageType6::from_u8(m.msg_type) else {
            return Outcome6::Ignored(IgnoreReason6::UnexpectedMessageType);
        };
        // RFC 8415 §16: which messages must, may or must not name a server.
        let server_id = match mt {
            T::Solicit | T::Confirm | T::Rebind => Some(false),
            T::Request | T::Renew | T::Release | T::Decline => Some(true),
            T::InformationRequest => None,
            T::Advertise | T::Reply | T::Reconfigure | T::RelayForw | T::RelayRepl => {
                return Outcome6::Ignored(IgnoreReason6::UnexpectedMessageType);
            }
        };
        match (server_id, m.server_id) {
            (_, Some(sid)) if sid != self.cfg.duid => {
                return Outcome6::Ignored(IgnoreReason6::NotForUs);
            }
            (Some(false), Some(_)) | (Some(true), None) => {
                return Outcome6::Ignored(IgnoreReason6::Invalid);
            }
            _ => {}
        }
        if (mt != T::InformationRequest && m.client_id.is_none())
            || (mt == T::InformationRequest && m.has_ia)
        {
            return Outcome6::Ignored(IgnoreReason6::Invalid);
        }
        let out = match out.len() {
            n if n > MAX_REPLY_LEN => &mut out[..MAX_REPLY_LEN],
            _ => out,
        };
        let cx = Ctx {
            now,
            src_mac,
            msg: &m,
            duid: m.client_id,
        };
        match mt {
            T::Solicit if m.rapid_commit && self.cfg.cfg.stateful => self.rapid_commit(&cx, out),
            T::Solicit => self.solicit(&cx, out),
            T::Request => self.request(&cx, out),
            T::Renew | T::Rebind => self.renew(&cx, out),
            T::Release => self.release(&cx, out),
            T::Decline => self.decline(&cx, out),
            T::Confirm => self.confirm(&cx, out),
            _ => self.reply(&cx, T::Reply, None, &[], false, out),
        }
    }

    /// When [`Server6::expire`] next has work: the earliest end of an advertisement,
    /// binding or decline hold.
    pub fn poll_at(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// Ends every advertisement, binding and decline hold due at or before `now`.
    /// Expired and released addresses are remembered for their DUID and IAID, which get
    /// them back first.
    pub fn expire(&mut self, now: Instant) {
        self.table.expire(now);
    }

    /// Advertisements, bindings and decline holds, sorted by address.
    pub fn leases(&self) -> impl Iterator<Item = Lease6Info> + '_ {
        self.table.leases.iter().map(|(&off, l)| {
            let key = l.client_id.as_deref().unwrap_or_default();
            let iaid = key
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_be_bytes);
            Lease6Info {
                addr: self.cfg.addr(off),
                duid: key.get(4..).unwrap_or_default().to_vec(),
                iaid,
                expires: l.expires,
                state: match l.state {
                    State::Offered => Lease6State::Advertised,
                    State::Bound => Lease6State::Bound,
                    State::Declined => Lease6State::Declined,
                },
            }
        })
    }

    /// Checks the lease table's bookkeeping (tests and the fuzz target).
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        self.table.check_invariants()
    }

    /// The table key of one IA: IAID then DUID, so the key bytes are the stored
    /// identifier and [`Server6::leases`] can split them again.
    fn client(&self, cx: &Ctx<'_, '_>, iaid: u32) -> Client {
        let mut id = Vec::with_capacity(4 + cx.duid.map_or(0, <[u8]>::len));
        id.extend_from_slice(&iaid.to_be_bytes());
        id.extend_from_slice(cx.duid.unwrap_or_default());
        Client {
            key: ClientKey::Id(id.clone()),
            mac: cx.src_mac,
            client_id: Some(id),
            hostname: None,
        }
    }

    /// The address for one IA, RFC 8415 §18.3.1's order: the current binding, the
    /// one it had last, an address it asks for if free, the lowest free one.
    fn pick(&self, client: &Client, ia: &IaNa<'_>) -> Option<u32> {
        let key = &client.key;
        let free = |o: &u32| self.table.available_for(*o, key, client.mac);
        self.table
            .current(key)
            .or_else(|| self.table.remembered_for(key))
            .or_else(|| ia.addrs().filter_map(|a| self.cfg.offset(a)).find(free))
            .or_else(|| self.table.lowest_free())
            .filter(free)
    }

    /// Assigns an address to every IA_NA (for an Advertise, a Request, or a Solicit
    /// with Rapid Commit). `advertise` only holds the addresses for [`OFFER_TIMEOUT`].
    fn assign_ias(&mut self, cx: &Ctx<'_, '_>, advertise: bool) -> Vec<IaReply> {
        let mut answers = Vec::new();
        for ia in cx.msg.ia_nas().take(MAX_IAS) {
            let answer = if !self.cfg.cfg.stateful {
                IaAnswer::Status(status::NO_ADDRS_AVAIL, "this server hands out no addresses")
            } else {
                let client = self.client(cx, ia.iaid);
                match self.pick(&client, &ia) {
                    Some(off) => {
                        let (state, life) = if advertise {
                            (State::Offered, OFFER_TIMEOUT)
                        } else {
                            (State::Bound, self.valid())
                        };
                        self.table
                            .assign(off, client, state, deadline(cx.now, life));
                        IaAnswer::Addrs {
                            addr: Some(self.cfg.addr(off)),
                            stale: [None; MAX_STALE_PER_IA],
                        }
                    }
                    None => IaAnswer::Status(status::NO_ADDRS_AVAIL, "no address is free"),
                }
            };
            answers.push(IaReply {
                code: opt::IA_NA,
                iaid: ia.iaid,
                answer,
            });
        }
        self.unsupported_ias(cx, &mut answers);
        answers
    }

    /// IA_TA and IA_PD get their status; they come after the IA_NAs, within
    /// [`MAX_IAS`] in all.
    fn unsupported_ias(&self, cx: &Ctx<'_, '_>, answers: &mut Vec<IaReply>) {
        for (code, data) in cx.msg.options() {
            if answers.len() >= MAX_IAS {
                break;
            }
            let answer = match code {
                opt::IA_TA => IaAnswer::Status(status::NO_ADDRS_AVAIL, "no temporary addresses"),
                opt::IA_PD => IaAnswer::Status(status::NO_PREFIX_AVAIL, "no prefix delegation"),
                _ => continue,
            };
            let iaid = data
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_be_bytes);
            answers.push(IaReply { code, iaid, answer });
        }
    }

    fn valid(&self) -> Duration {
        Duration::from_secs(u64::from(self.cfg.valid))
    }

    fn solicit(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        let answers = self.assign_ias(cx, true);
        let assigned = answers
            .iter()
            .any(|a| matches!(a.answer, IaAnswer::Addrs { .. }));
        if cx.msg.ia_nas().next().is_some() && !assigned {
            // RFC 8415 §18.3.9: nothing to give, so no IA and a top-level status.
            let st = (status::NO_ADDRS_AVAIL, "no addresses available");
            return self.reply(cx, MessageType6::Advertise, Some(st), &[], false, out);
        }
        self.reply(cx, MessageType6::Advertise, None, &answers, false, out)
    }

    fn rapid_commit(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        let answers = self.assign_ias(cx, false);
        self.reply(cx, MessageType6::Reply, None, &answers, true, out)
    }

    /// Request (RFC 8415 §18.3.2): bind an address to every IA_NA.
    fn request(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        let answers = self.assign_ias(cx, false);
        self.reply(cx, MessageType6::Reply, None, &answers, false, out)
    }

    /// Renew and Rebind (RFC 8415 §18.3.4, §18.3.5): extend the binding; a client we
    /// do not know (usernet restarted) is bound again if it can be, since this is the
    /// only server on the link; addresses it lists that are not its own come back with
    /// zero lifetimes.
    fn renew(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        let mut answers = Vec::new();
        for ia in cx.msg.ia_nas().take(MAX_IAS) {
            let client = self.client(cx, ia.iaid);
            let off = if self.cfg.cfg.stateful {
                self.pick(&client, &ia)
            } else {
                None
            };
            let addr = off.map(|o| self.cfg.addr(o));
            let mut stale = [None; MAX_STALE_PER_IA];
            for (slot, a) in stale
                .iter_mut()
                .zip(ia.addrs().filter(|&a| Some(a) != addr))
            {
                *slot = Some(a);
            }
            let answer = match off {
                Some(o) => {
                    self.table
                        .assign(o, client, State::Bound, deadline(cx.now, self.valid()));
                    IaAnswer::Addrs { addr, stale }
                }
                None if stale.iter().any(Option::is_some) => IaAnswer::Addrs { addr, stale },
                None if !self.cfg.cfg.stateful => {
                    IaAnswer::Status(status::NO_ADDRS_AVAIL, "this server hands out no addresses")
                }
                None => IaAnswer::Status(status::NO_BINDING, "no binding for this IA"),
            };
            answers.push(IaReply {
                code: opt::IA_NA,
                iaid: ia.iaid,
                answer,
            });
        }
        self.unsupported_ias(cx, &mut answers);
        self.reply(cx, MessageType6::Reply, None, &answers, false, out)
    }

    /// Release and Decline (RFC 8415 §18.3.7, §18.3.8): act on the addresses the
    /// client holds; an IA holding none of them gets NoBinding.
    fn give_back(&mut self, cx: &Ctx<'_, '_>, decline: bool, out: &mut [u8]) -> Outcome6 {
        let mut answers = Vec::new();
        for ia in cx.msg.ia_nas().take(MAX_IAS) {
            let client = self.client(cx, ia.iaid);
            let current = self
                .table
                .current(&client.key)
                .filter(|&o| self.table.get(o).is_some_and(|l| l.state == State::Bound));
            let held = current.filter(|&o| ia.addrs().any(|a| self.cfg.offset(a) == Some(o)));
            match held {
                Some(o) if decline => self.table.decline(o, deadline(cx.now, DECLINE_HOLD)),
                Some(o) => self.table.remove(o, true),
                None => answers.push(IaReply {
                    code: opt::IA_NA,
                    iaid: ia.iaid,
                    answer: IaAnswer::Status(status::NO_BINDING, "no binding for this IA"),
                }),
            }
        }
        let st = (
            status::SUCCESS,
            if decline { "declined" } else { "released" },
        );
        self.reply(cx, MessageType6::Reply, Some(st), &answers, false, out)
    }

    fn release(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        self.give_back(cx, false, out)
    }

    fn decline(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        self.give_back(cx, true, out)
    }

    /// Confirm (RFC 8415 §18.3.3): are the client's addresses on this link?
    fn confirm(&mut self, cx: &Ctx<'_, '_>, out: &mut [u8]) -> Outcome6 {
        let mut any = false;
        let mut all_on_link = true;
        for ia in cx.msg.ia_nas() {
            for a in ia.addrs() {
                any = true;
                all_on_link &= self.cfg.on_link(a);
            }
        }
        if !any {
            return Outcome6::Ignored(IgnoreReason6::NothingToConfirm);
        }
        let st = if all_on_link {
            (status::SUCCESS, "all addresses still on link")
        } else {
            (status::NOT_ON_LINK, "an address is not on this link")
        };
        self.reply(cx, MessageType6::Reply, Some(st), &[], false, out)
    }

    /// Writes an Advertise or Reply: server and client identifiers, a top-level
    /// status if any, the IAs, then the requested configuration options (which are
    /// dropped if they do not fit).
    fn reply(
        &self,
        cx: &Ctx<'_, '_>,
        mt: MessageType6,
        top_status: Option<(u16, &'static str)>,
        ias: &[IaReply],
        rapid_commit: bool,
        out: &mut [u8],
    ) -> Outcome6 {
        let cfg = &self.cfg;
        let too_small = Outcome6::Ignored(IgnoreReason6::OutputTooSmall);
        let Some(mut w) = Writer::new(out, mt, cx.msg.xid) else {
            return too_small;
        };
        let mut ok = w.option(opt::SERVERID, &[&cfg.duid]);
        if let Some(duid) = cx.duid {
            ok &= w.option(opt::CLIENTID, &[duid]);
        }
        if rapid_commit {
            ok &= w.option(opt::RAPID_COMMIT, &[]);
        }
        if mt == MessageType6::Advertise {
            // Preference 255: the client need not wait for other servers (§18.2.1).
            ok &= w.option(opt::PREFERENCE, &[&[255]]);
        }
        if let Some((code, text)) = top_status {
            ok &= w.option(opt::STATUS_CODE, &[&code.to_be_bytes(), text.as_bytes()]);
        }
        for ia in ias {
            ok &= self.write_ia(&mut w, ia);
        }
        if !ok {
            return too_small;
        }
        // Configuration options: those the ORO asks for, or all when there is no ORO.
        let wants = |code| cx.msg.requests(code).unwrap_or(true);
        if !cfg.dns.is_empty() && wants(opt::DNS_SERVERS) {
            w.option(opt::DNS_SERVERS, &[&cfg.dns]);
        }
        if !cfg.search.is_empty() && wants(opt::DOMAIN_LIST) {
            w.option(opt::DOMAIN_LIST, &[&cfg.search]);
        }
        if mt == MessageType6::Reply
            && cx.msg.msg_type == MessageType6::InformationRequest as u8
            && cx.msg.requests(opt::INFORMATION_REFRESH_TIME) == Some(true)
        {
            w.option(
                opt::INFORMATION_REFRESH_TIME,
                &[&cfg.preferred.to_be_bytes()],
            );
        }
        Outcome6::Reply {
            len: w.finish(),
            kind: mt,
        }
    }

    fn write_ia(&self, w: &mut Writer<'_>, ia: &IaReply) -> bool {
        let cfg = &self.cfg;
        w.nested(ia.code, |w| {
            let mut ok = w.raw(&ia.iaid.to_be_bytes());
            if ia.code != opt::IA_TA {
                let (t1, t2) = match ia.answer {
                    IaAnswer::Addrs { addr: Some(_), .. } => (cfg.t1, cfg.t2),
                    _ => (0, 0),
                };
                ok &= w.raw(&t1.to_be_bytes()) && w.raw(&t2.to_be_bytes());
            }
            match &ia.answer {
                IaAnswer::Addrs { addr, stale } => {
                    if let Some(a) = addr {
                        ok &= write_iaaddr(w, *a, cfg.preferred, cfg.valid);
                    }
                    for a in stale.iter().flatten() {
                        ok &= write_iaaddr(w, *a, 0, 0);
                    }
                }
                IaAnswer::Status(code, text) => {
                    ok &= w.option(opt::STATUS_CODE, &[&code.to_be_bytes(), text.as_bytes()]);
                }
            }
            ok
        })
    }
}

fn write_iaaddr(w: &mut Writer<'_>, a: Ipv6Addr, preferred: u32, valid: u32) -> bool {
    w.option(
        opt::IAADDR,
        &[&a.octets(), &preferred.to_be_bytes(), &valid.to_be_bytes()],
    )
}

/// `now + d`, saturating instead of panicking on a far-future overflow.
fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}
