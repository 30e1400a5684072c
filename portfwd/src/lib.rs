//! Port forwarding for usernet: the rules, their table, and the control API.
//!
//! A port forward makes a service in the guest reachable from the host: the engine
//! listens on a host address and port and relays each connection (TCP) or flow
//! (UDP) to a guest address and port. This crate owns everything about forwards
//! except the sockets:
//!
//! * [`rule`]: the command-line grammar, Docker's `-p/--publish` and VirtualBox's
//!   `--natpf`, parsed into [`RuleSpec`]s with errors that quote the rule and say
//!   what was expected;
//! * [`table`]: the [`Table`] of active [`Rule`]s, with ids that are never reused
//!   and the conflict rules the kernel would apply when binding;
//! * [`api`]: the slirp4netns-compatible JSON API socket protocol, byte for byte,
//!   on both sides: the engine's request parser and reply builders, and the
//!   `usernet fwd` client's request builders, reply parser and table printer;
//! * [`fuzz`]: entry points for the fuzz targets, replayed by `cargo test`.
//!
//! # What it never does
//!
//! It is sans-IO: it opens no socket, reads no clock, spawns nothing, and keeps no
//! global state. The engine binds the host socket between [`Table::check`] and
//! [`Table::insert`], and moves API bytes between the UNIX socket and
//! [`api::RequestReader`]. Every input here comes from the user or an API client
//! (trusted management plane, per the threat model) yet is still fully validated:
//! no input panics, and every collection is bounded by a named constant
//! ([`rule::MAX_RANGE_PORTS`], [`table::MAX_RULES`], [`api::MAX_REQUEST_BYTES`]).
//!
//! # Dependencies
//!
//! * `serde_json` parses the API's JSON: a hand-written parser would have to get
//!   escapes, UTF-8, number forms and nesting limits right, which `serde_json`
//!   already does and fuzzes; `serde` comes with it for `IgnoredAny`.
//! * `thiserror` writes the `Display` and `Error` impls of the error enums, as
//!   everywhere in the workspace.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod filter;
pub mod fuzz;
pub mod rule;
pub mod table;

/// The JSON crate of [`api::reply_stats`] and [`api::Reply::Stats`], re-exported so
/// callers build those values with the same version.
pub use serde_json;

pub use api::{ApiError, Reply, Request, RequestReader};
pub use filter::{
    Action, FilterError, FilterErrorKind, FilterProto, FilterRule, Flow, MAX_FILTER_RULES, Matched,
    Verdict, decide, parse_filter,
};
pub use rule::{Proto, RuleError, RuleSpec, parse_natpf, parse_publish};
pub use table::{Rule, Table, TableError};
