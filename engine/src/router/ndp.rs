//! IPv6 neighbour discovery and router advertisements, in usernet's own code.
//!
//! # Theory of operation
//! smoltcp's Ethernet medium would answer neighbour solicitations for *every* address
//! under any-IP (including a guest's own DAD target), so usernet owns this: a
//! Neighbour Solicitation is answered only for the gateway, the DNS address and our
//! link-local router address; a solicitation from `::` (duplicate address detection)
//! is never answered, and its target teaches us the guest's address. Router
//! Solicitations are answered at once; unsolicited advertisements go out when the
//! engine starts (so a guest configured with `--configure` gets its SLAAC address and
//! default route within a moment of tap0 coming up) and every [`RA_INTERVAL`]. An RA
//! carries the prefix (on-link, autonomous), the MTU, RDNSS (the DNS address) and
//! DNSSL (when a search list is configured), and sets M and O when DHCPv6 is on. All
//! NDP messages must arrive with hop limit 255 (RFC 4861 §7.1), else they are dropped.

use std::net::Ipv6Addr;
use std::time::Instant;

use super::{Ctx, TimerKey};
use crate::config::{GATEWAY_LINK_LOCAL, GATEWAY_MAC, Ipv6Config, RA_INTERVAL};
use crate::frames::ipv6_multicast_mac;
use crate::stats::DropReason;

const RS: u8 = 133;
const RA: u8 = 134;
const NS: u8 = 135;
const NA: u8 = 136;
/// Router lifetime advertised, seconds.
const ROUTER_LIFETIME: u16 = 1800;
/// Prefix valid and preferred lifetimes, seconds.
const PREFIX_LIFETIME: u32 = 86400;
/// RDNSS/DNSSL lifetime, seconds (more than 2 × RA_INTERVAL, as RFC 8106 advises).
const DNS_LIFETIME: u32 = 600;
/// All-nodes multicast.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// NDP and RA state.
#[derive(Default)]
pub struct Ndp {
    deadline: Option<Instant>,
    /// The guest's global address, learned from DAD and from its traffic.
    pub guest6: Option<Ipv6Addr>,
    search: Vec<String>,
}

impl Ndp {
    /// The responder for `v6`, advertising `search` in DNSSL.
    pub fn new(search: Vec<String>) -> Ndp {
        Ndp {
            search,
            ..Ndp::default()
        }
    }

    /// Send the first unsolicited RA and schedule the next.
    pub fn start(&mut self, ctx: &mut Ctx, now: Instant) {
        self.send_ra(ctx, ALL_NODES, ipv6_multicast_mac(ALL_NODES));
        ctx.timers
            .reschedule(TimerKey::Ra, &mut self.deadline, Some(now + RA_INTERVAL));
    }

    /// The periodic RA is due.
    pub fn timer(&mut self, ctx: &mut Ctx, now: Instant) {
        self.deadline = None;
        self.start(ctx, now);
    }

    /// An NDP message (ICMPv6 type 133-137, checksum verified). Returns `false` when it
    /// was dropped (the reason is counted).
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        ctx: &mut Ctx,
        v6: &Ipv6Config,
        src: Ipv6Addr,
        hop_limit: u8,
        msg: &[u8],
        src_mac: [u8; 6],
    ) {
        if hop_limit != 255 || msg.len() < 8 || msg[1] != 0 {
            ctx.drop(DropReason::NdpIgnored);
            return;
        }
        match msg[0] {
            RS => {
                if src.is_unspecified() {
                    self.send_ra(ctx, ALL_NODES, ipv6_multicast_mac(ALL_NODES));
                } else {
                    self.send_ra(ctx, src, src_mac);
                }
            }
            NS if msg.len() >= 24 => {
                let mut t = [0u8; 16];
                t.copy_from_slice(&msg[8..24]);
                let target = Ipv6Addr::from(t);
                if src.is_unspecified() {
                    // Duplicate address detection: never answer, but learn the address.
                    if v6.in_prefix(target) && !v6.is_ours(target) {
                        self.guest6 = Some(target);
                    }
                    ctx.drop(DropReason::NdpIgnored);
                    return;
                }
                if !v6.is_ours(target) {
                    ctx.drop(DropReason::NdpIgnored);
                    return;
                }
                let mut body = [0u8; 24];
                body[..16].copy_from_slice(&target.octets());
                body[16] = 2; // target link-layer address
                body[17] = 1;
                body[18..24].copy_from_slice(&GATEWAY_MAC);
                // Router, Solicited, Override.
                let hdr = [NA, 0, 0, 0, 0xe0, 0, 0, 0];
                if !ctx
                    .emit
                    .icmp6(&mut ctx.txq, src_mac, target, src, 255, hdr, &body)
                {
                    ctx.drop(DropReason::TxQueueFull);
                }
            }
            _ => ctx.drop(DropReason::NdpIgnored),
        }
    }

    fn send_ra(&mut self, ctx: &mut Ctx, dst: Ipv6Addr, dst_mac: [u8; 6]) {
        let Some(v6) = ctx.cfg.ipv6.clone() else {
            return;
        };
        let mut body: Vec<u8> = Vec::with_capacity(128);
        body.extend_from_slice(&[0u8; 8]); // reachable time, retrans timer: unspecified
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&GATEWAY_MAC);
        body.extend_from_slice(&[5, 1, 0, 0]);
        body.extend_from_slice(&ctx.cfg.mtu.to_be_bytes());
        body.extend_from_slice(&[3, 4, v6.prefix_len, 0xc0]);
        body.extend_from_slice(&PREFIX_LIFETIME.to_be_bytes());
        body.extend_from_slice(&PREFIX_LIFETIME.to_be_bytes());
        body.extend_from_slice(&[0u8; 4]);
        body.extend_from_slice(&v6.prefix.octets());
        if ctx.cfg.enable_dns {
            body.extend_from_slice(&[25, 3, 0, 0]);
            body.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
            body.extend_from_slice(&v6.dns.octets());
        }
        if !self.search.is_empty() {
            let mut names = Vec::new();
            for d in &self.search {
                for label in d
                    .trim_end_matches('.')
                    .split('.')
                    .filter(|l| !l.is_empty() && l.len() < 64)
                {
                    names.push(label.len() as u8);
                    names.extend_from_slice(label.as_bytes());
                }
                names.push(0);
            }
            while (8 + names.len()) % 8 != 0 {
                names.push(0);
            }
            let units = (8 + names.len()) / 8;
            if units < 256 {
                body.extend_from_slice(&[31, units as u8, 0, 0]);
                body.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
                body.extend_from_slice(&names);
            }
        }
        let flags = if v6.dhcpv6 { 0xc0 } else { 0 };
        let lt = ROUTER_LIFETIME.to_be_bytes();
        let hdr = [RA, 0, 0, 0, 64, flags, lt[0], lt[1]];
        if !ctx.emit.icmp6(
            &mut ctx.txq,
            dst_mac,
            GATEWAY_LINK_LOCAL,
            dst,
            255,
            hdr,
            &body,
        ) {
            ctx.drop(DropReason::TxQueueFull);
        }
    }
}
