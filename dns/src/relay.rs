//! The relay state machine: id remapping, the pending table, failover.
//!
//! # Theory of operation
//!
//! **Goal.** Give the guest the host's DNS without re-synthesising anything:
//! a guest query leaves for an upstream with only its 16-bit transaction id
//! changed, and the upstream's answer returns to the guest with only the id
//! changed back. Record types, EDNS options, the TC bit and DNSSEC bits are
//! bytes we never look at, so they survive. The exceptions are the engine's
//! own names ([`RelayConfig::local_names`]), answered here (see `local.rs`).
//!
//! **Why rewrite ids.** All guests' queries share the engine's upstream
//! sockets, so two guests (or one guest after a restart) may pick the same
//! id; and on failover the same query goes to a second server. A fresh
//! random id, unique among pending queries, names the query unambiguously.
//!
//! **State.** One [`Pending`] entry per forwarded query, keyed by the new id
//! in a `HashMap` (ids are ours and random, so the default hasher is fine).
//! It holds the guest's handle and id, the query bytes as sent (for
//! re-sending; at most `max_query_len` bytes), the upstreams tried so far and
//! the current deadline. A `BTreeSet<(deadline, id)>` orders the deadlines, so
//! [`Relay::poll_at`] is O(log n) and [`Relay::on_timeout`] touches only the
//! expired entries. Query buffers of finished entries go to a small spare
//! list and are reused, so the steady state does not allocate per query.
//!
//! **Matching.** An answer is delivered only if its id is pending, it comes
//! from an address this query was sent to (a late answer from the first
//! server after failover is still good), and its question equals the one
//! sent (name compared ignoring ASCII case, type and class exactly). The one
//! exception is a FORMERR without a question, which servers send to queries
//! they cannot parse (glibc accepts it too). Anything else is
//! [`AnswerAction::Unmatched`] and leaves the pending entry alone, so a
//! spoofed answer cannot cancel the real one.
//!
//! **Expiry.** Each try lives `try_timeout`. When it expires the query goes
//! to the next upstream in the list (wrapping), until `max_tries` tries in
//! total; then it is forgotten and the guest gets nothing, exactly as if a
//! real server had not answered (the guest's resolver has its own timeout).
//! Failover is sticky: the relay starts new queries at a *preferred*
//! upstream, which moves on when a try to it times out and moves to whichever
//! upstream last answered, so a dead first server costs one timeout, not one
//! per query.
//!
//! **Limits.** Pending entries ≤ `max_pending` (≤ [`MAX_PENDING_LIMIT`]),
//! each ≤ `max_query_len` bytes (≤ [`MAX_QUERY_LEN_LIMIT`]); tries per query
//! ≤ [`MAX_TRIES_LIMIT`]. A full table drops new queries
//! ([`DropReason::TableFull`]); it never evicts older ones.
//!
//! **Opcodes.** Any opcode is relayed (QDCOUNT must be 1); local names are
//! answered only for standard queries in class IN (or ANY).
//!
//! **Not handled.** Identical retransmissions from the guest are forwarded
//! again as separate queries (the guest takes the first answer). DNS over
//! TCP is the engine's TCP proxy's business, not this relay's.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::local;
use crate::rng::SplitMix64;
use crate::wire::{
    self, HEADER_LEN, Header, MIN_RECORD_LEN, NameBuf, NameError, Question, class, rcode,
};

/// Default per-try timeout (glibc's `RES_TIMEOUT` is 5 s; 2 s fails over
/// sooner while staying above any sane upstream round trip).
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default total tries per query, across upstreams.
pub const DEFAULT_MAX_TRIES: usize = 3;
/// Default bound on pending queries.
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Default longest accepted query, in bytes (EDNS queries are ~50-100 bytes).
pub const DEFAULT_MAX_QUERY_LEN: usize = 4096;
/// The guest-visible gateway address answered for local names.
pub const DEFAULT_LOCAL_ADDR4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// Hard ceiling on `max_pending`: half the id space, so a random id is free
/// with probability ≥ 1/2 and id selection stays cheap.
pub const MAX_PENDING_LIMIT: usize = 32_768;
/// Hard ceiling on `max_tries` (tries are recorded in a fixed array).
pub const MAX_TRIES_LIMIT: usize = 8;
/// Hard ceiling on `max_query_len`: the largest UDP payload.
pub const MAX_QUERY_LEN_LIMIT: usize = 65_535;
/// Most finished query buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;
/// Random id draws before falling back to a linear probe.
const ID_DRAWS: usize = 16;

/// Configuration of a [`Relay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Upstream servers, usually port 53, in preference order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one try waits for an answer before the next upstream is tried.
    pub try_timeout: Duration,
    /// Total tries per query across all upstreams (clamped to
    /// 1..=[`MAX_TRIES_LIMIT`]).
    pub max_tries: usize,
    /// Most queries awaiting an answer (clamped to [`MAX_PENDING_LIMIT`]).
    pub max_pending: usize,
    /// Longer queries are dropped, in bytes (clamped to
    /// [`MAX_QUERY_LEN_LIMIT`]). Also bounds each pending entry's memory.
    pub max_query_len: usize,
    /// Names answered locally, case-insensitive, trailing dot optional.
    /// Malformed entries (empty or over-long labels) are ignored.
    pub local_names: Vec<String>,
    /// Address given for A queries of local names (the gateway).
    pub local_addr4: Ipv4Addr,
    /// Address given for AAAA queries of local names; `None` answers NODATA.
    pub local_addr6: Option<Ipv6Addr>,
    /// Seed of the id generator; draw it from the OS once.
    pub rng_seed: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            upstreams: Vec::new(),
            try_timeout: DEFAULT_TRY_TIMEOUT,
            max_tries: DEFAULT_MAX_TRIES,
            max_pending: DEFAULT_MAX_PENDING,
            max_query_len: DEFAULT_MAX_QUERY_LEN,
            local_names: Vec::new(),
            local_addr4: DEFAULT_LOCAL_ADDR4,
            local_addr6: None,
            rng_seed: 0,
        }
    }
}

