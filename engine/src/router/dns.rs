//! The DNS address: guest queries to 10.0.2.3:53 relayed to the host's resolvers.
//!
//! The relay logic (id rewriting, matching, failover, local names) is the sans-IO
//! `usernet_dns::Relay`; this module owns its sockets and its view of `/etc/resolv.conf`
//! (re-read when the file changes, checked at most once a second when queries arrive).
//! Upstreams on the host's loopback (127.0.0.53, ::1) work because usernet lives in the
//! host's network namespace. TCP to 10.0.2.3:53 is an ordinary TCP flow whose host side
//! connects to the upstreams in turn, with local names answered on the stream
//! ([`super::dns_tcp`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mio::Interest;
use usernet_dns::{AnswerAction, QueryAction, Relay, RelayConfig};

use super::{Ctx, Owner};
use crate::stats::DropReason;

/// How often, at most, resolv.conf's modification time is checked.
const RESOLV_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Largest DNS message handled over UDP.
const DNS_BUF: usize = 65536;

/// Where the upstreams come from.
#[derive(Clone, Debug)]
pub enum Upstreams {
    /// The nameservers of this resolv.conf, re-read when it changes.
    ResolvConf(PathBuf),
    /// Fixed (`--dns-upstream`).
    Fixed(Vec<SocketAddr>),
}

/// DNS options of the engine.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Upstream source.
    pub upstreams: Upstreams,
    /// Names answered with the gateway's address.
    pub local_names: Vec<String>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            upstreams: Upstreams::ResolvConf(PathBuf::from("/etc/resolv.conf")),
            local_names: vec!["host.usernet.internal".into()],
        }
    }
}

/// The relay and its sockets.
pub struct DnsService {
    relay: Relay<SocketAddr>,
    socks: [Option<mio::net::UdpSocket>; 2],
    source: Upstreams,
    resolv_mtime: Option<SystemTime>,
    last_check: Option<Instant>,
    out: Vec<u8>,
    rbuf: Vec<u8>,
}

fn read_upstreams(path: &PathBuf) -> (Vec<SocketAddr>, Option<SystemTime>) {
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let conf = usernet_dns::parse_resolv_conf(&text);
    let ups = conf
        .nameservers
        .into_iter()
        .map(|a| SocketAddr::new(a, 53))
        .collect();
    (ups, mtime)
}

impl DnsService {
    /// The relay for the engine's configuration.
    pub fn new(ctx: &Ctx, _now: Instant) -> io::Result<DnsService> {
        let opts = ctx.cfg.dns_options.clone();
        let (ups, mtime) = match &opts.upstreams {
            Upstreams::ResolvConf(p) => read_upstreams(p),
            Upstreams::Fixed(v) => (v.clone(), None),
        };
        if ctx.cfg.enable_dns {
            if ups.is_empty() {
                tracing::warn!("no DNS upstream found: guest DNS queries will go unanswered");
            } else {
                tracing::info!(upstreams = ?ups, "DNS relay");
            }
        }
        let cfg = RelayConfig {
            upstreams: ups,
            local_names: opts.local_names.clone(),
            local_addr4: ctx.cfg.gateway,
            local_addr6: ctx.cfg.ipv6.as_ref().map(|v| v.gateway),
            rng_seed: ctx.cfg.seed(),
            ..RelayConfig::default()
        };
        Ok(DnsService {
            relay: Relay::new(cfg),
            socks: [None, None],
            source: opts.upstreams,
            resolv_mtime: mtime,
            last_check: None,
            out: vec![0u8; DNS_BUF],
            rbuf: vec![0u8; DNS_BUF],
        })
    }

    /// Where a guest's TCP connection to the DNS address goes: the upstreams in order
    /// (the next is tried when a connect fails), after re-reading resolv.conf if due.
    pub fn tcp_upstreams(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.maybe_reload(now);
        self.relay.upstreams().to_vec()
    }

    /// The local answer to a query that arrived over TCP, if it asks for a local name.
    pub fn local_answer(&self, query: &[u8], out: &mut [u8]) -> Option<usize> {
        self.relay.local_answer(query, out).ok().flatten()
    }

    /// The next retry deadline.
    pub fn poll_at(&self) -> Option<Instant> {
        self.relay.poll_at()
    }

