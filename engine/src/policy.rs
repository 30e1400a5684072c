//! The flow policy: per-guest isolation from the host and the IP filter rules, asked
//! once per new flow (a TCP SYN, a UDP datagram to a destination its mapping has not
//! sent to, an ICMP echo, a DNS query), never per frame of an established flow.
//!
//! The rules themselves are the sans-IO [`usernet_portfwd::filter`]: ordered, first
//! match wins, a guest's own rules before the network's, then the default. This module
//! keeps them with their hit counters, and the *origin* of the frame being handled (the
//! network port it came from and that port's flags), which a network sets before
//! handing each frame to the router (an O(1) copy). Single-guest modes have one origin.

use std::collections::HashMap;
use std::net::SocketAddr;

use usernet_portfwd::filter::{self, Action, FilterProto, FilterRule, Flow, Matched};

/// Most ports with rules of their own.
pub const MAX_GUEST_RULESETS: usize = 256;

/// Where the frame being handled came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The network port (0 outside networks).
    pub port: usize,
    /// The port may not reach the host (`--block-host`).
    pub block_host: bool,
    /// The port may start no flow at all (`--restrict`).
    pub restrict: bool,
}

/// Why a new flow was refused by policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The guest is restricted: nothing but what is forwarded in.
    Restricted,
    /// The guest may not reach the host.
    HostBlocked,
    /// A filter rule (or the default policy) said deny.
    Filtered(Matched),
}

/// Rules and their hit counters.
#[derive(Clone, Debug, Default)]
pub struct RuleList {
    /// The rules, in order.
    pub rules: Vec<FilterRule>,
    /// Flows each rule decided.
    pub hits: Vec<u64>,
}

impl RuleList {
    /// A list of `rules` with zeroed counters.
    pub fn new(rules: Vec<FilterRule>) -> RuleList {
        let hits = vec![0; rules.len()];
        RuleList { rules, hits }
    }
}

/// The whole flow policy of one router.
#[derive(Clone, Debug)]
pub struct FlowPolicy {
    /// The frame being handled came from here.
    pub origin: Origin,
    /// The network's rules.
    pub network: RuleList,
    /// Per-port rules (a network's guests).
    pub guests: HashMap<usize, RuleList>,
    /// What happens when no rule matches.
    pub default: Action,
    /// Flows the default decided.
    pub default_hits: u64,
    /// Flows refused: restricted, host blocked, filtered.
    pub denied: [u64; 3],
    /// Bumped on every change, so caches of verdicts (UDP mappings) notice.
    pub epoch: u64,
}

impl Default for FlowPolicy {
    fn default() -> Self {
        FlowPolicy {
            origin: Origin::default(),
            network: RuleList::default(),
            guests: HashMap::new(),
            default: Action::Allow,
            default_hits: 0,
            denied: [0; 3],
            epoch: 1,
        }
    }
}

impl FlowPolicy {
    /// A policy of `rules` and `default`.
    pub fn new(rules: Vec<FilterRule>, default: Action) -> FlowPolicy {
        FlowPolicy {
            network: RuleList::new(rules),
            default,
            ..FlowPolicy::default()
        }
    }

    /// Whether anything can ever be refused (so the data path may skip asking).
    pub fn is_open(&self) -> bool {
        self.network.rules.is_empty()
            && self.guests.is_empty()
            && self.default == Action::Allow
            && !self.origin.block_host
            && !self.origin.restrict
    }

    /// Ask about a new flow of `proto` to `dst` (as the guest addressed it);
    /// `to_host` when it would reach the host's loopback through the gateway.
    pub fn check(
        &mut self,
        proto: FilterProto,
        dst: SocketAddr,
        to_host: bool,
    ) -> Result<(), Denial> {
        let o = self.origin;
        if o.restrict {
            self.denied[0] += 1;
            return Err(Denial::Restricted);
        }
        if o.block_host && to_host {
            self.denied[1] += 1;
            return Err(Denial::HostBlocked);
        }
        if self.network.rules.is_empty() && self.guests.is_empty() && self.default == Action::Allow
        {
            return Ok(());
        }
        let flow = Flow {
            proto,
            dst: dst.ip(),
            dst_port: dst.port(),
        };
        let empty = RuleList::default();
        let guest = self.guests.get(&o.port).unwrap_or(&empty);
        let v = filter::decide(&guest.rules, &self.network.rules, self.default, &flow);
        match v.matched {
            Matched::Guest(i) => {
                if let Some(h) = self.guests.get_mut(&o.port).and_then(|g| g.hits.get_mut(i)) {
                    *h += 1;
                }
            }
            Matched::Network(i) => {
                if let Some(h) = self.network.hits.get_mut(i) {
                    *h += 1;
                }
            }
            Matched::Default => self.default_hits += 1,
        }
        match v.action {
            Action::Allow => Ok(()),
            Action::Deny => {
                self.denied[2] += 1;
                Err(Denial::Filtered(v.matched))
            }
        }
    }

