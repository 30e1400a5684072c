//! DHCPv6 server tests: real ISC dhclient bytes plus hand-built messages for the other
//! RFC 8415 paths. Replies are decoded with `dhcproto`, an independent implementation.
//!
//! Beyond these, the server was run once by hand behind a UDP socket in a network
//! namespace against a real ISC dhclient 4.4.3-P1: `-6 -S` took the Information-Request
//! Reply; `-6` selected the Advertise at once (preference 255), was bound to fd00::100
//! by the Reply to its Request, renewed at T1, had its Confirm answered Success after a
//! restart and its Release acknowledged; against a stateless server it logged "Lease
//! failed to satisfy" for each NoAddrsAvail Advertise and kept soliciting.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use dhcproto::v6::{self, DhcpOption, IANA, Status};
use dhcproto::{Decodable, Decoder};
use proptest::prelude::*;

use super::testdata::*;
use super::*;

const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OUR_DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
/// The IAID dhclient used in the captures.
const DHCLIENT_IAID: u32 = 0x0012_3456;

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn cfg() -> Server6Config {
    let mut c = Server6Config::default_for(a6("fd00::"), 64, SERVER_MAC);
    c.search = vec!["example.test".into()];
    c
}

/// A client message built option by option.
#[derive(Clone)]
struct M {
    mt: u8,
    xid: [u8; 3],
    opts: Vec<(u16, Vec<u8>)>,
}

fn m(mt: MessageType6) -> M {
    M {
        mt: mt as u8,
        xid: [0xab, 0xcd, 0xef],
        opts: Vec::new(),
    }
}

/// DUID-LL of a client MAC ending in `n`.
fn duid(n: u8) -> Vec<u8> {
    vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, n]
}

fn ia_body(iaid: u32, addrs: &[Ipv6Addr]) -> Vec<u8> {
    let mut b = iaid.to_be_bytes().to_vec();
    b.extend_from_slice(&[0; 8]);
    for a in addrs {
        b.extend_from_slice(&[0, 5, 0, 24]);
        b.extend_from_slice(&a.octets());
        b.extend_from_slice(&[0; 8]);
    }
    b
}

impl M {
    fn opt(mut self, code: u16, data: &[u8]) -> Self {
        self.opts.push((code, data.to_vec()));
        self
    }
    fn client(self, n: u8) -> Self {
        self.opt(1, &duid(n))
    }
    fn ours(self) -> Self {
        self.opt(2, &OUR_DUID)
    }
    fn ia(self, iaid: u32, addrs: &[Ipv6Addr]) -> Self {
        self.opt(3, &ia_body(iaid, addrs))
    }
    fn oro(self, codes: &[u16]) -> Self {
        let b: Vec<u8> = codes.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.opt(6, &b)
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.mt];
        b.extend_from_slice(&self.xid);
        for (code, data) in &self.opts {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(data.len() as u16).to_be_bytes());
            b.extend_from_slice(data);
        }
        b
    }
}

/// A reply, decoded by dhcproto.
#[derive(Debug)]
struct Got {
    kind: MessageType6,
    msg: v6::Message,
    raw: Vec<u8>,
}

impl Got {
    fn opts(&self) -> impl Iterator<Item = &DhcpOption> {
        self.msg.opts().iter()
    }
    fn ias(&self) -> Vec<IANA> {
        self.opts()
            .filter_map(|o| match o {
                DhcpOption::IANA(ia) => Some(ia.clone()),
                _ => None,
            })
            .collect()
    }
    fn status(&self) -> Option<(Status, String)> {
        self.opts().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some((s.status, s.msg.clone())),
            _ => None,
        })
    }
    fn has(&self, code: u16) -> bool {
        self.opts()
            .any(|o| u16::from(v6::OptionCode::from(o)) == code)
    }
    /// The single address of the single IA_NA, with its lifetimes.
    fn addr(&self) -> (Ipv6Addr, u32, u32) {
        let ias = self.ias();
        assert_eq!(ias.len(), 1, "{self:?}");
        let addrs = ia_addrs(&ias[0]);
        assert_eq!(addrs.len(), 1, "{self:?}");
        addrs[0]
    }
}

fn ia_addrs(ia: &IANA) -> Vec<(Ipv6Addr, u32, u32)> {
    ia.opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
            _ => None,
        })
        .collect()
}

fn ia_status(ia: &IANA) -> Option<Status> {
    ia.opts.iter().find_map(|o| match o {
        DhcpOption::StatusCode(s) => Some(s.status),
        _ => None,
    })
}