    fn maybe_reload(&mut self, now: Instant) {
        let Upstreams::ResolvConf(path) = &self.source else {
            return;
        };
        if self
            .last_check
            .is_some_and(|t| now < t + RESOLV_CHECK_INTERVAL)
        {
            return;
        }
        self.last_check = Some(now);
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime == self.resolv_mtime {
            return;
        }
        let (ups, mtime) = read_upstreams(path);
        self.resolv_mtime = mtime;
        if ups != self.relay.upstreams() {
            tracing::info!(upstreams = ?ups, "resolv.conf changed");
            self.relay.set_upstreams(ups);
        }
    }

    fn sock(&mut self, ctx: &Ctx, v6: bool) -> Option<&mio::net::UdpSocket> {
        let i = usize::from(v6);
        if self.socks[i].is_none() {
            match crate::host::dns_socket(v6) {
                Ok(mut s) => {
                    if ctx
                        .registry
                        .register(&mut s, Owner::DnsUpstream(i).token(), Interest::READABLE)
                        .is_ok()
                    {
                        self.socks[i] = Some(s);
                    }
                }
                Err(e) => tracing::debug!(error = %e, v6, "cannot open the DNS upstream socket"),
            }
        }
        self.socks[i].as_ref()
    }

    /// A query from the guest.
    pub fn handle_query(&mut self, ctx: &mut Ctx, now: Instant, client: SocketAddr, query: &[u8]) {
        self.maybe_reload(now);
        match self.relay.on_query(now, client, query, &mut self.out) {
            QueryAction::Local { len } => {
                let src = dns_addr(ctx, client);
                if !ctx.emit.udp(&mut ctx.txq, src, client, &self.out[..len]) {
                    ctx.drop(DropReason::TxQueueFull);
                }
            }
            QueryAction::Forward { upstream, len } => {
                let out = std::mem::take(&mut self.out);
                let allowed = crate::host::contained(&ctx.cfg, upstream).is_ok();
                let sent = match self.sock(ctx, upstream.is_ipv6()) {
                    Some(s) if allowed => s.send_to(&out[..len], upstream).is_ok(),
                    _ => false,
                };
                self.out = out;
                if !sent {
                    ctx.drop(DropReason::DnsDropped);
                }
            }
            QueryAction::Drop(r) => {
                tracing::debug!(reason = %r, "dns query dropped");
                ctx.drop(DropReason::DnsDropped);
            }
        }
    }

    /// Answers arrived on an upstream socket.
    pub fn upstream_readable(&mut self, ctx: &mut Ctx, now: Instant, i: usize) {
        for _ in 0..1024 {
            let Some(s) = self.socks.get(i).and_then(|s| s.as_ref()) else {
                return;
            };
            let (n, from) = match s.recv_from(&mut self.rbuf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            match self
                .relay
                .on_answer(now, from, &self.rbuf[..n], &mut self.out)
            {
                AnswerAction::Deliver { client, len } => {
                    let src = dns_addr(ctx, client);
                    if !ctx.emit.udp(&mut ctx.txq, src, client, &self.out[..len]) {
                        ctx.drop(DropReason::TxQueueFull);
                    }
                }
                AnswerAction::Unmatched(r) => {
                    tracing::debug!(reason = ?r, %from, "dns answer unmatched");
                    ctx.drop(DropReason::DnsDropped);
                }
            }
        }
    }

    /// Retries due.
    pub fn on_timeout(&mut self, ctx: &mut Ctx, now: Instant) {
        let mut resends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        self.relay
            .on_timeout(now, |up, bytes| resends.push((up, bytes.to_vec())));
        for (up, bytes) in resends {
            if crate::host::contained(&ctx.cfg, up).is_err() {
                continue;
            }
            if let Some(s) = self.sock(ctx, up.is_ipv6()) {
                let _ = s.send_to(&bytes, up);
            }
        }
    }
}

/// The DNS address the guest `client` asked, by family.
fn dns_addr(ctx: &Ctx, client: SocketAddr) -> SocketAddr {
    match (client, &ctx.cfg.ipv6) {
        (SocketAddr::V6(_), Some(v6)) => SocketAddr::new(IpAddr::V6(v6.dns), 53),
        _ => SocketAddr::new(IpAddr::V4(ctx.cfg.dns), 53),
    }
}
