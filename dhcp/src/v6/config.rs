//! DHCPv6 server configuration, its validation, and the values precomputed from it.

use std::collections::HashSet;
use std::net::Ipv6Addr;
use std::time::Duration;

use thiserror::Error;

use crate::config::{ConfigError, MAX_LEASE_SECS, MAX_POOL_SIZE, MIN_LEASE_TIME, encode_name};

/// Offset of the first default pool address from the prefix: `prefix::100`.
pub const DEFAULT_POOL_START6: u16 = 0x100;
/// Offset of the last default pool address from the prefix: `prefix::1ff`.
pub const DEFAULT_POOL_END6: u16 = 0x1ff;
/// Default preferred and valid lifetime: one day.
pub const DEFAULT_LIFETIME6: Duration = Duration::from_secs(24 * 60 * 60);

/// What the DHCPv6 server hands out. Validated by [`Server6::new`](crate::Server6::new).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server6Config {
    /// The guest prefix, e.g. `fd00::`. Host bits are ignored.
    pub prefix: Ipv6Addr,
    /// Its length, e.g. 64.
    pub prefix_len: u8,
    /// The MAC of the engine's interface: the server DUID is its DUID-LL (type 3).
    pub server_mac: [u8; 6],
    /// Recursive DNS servers (option 23, RFC 3646); empty means the option is not sent.
    pub dns_servers: Vec<Ipv6Addr>,
    /// Domain search list (option 24, RFC 3646); empty means the option is not sent.
    pub search: Vec<String>,
    /// Whether to hand out addresses (IA_NA). Without it only Information-Request gets
    /// a full answer; Solicit, Request, Renew and Rebind get status NoAddrsAvail.
    pub stateful: bool,
    /// First address of the pool, inclusive, inside the prefix.
    pub pool_start: Ipv6Addr,
    /// Last address of the pool, inclusive, inside the prefix.
    pub pool_end: Ipv6Addr,
    /// Addresses never handed out (gateway, DNS). The prefix's Subnet-Router anycast
    /// address (interface identifier zero) is never handed out whether listed or not.
    pub excluded: Vec<Ipv6Addr>,
    /// Preferred lifetime of an address; T1 is half of it and T2 0.8 of it.
    pub preferred_lifetime: Duration,
    /// Valid lifetime of an address: how long the server keeps the binding.
    pub valid_lifetime: Duration,
}

impl Server6Config {
    /// The usernet layout for `prefix/prefix_len`: DNS `prefix::3`, gateway
    /// `prefix::2`, both excluded; pool `prefix::100` to `prefix::1ff`; stateful;
    /// lifetimes one day; no search list.
    pub fn default_for(prefix: Ipv6Addr, prefix_len: u8, server_mac: [u8; 6]) -> Self {
        let net = u128::from(prefix) & mask(prefix_len);
        let at = |off: u16| Ipv6Addr::from(net | u128::from(off));
        Server6Config {
            prefix: Ipv6Addr::from(net),
            prefix_len,
            server_mac,
            dns_servers: vec![at(3)],
            search: Vec::new(),
            stateful: true,
            pool_start: at(DEFAULT_POOL_START6),
            pool_end: at(DEFAULT_POOL_END6),
            excluded: vec![at(2), at(3)],
            preferred_lifetime: DEFAULT_LIFETIME6,
            valid_lifetime: DEFAULT_LIFETIME6,
        }
    }
}