/// A server plus a clock and an output buffer.
struct H {
    s: Server6,
    t0: Instant,
    out: Vec<u8>,
}

impl H {
    fn new(c: Server6Config) -> Self {
        H {
            s: Server6::new(c).unwrap(),
            t0: Instant::now(),
            out: vec![0; 1500],
        }
    }
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }
    fn handle(&mut self, secs: u64, bytes: &[u8]) -> Outcome6 {
        let now = self.at(secs);
        let o = self.s.handle(now, CLIENT_MAC, bytes, &mut self.out);
        self.s.check_invariants().unwrap();
        o
    }
    fn reply(&mut self, secs: u64, bytes: &[u8]) -> Got {
        match self.handle(secs, bytes) {
            Outcome6::Reply { len, kind } => {
                assert!(len <= MAX_REPLY_LEN);
                let raw = self.out[..len].to_vec();
                let msg =
                    v6::Message::decode(&mut Decoder::new(&raw)).expect("dhcproto decodes it");
                assert_eq!(msg.xid(), [bytes[1], bytes[2], bytes[3]], "xid echoed");
                assert_eq!(raw[0], kind as u8);
                let got = Got { kind, msg, raw };
                assert!(
                    got.opts()
                        .any(|o| matches!(o, DhcpOption::ServerId(d) if d[..] == OUR_DUID)),
                    "server id in every reply"
                );
                got
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    fn ignored(&mut self, secs: u64, bytes: &[u8]) -> IgnoreReason6 {
        match self.handle(secs, bytes) {
            Outcome6::Ignored(r) => r,
            other => panic!("expected no reply, got {other:?}"),
        }
    }
    fn state(&self, a: Ipv6Addr) -> Option<Lease6State> {
        self.s.leases().find(|l| l.addr == a).map(|l| l.state)
    }
}

fn client_id_of(msg: &[u8]) -> Vec<u8> {
    let m = wire::Message::parse(msg).unwrap();
    m.client_id.unwrap().to_vec()
}

fn echoes_client_id(got: &Got, msg: &[u8]) {
    let cid = client_id_of(msg);
    assert!(
        got.opts()
            .any(|o| matches!(o, DhcpOption::ClientId(d) if *d == cid)),
        "client id echoed"
    );
}

// ---- real dhclient bytes ----

#[test]
fn dhclient_information_request_gets_dns_and_search_only() {
    let mut h = H::new(cfg());
    let got = h.reply(0, &DHCLIENT6_INFO_REQUEST);
    assert_eq!(got.kind, MessageType6::Reply);
    echoes_client_id(&got, &DHCLIENT6_INFO_REQUEST);
    assert!(
        got.opts()
            .any(|o| matches!(o, DhcpOption::DomainNameServers(d) if *d == vec![a6("fd00::3")]))
    );
    assert!(
        got.opts()
            .any(|o| matches!(o, DhcpOption::DomainSearchList(l)
        if l.len() == 1 && l[0].to_utf8() == "example.test."))
    );
    assert!(got.ias().is_empty());
    assert_eq!(got.status(), None);
    assert_eq!(h.s.leases().count(), 0);
    // The exact bytes, for the record: header, server id, client id, 23, 24.
    let mut expected = vec![7, 0x7b, 0x23, 0xc6, 0, 2, 0, 10];
    expected.extend_from_slice(&OUR_DUID);
    expected.extend_from_slice(&DHCLIENT6_INFO_REQUEST[4..18]);
    expected.extend_from_slice(&[
        0, 23, 0, 16, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3,
    ]);
    expected.extend_from_slice(&[0, 24, 0, 14, 7]);
    expected.extend_from_slice(b"example\x04test\x00");
    assert_eq!(got.raw, expected);
}

#[test]
fn dhclient_solicit_gets_advertise_with_lowest_free_address() {
    let mut h = H::new(cfg());
    let got = h.reply(0, &DHCLIENT6_SOLICIT);
    assert_eq!(got.kind, MessageType6::Advertise);
    echoes_client_id(&got, &DHCLIENT6_SOLICIT);
    assert!(got.opts().any(|o| matches!(o, DhcpOption::Preference(255))));
    let ias = got.ias();
    assert_eq!(
        (ias[0].id, ias[0].t1, ias[0].t2),
        (DHCLIENT_IAID, 43200, 69120)
    );
    assert_eq!(got.addr(), (a6("fd00::100"), 86400, 86400));
    assert!(got.has(23) && got.has(24));
    assert!(!got.has(14), "no rapid commit unless asked");
    assert_eq!(h.state(a6("fd00::100")), Some(Lease6State::Advertised));
    // An advertisement lapses after OFFER_TIMEOUT.
    assert_eq!(h.s.poll_at(), Some(h.at(60)));
    h.s.expire(h.at(60));
    assert_eq!(h.s.leases().count(), 0);
}

#[test]
fn dhclient_request_renew_confirm_release() {
    let mut h = H::new(cfg());
    // The captured Request names fd00::1f4 (dnsmasq's choice): free here, so granted.
    let got = h.reply(0, &DHCLIENT6_REQUEST);
    assert_eq!(got.kind, MessageType6::Reply);
    echoes_client_id(&got, &DHCLIENT6_REQUEST);
    assert_eq!(got.addr(), (a6("fd00::1f4"), 86400, 86400));
    let lease = h.s.leases().next().unwrap();
    assert_eq!(lease.state, Lease6State::Bound);
    assert_eq!(lease.iaid, DHCLIENT_IAID);
    assert_eq!(lease.duid, DHCLIENT6_SOLICIT[8..22].to_vec());
    assert_eq!(lease.expires, h.at(86400));
    // Renew half a day later extends it.
    let got = h.reply(43200, &DHCLIENT6_RENEW);
    assert_eq!(got.addr(), (a6("fd00::1f4"), 86400, 86400));
    assert_eq!(h.s.poll_at(), Some(h.at(43200 + 86400)));
    // Confirm after a restart: still on link.
    let got = h.reply(43300, &DHCLIENT6_CONFIRM);
    assert_eq!(got.status().unwrap().0, Status::Success);
    assert!(got.ias().is_empty());
    // Release frees it; the top-level status is Success.
    let got = h.reply(43400, &DHCLIENT6_RELEASE);
    assert_eq!(got.status().unwrap().0, Status::Success);
    assert!(got.ias().is_empty());
    assert_eq!(h.s.leases().count(), 0);
    assert_eq!(h.s.poll_at(), None);
    // The same DUID and IAID get the same address back, not the lowest free one.
    let got = h.reply(43500, &DHCLIENT6_SOLICIT);
    assert_eq!(got.addr().0, a6("fd00::1f4"));
}

#[test]
fn dhclient_full_exchange_through_solicit() {
    let mut h = H::new(cfg());
    let adv = h.reply(0, &DHCLIENT6_SOLICIT).addr().0;
    // The real Request lists dnsmasq's fd00::1f4, but this client's IA was just
    // advertised fd00::100: it keeps one address per IA, the advertised one.
    let got = h.reply(1, &DHCLIENT6_REQUEST);
    assert_eq!(got.addr().0, adv);
    assert_eq!(h.state(adv), Some(Lease6State::Bound));
    assert_eq!(h.s.leases().count(), 1);
    // Its Renew of fd00::1f4 gets fd00::100 plus fd00::1f4 with zero lifetimes.
    let got = h.reply(100, &DHCLIENT6_RENEW);
    let ias = got.ias();
    assert_eq!(
        ia_addrs(&ias[0]),
        vec![(adv, 86400, 86400), (a6("fd00::1f4"), 0, 0)]
    );
}

#[test]
fn foreign_server_messages_are_ignored() {
    let mut h = H::new(cfg());
    assert_eq!(
        h.ignored(0, &DNSMASQ6_ADVERTISE),
        IgnoreReason6::UnexpectedMessageType
    );
    // The captured Request to a server with another MAC is not for us.
    let mut c = cfg();
    c.server_mac = [0x52, 0x54, 0, 0, 0, 9];
    let mut h = H::new(c);
    assert_eq!(h.ignored(0, &DHCLIENT6_REQUEST), IgnoreReason6::NotForUs);
    assert_eq!(h.ignored(0, &DHCLIENT6_RENEW), IgnoreReason6::NotForUs);
    assert_eq!(h.ignored(0, &DHCLIENT6_RELEASE), IgnoreReason6::NotForUs);
    assert_eq!(h.s.leases().count(), 0);
}

// ---- hand-built messages ----

#[test]
fn rapid_commit_solicit_gets_a_committing_reply() {
    let mut h = H::new(cfg());
    let msg = m(MessageType6::Solicit).client(1).ia(7, &[]).opt(14, &[]);
    let got = h.reply(0, &msg.bytes());
    assert_eq!(got.kind, MessageType6::Reply);
    assert!(got.has(14));
    assert_eq!(got.addr().0, a6("fd00::100"));
    assert_eq!(h.state(a6("fd00::100")), Some(Lease6State::Bound));
}

#[test]
fn addresses_per_duid_and_iaid_lowest_first() {
    let mut h = H::new(cfg());
    let r = |h: &mut H, n, iaid| {
        let msg = m(MessageType6::Request).client(n).ours().ia(iaid, &[]);
        h.reply(0, &msg.bytes()).addr().0
    };
    assert_eq!(r(&mut h, 1, 1), a6("fd00::100"));
    assert_eq!(r(&mut h, 2, 1), a6("fd00::101"));
    assert_eq!(r(&mut h, 1, 2), a6("fd00::102"));
    assert_eq!(
        r(&mut h, 1, 1),
        a6("fd00::100"),
        "same DUID and IAID, same address"
    );
    // Two IAs in one message get one address each.
    let msg = m(MessageType6::Request)
        .client(3)
        .ours()
        .ia(1, &[])
        .ia(2, &[]);
    let got = h.reply(0, &msg.bytes());
    let addrs: Vec<_> = got.ias().iter().map(|ia| ia_addrs(ia)[0].0).collect();
    assert_eq!(addrs, vec![a6("fd00::103"), a6("fd00::104")]);
    let infos: Vec<_> = h.s.leases().map(|l| (l.iaid, l.duid[9])).collect();
    assert_eq!(infos, vec![(1, 1), (1, 2), (2, 1), (1, 3), (2, 3)]);
}

#[test]
fn excluded_taken_and_out_of_pool_hints_are_not_granted() {
    let mut c = cfg();
    c.pool_start = a6("fd00::1");
    c.excluded.push(a6("fd00::4"));
    let mut h = H::new(c);
    // (client, hint, granted): ::2 to ::4 are excluded, so ::5 is the lowest free
    // once ::1 is taken.
    for (n, hint, want) in [
        (1, "fd00::1", "fd00::1"),
        (2, "fd00::4", "fd00::5"),
        (3, "fd00::5", "fd00::6"),
        (4, "2001:db8::1", "fd00::7"),
        (5, "fd00::1:0", "fd00::8"),
        (6, "fd00::20", "fd00::20"),
    ] {
        let msg = m(MessageType6::Request).client(n).ours().ia(1, &[a6(hint)]);
        assert_eq!(h.reply(0, &msg.bytes()).addr().0, a6(want), "client {n}");
    }
}

#[test]
fn stateless_mode_gives_no_addresses() {
    let mut c = cfg();
    c.stateful = false;
    let mut h = H::new(c);
    let got = h.reply(0, &DHCLIENT6_SOLICIT);
    assert_eq!(got.kind, MessageType6::Advertise);
    assert_eq!(got.status().unwrap().0, Status::NoAddrsAvail);
    assert!(got.ias().is_empty());
    let got = h.reply(0, &DHCLIENT6_REQUEST);
    let ias = got.ias();
    assert_eq!(ia_status(&ias[0]), Some(Status::NoAddrsAvail));
    assert!(ia_addrs(&ias[0]).is_empty());
    // Rapid commit cannot commit anything: a plain Advertise.
    let msg = m(MessageType6::Solicit).client(1).ia(7, &[]).opt(14, &[]);
    assert_eq!(h.reply(0, &msg.bytes()).kind, MessageType6::Advertise);
    let got = h.reply(0, &DHCLIENT6_INFO_REQUEST);
    assert!(got.has(23) && got.has(24));
    assert_eq!(h.s.leases().count(), 0);
}

#[test]
fn oro_is_honoured() {
    let mut h = H::new(cfg());
    let base = || m(MessageType6::InformationRequest).client(1);
    let got = h.reply(0, &base().oro(&[23]).bytes());
    assert!(got.has(23) && !got.has(24));
    let got = h.reply(0, &base().oro(&[24, 32]).bytes());
    assert!(!got.has(23) && got.has(24));
    // dhcproto 0.15 does not decode option 32: read it from the raw bytes.
    assert!(
        got.raw.ends_with(&[0, 32, 0, 4, 0, 1, 0x51, 0x80]),
        "{:?}",
        got.raw
    );
    let got = h.reply(0, &base().oro(&[]).bytes());
    assert!(!got.has(23) && !got.has(24) && !got.has(32));
    let got = h.reply(0, &base().bytes());
    assert!(got.has(23) && got.has(24) && !got.has(32), "no ORO: both");
    // Empty configuration: never sent.
    let mut c = cfg();
    c.dns_servers.clear();
    c.search.clear();
    let mut h = H::new(c);
    let got = h.reply(0, &base().oro(&[23, 24]).bytes());
    assert!(!got.has(23) && !got.has(24));
    // Information-Request without a client id is answered too.
    let got = h.reply(0, &m(MessageType6::InformationRequest).bytes());
    assert!(!got.has(1));
}

#[test]
fn decline_sets_the_address_aside() {
    let mut h = H::new(cfg());
    let req = m(MessageType6::Request).client(1).ours().ia(1, &[]);
    let a = h.reply(0, &req.bytes()).addr().0;
    let dec = m(MessageType6::Decline).client(1).ours().ia(1, &[a]);
    let got = h.reply(5, &dec.bytes());
    assert_eq!(got.status().unwrap().0, Status::Success);
    assert_eq!(h.state(a), Some(Lease6State::Declined));
    // The client asks again and gets another address.
    let b = h.reply(6, &req.bytes()).addr().0;
    assert_ne!(a, b);
    // After the hold the address is free, and a new client gets it.
    h.s.expire(h.at(5 + DECLINE_HOLD.as_secs()));
    assert_eq!(h.state(a), None);
    let other = m(MessageType6::Request).client(2).ours().ia(1, &[]);
    assert_eq!(h.reply(700, &other.bytes()).addr().0, a);
}

#[test]
fn release_and_decline_of_unknown_ias_say_no_binding() {
    let mut h = H::new(cfg());
    for mt in [MessageType6::Release, MessageType6::Decline] {
        let msg = m(mt).client(1).ours().ia(9, &[a6("fd00::100")]);
        let got = h.reply(0, &msg.bytes());
        assert_eq!(got.status().unwrap().0, Status::Success);
        assert_eq!(ia_status(&got.ias()[0]), Some(Status::NoBinding));
    }
    assert_eq!(h.s.leases().count(), 0);
}

#[test]
fn confirm_checks_the_prefix() {
    let mut h = H::new(cfg());
    let on = m(MessageType6::Confirm)
        .client(1)
        .ia(1, &[a6("fd00::1234")]);
    assert_eq!(h.reply(0, &on.bytes()).status().unwrap().0, Status::Success);
    let off = m(MessageType6::Confirm)
        .client(1)
        .ia(1, &[a6("fd00::1"), a6("2001:db8::1")]);
    assert_eq!(
        h.reply(0, &off.bytes()).status().unwrap().0,
        Status::NotOnLink
    );
    let empty = m(MessageType6::Confirm).client(1).ia(1, &[]);
    assert_eq!(
        h.ignored(0, &empty.bytes()),
        IgnoreReason6::NothingToConfirm
    );
}

#[test]
fn renew_and_rebind_after_a_restart_of_usernet() {
    let mut h = H::new(cfg());
    // No binding (a new server), the client renews an address of the pool: granted.
    let renew = m(MessageType6::Renew)
        .client(1)
        .ours()
        .ia(1, &[a6("fd00::150")]);
    assert_eq!(
        h.reply(0, &renew.bytes()).addr(),
        (a6("fd00::150"), 86400, 86400)
    );
    let rebind = m(MessageType6::Rebind).client(1).ia(1, &[a6("fd00::150")]);
    assert_eq!(h.reply(10, &rebind.bytes()).addr().0, a6("fd00::150"));
    assert_eq!(h.s.poll_at(), Some(h.at(10 + 86400)));
    // Another client renewing that address gets a new one, the old one at zero.
    let thief = m(MessageType6::Rebind).client(2).ia(1, &[a6("fd00::150")]);
    let got = h.reply(20, &thief.bytes());
    assert_eq!(
        ia_addrs(&got.ias()[0]),
        vec![(a6("fd00::100"), 86400, 86400), (a6("fd00::150"), 0, 0)]
    );
    // Stateless: an IA with nothing in it gets NoAddrsAvail; addresses go to zero.
    let mut c = cfg();
    c.stateful = false;
    let mut h = H::new(c);
    let got = h.reply(0, &renew.bytes());
    assert_eq!(ia_addrs(&got.ias()[0]), vec![(a6("fd00::150"), 0, 0)]);
    let bare = m(MessageType6::Renew).client(1).ours().ia(1, &[]);
    let got = h.reply(0, &bare.bytes());
    assert_eq!(ia_status(&got.ias()[0]), Some(Status::NoAddrsAvail));
}

#[test]
fn pool_exhaustion_and_recovery() {
    let mut c = cfg();
    c.pool_end = a6("fd00::101");
    c.preferred_lifetime = Duration::from_secs(60);
    c.valid_lifetime = Duration::from_secs(120);
    let mut h = H::new(c);
    for n in 1..=2 {
        let req = m(MessageType6::Request).client(n).ours().ia(1, &[]);
        h.reply(0, &req.bytes()).addr();
    }
    let sol = m(MessageType6::Solicit).client(3).ia(1, &[]);
    let got = h.reply(1, &sol.bytes());
    assert_eq!(got.status().unwrap().0, Status::NoAddrsAvail);
    assert!(got.ias().is_empty());
    let req = m(MessageType6::Request).client(3).ours().ia(1, &[]);
    let got = h.reply(1, &req.bytes());
    assert_eq!(ia_status(&got.ias()[0]), Some(Status::NoAddrsAvail));
    // T1 = 30, T2 = 48 for a preferred lifetime of 60.
    let req1 = m(MessageType6::Request).client(1).ours().ia(1, &[]);
    let ia = &h.reply(2, &req1.bytes()).ias()[0];
    assert_eq!((ia.t1, ia.t2), (30, 48));
    // Client 2's binding lapses at 120 s: client 3 gets its address.
    assert_eq!(h.s.poll_at(), Some(h.at(120)));
    assert_eq!(h.reply(121, &sol.bytes()).addr().0, a6("fd00::101"));
}

#[test]
fn unsupported_ia_types_get_their_status() {
    let mut h = H::new(cfg());
    let msg = m(MessageType6::Solicit)
        .client(1)
        .ia(1, &[])
        .opt(4, &[0, 0, 0, 2])
        .opt(25, &[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
    let got = h.reply(0, &msg.bytes());
    assert_eq!(got.addr().0, a6("fd00::100"));
    let pd = got.opts().find_map(|o| match o {
        DhcpOption::IAPD(pd) => Some(pd.clone()),
        _ => None,
    });
    let pd = pd.expect("IA_PD answered");
    assert_eq!(pd.id, 3);
    assert!(pd.opts.iter().any(|o| matches!(o,
        DhcpOption::StatusCode(s) if s.status == Status::NoPrefixAvail)));
    assert!(got.has(4));
}

#[test]
fn rfc_8415_section_16_rules() {
    let mut h = H::new(cfg());
    let other = vec![0, 3, 0, 1, 1, 2, 3, 4, 5, 6];
    let cases = [
        (m(MessageType6::Solicit).ia(1, &[]), IgnoreReason6::Invalid),
        (
            m(MessageType6::Solicit).client(1).ours(),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Request).client(1).ia(1, &[]),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Request).ours().ia(1, &[]),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Rebind).client(1).ours(),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Confirm).client(1).ours(),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Renew).client(1).opt(2, &other),
            IgnoreReason6::NotForUs,
        ),
        (
            m(MessageType6::Release).client(1).opt(2, &other),
            IgnoreReason6::NotForUs,
        ),
        (
            m(MessageType6::InformationRequest).client(1).opt(2, &other),
            IgnoreReason6::NotForUs,
        ),
        (
            m(MessageType6::InformationRequest).client(1).ia(1, &[]),
            IgnoreReason6::Invalid,
        ),
        (
            m(MessageType6::Reply).client(1),
            IgnoreReason6::UnexpectedMessageType,
        ),
        (
            m(MessageType6::Reconfigure).client(1),
            IgnoreReason6::UnexpectedMessageType,
        ),
        (
            m(MessageType6::RelayForw),
            IgnoreReason6::UnexpectedMessageType,
        ),
        (
            M {
                mt: 0,
                xid: [0; 3],
                opts: vec![],
            },
            IgnoreReason6::UnexpectedMessageType,
        ),
        (
            M {
                mt: 200,
                xid: [0; 3],
                opts: vec![],
            },
            IgnoreReason6::UnexpectedMessageType,
        ),
        (
            m(MessageType6::Solicit).client(1).client(1),
            IgnoreReason6::Malformed,
        ),
        (
            m(MessageType6::Solicit).opt(1, &[0]),
            IgnoreReason6::Malformed,
        ),
        (
            m(MessageType6::Solicit).opt(1, &[0; 131]),
            IgnoreReason6::Malformed,
        ),
        (
            m(MessageType6::Solicit).client(1).opt(3, &[0; 11]),
            IgnoreReason6::Malformed,
        ),
        (
            m(MessageType6::Solicit).client(1).opt(6, &[0; 3]),
            IgnoreReason6::Malformed,
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(h.ignored(0, &msg.bytes()), want, "type {}", msg.mt);
    }
    for n in 0..4 {
        assert_eq!(
            h.ignored(0, &DHCLIENT6_SOLICIT[..n]),
            IgnoreReason6::Malformed
        );
    }
    let mut cut = DHCLIENT6_SOLICIT.to_vec();
    cut.pop();
    assert_eq!(h.ignored(0, &cut), IgnoreReason6::Malformed);
    assert_eq!(h.s.leases().count(), 0);
}

