//! A learning Ethernet switch, sans-IO: which ports a frame goes to.
//!
//! The table maps a source MAC to the port it was last seen on, with ageing
//! ([`MAC_AGEING`], as IEEE 802.1D's default) and a bound ([`MAX_MACS`]): when full, an
//! expired entry is reused if there is one, otherwise the new MAC is not learned (its
//! frames are still switched; frames toward it are flooded until room returns). Static
//! entries (the router's MAC) never move and never age: a guest that sends with the
//! gateway's MAC as its source cannot pull the gateway's traffic to itself.
//!
//! Broadcast, multicast and unknown unicast are flooded; a frame never goes back to the
//! port it came from. Every operation is O(1) (learning a new MAC into a full table
//! looks at no more than [`EVICT_PROBES`] of the oldest entries) except
//! [`Switch::forget_port`] and [`Switch::expire`], which run when a port leaves and
//! once per ageing interval.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Time after which a MAC not seen as a source is forgotten.
pub const MAC_AGEING: Duration = Duration::from_secs(300);
/// Most MACs the table holds.
pub const MAX_MACS: usize = 4096;

/// Oldest entries looked at when a new MAC needs room in a full table.
pub const EVICT_PROBES: usize = 8;

/// A switch port's id (the router's too).
pub type PortId = usize;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// To this one port.
    One(PortId),
    /// To every port but the one it came from.
    Flood,
    /// Nowhere: its destination is on the port it came from.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    seen: Instant,
    fixed: bool,
}

/// The MAC table. See the module docs.
#[derive(Debug)]
pub struct Switch {
    table: HashMap<[u8; 6], Entry>,
    /// Learned MACs, oldest learned first (an entry refreshed since is requeued when
    /// it reaches the front); at most `cap` + 1 long.
    order: VecDeque<[u8; 6]>,
    cap: usize,
    ageing: Duration,
    /// Source MACs not learned because the table was full.
    pub not_learned: u64,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new(MAX_MACS, MAC_AGEING)
    }
}

fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

impl Switch {
    /// A switch holding at most `cap` MACs, forgetting them after `ageing`.
    pub fn new(cap: usize, ageing: Duration) -> Switch {
        Switch {
            table: HashMap::with_capacity(cap.min(256)),
            order: VecDeque::with_capacity(cap.min(256)),
            cap,
            ageing,
            not_learned: 0,
        }
    }

    /// Pin `mac` to `port` for good (the router's MAC).
    pub fn add_static(&mut self, mac: [u8; 6], port: PortId, now: Instant) {
        self.table.insert(
            mac,
            Entry {
                port,
                seen: now,
                fixed: true,
            },
        );
    }

    /// Note that `mac` was the source of a frame from `port`.
    pub fn learn(&mut self, now: Instant, mac: [u8; 6], port: PortId) {
        if is_group(mac) || mac == [0; 6] {
            return;
        }
        if let Some(e) = self.table.get_mut(&mac) {
            if !e.fixed {
                e.port = port;
                e.seen = now;
            }
            return;
        }
        if self.table.len() >= self.cap && !self.make_room(now) {
            self.not_learned += 1;
            return;
        }
        self.table.insert(
            mac,
            Entry {
                port,
                seen: now,
                fixed: false,
            },
        );
        self.order.push_back(mac);
    }

    /// Evict one stale learned entry, looking at the oldest [`EVICT_PROBES`] only: an
    /// entry seen since it was queued goes to the back (it is younger than all the
    /// others there). `false` when none of them is stale.
    fn make_room(&mut self, now: Instant) -> bool {
        for _ in 0..EVICT_PROBES {
            let Some(m) = self.order.pop_front() else {
                return false;
            };
            match self.table.get(&m) {
                Some(e) if e.fixed => {}
                Some(e) if now.saturating_duration_since(e.seen) >= self.ageing => {
                    self.table.remove(&m);
                    return true;
                }
                Some(_) => self.order.push_back(m),
                // Forgotten since (expire, forget_port): nothing to do.
                None => {}
            }
        }
        false
    }

    /// Where a frame to `dst` that came in on `from` goes.
    pub fn lookup(&self, now: Instant, dst: [u8; 6], from: PortId) -> Dest {
        if is_group(dst) {
            return Dest::Flood;
        }
        match self.table.get(&dst) {
            Some(e) if e.fixed || now.saturating_duration_since(e.seen) < self.ageing => {
                if e.port == from {
                    Dest::Drop
                } else {
                    Dest::One(e.port)
                }
            }
            _ => Dest::Flood,
        }
    }

    /// The port `mac` was last seen on, if known and fresh.
    pub fn port_of(&self, now: Instant, mac: [u8; 6]) -> Option<PortId> {
        match self.lookup(now, mac, usize::MAX) {
            Dest::One(p) => Some(p),
            _ => None,
        }
    }

