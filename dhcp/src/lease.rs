//! The lease table: which address belongs to which client, until when.
//!
//! # Theory of operation
//!
//! Addresses are `u32`s. Every address of the pool that may be handed out (not
//! excluded, not the gateway, not reserved) is, at any time, in exactly one of three
//! places:
//!
//! - `leases`: taken: offered to, bound to, or declined by a client;
//! - `remembered`: free, but last held by a client that should get it back if it
//!   returns (its lease expired or it released it, e.g. because its DHCP client
//!   restarted). The inverse map `last_addr` finds it from the client;
//! - `free`: free and remembered by no one.
//!
//! A new client gets the lowest `free` address, and only when none is left the lowest
//! `remembered` one (whose memory is then forgotten). Reserved addresses live in
//! `leases` while their owner holds them and nowhere otherwise.
//!
//! Every lease has a deadline in `deadlines`, ordered by time, so expiry pops from the
//! front and the next wake-up is the first element: no walk over the table.
//! `bound_by_mac` counts the bound leases of each MAC, so that whether a MAC holds a
//! lease is O(1) (the network's anti-spoofing checks ask it per frame). All maps
//! are bounded by the pool size plus the number of reservations, which
//! [`MAX_POOL_SIZE`](crate::MAX_POOL_SIZE) caps; a client identifier is at most 255
//! bytes and a stored host name at most [`MAX_HOSTNAME_LEN`] bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// The longest client host name (option 12) we store, in bytes: one DNS label.
pub(crate) const MAX_HOSTNAME_LEN: usize = 63;

/// Who a lease belongs to: the client identifier (option 61) if the client sent one,
/// else its hardware address (RFC 2131 §4.2; RFC 6842).
///
/// A client identifier of type 1 (Ethernet) whose six bytes equal `chaddr` names the
/// same client as the bare hardware address; it is stored as [`ClientKey::Hw`] so that
/// udhcpc (which sends one) and dhclient (which does not) on one guest share a lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ClientKey {
    Hw([u8; 6]),
    Id(Vec<u8>),
}

impl ClientKey {
    pub fn new(client_id: Option<&[u8]>, mac: [u8; 6]) -> Self {
        match client_id {
            Some([1, rest @ ..]) if rest == mac => ClientKey::Hw(mac),
            Some(id) => ClientKey::Id(id.to_vec()),
            None => ClientKey::Hw(mac),
        }
    }
}

/// Lifecycle of a table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Offered in answer to a DISCOVER; lapses after the offer timeout.
    Offered,
    /// Acknowledged; lapses at the end of the lease.
    Bound,
    /// The client reported the address in use; held back until the deadline.
    Declined,
}

#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub key: ClientKey,
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
    pub expires: Instant,
    pub state: State,
}

/// The client-side facts stored in a lease.
pub(crate) struct Client {
    pub key: ClientKey,
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub leases: BTreeMap<u32, Lease>,
    by_client: HashMap<ClientKey, u32>,
    deadlines: BTreeSet<(Instant, u32)>,
    free: BTreeSet<u32>,
    remembered: BTreeMap<u32, ClientKey>,
    last_addr: HashMap<ClientKey, u32>,
    reserved_by_mac: HashMap<[u8; 6], u32>,
    reserved_addr: HashMap<u32, [u8; 6]>,
    /// Bound leases per MAC (only MACs holding at least one).
    bound_by_mac: HashMap<[u8; 6], u32>,
    /// Offered or bound leases per MAC (only MACs holding at least one).
    held_by_mac: HashMap<[u8; 6], u32>,
}

impl Table {
    /// A table whose free set is `pool`, with `reservations` set aside.
    pub fn new(pool: impl Iterator<Item = u32>, reservations: &[([u8; 6], u32)]) -> Self {
        let reserved_addr: HashMap<u32, [u8; 6]> =
            reservations.iter().map(|&(m, a)| (a, m)).collect();
        Table {
            leases: BTreeMap::new(),
            by_client: HashMap::new(),
            deadlines: BTreeSet::new(),
            free: pool.filter(|a| !reserved_addr.contains_key(a)).collect(),
            remembered: BTreeMap::new(),
            last_addr: HashMap::new(),
            reserved_by_mac: reservations.iter().copied().collect(),
            reserved_addr,
            bound_by_mac: HashMap::new(),
            held_by_mac: HashMap::new(),
        }
    }