#[test]
fn small_buffers_are_refused_and_never_overrun() {
    let mut h = H::new(cfg());
    let mut out = [0x55u8; 200];
    let o =
        h.s.handle(h.t0, CLIENT_MAC, &DHCLIENT6_SOLICIT, &mut out[..30]);
    assert_eq!(o, Outcome6::Ignored(IgnoreReason6::OutputTooSmall));
    assert!(out[30..].iter().all(|&b| b == 0x55));
    // Room for identifiers and the IA but not for DNS and search: those are dropped.
    let o =
        h.s.handle(h.t0, CLIENT_MAC, &DHCLIENT6_SOLICIT, &mut out[..100]);
    let Outcome6::Reply { len, .. } = o else {
        panic!("{o:?}")
    };
    assert!(len <= 100);
    let msg = v6::Message::decode(&mut Decoder::new(&out[..len])).unwrap();
    assert!(msg.opts().iter().any(|o| matches!(o, DhcpOption::IANA(_))));
    // A huge buffer is still cut at MAX_REPLY_LEN.
    let mut c = cfg();
    c.search = (0..40)
        .map(|i| format!("a{i:02}.{}.test", "x".repeat(40)))
        .collect();
    let mut h = H::new(c);
    let mut big = vec![0u8; 4000];
    let o =
        h.s.handle(h.t0, CLIENT_MAC, &DHCLIENT6_INFO_REQUEST, &mut big);
    let Outcome6::Reply { len, .. } = o else {
        panic!("{o:?}")
    };
    assert!(len <= MAX_REPLY_LEN);
    assert!(big[MAX_REPLY_LEN..].iter().all(|&b| b == 0));
}

