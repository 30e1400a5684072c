//! # usernet engine
//!
//! User-mode networking for network namespaces (a drop-in for slirp4netns) and VMs
//! (`usernet vm`, [`vm`]: QEMU `-netdev stream`/`dgram`). This crate owns all I/O: the event loop ([`engine`]), the L2 port ([`port`]), the
//! router and its NAT tables ([`router`]), host sockets ([`host`]), and the namespace
//! and TAP plumbing ([`ns`]). The protocol logic that needs no I/O lives in the sans-IO
//! crates `usernet-dns` (the relay), `usernet-dhcp` and `usernet-portfwd`.
//!
//! Dependencies, and why each beats hand-written code: `smoltcp` terminates guest TCP
//! (a complete, fuzzed TCP state machine with zero-copy `wire` parsers); `mio` is the
//! edge-triggered epoll loop with tokens that map straight to flow slots; `socket2`
//! creates host sockets with every option; `nix` wraps setns/unshare/SCM_RIGHTS/recvmsg
//! with checked types; `slab` gives flows stable indices; `clap` parses a
//! slirp4netns-compatible command line with good errors; `signal-hook` turns signals
//! into a pipe the loop watches; `tracing` logs structured events.
//!
//! See ARCHITECTURE.md at the repository root for the data path and invariants.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod engine;
pub mod frag;
pub mod frames;
pub mod fuzz;
pub mod fuzz_host;
pub mod fuzz_stream;
pub mod host;
pub mod nat;
pub mod network;
pub mod ns;
pub mod pcap;
pub mod policy;
pub mod port;
pub mod port_dgram;
pub mod port_stream;
pub mod router;
pub mod sandbox;
pub mod stats;
pub mod txq;
pub mod vm;