    /// Replace the network's rules (and the default, when given).
    pub fn set_network(&mut self, rules: Vec<FilterRule>, default: Option<Action>) {
        self.network = RuleList::new(rules);
        if let Some(d) = default {
            self.default = d;
        }
        self.epoch += 1;
    }

    /// Replace port `port`'s own rules (none: remove them).
    pub fn set_guest(&mut self, port: usize, rules: Vec<FilterRule>) -> bool {
        if rules.is_empty() {
            self.guests.remove(&port);
        } else {
            if !self.guests.contains_key(&port) && self.guests.len() >= MAX_GUEST_RULESETS {
                return false;
            }
            self.guests.insert(port, RuleList::new(rules));
        }
        self.epoch += 1;
        true
    }

    /// The rules, counters and default as the API shows them.
    pub fn to_json(&self) -> serde_json::Value {
        let list = |l: &RuleList| -> Vec<serde_json::Value> {
            l.rules
                .iter()
                .zip(&l.hits)
                .map(|(r, h)| serde_json::json!({ "rule": r.to_string(), "hits": h }))
                .collect()
        };
        let mut guests: Vec<_> = self.guests.iter().collect();
        guests.sort_by_key(|(p, _)| **p);
        serde_json::json!({
            "default": self.default.to_string(),
            "default_hits": self.default_hits,
            "network": list(&self.network),
            "guests": guests.iter().map(|(p, l)| serde_json::json!({ "port": p, "rules": list(l) })).collect::<Vec<_>>(),
            "denied": {
                "restricted": self.denied[0],
                "host_blocked": self.denied[1],
                "filtered": self.denied[2],
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usernet_portfwd::filter::parse_filter;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origin_flags_come_first_then_rules_then_default() {
        let mut p = FlowPolicy::new(
            vec![
                parse_filter("deny:tcp:198.51.100.1/32:25").unwrap(),
                parse_filter("deny:any:169.254.169.254/32").unwrap(),
            ],
            Action::Allow,
        );
        type Case = (Origin, FilterProto, &'static str, bool, Result<(), Denial>);
        let cases: &[Case] = &[
            (
                Origin::default(),
                FilterProto::Tcp,
                "198.51.100.1:80",
                false,
                Ok(()),
            ),
            (
                Origin::default(),
                FilterProto::Tcp,
                "198.51.100.1:25",
                false,
                Err(Denial::Filtered(Matched::Network(0))),
            ),
            (
                Origin::default(),
                FilterProto::Udp,
                "169.254.169.254:80",
                false,
                Err(Denial::Filtered(Matched::Network(1))),
            ),
            (
                Origin::default(),
                FilterProto::Tcp,
                "10.0.2.2:22",
                true,
                Ok(()),
            ),
            (
                Origin {
                    port: 3,
                    block_host: true,
                    restrict: false,
                },
                FilterProto::Tcp,
                "10.0.2.2:22",
                true,
                Err(Denial::HostBlocked),
            ),
            (
                Origin {
                    port: 3,
                    block_host: true,
                    restrict: false,
                },
                FilterProto::Tcp,
                "198.51.100.1:80",
                false,
                Ok(()),
            ),
            (
                Origin {
                    port: 4,
                    block_host: false,
                    restrict: true,
                },
                FilterProto::Udp,
                "10.0.2.3:53",
                false,
                Err(Denial::Restricted),
            ),
        ];
        for (o, proto, dst, to_host, want) in cases {
            p.origin = *o;
            assert_eq!(p.check(*proto, sa(dst), *to_host), *want, "{o:?} {dst}");
        }
        assert_eq!(p.network.hits, [1, 1]);
        assert_eq!(p.denied, [1, 1, 2]);
    }

    #[test]
    fn a_guest_rule_wins_over_the_network_and_deny_by_default() {
        let mut p = FlowPolicy::new(
            vec![parse_filter("allow:tcp:198.51.100.1/32:80").unwrap()],
            Action::Deny,
        );
        assert!(p.set_guest(
            7,
            vec![parse_filter("deny:tcp:198.51.100.1/32:80").unwrap()]
        ));
        p.origin.port = 7;
        assert!(
            p.check(FilterProto::Tcp, sa("198.51.100.1:80"), false)
                .is_err()
        );
        p.origin.port = 8;
        assert!(
            p.check(FilterProto::Tcp, sa("198.51.100.1:80"), false)
                .is_ok()
        );
        assert_eq!(
            p.check(FilterProto::Tcp, sa("198.51.100.1:81"), false),
            Err(Denial::Filtered(Matched::Default))
        );
        assert_eq!(p.default_hits, 1);
        let before = p.epoch;
        p.set_network(Vec::new(), Some(Action::Allow));
        assert!(p.epoch > before);
        assert!(
            p.check(FilterProto::Tcp, sa("198.51.100.1:81"), false)
                .is_ok()
        );
        let j = p.to_json();
        assert_eq!(j["guests"][0]["port"], 7);
        assert_eq!(j["guests"][0]["rules"][0]["hits"], 1);
    }
}