// ---- configuration ----

#[test]
fn default_layout() {
    let c = Server6Config::default_for(a6("fd00::1:2:3"), 64, SERVER_MAC);
    assert_eq!(c.prefix, a6("fd00::"));
    assert_eq!(
        (c.pool_start, c.pool_end),
        (a6("fd00::100"), a6("fd00::1ff"))
    );
    assert_eq!(c.excluded, vec![a6("fd00::2"), a6("fd00::3")]);
    assert_eq!(c.dns_servers, vec![a6("fd00::3")]);
    assert!(c.stateful && c.search.is_empty());
    assert_eq!(c.preferred_lifetime, Duration::from_secs(86400));
    let s = Server6::new(c).unwrap();
    assert_eq!(s.duid(), &OUR_DUID);
    assert_eq!(s.config().prefix_len, 64);
}

#[test]
fn bad_configurations_are_refused_with_sentences() {
    let check = |f: &dyn Fn(&mut Server6Config), want: &str| {
        let mut c = cfg();
        f(&mut c);
        let e = Server6::new(c).unwrap_err();
        assert_eq!(e.to_string(), want);
    };
    check(
        &|c| c.prefix_len = 0,
        "DHCPv6 prefix length /0 is not usable: expected 1 to 127",
    );
    check(
        &|c| c.prefix_len = 128,
        "DHCPv6 prefix length /128 is not usable: expected 1 to 127",
    );
    check(
        &|c| c.pool_end = a6("fd00::1"),
        "DHCPv6 range \"fd00::100-fd00::1\": the first address must not be above the last",
    );
    check(
        &|c| c.pool_end = a6("fd01::1"),
        "DHCPv6 range \"fd00::100-fd01::1\": fd01::1 is not inside the prefix fd00::/64",
    );
    check(
        &|c| c.pool_end = a6("fd00::1:0:100"),
        "DHCPv6 range \"fd00::100-fd00::1:0:100\" holds more than 65536 addresses",
    );
    check(
        &|c| {
            c.pool_start = a6("fd00::2");
            c.pool_end = a6("fd00::3");
        },
        "DHCPv6 range \"fd00::2-fd00::3\" has no address left to hand out once the excluded addresses are removed",
    );
    check(
        &|c| {
            c.pool_start = a6("fd00::");
            c.pool_end = a6("fd00::");
        },
        "DHCPv6 range \"fd00::-fd00::\" has no address left to hand out once the excluded addresses are removed",
    );
    check(
        &|c| c.preferred_lifetime = Duration::from_secs(90000),
        "DHCPv6 lifetimes preferred 90000 s, valid 86400 s: expected 60 to 4294967294 seconds each, preferred not above valid",
    );
    check(
        &|c| c.preferred_lifetime = Duration::from_secs(59),
        "DHCPv6 lifetimes preferred 59 s, valid 86400 s: expected 60 to 4294967294 seconds each, preferred not above valid",
    );
    check(
        &|c| c.valid_lifetime = Duration::from_secs(1 << 32),
        "DHCPv6 lifetimes preferred 86400 s, valid 4294967296 s: expected 60 to 4294967294 seconds each, preferred not above valid",
    );
    check(
        &|c| c.search = vec!["bad name".into()],
        "DHCPv6 search domain \"bad name\" is not a valid DNS name: expected only letters, digits, '-' and '_' between dots",
    );
    // A 65536-address pool is fine.
    let mut c = cfg();
    c.pool_end = a6("fd00::1:ff");
    assert!(Server6::new(c).is_ok());
}

