//! The table of active port forwards.
//!
//! # Theory of operation
//!
//! A [`Table`] maps rule ids to [`Rule`]s in a `BTreeMap`, so listings come out
//! sorted by id. Ids start at 1 and only grow: a removed rule's id is never handed
//! out again in the same process, so a client that removes "rule 3" twice cannot
//! remove someone else's rule (slirp4netns numbers its forwards the same way).
//!
//! Two rules conflict when the kernel would refuse to bind both host sockets: the
//! same protocol and host port, and host addresses that overlap. An unspecified
//! address (`0.0.0.0`, `::`) overlaps every address of its family; address families
//! are independent, because the engine binds IPv6 listeners with `IPV6_V6ONLY` (the
//! way Docker publishes on both `0.0.0.0` and `::`). IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) count as the IPv4 address they carry.
//!
//! The engine adds a rule in three steps: [`Table::check`] (is the rule acceptable?),
//! bind the host socket, then [`Table::insert`]. Both steps run on the one engine
//! thread, so nothing can slip in between them.
//!
//! The table holds at most [`MAX_RULES`] rules; conflict checks walk them all, which
//! costs at most a few thousand comparisons on the control plane and nothing on the
//! data path.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::rule::RuleSpec;

/// The most rules a table holds.
///
/// Each rule owns a host socket (a file descriptor); 4096 stays well under common
/// `RLIMIT_NOFILE` soft limits while covering any real set of published ports.
pub const MAX_RULES: usize = 4096;

/// A rule in the table: its id and what it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The id, unique for the life of the process, 1 and up.
    pub id: u32,
    /// The forward.
    pub spec: RuleSpec,
}

/// Why a rule cannot go into the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Another rule already forwards an overlapping host address and port.
    #[error(
        "port-forward rule {new}: host port {port}/{proto} on {addr} is already forwarded by rule {existing_id} ({existing}) (expected a host address and port no other rule uses)",
        port = .new.host_port, proto = .new.proto, addr = .new.host_addr
    )]
    Conflict {
        /// The rule that was refused.
        new: Box<RuleSpec>,
        /// The id of the rule in the way.
        existing_id: u32,
        /// The rule in the way.
        existing: Box<RuleSpec>,
    },
    /// The table already holds `max` rules.
    #[error("port-forward rule {0}: the table already holds {max} rules (expected fewer; remove one first)", max = MAX_RULES)]
    Full(Box<RuleSpec>),
    /// Every id up to `u32::MAX` has been handed out.
    #[error(
        "port-forward rule {0}: no rule ids are left (ids are never reused; restart the engine)"
    )]
    IdsExhausted(Box<RuleSpec>),
}

/// The active port forwards, keyed by id.
#[derive(Debug, Clone)]
pub struct Table {
    rules: BTreeMap<u32, Rule>,
    /// The id the next insert gets; `None` once `u32::MAX` has been used.
    next_id: Option<u32>,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

/// The address the kernel would bind for `a`: IPv4-mapped IPv6 taken as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    a.to_canonical()
}

/// Whether two host addresses overlap for binding purposes.
fn addrs_overlap(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (canonical(a), canonical(b));
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            a == b || a.is_unspecified() || b.is_unspecified()
        }
        _ => false,
    }
}

/// Whether two rules would need the same host socket.
fn conflicts(a: &RuleSpec, b: &RuleSpec) -> bool {
    a.proto == b.proto && a.host_port == b.host_port && addrs_overlap(a.host_addr, b.host_addr)
}

impl Table {
    /// An empty table; the first rule gets id 1.
    pub fn new() -> Self {
        Table {
            rules: BTreeMap::new(),
            next_id: Some(1),
        }
    }

    /// Checks that `spec` could be inserted now, without inserting it.
    pub fn check(&self, spec: &RuleSpec) -> Result<(), TableError> {
        if let Some(existing) = self.rules.values().find(|r| conflicts(&r.spec, spec)) {
            return Err(TableError::Conflict {
                new: Box::new(spec.clone()),
                existing_id: existing.id,
                existing: Box::new(existing.spec.clone()),
            });
        }
        if self.rules.len() >= MAX_RULES {
            return Err(TableError::Full(Box::new(spec.clone())));
        }
        if self.next_id.is_none() {
            return Err(TableError::IdsExhausted(Box::new(spec.clone())));
        }
        Ok(())
    }

    /// Inserts `spec` and returns its new id.
    pub fn insert(&mut self, spec: RuleSpec) -> Result<u32, TableError> {
        self.check(&spec)?;
        let Some(id) = self.next_id else {
            return Err(TableError::IdsExhausted(Box::new(spec)));
        };
        self.next_id = id.checked_add(1);
        self.rules.insert(id, Rule { id, spec });
        Ok(id)
    }

    /// Removes and returns the rule `id`, or `None` if there is none.
    pub fn remove(&mut self, id: u32) -> Option<Rule> {
        self.rules.remove(&id)
    }

    /// The rule `id`, if present.
    pub fn get(&self, id: u32) -> Option<&Rule> {
        self.rules.get(&id)
    }

