//! usernet's DNS relay: the guest's resolver talks to the virtual DNS address
//! (10.0.2.3), and this crate decides what becomes of each UDP payload.
//!
//! # What it owns
//!
//! * [`Relay`]: a sans-IO relay, not a resolver. A guest query is forwarded
//!   to an upstream with only its transaction id replaced by a fresh random
//!   one; the upstream's answer goes back to the guest with only the id
//!   restored. Every record type, EDNS option, the TC bit and the DNSSEC bits
//!   therefore pass byte for byte: the opposite of the re-synthesising DNS
//!   servers whose missing record types, broken TXT handling and truncation
//!   bugs users keep reporting against other user-mode stacks. The relay
//!   keeps a bounded table of pending queries, matches answers by id, source
//!   address and question, and fails over to the next upstream on timeout.
//!   See the theory of operation in `relay.rs`.
//! * Local names: a configured handful (`host.usernet.internal`…) are
//!   answered here with the gateway address, A and optionally AAAA, NODATA
//!   for other types.
//! * [`parse_resolv_conf`]: the host's `resolv.conf` → upstream list.
//! * [`wire`]: zero-copy views of the DNS header and question, with name
//!   decompression guarded against loops, wild pointers and over-long names,
//!   for the engine to reuse (for logging, say).
//! * [`fuzz`]: the `dns_message` fuzz target, replayed by the tests.
//!
//! # What it never does
//!
//! * No I/O: no sockets, no file reads, no clock reads, no randomness of its
//!   own. The engine passes `now`, the payloads, an output buffer and an RNG
//!   seed, and does the sending. Answers, re-sends and timeouts are all
//!   driven by [`Relay::on_query`], [`Relay::on_answer`], [`Relay::poll_at`]
//!   and [`Relay::on_timeout`].
//! * No caching, no recursion, no rewriting of records, no DNS over TCP
//!   (the engine's TCP proxy carries that to the same upstream).
//! * No panics and no unbounded memory on guest input: malformed queries
//!   become [`QueryAction::Drop`] with a [`DropReason`], stray answers
//!   [`AnswerAction::Unmatched`] with an [`UnmatchedReason`]; every table,
//!   buffer and retry count has a named bound. No `unsafe`.
//! * No logging: every outcome is a value with a stable `as_str()` name and
//!   a [`Counters`] field, and the engine logs it in its own span.
//!
//! # Dependencies
//!
//! None at run time. The header and question views are a small module in
//! the `smoltcp::wire` style; taking smoltcp's `DnsPacket` would have tied
//! this crate to smoltcp's feature set for two fields, and `hickory-proto`
//! would parse (and could reject) records the relay must pass through
//! unread. Tests use `proptest` (already a workspace dev-dependency) and
//! real captured messages under `src/testdata/`.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use usernet_dns::{AnswerAction, QueryAction, Relay, RelayConfig};
//!
//! let upstream: SocketAddr = "127.0.0.53:53".parse().unwrap();
//! let guest: SocketAddr = "10.0.2.15:40000".parse().unwrap();
//! let mut relay: Relay<SocketAddr> = Relay::new(RelayConfig {
//!     upstreams: vec![upstream],
//!     local_names: vec!["host.usernet.internal".into()],
//!     rng_seed: 0x5eed, // from the OS in real use
//!     ..RelayConfig::default()
//! });
//! // A query for example.com A, id 0x1234, RD set.
//! let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
//!               \x07example\x03com\x00\x00\x01\x00\x01";
//! let mut out = [0u8; 65_535];
//! let now = Instant::now();
//! let QueryAction::Forward { upstream: to, len } = relay.on_query(now, guest, query, &mut out)
//! else { panic!() };
//! assert_eq!((to, &out[2..len]), (upstream, &query[2..]));
//! // The server echoes the question with QR set; the guest gets its own id back.
//! let mut answer = out[..len].to_vec();
//! answer[2] |= 0x80;
//! let mut back = [0u8; 65_535];
//! let AnswerAction::Deliver { client, len } = relay.on_answer(now, upstream, &answer, &mut back)
//! else { panic!() };
//! assert_eq!((client, &back[..2]), (guest, &[0x12, 0x34][..]));
//! assert_eq!(relay.pending(), 0);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fuzz;
mod local;
mod relay;
mod resolv;
mod rng;
pub mod wire;

pub use local::LOCAL_TTL_SECS;
pub use relay::{
    AnswerAction, Counters, DEFAULT_LOCAL_ADDR4, DEFAULT_MAX_PENDING, DEFAULT_MAX_QUERY_LEN,
    DEFAULT_MAX_TRIES, DEFAULT_TRY_TIMEOUT, DropReason, MAX_PENDING_LIMIT, MAX_QUERY_LEN_LIMIT,
    MAX_TRIES_LIMIT, QueryAction, Relay, RelayConfig, UnmatchedReason,
};
pub use resolv::{MAX_NAMESERVERS, MAX_SEARCH, ResolvConf, parse_resolv_conf};