/// What to do with a guest query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryAction {
    /// A local answer of `len` bytes is in `out`; send it back to the guest.
    Local {
        /// Length of the answer in `out`.
        len: usize,
    },
    /// The query with a fresh id (`len` bytes) is in `out`; send it to
    /// `upstream`.
    Forward {
        /// Where to send it.
        upstream: SocketAddr,
        /// Length of the query in `out`.
        len: usize,
    },
    /// Nothing to send.
    Drop(DropReason),
}

/// Why a guest query was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Longer than `max_query_len`.
    TooLong,
    /// Shorter than the 12-byte header.
    ShortHeader,
    /// QR bit set: a response, not a query.
    NotAQuery,
    /// QDCOUNT is not 1, or the other counts cannot fit in the message.
    BadCounts,
    /// The question could not be read.
    BadName(NameError),
    /// No upstream configured.
    NoUpstream,
    /// The pending table is full.
    TableFull,
    /// The caller's `out` buffer is too small for the message.
    OutTooSmall,
}

impl DropReason {
    /// A short, stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::TooLong => "too_long",
            DropReason::ShortHeader => "short_header",
            DropReason::NotAQuery => "not_a_query",
            DropReason::BadCounts => "bad_counts",
            DropReason::BadName(e) => e.as_str(),
            DropReason::NoUpstream => "no_upstream",
            DropReason::TableFull => "table_full",
            DropReason::OutTooSmall => "out_too_small",
        }
    }

    /// True for reasons caused by the query's bytes (counted in
    /// [`Counters::dropped_malformed`]).
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            DropReason::TooLong
                | DropReason::ShortHeader
                | DropReason::NotAQuery
                | DropReason::BadCounts
                | DropReason::BadName(_)
        )
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAction<C> {
    /// The answer with the guest's id (`len` bytes) is in `out`; send it to
    /// `client`.
    Deliver {
        /// The handle given to [`Relay::on_query`].
        client: C,
        /// Length of the answer in `out`.
        len: usize,
    },
    /// Not an answer to any pending query; nothing to send.
    Unmatched(UnmatchedReason),
}

/// Why an upstream answer was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnmatchedReason {
    /// Shorter than the 12-byte header.
    ShortHeader,
    /// QR bit clear.
    NotAResponse,
    /// No pending query has this id: late (after give-up or a first answer)
    /// or unknown.
    UnknownId,
    /// The id is pending but the query was never sent to this address.
    WrongUpstream,
    /// The question section differs from the one sent, or cannot be read.
    QuestionMismatch,
    /// The caller's `out` buffer is too small; the query stays pending.
    OutTooSmall,
}

impl UnmatchedReason {
    /// A short, stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnmatchedReason::ShortHeader => "short_header",
            UnmatchedReason::NotAResponse => "not_a_response",
            UnmatchedReason::UnknownId => "unknown_id",
            UnmatchedReason::WrongUpstream => "wrong_upstream",
            UnmatchedReason::QuestionMismatch => "question_mismatch",
            UnmatchedReason::OutTooSmall => "out_too_small",
        }
    }
}

impl fmt::Display for UnmatchedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event counters. Every call to [`Relay::on_query`] adds one to `queries`
/// and exactly one to `local_answers`, `forwarded` or a `dropped_*` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Guest queries seen.
    pub queries: u64,
    /// Queries answered locally.
    pub local_answers: u64,
    /// Queries forwarded upstream (first tries).
    pub forwarded: u64,
    /// Re-sends to the next upstream after a timeout.
    pub retries: u64,
    /// Answers delivered to guests.
    pub answered: u64,
    /// Queries given up after `max_tries`.
    pub timeouts: u64,
    /// Queries dropped for their content ([`DropReason::is_malformed`]).
    pub dropped_malformed: u64,
    /// Queries dropped because the pending table was full.
    pub dropped_table_full: u64,
    /// Queries dropped for want of an upstream or of `out` space.
    pub dropped_other: u64,
    /// Upstream messages not delivered (any [`UnmatchedReason`]).
    pub unmatched_answers: u64,
}

/// One forwarded query awaiting its answer.
#[derive(Debug)]
struct Pending<C> {
    client: C,
    guest_id: u16,
    /// The query as sent (with the new id).
    query: Vec<u8>,
    /// End of the question section in `query`.
    question_end: usize,
    /// Addresses tried, oldest first; `tried[n_tried - 1]` is the current try.
    tried: [SocketAddr; MAX_TRIES_LIMIT],
    n_tried: usize,
    deadline: Instant,
}

impl<C> Pending<C> {
    fn was_sent_to(&self, addr: SocketAddr) -> bool {
        self.tried.iter().take(self.n_tried).any(|&a| a == addr)
    }

    fn current(&self) -> Option<SocketAddr> {
        self.tried.get(self.n_tried.checked_sub(1)?).copied()
    }
}