    /// The rules, sorted by id.
    pub fn list(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// How many rules the table holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the table holds no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    #[cfg(test)]
    fn set_next_id(&mut self, id: Option<u32>) {
        self.next_id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Proto, parse_publish};

    fn spec(s: &str) -> RuleSpec {
        parse_publish(s).unwrap().remove(0)
    }

    #[test]
    fn ids_start_at_one_and_are_never_reused() {
        let mut t = Table::new();
        assert!(t.is_empty());
        assert_eq!(t.insert(spec("8080:80")).unwrap(), 1);
        assert_eq!(t.insert(spec("8081:81")).unwrap(), 2);
        assert_eq!(t.remove(2).unwrap().spec, spec("8081:81"));
        assert_eq!(t.insert(spec("8081:81")).unwrap(), 3);
        assert_eq!(t.remove(1).unwrap().id, 1);
        assert_eq!(t.remove(1), None);
        assert_eq!(t.insert(spec("8080:80")).unwrap(), 4);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(3).unwrap().spec.host_port, 8081);
        assert_eq!(t.get(1), None);
    }

    #[test]
    fn list_is_sorted_by_id() {
        let mut t = Table::new();
        for p in [9000u16, 1000, 5000] {
            t.insert(RuleSpec::new(Proto::Tcp, p, 80)).unwrap();
        }
        t.remove(2);
        let ids: Vec<u32> = t.list().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn duplicate_is_refused_with_a_sentence() {
        let mut t = Table::new();
        t.insert(spec("127.0.0.1:8080:80")).unwrap();
        let e = t.insert(spec("127.0.0.1:8080:10.0.2.15:81")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port-forward rule 127.0.0.1:8080:10.0.2.15:81/tcp: host port 8080/tcp on 127.0.0.1 is already forwarded by rule 1 (127.0.0.1:8080:80/tcp) (expected a host address and port no other rule uses)"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn protocols_and_ports_are_independent() {
        let mut t = Table::new();
        t.insert(spec("8080:80")).unwrap();
        t.insert(spec("8080:80/udp")).unwrap();
        t.insert(spec("8081:80")).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unspecified_overlaps_specific_of_its_family() {
        let mut t = Table::new();
        t.insert(spec("127.0.0.1:8080:80")).unwrap();
        assert!(matches!(
            t.check(&spec("0.0.0.0:8080:80")),
            Err(TableError::Conflict { existing_id: 1, .. })
        ));
        t.insert(spec("10.1.2.3:8080:80")).unwrap();

        let mut t = Table::new();
        t.insert(spec("8080:80")).unwrap();
        assert!(t.check(&spec("127.0.0.1:8080:80")).is_err());
        // IPv6 is a separate family (IPV6_V6ONLY listeners).
        t.insert(spec("[::]:8080:80")).unwrap();
        assert!(t.check(&spec("[::1]:8080:80")).is_err());
        t.insert(spec("[::1]:8081:80")).unwrap();
        // IPv4-mapped IPv6 counts as IPv4.
        assert!(t.check(&spec("[::ffff:127.0.0.1]:8080:80")).is_err());
    }

    #[test]
    fn check_does_not_insert() {
        let mut t = Table::new();
        t.check(&spec("8080:80")).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.insert(spec("8080:80")).unwrap(), 1);
    }

    #[test]
    fn full_table_refuses() {
        let mut t = Table::new();
        for i in 0..MAX_RULES {
            let port = u16::try_from(i + 1).unwrap();
            t.insert(RuleSpec::new(Proto::Tcp, port, 80)).unwrap();
        }
        let e = t.insert(RuleSpec::new(Proto::Udp, 1, 80)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port-forward rule 0.0.0.0:1:80/udp: the table already holds 4096 rules (expected fewer; remove one first)"
        );
        t.remove(7);
        assert_eq!(
            t.insert(RuleSpec::new(Proto::Udp, 1, 80)).unwrap(),
            u32::try_from(MAX_RULES).unwrap() + 1
        );
    }

    proptest::proptest! {
        /// Random inserts and removes keep the invariants: ids grow, the list is
        /// sorted, and no two rules in the table conflict.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(
            (proptest::prelude::any::<bool>(), 0u8..4, 1u16..6, 0u32..12), 0..64)
        ) {
            let addrs = ["0.0.0.0", "127.0.0.1", "::", "::1"];
            let mut t = Table::new();
            let mut last_id = 0;
            for (udp, a, port, rm) in ops {
                if rm < 4 {
                    t.remove(rm);
                    continue;
                }
                let spec = RuleSpec {
                    proto: if udp { Proto::Udp } else { Proto::Tcp },
                    host_addr: addrs[usize::from(a)].parse().unwrap(),
                    ..RuleSpec::new(Proto::Tcp, port, 80)
                };
                let checked = t.check(&spec).is_ok();
                match t.insert(spec) {
                    Ok(id) => {
                        proptest::prop_assert!(checked);
                        proptest::prop_assert!(id > last_id);
                        last_id = id;
                    }
                    Err(_) => proptest::prop_assert!(!checked),
                }
                let rules: Vec<&Rule> = t.list().collect();
                for (i, a) in rules.iter().enumerate() {
                    for b in &rules[i + 1..] {
                        proptest::prop_assert!(a.id < b.id);
                        proptest::prop_assert!(!conflicts(&a.spec, &b.spec));
                    }
                }
            }
        }
    }

    #[test]
    fn ids_exhausted() {
        let mut t = Table::new();
        t.set_next_id(Some(u32::MAX));
        assert_eq!(t.insert(spec("1:1")).unwrap(), u32::MAX);
        let e = t.insert(spec("2:2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port-forward rule 0.0.0.0:2:2/tcp: no rule ids are left (ids are never reused; restart the engine)"
        );
    }
}
