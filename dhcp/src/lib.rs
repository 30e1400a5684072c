//! A sans-IO DHCPv4 and DHCPv6 server for usernet's guest network.
//!
//! # What this crate owns
//!
//! The guest's address lease and the parameters that come with it: which address
//! each client gets (lowest free address of the pool first, the same address again
//! after the client restarts, static reservations always honoured), how long it
//! keeps it, and the options that describe the network (mask, router, DNS, MTU, names,
//! search list, classless routes). [`Server::handle`] turns one client message into
//! at most one reply written into the caller's buffer, plus where to send it
//! (RFC 2131 §4.1); [`Server::poll_at`] and [`Server::expire`] drive lease expiry.
//! The [`cli`] parsers turn `--dhcp-range`, `--dhcp-host` and `--dhcp-lease-time`
//! values into configuration.
//!
//! # What it never does
//!
//! - No I/O: no sockets, no files, no Ethernet/IP/UDP headers (the engine wraps the
//!   payload, since it owns the L2 side and can unicast to `chaddr`).
//! - No clock reads and no randomness: time comes in as `now` on every call, so tests
//!   and the fuzz target drive it exactly.
//! - No panics and no unbounded allocation on guest input: parsing borrows the message
//!   and checks every index; replies are written in place; the lease table is bounded
//!   by the pool size ([`MAX_POOL_SIZE`]). Malformed or unwanted input ends as
//!   [`Outcome::Ignored`] with a closed [`IgnoreReason`], never an `Err`.
//! - No relays, no BOOTP-only clients, no lease persistence across runs
//!   (the server is authoritative instead: a client that returns after a restart of
//!   usernet is acknowledged if its address is free).
//!
//! # DHCPv6
//!
//! [`v6::Server6`] is the same kind of server for the guest's IPv6 link (RFC 8415):
//! stateless answers (DNS servers, search list) and, when configured, one address per
//! client DUID and IAID from a pool in the prefix, on the same lease table. Its module
//! documentation says what it answers and what it leaves out.
//!
//! # Why our own wire code rather than `dhcproto`
//!
//! The design notes suggested `dhcproto` 0.15. We use it, but only as an independent
//! decoder in the tests, to check the bytes we emit. The server's path uses the ~200
//! lines of our `wire` module instead, for three reasons found reading dhcproto's
//! source:
//!
//! - its zero-copy `v4::borrowed::Message::chaddr()` slices `28..28 + hlen` after only
//!   checking for 240 bytes, so a 240-byte guest message with `hlen` = 255 indexes out
//!   of bounds and panics;
//! - its owned `Message` encoder allocates an option map and a `Vec` per reply and
//!   cannot write into the caller's buffer or drop options that do not fit the
//!   client's maximum message size;
//! - it would bring `hickory-proto`, `rand` and `ipnet` into the engine binary for the
//!   dozen fixed options we need.
//!
//! `thiserror` derives the configuration and CLI error types, which are plain
//! sentence-per-variant enums that hand-written `Display` impls would only repeat.
//!
//! # Layout
//!
//! `wire` (message view and reply writer) → `server` (RFC 2131 state
//! machine) → `lease` (the table: pool, bindings, memory of past addresses, deadlines;
//! shared with [`v6`], which has its own wire code and state machine);
//! `config` validates [`ServerConfig`] and pre-encodes options; [`cli`] parses flags;
//! [`fuzz`] is the fuzz target.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
mod config;
pub mod fuzz;
mod lease;
mod server;
pub mod v6;
mod wire;

#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

pub use cli::{ParseError, parse_host, parse_lease_time, parse_mac, parse_range};
pub use config::{
    ConfigError, DEFAULT_LEASE_TIME, MAX_LEASE_SECS, MAX_POOL_SIZE, MIN_LEASE_TIME,
    SLIRP_POOL_OFFSET, SLIRP_STATIC_GUEST_OFFSET, ServerConfig,
};
pub use server::{
    DECLINE_HOLD, IgnoreReason, LeaseInfo, LeaseState, MAX_LEASES_PER_MAC, MIN_OUT_LEN,
    OFFER_TIMEOUT, Outcome, Reply, Server,
};
pub use v6::{
    ConfigError6, IgnoreReason6, Lease6Info, Lease6State, MessageType6, Outcome6, Server6,
    Server6Config,
};
pub use wire::MessageType;

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
