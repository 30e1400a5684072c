//! Server configuration, its validation, and the option values precomputed from it.
//!
//! Everything a reply carries that does not depend on the client (mask, DNS list,
//! RFC 1035-encoded search list, RFC 3442 routes) is encoded once in
//! [`Server::new`](crate::Server::new), so building a reply copies bytes and allocates
//! nothing.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use thiserror::Error;

use crate::fmt_mac;

/// The largest pool we manage, in addresses. The lease table, the free set and the
/// "last address of this client" memory are each bounded by the pool size, so this
/// bounds the memory a guest can make us hold: a /16's worth, a few MiB, or a few tens
/// of MiB if every client sends a 255-byte client identifier.
pub const MAX_POOL_SIZE: u32 = 1 << 16;

/// The shortest lease we hand out. Shorter leases make clients renew continuously;
/// dnsmasq has the same floor (RFC 2131 sets none).
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(60);

/// The longest lease, in seconds: option 51 is 32 bits and `0xffff_ffff` means
/// "infinite", which we never claim.
pub const MAX_LEASE_SECS: u64 = 0xffff_fffe;

/// The default lease: one day, as dnsmasq and slirp's successors use.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Offset of the first pool address from the network address in
/// [`ServerConfig::slirp_default`]: slirp and slirp4netns hand out `network + 15` first.
pub const SLIRP_POOL_OFFSET: u32 = 15;

/// Offset of the address slirp4netns `--configure` gives the guest statically; kept
/// out of the default pool so a DHCP guest never collides with it.
pub const SLIRP_STATIC_GUEST_OFFSET: u32 = 100;

/// What the DHCP server hands out. Validated by [`Server::new`](crate::Server::new).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The gateway address: our server identifier (option 54) and the router (option 3).
    pub server_addr: Ipv4Addr,
    /// Prefix length of the guest subnet, e.g. 24; gives the subnet mask (option 1).
    pub prefix_len: u8,
    /// DNS servers (option 6); empty means the option is not sent.
    pub dns_servers: Vec<Ipv4Addr>,
    /// First address of the dynamic pool, inclusive.
    pub pool_start: Ipv4Addr,
    /// Last address of the dynamic pool, inclusive.
    pub pool_end: Ipv4Addr,
    /// Addresses never handed out (gateway, DNS, the slirp4netns static guest address).
    /// The server's own address and the subnet's network and broadcast addresses are
    /// never handed out whether listed or not.
    pub excluded: Vec<Ipv4Addr>,
    /// Lease duration (option 51); renewal (58) is half of it and rebinding (59) 7/8.
    pub lease_time: Duration,
    /// Interface MTU (option 26), when set.
    pub mtu: Option<u16>,
    /// Host name given to the guest (option 12), when set.
    pub hostname: Option<String>,
    /// Domain name (option 15), when set.
    pub domain_name: Option<String>,
    /// Domain search list (option 119, RFC 3397); empty means not sent.
    pub search: Vec<String>,
    /// Classless static routes (option 121, RFC 3442) as (destination, prefix length,
    /// router); empty means not sent. Clients that accept option 121 ignore option 3
    /// (RFC 3442 §1), so include `(0.0.0.0, 0, server_addr)` when a default route is
    /// wanted alongside other routes.
    pub classless_routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// Static leases: this MAC always gets this address, and no one else does.
    pub reservations: Vec<([u8; 6], Ipv4Addr)>,
    /// Send the server's address as the router (option 3). Off on networks that route
    /// nowhere (usernet's internal networks): clients then install no default route.
    pub advertise_router: bool,
}

impl ServerConfig {
    /// The slirp/slirp4netns layout for `network/prefix_len`: gateway `.2`, DNS `.3`,
    /// pool from `network + 15` up to the last address before broadcast (at most
    /// [`MAX_POOL_SIZE`] addresses; from `network + 4` on subnets too small for `+15`),
    /// with gateway, DNS and `network + 100` (the `--configure` static guest address)
    /// excluded. Lease time one day; no MTU, names, search list, routes or reservations.
    /// Host bits of `network` are ignored.
    pub fn slirp_default(network: Ipv4Addr, prefix_len: u8) -> Self {
        let mask = mask_u32(prefix_len);
        let net = u32::from(network) & mask;
        let broadcast = net | !mask;
        let last = broadcast.saturating_sub(1);
        let start = if net.saturating_add(SLIRP_POOL_OFFSET) <= last {
            net + SLIRP_POOL_OFFSET
        } else {
            net.saturating_add(4)
        };
        let end = last.min(start.saturating_add(MAX_POOL_SIZE - 1));
        let at = |off: u32| Ipv4Addr::from(net.wrapping_add(off));
        ServerConfig {
            server_addr: at(2),
            prefix_len,
            dns_servers: vec![at(3)],
            pool_start: Ipv4Addr::from(start),
            pool_end: Ipv4Addr::from(end),
            excluded: vec![at(2), at(3), at(SLIRP_STATIC_GUEST_OFFSET)],
            lease_time: DEFAULT_LEASE_TIME,
            mtu: None,
            hostname: None,
            domain_name: None,
            search: Vec::new(),
            classless_routes: Vec::new(),
            reservations: Vec::new(),
            advertise_router: true,
        }
    }
}

