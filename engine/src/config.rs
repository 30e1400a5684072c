//! The engine's configuration: the virtual network, its services, and every cap.
//!
//! Built from the command line by `cli`, validated there; the data path only reads it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Our MAC address toward the guest (gateway and DNS share it), as libslirp's 52:55:0a:00:02:02.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Default MTU, as slirp4netns.
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest MTU accepted (IPv4 minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted, as slirp4netns (65521 = 65535 minus Ethernet header and the stream prefix).
pub const MAX_MTU: u32 = 65521;

/// Caps on every table the guest can grow. Each is a bound on memory or file descriptors.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Guest TCP flows at once (each holds two buffers of `tcp_buffer` bytes and one host fd).
    pub max_tcp_flows: usize,
    /// TCP flows waiting for the host's `connect()`. When full, new SYNs are dropped
    /// without reply and the guest's retransmission retries them: a burst is delayed, never refused.
    pub max_half_open: usize,
    /// Bytes of each smoltcp ring (receive and transmit) per TCP flow. 1 MiB measured
    /// faster than 256 KiB on host→guest at MTU 65520 (13-14.5 against 9.6 Gbit/s in
    /// the same minutes); pages are faulted in only as data is buffered.
    pub tcp_buffer: usize,
    /// UDP mappings (one host socket each); when full the least recently used is evicted.
    pub max_udp_mappings: usize,
    /// ICMP echo mappings.
    pub max_icmp_mappings: usize,
    /// IPv4 datagrams in reassembly at once; when full the oldest is evicted.
    pub max_reassembly: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_flows: 16384,
            max_half_open: 1024,
            tcp_buffer: 1024 * 1024,
            max_udp_mappings: 4096,
            max_icmp_mappings: 1024,
            max_reassembly: 64,
        }
    }
}

/// How long a guest TCP connection may take to be accepted by the host before the guest gets a reset.
/// On a network of several guests the NAT's tables (TCP flows, half-open connects, UDP
/// and ICMP echo mappings) are shared so that a guest that floods cannot starve the
/// others: every guest may hold 1/`GUEST_MIN_DIV` of a table whatever the others do
/// (its guaranteed part); beyond that, it gets more only while the table is less than
/// (1 - 1/`GUEST_RESERVE_DIV`) full, so the last quarter stays for the guests still
/// within their guaranteed part. A guest alone may use three quarters of each table.
pub const GUEST_MIN_DIV: usize = 16;
/// See [`GUEST_MIN_DIV`].
pub const GUEST_RESERVE_DIV: usize = 4;

/// Whether a network guest holding `held` entries of a table of `cap` entries, of which
/// `total` are taken, is refused another (see [`GUEST_MIN_DIV`]).
pub fn over_share(held: usize, total: usize, cap: usize) -> bool {
    held >= (cap / GUEST_MIN_DIV).max(1) && total >= cap - cap / GUEST_RESERVE_DIV
}
/// Time a guest TCP connect may stay in progress.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(75);
/// Idle time after which an established TCP flow with no traffic either way is reset (as libslirp/passt: 2 h).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(7200);
/// Idle time after which a UDP mapping is closed (passt `UDP_CONN_TIMEOUT`).
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Idle time after which an ICMP echo mapping is closed (passt `ICMP_ECHO_TIMEOUT`).
pub const ICMP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a datagram may spend in reassembly (Linux `ipfrag_time`).
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames read from the guest port per event-loop turn before other sources get their turn.
pub const PORT_RX_BATCH: usize = 256;
/// Bytes the queue of frames toward the guest may hold (with a floor of [`TX_QUEUE_MIN_FRAMES`] frames).
pub const TX_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Minimum frames in the queue toward the guest, whatever the MTU.
pub const TX_QUEUE_MIN_FRAMES: usize = 64;