/// The sans-IO DNS relay. `C` is the engine's opaque client handle (for
/// example the guest's `SocketAddr`), returned with the matching answer.
#[derive(Debug)]
pub struct Relay<C: Copy> {
    cfg: RelayConfig,
    local_names: Vec<NameBuf>,
    pending: HashMap<u16, Pending<C>>,
    deadlines: BTreeSet<(Instant, u16)>,
    rng: SplitMix64,
    /// Index into `cfg.upstreams` where new queries start.
    preferred: usize,
    spare: Vec<Vec<u8>>,
    counters: Counters,
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl<C: Copy> Relay<C> {
    /// Creates a relay; out-of-range limits are clamped (see [`RelayConfig`]).
    pub fn new(mut cfg: RelayConfig) -> Self {
        cfg.max_tries = cfg.max_tries.clamp(1, MAX_TRIES_LIMIT);
        cfg.max_pending = cfg.max_pending.min(MAX_PENDING_LIMIT);
        cfg.max_query_len = cfg.max_query_len.min(MAX_QUERY_LEN_LIMIT);
        let local_names = cfg
            .local_names
            .iter()
            .filter_map(|n| wire::encode_name(n))
            .collect();
        Relay {
            rng: SplitMix64::new(cfg.rng_seed),
            cfg,
            local_names,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            preferred: 0,
            spare: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Replaces the upstream list (resolv.conf changed). Pending queries keep
    /// their matching state and take their next try from the new list.
    pub fn set_upstreams(&mut self, ups: Vec<SocketAddr>) {
        self.cfg.upstreams = ups;
        self.preferred = 0;
    }

    /// The current upstream list.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.cfg.upstreams
    }

    /// Handles a guest query (a UDP payload). Either a local answer is
    /// written into `out`, or the query with a fresh id is written into `out`
    /// for sending to `upstream`, or it is dropped with a reason.
    pub fn on_query(
        &mut self,
        now: Instant,
        client: C,
        query: &[u8],
        out: &mut [u8],
    ) -> QueryAction {
        self.counters.queries += 1;
        let action = self.query(now, client, query, out);
        let c = &mut self.counters;
        match action {
            QueryAction::Local { .. } => c.local_answers += 1,
            QueryAction::Forward { .. } => c.forwarded += 1,
            QueryAction::Drop(r) if r.is_malformed() => c.dropped_malformed += 1,
            QueryAction::Drop(DropReason::TableFull) => c.dropped_table_full += 1,
            QueryAction::Drop(_) => c.dropped_other += 1,
        }
        action
    }

    /// The local answer to `query` when it asks for one of the local names (written
    /// into `out`, its length returned); `Ok(None)` when it must go upstream; `Err` when
    /// it is malformed. No state changes: the TCP path of the engine uses this to answer
    /// local names on a stream and pass everything else through.
    pub fn local_answer(&self, query: &[u8], out: &mut [u8]) -> Result<Option<usize>, DropReason> {
        if query.len() > self.cfg.max_query_len {
            return Err(DropReason::TooLong);
        }
        let Ok(h) = Header::new_checked(query) else {
            return Err(DropReason::ShortHeader);
        };
        if h.is_response() {
            return Err(DropReason::NotAQuery);
        }
        if h.qdcount() != 1 {
            return Err(DropReason::BadCounts);
        }
        let q = match Question::parse(query, HEADER_LEN) {
            Ok(q) => q,
            Err(e) => return Err(DropReason::BadName(e)),
        };
        let records =
            usize::from(h.ancount()) + usize::from(h.nscount()) + usize::from(h.arcount());
        if records * MIN_RECORD_LEN > query.len().saturating_sub(q.end) {
            return Err(DropReason::BadCounts);
        }
        if h.opcode() == wire::opcode::QUERY
            && matches!(q.qclass, class::IN | wire::rtype::ANY)
            && self
                .local_names
                .iter()
                .any(|n| q.name.eq_ignore_case(n.as_wire()))
        {
            return match local::write_answer(
                query,
                &q,
                self.cfg.local_addr4,
                self.cfg.local_addr6,
                out,
            ) {
                Some(len) => Ok(Some(len)),
                None => Err(DropReason::OutTooSmall),
            };
        }
        Ok(None)
    }

    fn query(&mut self, now: Instant, client: C, query: &[u8], out: &mut [u8]) -> QueryAction {
        use QueryAction::Drop;
        match self.local_answer(query, out) {
            Err(r) => return Drop(r),
            Ok(Some(len)) => return QueryAction::Local { len },
            Ok(None) => {}
        }
        // Validated by local_answer; parsed again for the header id and question end.
        let Ok(h) = Header::new_checked(query) else {
            return Drop(DropReason::ShortHeader);
        };
        let q = match Question::parse(query, HEADER_LEN) {
            Ok(q) => q,
            Err(e) => return Drop(DropReason::BadName(e)),
        };
        let n_ups = self.cfg.upstreams.len();
        if n_ups == 0 {
            return Drop(DropReason::NoUpstream);
        }
        if self.pending.len() >= self.cfg.max_pending {
            return Drop(DropReason::TableFull);
        }
        let Some(dst) = out.get_mut(..query.len()) else {
            return Drop(DropReason::OutTooSmall);
        };
        let upstream = self
            .cfg
            .upstreams
            .get(self.preferred % n_ups)
            .copied()
            .unwrap_or(UNSPECIFIED);
        let id = self.fresh_id();
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(query);
        Header::new_unchecked(&mut buf[..]).set_id(id);
        dst.copy_from_slice(&buf);

        let deadline = now + self.cfg.try_timeout;
        let mut tried = [UNSPECIFIED; MAX_TRIES_LIMIT];
        tried[0] = upstream;
        self.pending.insert(
            id,
            Pending {
                client,
                guest_id: h.id(),
                query: buf,
                question_end: q.end,
                tried,
                n_tried: 1,
                deadline,
            },
        );
        self.deadlines.insert((deadline, id));
        QueryAction::Forward {
            upstream,
            len: query.len(),
        }
    }

    /// A random id not used by any pending query. Terminates because the
    /// table holds at most [`MAX_PENDING_LIMIT`] < 65 536 entries.
    fn fresh_id(&mut self) -> u16 {
        for _ in 0..ID_DRAWS {
            let id = self.rng.next_u16();
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
        let start = self.rng.next_u16();
        (0..=u16::MAX)
            .map(|k| start.wrapping_add(k))
            .find(|id| !self.pending.contains_key(id))
            .unwrap_or(start)
    }

    /// Handles an upstream answer (a UDP payload) from `from`. On a match the
    /// answer with the guest's original id is written into `out` and the
    /// client returned; late, unknown or mismatched answers are
    /// [`AnswerAction::Unmatched`]. `out` should hold 65 535 bytes, the
    /// largest UDP payload; a smaller one may give
    /// [`UnmatchedReason::OutTooSmall`].
    pub fn on_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        answer: &[u8],
        out: &mut [u8],
    ) -> AnswerAction<C> {
        let _ = now; // Matching does not depend on time: expiry is on_timeout's job.
        let action = self.answer(from, answer, out);
        match action {
            AnswerAction::Deliver { .. } => self.counters.answered += 1,
            AnswerAction::Unmatched(_) => self.counters.unmatched_answers += 1,
        }
        action
    }

    fn answer(&mut self, from: SocketAddr, answer: &[u8], out: &mut [u8]) -> AnswerAction<C> {
        use AnswerAction::Unmatched;
        let Ok(h) = Header::new_checked(answer) else {
            return Unmatched(UnmatchedReason::ShortHeader);
        };
        if !h.is_response() {
            return Unmatched(UnmatchedReason::NotAResponse);
        }
        let id = h.id();
        let Some(p) = self.pending.get(&id) else {
            return Unmatched(UnmatchedReason::UnknownId);
        };
        if !p.was_sent_to(from) {
            return Unmatched(UnmatchedReason::WrongUpstream);
        }
        let formerr_without_question = h.qdcount() == 0 && h.rcode() == rcode::FORMERR;
        if !formerr_without_question && !same_question(&p.query, p.question_end, answer) {
            return Unmatched(UnmatchedReason::QuestionMismatch);
        }
        let Some(dst) = out.get_mut(..answer.len()) else {
            return Unmatched(UnmatchedReason::OutTooSmall);
        };
        dst.copy_from_slice(answer);
        Header::new_unchecked(dst).set_id(p.guest_id);

        let client = p.client;
        if let Some(i) = self.cfg.upstreams.iter().position(|&u| u == from) {
            self.preferred = i;
        }
        self.finish(id);
        AnswerAction::Deliver {
            client,
            len: answer.len(),
        }
    }

    /// Removes a pending entry and its deadline, keeping its buffer.
    fn finish(&mut self, id: u16) {
        if let Some(p) = self.pending.remove(&id) {
            self.deadlines.remove(&(p.deadline, id));
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(p.query);
            }
        }
    }

    /// The earliest deadline of any pending try, if any.
    pub fn poll_at(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Expires tries whose deadline is at or before `now`: each is either
    /// re-sent to the next upstream (through `resend(upstream, bytes)`) or,
    /// after `max_tries`, given up (counted in [`Counters::timeouts`]; the
    /// guest gets nothing, as from a real resolver that times out).
    pub fn on_timeout(&mut self, now: Instant, mut resend: impl FnMut(SocketAddr, &[u8])) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let ups = &self.cfg.upstreams;
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            let last_idx = p
                .current()
                .and_then(|last| ups.iter().position(|&u| u == last));
            if let Some(i) = last_idx
                && i == self.preferred % ups.len().max(1)
            {
                self.preferred = (i + 1) % ups.len().max(1);
            }
            if p.n_tried >= self.cfg.max_tries || ups.is_empty() {
                self.counters.timeouts += 1;
                if let Some(p) = self.pending.remove(&id)
                    && self.spare.len() < SPARE_BUFFERS
                {
                    self.spare.push(p.query);
                }
                continue;
            }
            let next_idx = match last_idx {
                Some(i) => (i + 1) % ups.len(),
                None => self.preferred % ups.len(),
            };
            let upstream = ups.get(next_idx).copied().unwrap_or(UNSPECIFIED);
            if let Some(slot) = p.tried.get_mut(p.n_tried) {
                *slot = upstream;
                p.n_tried += 1;
            }
            p.deadline = now + self.cfg.try_timeout;
            self.deadlines.insert((p.deadline, id));
            self.counters.retries += 1;
            resend(upstream, &p.query);
        }
    }