/// A configuration the server refuses, with a sentence naming the bad value.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The prefix length leaves no room for a gateway and a guest.
    #[error("DHCP prefix length /{0} is not usable: expected 1 to 30")]
    PrefixLen(u8),
    /// The server address is the network or broadcast address of its own subnet.
    #[error("DHCP server address {addr} is the network or broadcast address of {subnet}")]
    ServerAddr {
        /// The server address.
        addr: Ipv4Addr,
        /// The subnet, as `a.b.c.d/len`.
        subnet: String,
    },
    /// The pool's first address is above its last.
    #[error("DHCP range \"{start}-{end}\": the first address must not be above the last")]
    RangeReversed {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
    },
    /// A pool bound is outside the subnet or is its network/broadcast address.
    #[error("DHCP range \"{start}-{end}\": {addr} is not a host address of the subnet {subnet}")]
    RangeOutsideSubnet {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
        /// The offending bound.
        addr: Ipv4Addr,
        /// The subnet, as `a.b.c.d/len`.
        subnet: String,
    },
    /// The pool is larger than [`MAX_POOL_SIZE`].
    #[error("DHCP range \"{start}-{end}\" holds {size} addresses: at most {max} are supported")]
    RangeTooLarge {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
        /// Number of addresses in the range.
        size: u64,
        /// [`MAX_POOL_SIZE`].
        max: u32,
    },
    /// Every pool address is excluded or special, and there is no reservation.
    #[error(
        "DHCP range \"{start}-{end}\" has no address left to hand out once the gateway, DNS and excluded addresses are removed"
    )]
    PoolEmpty {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
    },
    /// Lease time below [`MIN_LEASE_TIME`] or above [`MAX_LEASE_SECS`].
    #[error("DHCP lease time {secs} s is out of range: expected 60 to 4294967294 seconds")]
    LeaseTime {
        /// The lease time in whole seconds.
        secs: u64,
    },
    /// MTU below the IPv4 minimum of 68 (RFC 791).
    #[error("DHCP MTU {0} is too small: expected at least 68")]
    Mtu(u16),
    /// A host name, domain name or search domain that is not a valid DNS name.
    #[error("DHCP {what} \"{name}\" is not a valid DNS name: {reason}")]
    Name {
        /// Which setting: "host name", "domain name" or "search domain".
        what: &'static str,
        /// The value given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A classless static route with a bad prefix or host bits set.
    #[error("DHCP classless route {dest}/{prefix} via {router}: {reason}")]
    Route {
        /// Destination network.
        dest: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// Next hop.
        router: Ipv4Addr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reservation whose address cannot be handed out.
    #[error("DHCP host \"{mac},{addr}\": {reason}")]
    Reservation {
        /// The MAC address, formatted.
        mac: String,
        /// The reserved address.
        addr: Ipv4Addr,
        /// What is wrong with it.
        reason: &'static str,
    },
}

pub(crate) fn mask_u32(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// The validated configuration, with option values pre-encoded.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub cfg: ServerConfig,
    pub network: u32,
    pub broadcast: u32,
    pub mask: [u8; 4],
    pub lease_secs: u32,
    pub excluded: HashSet<u32>,
    pub dns: Vec<u8>,
    pub search: Vec<u8>,
    pub routes: Vec<u8>,
}

impl Prepared {
    /// Whether `addr` is a host address of our subnet other than the server's own.
    pub fn is_host_addr(&self, addr: u32) -> bool {
        addr > self.network && addr < self.broadcast && addr != u32::from(self.cfg.server_addr)
    }

    pub fn new(cfg: ServerConfig) -> Result<Self, ConfigError> {
        if !(1..=30).contains(&cfg.prefix_len) {
            return Err(ConfigError::PrefixLen(cfg.prefix_len));
        }
        let mask = mask_u32(cfg.prefix_len);
        let server = u32::from(cfg.server_addr);
        let network = server & mask;
        let broadcast = network | !mask;
        let subnet = || format!("{}/{}", Ipv4Addr::from(network), cfg.prefix_len);
        if server == network || server == broadcast {
            return Err(ConfigError::ServerAddr {
                addr: cfg.server_addr,
                subnet: subnet(),
            });
        }
        let (start, end) = (u32::from(cfg.pool_start), u32::from(cfg.pool_end));
        if start > end {
            return Err(ConfigError::RangeReversed {
                start: cfg.pool_start,
                end: cfg.pool_end,
            });
        }
        for bound in [start, end] {
            if bound & mask != network || bound == network || bound == broadcast {
                return Err(ConfigError::RangeOutsideSubnet {
                    start: cfg.pool_start,
                    end: cfg.pool_end,
                    addr: Ipv4Addr::from(bound),
                    subnet: subnet(),
                });
            }
        }
        let size = u64::from(end - start) + 1;
        if size > u64::from(MAX_POOL_SIZE) {
            return Err(ConfigError::RangeTooLarge {
                start: cfg.pool_start,
                end: cfg.pool_end,
                size,
                max: MAX_POOL_SIZE,
            });
        }
        let secs = cfg.lease_time.as_secs();
        if cfg.lease_time < MIN_LEASE_TIME || secs > MAX_LEASE_SECS {
            return Err(ConfigError::LeaseTime { secs });
        }
        if let Some(mtu) = cfg.mtu.filter(|&m| m < 68) {
            return Err(ConfigError::Mtu(mtu));
        }
        if let Some(name) = &cfg.hostname {
            encode_name("host name", name, &mut Vec::new())?;
        }
        if let Some(name) = &cfg.domain_name {
            encode_name("domain name", name, &mut Vec::new())?;
        }
        let mut search = Vec::new();
        for name in &cfg.search {
            encode_name("search domain", name, &mut search)?;
        }
        let mut routes = Vec::new();
        for &(dest, prefix, router) in &cfg.classless_routes {
            encode_route(dest, prefix, router, &mut routes)?;
        }
        let excluded: HashSet<u32> = cfg.excluded.iter().map(|&a| u32::from(a)).collect();
        let mut macs = HashSet::new();
        let mut addrs = HashSet::new();
        for &(mac, addr) in &cfg.reservations {
            let a = u32::from(addr);
            let reason = if a & mask != network || a == network || a == broadcast {
                Some("the address is not a host address of the DHCP subnet")
            } else if a == server {
                Some("the address is the gateway's own")
            } else if excluded.contains(&a) {
                Some("the address is excluded from DHCP")
            } else if !macs.insert(mac) {
                Some("this MAC address already has a reservation")
            } else if !addrs.insert(a) {
                Some("this address is already reserved for another MAC address")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ConfigError::Reservation {
                    mac: fmt_mac(mac),
                    addr,
                    reason,
                });
            }
        }
        let usable = (start..=end)
            .any(|a| a != server && a != network && a != broadcast && !excluded.contains(&a));
        if !usable && cfg.reservations.is_empty() {
            return Err(ConfigError::PoolEmpty {
                start: cfg.pool_start,
                end: cfg.pool_end,
            });
        }
        let dns = cfg.dns_servers.iter().flat_map(|a| a.octets()).collect();
        Ok(Prepared {
            network,
            broadcast,
            mask: mask.to_be_bytes(),
            // Checked against MAX_LEASE_SECS above, so this always fits.
            lease_secs: u32::try_from(secs).unwrap_or(u32::MAX - 1),
            excluded,
            dns,
            search,
            routes,
            cfg,
        })
    }
}