    /// Offered or bound leases `mac` holds: O(1).
    pub fn held_by(&self, mac: [u8; 6]) -> u32 {
        self.held_by_mac.get(&mac).copied().unwrap_or(0)
    }

    /// Whether `mac` holds a bound lease (reservations included): O(1).
    pub fn holds_bound(&self, mac: [u8; 6]) -> bool {
        self.bound_by_mac.contains_key(&mac)
    }

    /// Count (`up`) or uncount the lease at `addr` in `bound_by_mac`, when bound.
    /// Called around every change of a lease's presence, MAC or state.
    fn tally(&mut self, addr: u32, up: bool) {
        let Some(l) = self.leases.get(&addr) else {
            return;
        };
        let (mac, state) = (l.mac, l.state);
        let count = |m: &mut HashMap<[u8; 6], u32>| {
            if up {
                *m.entry(mac).or_insert(0) += 1;
            } else if let Some(n) = m.get_mut(&mac) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&mac);
                }
            }
        };
        if state == State::Bound {
            count(&mut self.bound_by_mac);
        }
        if matches!(state, State::Bound | State::Offered) {
            count(&mut self.held_by_mac);
        }
    }

    pub fn reservation(&self, mac: [u8; 6]) -> Option<u32> {
        self.reserved_by_mac.get(&mac).copied()
    }

    pub fn is_reserved(&self, addr: u32) -> bool {
        self.reserved_addr.contains_key(&addr)
    }

    /// The address currently offered or bound to `key`.
    pub fn current(&self, key: &ClientKey) -> Option<u32> {
        self.by_client.get(key).copied()
    }

    pub fn get(&self, addr: u32) -> Option<&Lease> {
        self.leases.get(&addr)
    }

    /// The address `key` held last, if it is still free.
    pub fn remembered_for(&self, key: &ClientKey) -> Option<u32> {
        self.last_addr.get(key).copied()
    }

    /// The lowest address no one holds, preferring ones no one remembers.
    pub fn lowest_free(&self) -> Option<u32> {
        self.free
            .first()
            .copied()
            .or_else(|| self.remembered.keys().next().copied())
    }

    /// Whether `addr` can go to this client: it is free (remembered or not) or
    /// already offered/bound to the same client; reserved addresses only to their MAC.
    pub fn available_for(&self, addr: u32, key: &ClientKey, mac: [u8; 6]) -> bool {
        if let Some(&owner) = self.reserved_addr.get(&addr) {
            // Never declined (see `decline`); another identifier on the same MAC
            // loses it in `assign`.
            return owner == mac;
        }
        match self.leases.get(&addr) {
            Some(l) => l.key == *key && l.state != State::Declined,
            None => self.free.contains(&addr) || self.remembered.contains_key(&addr),
        }
    }

    /// Gives `addr` to `client` in `state` until `expires`. The caller has checked
    /// [`Table::available_for`]. Any other address the client held is freed; a lease
    /// already bound to this client stays bound when only offered again.
    pub fn assign(&mut self, addr: u32, client: Client, state: State, expires: Instant) {
        if let Some(old) = self.by_client.get(&client.key).copied()
            && old != addr
        {
            self.remove(old, false);
        }
        // Another client (same reserved MAC, different identifier) loses it.
        if self.leases.get(&addr).is_some_and(|l| l.key != client.key) {
            self.remove(addr, false);
        }
        if let Some(forgotten) = self.remembered.remove(&addr) {
            self.last_addr.remove(&forgotten);
        }
        self.free.remove(&addr);
        if let Some(prev) = self.last_addr.remove(&client.key)
            && prev != addr
            && self.remembered.remove(&prev).is_some()
        {
            self.free.insert(prev);
        }
        let (state, expires) = match self.leases.get(&addr) {
            Some(l) if l.state == State::Bound && state == State::Offered => {
                (State::Bound, l.expires.max(expires))
            }
            _ => (state, expires),
        };
        if let Some(old) = self.leases.get(&addr) {
            self.deadlines.remove(&(old.expires, addr));
        }
        self.tally(addr, false);
        self.deadlines.insert((expires, addr));
        self.by_client.insert(client.key.clone(), addr);
        let hostname = client
            .hostname
            .or_else(|| self.leases.get(&addr).and_then(|l| l.hostname.clone()));
        self.leases.insert(
            addr,
            Lease {
                key: client.key,
                mac: client.mac,
                client_id: client.client_id,
                hostname,
                expires,
                state,
            },
        );
        self.tally(addr, true);
    }

    /// Marks `addr` declined until `until`: no client holds it, no one is offered it.
    pub fn decline(&mut self, addr: u32, until: Instant) {
        self.tally(addr, false);
        let Some(lease) = self.leases.get_mut(&addr) else {
            return;
        };
        self.deadlines.remove(&(lease.expires, addr));
        self.by_client.remove(&lease.key);
        if self.reserved_addr.contains_key(&addr) {
            // Reservations always go to their MAC; holding one back would only stall it.
            self.leases.remove(&addr);
            return;
        }
        lease.state = State::Declined;
        lease.expires = until;
        self.deadlines.insert((until, addr));
    }

    /// Frees `addr`. With `remember`, its client gets it back first next time.
    pub fn remove(&mut self, addr: u32, remember: bool) {
        self.tally(addr, false);
        let Some(lease) = self.leases.remove(&addr) else {
            return;
        };
        self.deadlines.remove(&(lease.expires, addr));
        if self.by_client.get(&lease.key) == Some(&addr) {
            self.by_client.remove(&lease.key);
        }
        if self.reserved_addr.contains_key(&addr) {
            return;
        }
        if remember && lease.state != State::Declined {
            if let Some(prev) = self.last_addr.insert(lease.key.clone(), addr)
                && self.remembered.remove(&prev).is_some()
            {
                self.free.insert(prev);
            }
            self.remembered.insert(addr, lease.key);
        } else {
            self.free.insert(addr);
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Ends every lease, offer and decline hold whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, addr)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            match self.leases.get(&addr) {
                Some(l) if l.expires == t => self.remove(addr, true),
                _ => {}
            }
        }
    }

    /// Checks the bookkeeping invariants described in the module doc (tests, fuzzing).
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        for addr in self.leases.keys() {
            if self.free.contains(addr) || self.remembered.contains_key(addr) {
                return Err("a taken address is also free");
            }
        }
        if self.free.iter().any(|a| self.remembered.contains_key(a)) {
            return Err("an address is both free and remembered");
        }
        if self.deadlines.len() != self.leases.len() {
            return Err("deadlines and leases disagree");
        }
        for (key, &addr) in &self.by_client {
            if self.leases.get(&addr).is_none_or(|l| l.key != *key) {
                return Err("by_client points at a lease of someone else");
            }
        }
        for (key, &addr) in &self.last_addr {
            if self.remembered.get(&addr) != Some(key) {
                return Err("last_addr and remembered disagree");
            }
        }
        if self.remembered.len() != self.last_addr.len() {
            return Err("remembered and last_addr differ in size");
        }
        let mut bound: HashMap<[u8; 6], u32> = HashMap::new();
        for l in self.leases.values().filter(|l| l.state == State::Bound) {
            *bound.entry(l.mac).or_insert(0) += 1;
        }
        if bound != self.bound_by_mac {
            return Err("bound_by_mac does not count the bound leases");
        }
        let mut held: HashMap<[u8; 6], u32> = HashMap::new();
        for l in self
            .leases
            .values()
            .filter(|l| matches!(l.state, State::Bound | State::Offered))
        {
            *held.entry(l.mac).or_insert(0) += 1;
        }
        if held != self.held_by_mac {
            return Err("held_by_mac does not count the offered and bound leases");
        }
        Ok(())
    }
}