    /// Forget every MAC learned on `port` (it left).
    pub fn forget_port(&mut self, port: PortId) {
        self.table.retain(|_, e| e.fixed || e.port != port);
        let table = &self.table;
        self.order.retain(|m| table.contains_key(m));
    }

    /// Drop the entries older than the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.ageing;
        self.table
            .retain(|_, e| e.fixed || now.saturating_duration_since(e.seen) < ageing);
        let table = &self.table;
        self.order.retain(|m| table.contains_key(m));
    }

    /// MACs in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
    const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];
    const MCAST: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

    #[test]
    fn unknown_unicast_floods_then_learned_goes_to_one_port() {
        let now = Instant::now();
        let mut s = Switch::default();
        assert_eq!(s.lookup(now, B, 1), Dest::Flood);
        s.learn(now, B, 2);
        assert_eq!(s.lookup(now, B, 1), Dest::One(2));
        // Never back out of the port it came in on.
        assert_eq!(s.lookup(now, B, 2), Dest::Drop);
    }

    #[test]
    fn broadcast_and_multicast_flood_and_are_never_learned() {
        let now = Instant::now();
        let mut s = Switch::default();
        s.learn(now, BCAST, 1);
        s.learn(now, MCAST, 1);
        s.learn(now, [0; 6], 1);
        assert!(s.is_empty());
        assert_eq!(s.lookup(now, BCAST, 1), Dest::Flood);
        assert_eq!(s.lookup(now, MCAST, 1), Dest::Flood);
    }

    #[test]
    fn a_mac_that_moves_follows() {
        let now = Instant::now();
        let mut s = Switch::default();
        s.learn(now, A, 1);
        s.learn(now, A, 3);
        assert_eq!(s.lookup(now, A, 2), Dest::One(3));
    }

    #[test]
    fn static_entries_do_not_move_or_age() {
        let now = Instant::now();
        let mut s = Switch::new(8, Duration::from_secs(10));
        s.add_static(A, 0, now);
        s.learn(now, A, 5);
        assert_eq!(s.lookup(now, A, 5), Dest::One(0));
        let later = now + Duration::from_secs(3600);
        s.expire(later);
        assert_eq!(s.lookup(later, A, 5), Dest::One(0));
    }

    #[test]
    fn ageing_forgets_and_floods_again() {
        let now = Instant::now();
        let mut s = Switch::new(8, Duration::from_secs(10));
        s.learn(now, B, 2);
        let later = now + Duration::from_secs(11);
        // A stale entry is not used even before expire() runs.
        assert_eq!(s.lookup(later, B, 1), Dest::Flood);
        assert_eq!(s.port_of(later, B), None);
        s.expire(later);
        assert!(s.is_empty());
        // Seen again: learned again.
        s.learn(later, B, 4);
        assert_eq!(s.port_of(later, B), Some(4));
    }

    #[test]
    fn table_is_bounded_and_reuses_stale_entries() {
        let now = Instant::now();
        let mut s = Switch::new(2, Duration::from_secs(10));
        s.learn(now, A, 1);
        s.learn(now, B, 2);
        s.learn(now, C, 3);
        assert_eq!(s.len(), 2);
        assert_eq!(s.not_learned, 1);
        // C's frames still flood (nothing is lost), and A, B stay.
        assert_eq!(s.lookup(now, C, 1), Dest::Flood);
        assert_eq!(s.lookup(now, A, 2), Dest::One(1));
        // Once A is stale, C takes its place.
        let later = now + Duration::from_secs(11);
        s.learn(later, B, 2);
        s.learn(later, C, 3);
        assert_eq!(s.len(), 2);
        assert_eq!(s.port_of(later, C), Some(3));
        assert_eq!(s.port_of(later, A), None);
    }

    #[test]
    fn forget_port_removes_only_its_macs() {
        let now = Instant::now();
        let mut s = Switch::default();
        s.add_static(C, 0, now);
        s.learn(now, A, 1);
        s.learn(now, B, 2);
        s.forget_port(1);
        assert_eq!(s.port_of(now, A), None);
        assert_eq!(s.port_of(now, B), Some(2));
        assert_eq!(s.port_of(now, C), Some(0));
    }

    proptest::proptest! {
        /// Whatever frames arrive, the table never exceeds its bound and a unicast
        /// lookup never sends a frame back where it came from.
        #[test]
        fn bounded_and_never_reflects(
            ops in proptest::collection::vec((0u8..40, 0usize..6, 0u64..30), 0..300)
        ) {
            let t0 = Instant::now();
            let mut s = Switch::new(16, Duration::from_secs(10));
            for (m, port, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                let mac = [0x52, 0x54, 0, 0, 0, m];
                s.learn(now, mac, port);
                proptest::prop_assert!(s.len() <= 16);
                proptest::prop_assert!(s.order.len() <= 16);
                let d = s.lookup(now, mac, port);
                proptest::prop_assert!(d != Dest::One(port));
            }
        }
    }
}