/// Our IPv6 link-local address (the RA source and the guest's default router):
/// the modified EUI-64 of [`GATEWAY_MAC`].
pub const GATEWAY_LINK_LOCAL: Ipv6Addr =
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5055, 0x0aff, 0xfe00, 0x0202);
/// Guests with an MTU up to this get TCP segmentation offload toward them: the TAP is
/// opened with virtio-net headers and smoltcp sends segments of up to 64 KiB, which the
/// guest's kernel takes as one GSO packet (above it, segments are large already).
pub const TSO_MAX_GUEST_MTU: u32 = 16384;
/// The IP MTU smoltcp uses toward a guest with TSO.
pub const TSO_MTU: usize = 65535;

/// Interval between unsolicited router advertisements.
pub const RA_INTERVAL: Duration = Duration::from_secs(60);

/// The IPv6 side of the virtual network (`--enable-ipv6`).
#[derive(Clone, Debug)]
pub struct Ipv6Config {
    /// The prefix (fd00::).
    pub prefix: Ipv6Addr,
    /// Its length (64: SLAAC needs it).
    pub prefix_len: u8,
    /// Gateway, and the host's alias (prefix::2); ::1 on the host.
    pub gateway: Ipv6Addr,
    /// DNS relay address (prefix::3).
    pub dns: Ipv6Addr,
    /// Serve DHCPv6 (stateless and stateful).
    pub dhcpv6: bool,
}

impl Ipv6Config {
    /// The slirp4netns layout for `prefix/prefix_len`.
    pub fn new(prefix: Ipv6Addr, prefix_len: u8) -> Ipv6Config {
        let base = u128::from(prefix);
        Ipv6Config {
            prefix,
            prefix_len,
            gateway: Ipv6Addr::from(base + 2),
            dns: Ipv6Addr::from(base + 3),
            dhcpv6: true,
        }
    }

    /// Whether `a` lies in the prefix.
    pub fn in_prefix(&self, a: Ipv6Addr) -> bool {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix_len))
        };
        u128::from(a) & mask == u128::from(self.prefix)
    }

    /// Whether `a` is one of our own addresses (gateway, DNS, link-local).
    pub fn is_ours(&self, a: Ipv6Addr) -> bool {
        a == self.gateway || a == self.dns || a == GATEWAY_LINK_LOCAL
    }
}

/// The whole configuration of one engine.
#[derive(Clone, Debug)]
pub struct Config {
    /// Network address of the virtual IPv4 network (10.0.2.0).
    pub network: Ipv4Addr,
    /// Its prefix length (24).
    pub prefix_len: u8,
    /// Gateway, and the host's alias (network + 2).
    pub gateway: Ipv4Addr,
    /// DNS relay address (network + 3).
    pub dns: Ipv4Addr,
    /// The guest's configured address (network + 100), used with `--configure` and as the default forward target.
    pub guest: Ipv4Addr,
    /// IP MTU of the guest link.
    pub mtu: u32,
    /// Refuse every guest flow to the host's loopback.
    pub disable_host_loopback: bool,
    /// Guest flows may leave through host sockets at all. Off, every TCP/UDP/ICMP flow
    /// to the host or beyond is refused (the building block of internal networks, and
    /// what the frame-pipeline fuzz target runs with so that it never opens a socket).
    pub outbound: bool,
    /// Host-only network: guest flows may reach the host's loopback (through the
    /// gateway address) and the DNS relay, nothing beyond the host.
    pub host_only: bool,
    /// Internal network: the router answers ARP for its address and serves DHCP (when
    /// on), and drops everything else; nothing is routed, not even to itself.
    pub internal: bool,
    /// Answer DNS on `dns`.
    pub enable_dns: bool,
    /// Source address for outbound IPv4 sockets.
    pub outbound_addr: Option<Ipv4Addr>,
    /// Source address for outbound IPv6 sockets.
    pub outbound_addr6: Option<IpAddr>,
    /// IPv6, when enabled.
    pub ipv6: Option<Ipv6Config>,
    /// Verify checksums of guest frames (IPv4 header, TCP, UDP, ICMP).
    pub verify_checksums: bool,
    /// Table caps.
    pub limits: Limits,
    /// DNS relay options.
    pub dns_options: crate::router::dns::DnsOptions,
    /// The port takes TCP segments up to [`TSO_MTU`] (a TAP with virtio-net headers):
    /// smoltcp sends 64 KiB segments and the guest's MSS is raised to match.
    pub tso: bool,
    /// The port completes TCP checksums toward the guest (a TAP with virtio-net headers,
    /// [`crate::port::offload_header`]): smoltcp leaves them out, and the guest's kernel
    /// takes the segments as checksum-offloaded, so neither side reads the data for it.
    pub csum_offload: bool,
    /// The guest interface was configured by usernet (`--configure`, `usernet run`).
    pub configured: bool,
    /// IP filter rules for guests' new flows (`--filter`), first match wins.
    pub filters: Vec<usernet_portfwd::filter::FilterRule>,
    /// What happens to a flow no rule matches (`--filter-default`).
    pub filter_default: usernet_portfwd::filter::Action,
    /// The DHCP server's configuration; `None` turns it off.
    pub dhcp: Option<usernet_dhcp::ServerConfig>,
    /// Send every flow that would leave through a host socket to this port of the
    /// host's loopback (127.0.0.1 or ::1 by the flow's family) instead of its
    /// destination. Only the frame-pipeline fuzz target sets it, so that guest flows
    /// to anywhere reach sockets the harness owns; the command line cannot.
    pub sink: Option<u16>,
    /// Seed of smoltcp's and the DNS relay's randomness (initial sequence numbers,
    /// query ids); `None` draws one from `/dev/urandom`. The fuzz targets fix it, so
    /// that an input replays the same way and the fuzzer can learn the numbers.
    pub random_seed: Option<u64>,
}