    /// Number of queries awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The event counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// True if `answer` has exactly one question equal to the one in
/// `query[HEADER_LEN..question_end]`: name ignoring ASCII case (both names are
/// uncompressed, since nothing precedes the first question), type and class
/// exactly.
fn same_question(query: &[u8], question_end: usize, answer: &[u8]) -> bool {
    if Header::new_unchecked(answer).qdcount() != 1 {
        return false;
    }
    let Ok(q) = Question::parse(answer, HEADER_LEN) else {
        return false;
    };
    let (Some(sent), Some(got)) = (
        query.get(HEADER_LEN..question_end),
        answer.get(HEADER_LEN..q.end),
    ) else {
        return false;
    };
    if sent.len() != got.len() {
        return false;
    }
    let split = sent.len().saturating_sub(4);
    let (sent_name, sent_tc) = sent.split_at(split);
    let (got_name, got_tc) = got.split_at(split);
    sent_name.eq_ignore_ascii_case(got_name) && sent_tc == got_tc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{flags, rtype};

    /// `dig -p 5353 @127.0.0.1 www.example.test A` (EDNS, DNS cookie option).
    static A_QUERY: &[u8; 57] = include_bytes!("testdata/a_query_cookie.bin");
    /// dnsmasq's answer to it: the answer's owner is compressed (c00c).
    static A_ANSWER: &[u8; 61] = include_bytes!("testdata/a_answer.bin");
    /// `dig ... www.example.test AAAA +nocookie`.
    static AAAA_QUERY: &[u8; 45] = include_bytes!("testdata/aaaa_query.bin");
    static AAAA_ANSWER: &[u8; 73] = include_bytes!("testdata/aaaa_answer.bin");
    /// `dig ... txt.example.test TXT` and its two-string TXT answer.
    static TXT_QUERY: &[u8; 57] = include_bytes!("testdata/txt_query.bin");
    static TXT_ANSWER: &[u8; 83] = include_bytes!("testdata/txt_answer.bin");
    /// `dig ... big.example.test TXT +noedns +ignore`: a 462-byte answer with TC set.
    static TC_QUERY: &[u8; 34] = include_bytes!("testdata/tc_query.bin");
    static TC_ANSWER: &[u8; 462] = include_bytes!("testdata/tc_answer.bin");

    const GUEST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)), 40000);
    const U1: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);
    const U2: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53);
    const U3: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 53);
    const T: Duration = DEFAULT_TRY_TIMEOUT;

    fn cfg() -> RelayConfig {
        RelayConfig {
            upstreams: vec![U1, U2],
            local_names: vec!["host.usernet.internal".into(), "gateway.".into()],
            rng_seed: 42,
            ..RelayConfig::default()
        }
    }

    fn relay() -> Relay<SocketAddr> {
        Relay::new(cfg())
    }

    /// A minimal query: header with RD, one question, no EDNS.
    fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&flags::RD.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(wire::encode_name(name).unwrap().as_wire());
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&class::IN.to_be_bytes());
        m
    }

    /// An answer to `sent` as an echoing server would build it.
    fn echo_answer(sent: &[u8]) -> Vec<u8> {
        let mut a = sent.to_vec();
        let mut h = Header::new_unchecked(&mut a[..]);
        let f = h.flags();
        h.set_flags(f | flags::QR | flags::RA);
        a
    }

    fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
        let mut m = msg.to_vec();
        Header::new_unchecked(&mut m[..]).set_id(id);
        m
    }

    fn id_of(msg: &[u8]) -> u16 {
        Header::new_unchecked(msg).id()
    }

    /// Forwards `q` and returns (upstream, bytes sent).
    fn forward(r: &mut Relay<SocketAddr>, now: Instant, q: &[u8]) -> (SocketAddr, Vec<u8>) {
        let mut out = [0u8; 1500];
        match r.on_query(now, GUEST, q, &mut out) {
            QueryAction::Forward { upstream, len } => (upstream, out[..len].to_vec()),
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    #[test]
    fn real_queries_relayed_byte_exact() {
        let now = Instant::now();
        let mut r = relay();
        for (q, a) in [
            (&A_QUERY[..], &A_ANSWER[..]),
            (&AAAA_QUERY[..], &AAAA_ANSWER[..]),
            (&TXT_QUERY[..], &TXT_ANSWER[..]),
            (&TC_QUERY[..], &TC_ANSWER[..]),
        ] {
            let (up, sent) = forward(&mut r, now, q);
            assert_eq!(up, U1);
            // Only the id differs; EDNS and the cookie go out untouched.
            assert_eq!(sent[2..], q[2..]);
            let new_id = id_of(&sent);
            let mut out = [0u8; 1500];
            match r.on_answer(now, U1, &with_id(a, new_id), &mut out) {
                AnswerAction::Deliver { client, len } => {
                    assert_eq!(client, GUEST);
                    // The captured answer carries the guest's id: byte-exact.
                    assert_eq!(&out[..len], a);
                }
                other => panic!("expected Deliver, got {other:?}"),
            }
        }
        assert!(Header::new_unchecked(&TC_ANSWER[..]).is_truncated());
        assert_eq!(r.pending(), 0);
        assert_eq!(r.poll_at(), None);
        let c = r.counters();
        assert_eq!((c.queries, c.forwarded, c.answered), (4, 4, 4));
    }

    #[test]
    fn ids_are_rewritten_and_unique_while_pending() {
        let now = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_pending: 2000,
            ..cfg()
        });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (_, sent) = forward(&mut r, now, A_QUERY);
            assert!(seen.insert(id_of(&sent)), "id reused while pending");
        }
        assert_eq!(r.pending(), 2000);
        // Not the guest's id every time: the ids are really rewritten.
        assert!(seen.len() > 1 && seen.iter().any(|&i| i != id_of(A_QUERY)));
    }

    #[test]
    fn ids_stay_unique_near_the_limit() {
        let now = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_pending: usize::MAX,
            ..cfg()
        });
        let q = build_query(1, "a.example", rtype::A);
        let mut out = [0u8; 64];
        for _ in 0..MAX_PENDING_LIMIT {
            assert!(matches!(
                r.on_query(now, GUEST, &q, &mut out),
                QueryAction::Forward { .. }
            ));
        }
        assert_eq!(r.pending(), MAX_PENDING_LIMIT);
        assert_eq!(
            r.on_query(now, GUEST, &q, &mut out),
            QueryAction::Drop(DropReason::TableFull)
        );
    }

    #[test]
    fn same_seed_same_ids() {
        let now = Instant::now();
        let ids = |seed| {
            let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
                rng_seed: seed,
                ..cfg()
            });
            (0..5)
                .map(|_| id_of(&forward(&mut r, now, A_QUERY).1))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(1), ids(1));
        assert_ne!(ids(1), ids(2));
    }

    #[test]
    fn failover_to_next_upstream_on_timeout() {
        let t0 = Instant::now();
        let mut r = relay();
        let (up, sent) = forward(&mut r, t0, A_QUERY);
        assert_eq!(up, U1);
        assert_eq!(r.poll_at(), Some(t0 + T));

        let mut resent = Vec::new();
        r.on_timeout(t0 + T / 2, |u, b| resent.push((u, b.to_vec())));
        assert!(resent.is_empty());

        r.on_timeout(t0 + T, |u, b| resent.push((u, b.to_vec())));
        assert_eq!(resent, vec![(U2, sent.clone())]);
        assert_eq!(r.poll_at(), Some(t0 + 2 * T));
        assert_eq!(r.counters().retries, 1);

        let mut out = [0u8; 512];
        let a = with_id(A_ANSWER, id_of(&sent));
        assert_eq!(
            r.on_answer(t0 + T, U2, &a, &mut out),
            AnswerAction::Deliver {
                client: GUEST,
                len: A_ANSWER.len()
            }
        );
        assert_eq!(&out[..A_ANSWER.len()], &A_ANSWER[..]);

        // Sticky: U2 answered, so the next query starts there.
        let (up, _) = forward(&mut r, t0 + T, AAAA_QUERY);
        assert_eq!(up, U2);
    }

    #[test]
    fn late_answer_from_first_upstream_still_accepted_after_failover() {
        let t0 = Instant::now();
        let mut r = relay();
        let (_, sent) = forward(&mut r, t0, A_QUERY);
        r.on_timeout(t0 + T, |_, _| {});
        let mut out = [0u8; 512];
        let a = with_id(A_ANSWER, id_of(&sent));
        assert!(matches!(
            r.on_answer(t0 + T, U1, &a, &mut out),
            AnswerAction::Deliver { .. }
        ));
        // The second server's answer, now late, goes nowhere.
        assert_eq!(
            r.on_answer(t0 + T, U2, &a, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::UnknownId)
        );
        assert_eq!(r.counters().unmatched_answers, 1);
    }

    #[test]
    fn gives_up_after_max_tries() {
        let t0 = Instant::now();
        let mut r = relay();
        let (_, sent) = forward(&mut r, t0, TXT_QUERY);
        let mut resent = Vec::new();
        let mut now = t0;
        for _ in 0..5 {
            now += T;
            r.on_timeout(now, |u, _| resent.push(u));
        }
        // Three tries in total: U1 (first), then U2, then U1 again.
        assert_eq!(resent, vec![U2, U1]);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.poll_at(), None);
        assert_eq!(r.counters().timeouts, 1);
        assert_eq!(r.counters().answered, 0);
        let mut out = [0u8; 512];
        assert_eq!(
            r.on_answer(now, U1, &with_id(TXT_ANSWER, id_of(&sent)), &mut out),
            AnswerAction::Unmatched(UnmatchedReason::UnknownId)
        );
    }

    #[test]
    fn one_timeout_call_handles_many_expired_tries_in_order() {
        let t0 = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_tries: 1,
            ..cfg()
        });
        for i in 0..10u32 {
            forward(&mut r, t0 + Duration::from_millis(i.into()), A_QUERY);
        }
        r.on_timeout(t0 + T + Duration::from_millis(4), |_, _| {
            panic!("max_tries = 1")
        });
        assert_eq!(r.pending(), 5);
        assert_eq!(r.poll_at(), Some(t0 + T + Duration::from_millis(5)));
        assert_eq!(r.counters().timeouts, 5);
    }

    #[test]
    fn dead_first_upstream_costs_one_timeout() {
        let t0 = Instant::now();
        let mut r = relay();
        forward(&mut r, t0, A_QUERY);
        forward(&mut r, t0, AAAA_QUERY);
        let mut resent = Vec::new();
        r.on_timeout(t0 + T, |u, _| resent.push(u));
        assert_eq!(resent, vec![U2, U2]);
        // Both timed out at U1; the preferred upstream moved once, to U2.
        let (up, _) = forward(&mut r, t0 + T, TXT_QUERY);
        assert_eq!(up, U2);
    }

    #[test]
    fn pending_table_is_bounded() {
        let now = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_pending: 2,
            ..cfg()
        });
        let (_, s1) = forward(&mut r, now, A_QUERY);
        forward(&mut r, now, AAAA_QUERY);
        let mut out = [0u8; 512];
        assert_eq!(
            r.on_query(now, GUEST, TXT_QUERY, &mut out),
            QueryAction::Drop(DropReason::TableFull)
        );
        assert_eq!(r.counters().dropped_table_full, 1);
        // Local names do not need a slot.
        let q = build_query(9, "host.usernet.internal", rtype::A);
        assert!(matches!(
            r.on_query(now, GUEST, &q, &mut out),
            QueryAction::Local { .. }
        ));
        // An answer frees a slot.
        r.on_answer(now, U1, &with_id(A_ANSWER, id_of(&s1)), &mut out);
        forward(&mut r, now, TXT_QUERY);
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn wrong_upstream_or_question_is_dropped_and_keeps_the_query() {
        let now = Instant::now();
        let mut r = relay();
        let (_, sent) = forward(&mut r, now, A_QUERY);
        let id = id_of(&sent);
        let mut out = [0u8; 512];
        let good = with_id(A_ANSWER, id);

        // Right bytes from an address we never asked.
        assert_eq!(
            r.on_answer(now, U3, &good, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::WrongUpstream)
        );
        // U2 is an upstream, but not one this query went to.
        assert_eq!(
            r.on_answer(now, U2, &good, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::WrongUpstream)
        );
        // Right id and source, different question (AAAA instead of A).
        assert_eq!(
            r.on_answer(now, U1, &with_id(AAAA_ANSWER, id), &mut out),
            AnswerAction::Unmatched(UnmatchedReason::QuestionMismatch)
        );
        // Different name.
        let other = echo_answer(&with_id(&build_query(0, "www.example.tesu", rtype::A), id));
        assert_eq!(
            r.on_answer(now, U1, &other, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::QuestionMismatch)
        );
        // No question at all with NOERROR.
        let mut noq = good[..12].to_vec();
        Header::new_unchecked(&mut noq[..]).set_qdcount(0);
        assert_eq!(
            r.on_answer(now, U1, &noq, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::QuestionMismatch)
        );
        // A query (QR clear) and a short message.
        assert_eq!(
            r.on_answer(now, U1, &sent, &mut out),
            AnswerAction::Unmatched(UnmatchedReason::NotAResponse)
        );
        assert_eq!(
            r.on_answer(now, U1, &good[..11], &mut out),
            AnswerAction::Unmatched(UnmatchedReason::ShortHeader)
        );
        // An out buffer too small leaves the query pending.
        assert_eq!(
            r.on_answer(now, U1, &good, &mut out[..20]),
            AnswerAction::Unmatched(UnmatchedReason::OutTooSmall)
        );
        assert_eq!(r.pending(), 1);
        assert_eq!(r.counters().unmatched_answers, 8);

        // The real answer still gets through, with the name's case changed
        // by the server (compared ignoring case).
        let mut upper = good.clone();
        upper[13..16].copy_from_slice(b"WWW");
        assert!(matches!(
            r.on_answer(now, U1, &upper, &mut out),
            AnswerAction::Deliver { .. }
        ));
        assert_eq!(r.counters().answered, 1);
    }

    #[test]
    fn formerr_without_question_is_delivered() {
        let now = Instant::now();
        let mut r = relay();
        let (_, sent) = forward(&mut r, now, A_QUERY);
        let mut fe = sent[..12].to_vec();
        let mut h = Header::new_unchecked(&mut fe[..]);
        h.set_flags(flags::QR | u16::from(rcode::FORMERR));
        h.set_qdcount(0);
        h.set_arcount(0);
        let mut out = [0u8; 512];
        assert_eq!(
            r.on_answer(now, U1, &fe, &mut out),
            AnswerAction::Deliver {
                client: GUEST,
                len: 12
            }
        );
        assert_eq!(id_of(&out), id_of(A_QUERY));
    }

    #[test]
    fn set_upstreams_keeps_pending_queries() {
        let t0 = Instant::now();
        let mut r = relay();
        let (_, sent) = forward(&mut r, t0, A_QUERY);
        r.set_upstreams(vec![U3]);
        assert_eq!(r.upstreams(), &[U3]);
        let mut resent = Vec::new();
        r.on_timeout(t0 + T, |u, b| resent.push((u, b.to_vec())));
        assert_eq!(resent, vec![(U3, sent.clone())]);
        // The old upstream's late answer is still good.
        let mut out = [0u8; 512];
        assert!(matches!(
            r.on_answer(t0 + T, U1, &with_id(A_ANSWER, id_of(&sent)), &mut out),
            AnswerAction::Deliver { .. }
        ));
        r.set_upstreams(Vec::new());
        assert_eq!(
            r.on_query(t0, GUEST, A_QUERY, &mut out),
            QueryAction::Drop(DropReason::NoUpstream)
        );
    }

    /// Sends a local query and returns the answer bytes.
    fn local(r: &mut Relay<SocketAddr>, q: &[u8]) -> Vec<u8> {
        let mut out = [0u8; 512];
        match r.on_query(Instant::now(), GUEST, q, &mut out) {
            QueryAction::Local { len } => out[..len].to_vec(),
            other => panic!("expected Local, got {other:?}"),
        }
    }

    #[test]
    fn local_name_a_with_case_preserved() {
        let mut r = relay();
        let q = build_query(0xbeef, "HOST.Usernet.internal", rtype::A);
        let a = local(&mut r, &q);
        let h = Header::new_checked(&a[..]).unwrap();
        assert_eq!(h.id(), 0xbeef);
        assert_eq!(
            h.flags(),
            flags::QR | flags::AA | flags::RD | flags::RA,
            "NOERROR, RD echoed"
        );
        assert_eq!(
            (h.qdcount(), h.ancount(), h.nscount(), h.arcount()),
            (1, 1, 0, 0)
        );
        let qa = Question::parse(&a, HEADER_LEN).unwrap();
        assert_eq!(qa.name.to_string(), "HOST.Usernet.internal.");
        assert_eq!(&a[12..qa.end], &q[12..]);
        let rr = &a[qa.end..];
        assert_eq!(
            rr,
            &[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 2, 2][..]
        );
        assert_eq!(r.counters().local_answers, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn local_name_aaaa_and_other_types() {
        let mut r = relay();
        // No IPv6: AAAA is NODATA.
        let a = local(
            &mut r,
            &build_query(1, "host.usernet.internal.", rtype::AAAA),
        );
        assert_eq!(Header::new_unchecked(&a[..]).ancount(), 0);
        assert_eq!(Header::new_unchecked(&a[..]).rcode(), rcode::NOERROR);

        let six = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            local_addr6: Some(six),
            ..cfg()
        });
        let a = local(&mut r, &build_query(2, "Gateway", rtype::AAAA));
        let qa = Question::parse(&a, HEADER_LEN).unwrap();
        assert_eq!(Header::new_unchecked(&a[..]).ancount(), 1);
        assert_eq!(&a[qa.end + 2..qa.end + 4], &rtype::AAAA.to_be_bytes());
        assert_eq!(&a[a.len() - 16..], &six.octets());

        // TXT (or MX, ...) of a local name: NOERROR, no records.
        let a = local(&mut r, &build_query(3, "gateway", rtype::TXT));
        let h = Header::new_unchecked(&a[..]);
        assert_eq!((h.rcode(), h.ancount()), (rcode::NOERROR, 0));
        assert!(h.is_response());

        // ANY: both addresses.
        let a = local(&mut r, &build_query(4, "gateway", rtype::ANY));
        assert_eq!(Header::new_unchecked(&a[..]).ancount(), 2);
    }

    #[test]
    fn local_answer_to_query_with_edns() {
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            local_names: vec!["www.example.test".into()],
            ..cfg()
        });
        let a = local(&mut r, A_QUERY);
        let h = Header::new_unchecked(&a[..]);
        assert_eq!(h.id(), id_of(A_QUERY));
        assert_eq!((h.ancount(), h.arcount()), (1, 0));
        assert_eq!(&a[12..34], &A_QUERY[12..34]);
        assert_eq!(a.len(), 34 + 16);
        // Too small an out buffer.
        let mut out = [0u8; 40];
        assert_eq!(
            r.on_query(Instant::now(), GUEST, A_QUERY, &mut out),
            QueryAction::Drop(DropReason::OutTooSmall)
        );
    }

    #[test]
    fn near_local_names_are_relayed() {
        let now = Instant::now();
        let mut r = relay();
        forward(
            &mut r,
            now,
            &build_query(1, "x.host.usernet.internal", rtype::A),
        );
        forward(&mut r, now, &build_query(1, "usernet.internal", rtype::A));
        // CHAOS class is not ours.
        let mut ch = build_query(1, "gateway", rtype::TXT);
        let n = ch.len();
        ch[n - 2..].copy_from_slice(&3u16.to_be_bytes());
        forward(&mut r, now, &ch);
        assert_eq!(r.counters().local_answers, 0);
    }

    #[test]
    fn malformed_queries_are_dropped_with_a_reason() {
        let now = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_query_len: 100,
            ..cfg()
        });
        let mut out = [0u8; 512];
        let mut drop = |q: &[u8]| match r.on_query(now, GUEST, q, &mut out) {
            QueryAction::Drop(reason) => reason,
            other => panic!("expected Drop, got {other:?}"),
        };
        assert_eq!(drop(&A_QUERY[..11]), DropReason::ShortHeader);
        assert_eq!(drop(A_ANSWER), DropReason::NotAQuery);
        let mut q = A_QUERY.to_vec();
        q[5] = 0;
        assert_eq!(drop(&q), DropReason::BadCounts);
        q[5] = 2;
        assert_eq!(drop(&q), DropReason::BadCounts);
        // ARCOUNT claims more records than the bytes could hold.
        let mut q = A_QUERY.to_vec();
        q[11] = 3;
        assert_eq!(drop(&q), DropReason::BadCounts);
        let mut q = A_QUERY.to_vec();
        q[7] = 2; // plus two answer records: 3 * 11 > 23 bytes of OPT
        assert_eq!(drop(&q), DropReason::BadCounts);
        // Question cut short.
        assert_eq!(
            drop(&A_QUERY[..20]),
            DropReason::BadName(NameError::Truncated)
        );
        assert_eq!(
            drop(&A_QUERY[..32]),
            DropReason::BadName(NameError::Truncated)
        );
        // Compression pointer in the question: to itself, into the header,
        // past the end.
        let mut q = build_query(1, "", rtype::A);
        q.splice(12..13, [0xc0, 12]);
        assert_eq!(drop(&q), DropReason::BadName(NameError::PointerLoop));
        q[13] = 2;
        assert_eq!(drop(&q), DropReason::BadName(NameError::PointerOutOfRange));
        q[12] = 0xff;
        assert_eq!(drop(&q), DropReason::BadName(NameError::PointerOutOfRange));
        q[12] = 0x80;
        assert_eq!(drop(&q), DropReason::BadName(NameError::BadLabelType));
        // Over max_query_len.
        let mut big = A_QUERY.to_vec();
        big.resize(101, 0);
        assert_eq!(drop(&big), DropReason::TooLong);
        assert_eq!(drop(&[]), DropReason::ShortHeader);

        assert_eq!(r.counters().dropped_malformed, 14);
        assert_eq!(r.counters().queries, 14);
        assert_eq!(r.pending(), 0);
        // Forwarding into too small an out buffer.
        let mut small = [0u8; 56];
        assert_eq!(
            r.on_query(now, GUEST, A_QUERY, &mut small),
            QueryAction::Drop(DropReason::OutTooSmall)
        );
        assert_eq!(r.counters().dropped_other, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn limits_are_clamped() {
        let r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_tries: 0,
            max_pending: usize::MAX,
            max_query_len: usize::MAX,
            ..cfg()
        });
        assert_eq!(r.cfg.max_tries, 1);
        assert_eq!(r.cfg.max_pending, MAX_PENDING_LIMIT);
        assert_eq!(r.cfg.max_query_len, MAX_QUERY_LEN_LIMIT);
        let r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_tries: 100,
            ..cfg()
        });
        assert_eq!(r.cfg.max_tries, MAX_TRIES_LIMIT);
    }

    #[test]
    fn max_tries_limit_cycles_through_upstreams() {
        let t0 = Instant::now();
        let mut r: Relay<SocketAddr> = Relay::new(RelayConfig {
            max_tries: MAX_TRIES_LIMIT,
            upstreams: vec![U1, U2, U3],
            ..cfg()
        });
        forward(&mut r, t0, A_QUERY);
        let mut resent = Vec::new();
        for k in 1..=MAX_TRIES_LIMIT as u32 + 2 {
            r.on_timeout(t0 + T * k, |u, _| resent.push(u));
        }
        assert_eq!(resent, vec![U2, U3, U1, U2, U3, U1, U2]);
        assert_eq!(r.counters().timeouts, 1);
    }

    #[test]
    fn reasons_have_names() {
        assert_eq!(DropReason::TableFull.to_string(), "table_full");
        assert_eq!(
            DropReason::BadName(NameError::PointerLoop).as_str(),
            "name_pointer_loop"
        );
        assert_eq!(UnmatchedReason::WrongUpstream.to_string(), "wrong_upstream");
        assert!(!DropReason::NoUpstream.is_malformed());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
            out_len in 0usize..700,
        ) {
            let now = Instant::now();
            let mut r = relay();
            let mut out = vec![0u8; out_len];
            let _ = r.on_query(now, GUEST, &data, &mut out);
            let _ = r.on_answer(now, U1, &data, &mut out);
            let _ = Question::parse(&data, HEADER_LEN);
            let mut n = NameBuf::default();
            for start in 0..data.len().min(64) {
                let _ = wire::parse_name(&data, start, &mut n);
            }
        }

        /// Structured queries with random names reach the forward and local
        /// paths; their echo must come back byte-exact.
        #[test]
        fn random_valid_queries_round_trip(
            labels in proptest::collection::vec("[a-zA-Z0-9-]{1,20}", 0..5),
            qtype in proptest::num::u16::ANY,
            guest_id in proptest::num::u16::ANY,
            seed in proptest::num::u64::ANY,
        ) {
            let now = Instant::now();
            let mut r: Relay<SocketAddr> = Relay::new(RelayConfig { rng_seed: seed, ..cfg() });
            let name = labels.join(".");
            let q = build_query(guest_id, &name, qtype);
            let mut out = [0u8; 512];
            match r.on_query(now, GUEST, &q, &mut out) {
                QueryAction::Forward { upstream, len } => {
                    let sent = out[..len].to_vec();
                    let mut back = [0u8; 512];
                    let a = echo_answer(&sent);
                    let got = r.on_answer(now, upstream, &a, &mut back);
                    proptest::prop_assert_eq!(got, AnswerAction::Deliver { client: GUEST, len });
                    proptest::prop_assert_eq!(&back[2..len], &a[2..]);
                    proptest::prop_assert_eq!(id_of(&back), guest_id);
                }
                QueryAction::Local { len } => {
                    proptest::prop_assert!(len >= q.len());
                    proptest::prop_assert_eq!(id_of(&out), guest_id);
                }
                QueryAction::Drop(d) => proptest::prop_assert!(false, "dropped: {}", d),
            }
        }
    }
}