/// Appends `name` in RFC 1035 §3.1 wire form (length-prefixed labels, a zero byte
/// at the end, no compression: RFC 3397 allows but does not require it).
pub(crate) fn encode_name(
    what: &'static str,
    name: &str,
    out: &mut Vec<u8>,
) -> Result<(), ConfigError> {
    let err = |reason| ConfigError::Name {
        what,
        name: name.to_owned(),
        reason,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = 1;
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(err("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(err("a label is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                "expected only letters, digits, '-' and '_' between dots",
            ));
        }
        total += 1 + label.len();
    }
    if total > 255 {
        return Err(err("it is longer than 255 bytes in wire form"));
    }
    for label in trimmed.split('.') {
        // Checked above: 1 to 63 bytes.
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Appends one RFC 3442 route: prefix length, the significant octets of the
/// destination, then the router.
fn encode_route(
    dest: Ipv4Addr,
    prefix: u8,
    router: Ipv4Addr,
    out: &mut Vec<u8>,
) -> Result<(), ConfigError> {
    let err = |reason| ConfigError::Route {
        dest,
        prefix,
        router,
        reason,
    };
    if prefix > 32 {
        return Err(err("the prefix length must be 0 to 32"));
    }
    if u32::from(dest) & !mask_u32(prefix) != 0 {
        return Err(err("the destination has bits set beyond the prefix length"));
    }
    out.push(prefix);
    let significant = usize::from(prefix).div_ceil(8);
    out.extend_from_slice(&dest.octets()[..significant]);
    out.extend_from_slice(&router.octets());
    Ok(())
}