#[test]
fn ignore_reasons_index_their_table() {
    for (i, r) in IgnoreReason6::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(!r.name().is_empty());
    }
}

// ---- fuzz target and properties ----

#[test]
fn fuzz_target_replays_the_seed_corpus() {
    let seeds: [&[u8]; 7] = [
        &DHCLIENT6_INFO_REQUEST,
        &DHCLIENT6_SOLICIT,
        &DHCLIENT6_REQUEST,
        &DHCLIENT6_CONFIRM,
        &DHCLIENT6_RENEW,
        &DHCLIENT6_RELEASE,
        &DNSMASQ6_ADVERTISE,
    ];
    for seed in seeds {
        crate::fuzz::dhcpv6(seed);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dhcpv6");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        crate::fuzz::dhcpv6(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 4);
    let mut joined = DHCLIENT6_SOLICIT.to_vec();
    for m in &seeds[1..] {
        joined.extend_from_slice(&[0xff; 4]);
        joined.extend_from_slice(m);
    }
    crate::fuzz::dhcpv6(&joined);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        crate::fuzz::dhcpv6(&data);
    }

    #[test]
    fn structured_option_soup_never_panics(
        mt in 0u8..14,
        opts in proptest::collection::vec(
            (prop_oneof![Just(1u16), Just(2), Just(3), Just(4), Just(5), Just(6), Just(14), Just(25), any::<u16>()],
             proptest::collection::vec(any::<u8>(), 0..60)),
            0..8),
        with_ours in any::<bool>(),
        with_client in any::<bool>(),
    ) {
        let mut msg = M { mt, xid: [1, 2, 3], opts: Vec::new() };
        if with_client { msg = msg.client(1); }
        if with_ours { msg = msg.ours(); }
        for (code, data) in opts {
            msg = msg.opt(code, &data);
        }
        crate::fuzz::dhcpv6(&msg.bytes());
    }

    #[test]
    fn random_conversations_keep_the_table_sound(
        steps in proptest::collection::vec((1u8..12, 0u8..4, 0u32..3, proptest::option::of(0u16..0x300), 0u64..400), 1..50)
    ) {
        let mut c = cfg();
        c.pool_end = a6("fd00::107");
        c.preferred_lifetime = Duration::from_secs(100);
        c.valid_lifetime = Duration::from_secs(300);
        let mut h = H::new(c);
        let mut t = 0;
        for (mt, client, iaid, hint, dt) in steps {
            t += dt;
            let Some(mt) = MessageType6::from_u8(mt) else { continue };
            let hint: Vec<Ipv6Addr> = hint.map(|o| Ipv6Addr::from(u128::from(a6("fd00::")) + u128::from(o))).into_iter().collect();
            let mut msg = m(mt).client(client).ia(iaid, &hint);
            if matches!(mt, MessageType6::Request | MessageType6::Renew | MessageType6::Release | MessageType6::Decline) {
                msg = msg.ours();
            }
            let _ = h.handle(t, &msg.bytes());
            let n = h.s.leases().count();
            prop_assert!(n <= 8);
            let bound: Vec<_> = h.s.leases().filter(|l| l.state != Lease6State::Declined).map(|l| (l.duid.clone(), l.iaid)).collect();
            let mut dedup = bound.clone();
            dedup.sort();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), bound.len(), "one address per DUID and IAID");
        }
    }
}
