//! Counters: frames and bytes each way, flows per protocol, and a closed set of drop reasons.
//!
//! Every frame or packet the engine refuses is counted under exactly one [`DropReason`]
//! and logged at `debug` level, never above: guest input must not be able to flood the
//! log. Counters are atomics so that the control thread can read them without locking
//! the data path.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $text:literal,)*) => {
        /// Why a frame, packet or flow was refused. Closed: every drop has exactly one reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum DropReason { $($(#[$doc])* $name,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// A stable snake_case name for logs and the stats API.
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$name => $text,)* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header, or longer than the MTU allows.
    FrameBadLength => "frame_bad_length",
    /// Destination MAC is neither ours, broadcast nor multicast.
    FrameNotForUs => "frame_not_for_us",
    /// An EtherType usernet does not handle.
    UnknownEthertype => "unknown_ethertype",
    /// An IPv6 frame while IPv6 is off.
    Ipv6Disabled => "ipv6_disabled",
    /// IPv6 header that does not parse.
    Ipv6Malformed => "ipv6_malformed",
    /// IPv6 source address the guest may not use.
    Ipv6BadSource => "ipv6_bad_source",
    /// IPv6 extension headers (hop-by-hop, fragments, routing) usernet does not follow.
    Ipv6ExtensionHeader => "ipv6_extension_header",
    /// MLD reports and queries (no multicast routing here).
    MldIgnored => "mld_ignored",
    /// Neighbour discovery not addressed to us (DAD, other targets, bad hop limit, RAs from the guest).
    NdpIgnored => "ndp_ignored",
    /// ARP that does not parse.
    ArpMalformed => "arp_malformed",
    /// ARP for an address usernet does not answer for (including gratuitous ARP).
    ArpNotForUs => "arp_not_for_us",
    /// IPv4 header that does not parse (length, version, header length).
    Ipv4Malformed => "ipv4_malformed",
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// IPv4 source address the guest may not use.
    Ipv4BadSource => "ipv4_bad_source",
    /// IPv4 destination usernet does not route (multicast, other guests' addresses, loopback).
    Ipv4BadDestination => "ipv4_bad_destination",
    /// An IP protocol other than TCP, UDP and ICMP.
    UnsupportedProtocol => "unsupported_protocol",
    /// A fragment overlapping another of the same datagram.
    FragmentOverlap => "fragment_overlap",
    /// A datagram whose fragments did not all arrive in time.
    FragmentTimeout => "fragment_timeout",
    /// A reassembled datagram larger than 65535 bytes, or a malformed fragment.
    FragmentInvalid => "fragment_invalid",
    /// The reassembly table was full; the oldest datagram was evicted.
    FragmentEvicted => "fragment_evicted",
    /// TCP segment that does not parse or has a bad checksum.
    TcpMalformed => "tcp_malformed",
    /// TCP segment for no known flow (answered with RST).
    TcpNoFlow => "tcp_no_flow",
    /// SYN delayed because the half-open table is full (the guest retransmits).
    TcpHalfOpenFull => "tcp_half_open_full",
    /// SYN refused because the flow table is full.
    TcpTableFull => "tcp_table_full",
    /// A network guest's SYN refused: it holds more than its share of the TCP flows
    /// or half-open connects while the table is nearly full (`config::over_share`).
    TcpGuestShareFull => "tcp_guest_share_full",
    /// A network guest's new UDP mapping refused: over its share, and none of its own
    /// could make room.
    UdpGuestShareFull => "udp_guest_share_full",
    /// A network guest's new ICMP echo mapping refused: over its share.
    IcmpGuestShareFull => "icmp_guest_share_full",
    /// TCP connection refused by policy (e.g. host loopback disabled).
    TcpRefused => "tcp_refused",
    /// UDP datagram that does not parse or has a bad checksum.
    UdpMalformed => "udp_malformed",
    /// UDP datagram refused by policy (answered with ICMP port unreachable).
    UdpRefused => "udp_refused",
    /// UDP mapping table full (oldest mapping evicted).
    UdpEvicted => "udp_evicted",
    /// The host refused to send the datagram.
    UdpSendFailed => "udp_send_failed",
    /// ICMP that does not parse or has a bad checksum.
    IcmpMalformed => "icmp_malformed",
    /// ICMP types usernet does not forward.
    IcmpUnsupported => "icmp_unsupported",
    /// No ping socket and no raw socket could be opened: echo dropped.
    IcmpUnavailable => "icmp_unavailable",
    /// ICMP echo table full.
    IcmpTableFull => "icmp_table_full",
    /// DHCP message the server ignored.
    DhcpIgnored => "dhcp_ignored",
    /// DHCP message while the DHCP server is disabled.
    DhcpDisabled => "dhcp_disabled",
    /// DNS query the relay dropped (malformed, table full, disabled).
    DnsDropped => "dns_dropped",
    /// Outbound frame queue toward the guest full.
    TxQueueFull => "tx_queue_full",
    /// The guest's interface refused a frame (e.g. it is down).
    PortWriteFailed => "port_write_failed",
    /// A frame to the router of an internal network, which routes nothing.
    InternalNetwork => "internal_network",
    /// A connection or datagram on a forward whose guest (named by MAC) holds no lease.
    ForwardGuestUnknown => "forward_guest_unknown",
    /// A network's frame toward a port whose queue was full.
    SwitchQueueFull => "switch_queue_full",
    /// A frame whose source MAC is a group address, or whose destination is on the
    /// port it came from.
    SwitchFiltered => "switch_filtered",
    /// A frame from the router toward a guest address no guest has claimed yet (an
    /// ARP request for it was sent).
    NeighborUnresolved => "neighbor_unresolved",
    /// A new flow the flow policy refused (restricted guest, host blocked, filter
    /// rule): TCP gets RST, UDP ICMP administratively prohibited.
    FlowDenied => "flow_denied",
    /// A frame between two guests of a network where one is isolated.
    GuestIsolated => "guest_isolated",
    /// A frame whose source MAC, address, ARP or NDP claim the port does not own, or
    /// a DHCP server message or router advertisement from a guest.
    Spoofed => "spoofed",
}