/// A configuration the DHCPv6 server refuses, with a sentence naming the bad value.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError6 {
    /// The prefix length leaves no room for a pool.
    #[error("DHCPv6 prefix length /{0} is not usable: expected 1 to 127")]
    PrefixLen(u8),
    /// The pool's first address is above its last.
    #[error("DHCPv6 range \"{start}-{end}\": the first address must not be above the last")]
    RangeReversed {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
    /// A pool bound is outside the prefix.
    #[error("DHCPv6 range \"{start}-{end}\": {addr} is not inside the prefix {prefix}")]
    RangeOutsidePrefix {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
        /// The offending bound.
        addr: Ipv6Addr,
        /// The prefix, as `addr/len`.
        prefix: String,
    },
    /// The pool is larger than [`MAX_POOL_SIZE`].
    #[error("DHCPv6 range \"{start}-{end}\" holds more than {max} addresses")]
    RangeTooLarge {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
        /// [`MAX_POOL_SIZE`].
        max: u32,
    },
    /// Every pool address is excluded.
    #[error(
        "DHCPv6 range \"{start}-{end}\" has no address left to hand out once the excluded addresses are removed"
    )]
    PoolEmpty {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
    /// A lifetime below [`MIN_LEASE_TIME`], above [`MAX_LEASE_SECS`], or a preferred
    /// lifetime longer than the valid one.
    #[error(
        "DHCPv6 lifetimes preferred {preferred} s, valid {valid} s: expected 60 to 4294967294 seconds each, preferred not above valid"
    )]
    Lifetime {
        /// Preferred lifetime in whole seconds.
        preferred: u64,
        /// Valid lifetime in whole seconds.
        valid: u64,
    },
    /// A search domain that is not a valid DNS name.
    #[error("DHCPv6 search domain \"{name}\" is not a valid DNS name: {reason}")]
    Name {
        /// The value given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

pub(crate) fn mask(prefix_len: u8) -> u128 {
    match prefix_len {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

/// The validated configuration, with option values pre-encoded.
#[derive(Debug)]
pub(crate) struct Prepared6 {
    pub cfg: Server6Config,
    pub network: u128,
    pub mask: u128,
    pub pool_start: u128,
    /// Pool size minus one: offsets run from 0 to this, inclusive.
    pub pool_last_offset: u32,
    pub excluded: HashSet<u128>,
    /// DUID-LL: type 3, hardware type 1 (Ethernet), the MAC.
    pub duid: [u8; 10],
    pub dns: Vec<u8>,
    pub search: Vec<u8>,
    pub preferred: u32,
    pub valid: u32,
    pub t1: u32,
    pub t2: u32,
}

impl Prepared6 {
    pub fn new(cfg: Server6Config) -> Result<Self, ConfigError6> {
        if !(1..=127).contains(&cfg.prefix_len) {
            return Err(ConfigError6::PrefixLen(cfg.prefix_len));
        }
        let mask = mask(cfg.prefix_len);
        let network = u128::from(cfg.prefix) & mask;
        let (start, end) = (u128::from(cfg.pool_start), u128::from(cfg.pool_end));
        if start > end {
            return Err(ConfigError6::RangeReversed {
                start: cfg.pool_start,
                end: cfg.pool_end,
            });
        }
        for bound in [start, end] {
            if bound & mask != network {
                return Err(ConfigError6::RangeOutsidePrefix {
                    start: cfg.pool_start,
                    end: cfg.pool_end,
                    addr: Ipv6Addr::from(bound),
                    prefix: format!("{}/{}", Ipv6Addr::from(network), cfg.prefix_len),
                });
            }
        }
        let Some(last) = u32::try_from(end - start)
            .ok()
            .filter(|&l| l < MAX_POOL_SIZE)
        else {
            return Err(ConfigError6::RangeTooLarge {
                start: cfg.pool_start,
                end: cfg.pool_end,
                max: MAX_POOL_SIZE,
            });
        };
        let mut excluded: HashSet<u128> = cfg.excluded.iter().map(|&a| u128::from(a)).collect();
        excluded.insert(network);
        if (start..=end).all(|a| excluded.contains(&a)) {
            return Err(ConfigError6::PoolEmpty {
                start: cfg.pool_start,
                end: cfg.pool_end,
            });
        }
        let (preferred, valid) = (
            cfg.preferred_lifetime.as_secs(),
            cfg.valid_lifetime.as_secs(),
        );
        let in_range = |d: Duration, s: u64| d >= MIN_LEASE_TIME && s <= MAX_LEASE_SECS;
        if !in_range(cfg.preferred_lifetime, preferred)
            || !in_range(cfg.valid_lifetime, valid)
            || preferred > valid
        {
            return Err(ConfigError6::Lifetime { preferred, valid });
        }
        let mut search = Vec::new();
        for name in &cfg.search {
            encode_name("search domain", name, &mut search).map_err(|e| match e {
                ConfigError::Name { name, reason, .. } => ConfigError6::Name { name, reason },
                _ => ConfigError6::Name {
                    name: name.clone(),
                    reason: "it cannot be encoded",
                },
            })?;
        }
        let m = cfg.server_mac;
        let duid = [0, 3, 0, 1, m[0], m[1], m[2], m[3], m[4], m[5]];
        // Checked against MAX_LEASE_SECS above, so these always fit.
        let preferred = u32::try_from(preferred).unwrap_or(u32::MAX - 1);
        let valid = u32::try_from(valid).unwrap_or(u32::MAX - 1);
        let t1 = preferred / 2;
        let t2 = u32::try_from(u64::from(preferred) * 4 / 5).unwrap_or(preferred);
        Ok(Prepared6 {
            network,
            mask,
            pool_start: start,
            pool_last_offset: last,
            excluded,
            duid,
            dns: cfg.dns_servers.iter().flat_map(|a| a.octets()).collect(),
            search,
            preferred,
            valid,
            t1,
            t2,
            cfg,
        })
    }

    /// The pool offset of `addr`, if it is in the pool.
    pub fn offset(&self, addr: Ipv6Addr) -> Option<u32> {
        let off = u128::from(addr).checked_sub(self.pool_start)?;
        u32::try_from(off)
            .ok()
            .filter(|&o| o <= self.pool_last_offset)
    }

    /// The address at pool offset `off`.
    pub fn addr(&self, off: u32) -> Ipv6Addr {
        Ipv6Addr::from(self.pool_start.wrapping_add(u128::from(off)))
    }

    /// Whether `addr` is inside the prefix (on-link, for Confirm).
    pub fn on_link(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask == self.network
    }

    /// The offsets that may be handed out.
    pub fn pool(&self) -> impl Iterator<Item = u32> + '_ {
        (0..=self.pool_last_offset).filter(|&o| {
            !self
                .excluded
                .contains(&self.pool_start.wrapping_add(u128::from(o)))
        })
    }
}