impl Config {
    /// A seed for smoltcp's or the DNS relay's randomness: [`Config::random_seed`], or
    /// fresh bytes from `/dev/urandom` (mixed with the pid, should that fail).
    pub fn seed(&self) -> u64 {
        self.random_seed.unwrap_or_else(|| {
            use std::io::Read;
            let mut b = [0u8; 8];
            if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
                let _ = f.read_exact(&mut b);
            }
            u64::from_ne_bytes(b) ^ u64::from(std::process::id())
        })
    }

    /// The slirp4netns defaults for `network/prefix_len`.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Config {
        let base = u32::from(network);
        Config {
            network,
            prefix_len,
            gateway: Ipv4Addr::from(base + 2),
            dns: Ipv4Addr::from(base + 3),
            guest: Ipv4Addr::from(base + 100),
            mtu: DEFAULT_MTU,
            disable_host_loopback: false,
            outbound: true,
            host_only: false,
            internal: false,
            filters: Vec::new(),
            tso: false,
            csum_offload: false,
            filter_default: usernet_portfwd::filter::Action::Allow,
            enable_dns: true,
            outbound_addr: None,
            outbound_addr6: None,
            ipv6: None,
            verify_checksums: true,
            limits: Limits::default(),
            dns_options: Default::default(),
            configured: false,
            dhcp: Some(usernet_dhcp::ServerConfig {
                mtu: Some(DEFAULT_MTU as u16),
                ..usernet_dhcp::ServerConfig::slirp_default(network, prefix_len)
            }),
            sink: None,
            random_seed: None,
        }
    }

    /// The subnet mask as an integer.
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// Whether `a` lies in the virtual network.
    pub fn in_subnet(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(Ipv4Addr::new(10, 0, 2, 0), 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_gets_its_part_always_and_more_only_below_three_quarters() {
        // (held by the guest, taken in all, table size) -> refused?
        let cases = [
            (0, 0, 1024, false),
            (63, 1023, 1024, false), // within its 1/16: only a full table stops it
            (64, 767, 1024, false),  // beyond it, while under 3/4
            (64, 768, 1024, true),
            (700, 768, 1024, true),
            (767, 767, 1024, false), // alone, a guest reaches 3/4
            (0, 3, 4, false),        // tiny tables: the part is at least 1
            (1, 3, 4, true),
        ];
        for (held, total, cap, refused) in cases {
            assert_eq!(
                over_share(held, total, cap),
                refused,
                "{held} of {total}/{cap}"
            );
        }
    }
}