/// Flow counters per protocol.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum FlowKind {
    /// Guest-initiated TCP.
    Tcp = 0,
    /// Guest UDP mappings.
    Udp = 1,
    /// ICMP echo mappings.
    Icmp = 2,
}

/// All counters of one engine.
pub struct Stats {
    drops: [AtomicU64; 64],
    /// Frames received from the guest.
    pub rx_frames: AtomicU64,
    /// Bytes received from the guest.
    pub rx_bytes: AtomicU64,
    /// Frames sent to the guest.
    pub tx_frames: AtomicU64,
    /// Bytes sent to the guest.
    pub tx_bytes: AtomicU64,
    /// Flows currently open, per [`FlowKind`].
    pub flows_open: [AtomicU64; 3],
    /// Flows ever opened, per [`FlowKind`].
    pub flows_total: [AtomicU64; 3],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            rx_frames: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            flows_open: std::array::from_fn(|_| AtomicU64::new(0)),
            flows_total: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    /// Count one drop and emit the debug event.
    #[inline]
    pub fn record(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = reason.as_str(), "dropped");
    }

    /// The count for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// A flow of `kind` opened.
    pub fn flow_opened(&self, kind: FlowKind) {
        self.flows_open[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.flows_total[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A flow of `kind` closed.
    pub fn flow_closed(&self, kind: FlowKind) {
        self.flows_open[kind as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Non-zero drop counters, by name.
    pub fn drop_counts(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_the_counter_array() {
        assert!(DropReason::ALL.len() <= 64);
        let s = Stats::default();
        s.record(DropReason::PortWriteFailed);
        assert_eq!(s.drops(DropReason::PortWriteFailed), 1);
        assert_eq!(s.drop_counts(), vec![("port_write_failed", 1)]);
    }
}
