//! Server behaviour tests: real udhcpc/dhclient bytes plus hand-built messages for the
//! remaining RFC 2131 paths. Replies are decoded with `dhcproto`, an independent
//! implementation, so a mistake in our writer cannot hide behind our own reader.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, OptionCode};
use dhcproto::{Decodable, Decoder};
use proptest::prelude::*;

use crate::testdata::*;
use crate::*;

const UDHCPC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DHCLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const MAC_C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
const BCAST: [u8; 6] = [0xff; 6];

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, d)
}

fn slirp() -> ServerConfig {
    ServerConfig::slirp_default(Ipv4Addr::new(10, 0, 2, 0), 24)
}

/// A client message built field by field.
#[derive(Clone)]
struct Msg {
    op: u8,
    mac: [u8; 6],
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    opts: Vec<(u8, Vec<u8>)>,
}

fn msg(mt: MessageType, mac: [u8; 6]) -> Msg {
    Msg {
        op: 1,
        mac,
        xid: 0x1234_5678,
        flags: 0,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        opts: vec![(53, vec![mt as u8])],
    }
}

impl Msg {
    fn opt(mut self, code: u8, data: &[u8]) -> Self {
        self.opts.push((code, data.to_vec()));
        self
    }
    fn requested(self, a: Ipv4Addr) -> Self {
        self.opt(50, &a.octets())
    }
    fn server_id(self, a: Ipv4Addr) -> Self {
        self.opt(54, &a.octets())
    }
    fn ciaddr(mut self, a: Ipv4Addr) -> Self {
        self.ciaddr = a;
        self
    }
    fn broadcast(mut self) -> Self {
        self.flags = 0x8000;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = self.op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        for (code, data) in &self.opts {
            b.push(*code);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        }
        b.push(255);
        b
    }
}

/// A server plus a clock and an output buffer.
struct H {
    s: Server,
    t0: Instant,
    out: Vec<u8>,
}

/// A reply, decoded by dhcproto.
struct Got {
    reply: Reply,
    msg: v4::Message,
    raw: Vec<u8>,
}

impl Got {
    fn opt(&self, code: OptionCode) -> Option<&DhcpOption> {
        self.msg.opts().get(code)
    }
    fn has(&self, code: u8) -> bool {
        self.msg.opts().get(OptionCode::from(code)).is_some()
    }
    /// Option codes in the order they were written, from the raw bytes.
    fn codes(&self) -> Vec<u8> {
        let mut codes = Vec::new();
        let mut i = 240;
        while i < self.raw.len() && self.raw[i] != 255 {
            if self.raw[i] == 0 {
                i += 1;
                continue;
            }
            codes.push(self.raw[i]);
            i += 2 + self.raw[i + 1] as usize;
        }
        codes
    }
    /// The raw value of the first option `code`.
    fn raw_opt(&self, code: u8) -> Vec<u8> {
        let mut i = 240;
        let mut v = Vec::new();
        while i < self.raw.len() && self.raw[i] != 255 {
            if self.raw[i] == 0 {
                i += 1;
                continue;
            }
            let len = self.raw[i + 1] as usize;
            if self.raw[i] == code {
                v.extend_from_slice(&self.raw[i + 2..i + 2 + len]);
            }
            i += 2 + len;
        }
        v
    }
}

impl H {
    fn new(cfg: ServerConfig) -> Self {
        H {
            s: Server::new(cfg).unwrap(),
            t0: Instant::now(),
            out: vec![0xaa; 1500],
        }
    }
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }
    fn handle(&mut self, secs: u64, src_mac: [u8; 6], bytes: &[u8]) -> Outcome {
        let now = self.at(secs);
        let o = self.s.handle(now, src_mac, bytes, &mut self.out);
        self.s.check_invariants().unwrap();
        o
    }
    fn reply(&mut self, secs: u64, src_mac: [u8; 6], bytes: &[u8]) -> Got {
        match self.handle(secs, src_mac, bytes) {
            Outcome::Reply(reply) => {
                let raw = self.out[..reply.len].to_vec();
                let msg = v4::Message::decode(&mut Decoder::new(&raw)).unwrap();
                assert_eq!(msg.opcode(), v4::Opcode::BootReply);
                assert_eq!(
                    msg.opts().msg_type().map(u8::from),
                    Some(reply.message_type as u8)
                );
                Got { reply, msg, raw }
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    fn ignored(&mut self, secs: u64, src_mac: [u8; 6], bytes: &[u8]) -> IgnoreReason {
        match self.handle(secs, src_mac, bytes) {
            Outcome::Ignored(r) => r,
            other => panic!("expected no reply, got {other:?}"),
        }
    }
    /// DISCOVER + REQUEST for `mac`; returns the bound address.
    fn bind(&mut self, secs: u64, mac: [u8; 6]) -> Ipv4Addr {
        let offer = self.reply(secs, mac, &msg(MessageType::Discover, mac).bytes());
        assert_eq!(offer.reply.message_type, MessageType::Offer);
        let a = offer.msg.yiaddr();
        let req = msg(MessageType::Request, mac).requested(a).server_id(ip(2));
        let ack = self.reply(secs, mac, &req.bytes());
        assert_eq!(ack.reply.message_type, MessageType::Ack);
        assert_eq!(ack.msg.yiaddr(), a);
        a
    }
    fn state_of(&self, a: Ipv4Addr) -> Option<LeaseState> {
        self.s.leases().find(|l| l.addr == a).map(|l| l.state)
    }
}

// ---- real captured clients ----

#[test]
fn udhcpc_discover_gets_offer_with_only_requested_options() {
    let mut h = H::new(slirp());
    let g = h.reply(0, UDHCPC_MAC, &UDHCPC_DISCOVER);
    assert_eq!(g.reply.message_type, MessageType::Offer);
    assert_eq!(g.msg.yiaddr(), ip(15));
    assert_eq!(
        g.msg.xid(),
        u32::from_be_bytes([
            UDHCPC_DISCOVER[4],
            UDHCPC_DISCOVER[5],
            UDHCPC_DISCOVER[6],
            UDHCPC_DISCOVER[7]
        ])
    );
    assert_eq!(g.msg.chaddr(), &UDHCPC_MAC);
    // Flags 0: unicast to the offered address at chaddr.
    assert_eq!((g.reply.dst_ip, g.reply.dst_mac), (ip(15), UDHCPC_MAC));
    // PRL 1 3 6 12 15 28 42: we have 1, 3, 6; plus mandatory 53, 54, 51.
    assert_eq!(g.codes(), vec![53, 54, 51, 1, 3, 6]);
    assert_eq!(
        g.opt(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        g.opt(OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(2)]))
    );
    assert_eq!(
        g.opt(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip(3)]))
    );
    assert_eq!(
        g.opt(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(ip(2)))
    );
    assert_eq!(
        g.opt(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(86_400))
    );
    assert_eq!(g.reply.len, 300, "padded to the BOOTP minimum");
    let l: Vec<LeaseInfo> = h.s.leases().collect();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].state, LeaseState::Offered);
    assert_eq!(l[0].hostname.as_deref(), Some("guest1"));
    assert_eq!(
        l[0].client_id.as_deref(),
        Some(&[1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56][..])
    );
    assert_eq!(l[0].expires, h.at(0) + OFFER_TIMEOUT);
    assert_eq!(h.s.lease_for_mac(UDHCPC_MAC), None, "offered is not bound");
}

#[test]
fn udhcpc_full_exchange() {
    // The capture was made against a server that offered .21.
    let mut cfg = slirp();
    cfg.pool_start = ip(21);
    let mut h = H::new(cfg);
    assert_eq!(
        h.reply(0, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr(),
        ip(21)
    );
    let ack = h.reply(1, UDHCPC_MAC, &UDHCPC_REQUEST);
    assert_eq!(ack.reply.message_type, MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), ip(21));
    assert_eq!((ack.reply.dst_ip, ack.reply.dst_mac), (ip(21), UDHCPC_MAC));
    assert_eq!(h.s.lease_for_mac(UDHCPC_MAC), Some(ip(21)));
    assert_eq!(h.state_of(ip(21)), Some(LeaseState::Bound));
    assert_eq!(h.s.poll_at(), Some(h.at(1) + Duration::from_secs(86_400)));
}

#[test]
fn dhclient_full_exchange_with_every_option() {
    let mut cfg = slirp();
    cfg.pool_start = ip(30);
    cfg.mtu = Some(1400);
    cfg.hostname = Some("guest".into());
    cfg.domain_name = Some("usernet.test".into());
    cfg.search = vec!["usernet.test".into(), "example.org.".into()];
    cfg.classless_routes = vec![
        (Ipv4Addr::UNSPECIFIED, 0, ip(2)),
        (Ipv4Addr::new(192, 168, 128, 0), 17, ip(9)),
        (Ipv4Addr::new(10, 1, 0, 0), 24, ip(2)),
    ];
    let mut h = H::new(cfg);
    let g = h.reply(0, DHCLIENT_MAC, &DHCLIENT_DISCOVER);
    assert_eq!(g.msg.yiaddr(), ip(30));
    // PRL 1 28 2 3 15 6 119 12 44 47 26 121 42, in that order, minus what we lack.
    assert_eq!(g.codes(), vec![53, 54, 51, 1, 3, 15, 6, 119, 12, 26, 121]);
    assert_eq!(
        g.opt(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("guest".into()))
    );
    assert_eq!(
        g.opt(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("usernet.test".into()))
    );
    assert_eq!(
        g.opt(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1400))
    );
    // 119: RFC 1035 labels, uncompressed.
    assert_eq!(
        g.raw_opt(119),
        b"\x07usernet\x04test\x00\x07example\x03org\x00".to_vec()
    );
    let Some(DhcpOption::DomainSearch(names)) = g.opt(OptionCode::DomainSearch) else {
        panic!()
    };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["usernet.test.", "example.org."]);
    // 121: width, significant destination octets, router.
    assert_eq!(
        g.raw_opt(121),
        vec![
            0, 10, 0, 2, 2, 17, 192, 168, 128, 10, 0, 2, 9, 24, 10, 1, 0, 10, 0, 2, 2
        ]
    );
    let Some(DhcpOption::ClasslessStaticRoute(routes)) = g.opt(OptionCode::ClasslessStaticRoute)
    else {
        panic!()
    };
    let routes: Vec<String> = routes.iter().map(|(n, r)| format!("{n} {r}")).collect();
    assert_eq!(
        routes,
        [
            "0.0.0.0/0 10.0.2.2",
            "192.168.128.0/17 10.0.2.9",
            "10.1.0.0/24 10.0.2.2"
        ]
    );
    assert!(!g.has(58) && !g.has(59), "not requested");

    let ack = h.reply(1, DHCLIENT_MAC, &DHCLIENT_REQUEST);
    assert_eq!(ack.reply.message_type, MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), ip(30));
    let l: Vec<LeaseInfo> = h.s.leases().collect();
    assert_eq!(
        (l[0].addr, l[0].mac, l[0].state),
        (ip(30), DHCLIENT_MAC, LeaseState::Bound)
    );
    assert_eq!(l[0].client_id, None);
    assert_eq!(l[0].hostname.as_deref(), Some("vm"));
}

#[test]
fn dhclient_init_reboot() {
    let mut cfg = slirp();
    cfg.pool_start = ip(30);
    // Bound to .30 already: the reboot check is acknowledged.
    let mut h = H::new(cfg.clone());
    h.reply(0, DHCLIENT_MAC, &DHCLIENT_DISCOVER);
    h.reply(1, DHCLIENT_MAC, &DHCLIENT_REQUEST);
    let g = h.reply(2, DHCLIENT_MAC, &DHCLIENT_INIT_REBOOT);
    assert_eq!(
        (g.reply.message_type, g.msg.yiaddr()),
        (MessageType::Ack, ip(30))
    );
    assert_eq!((g.reply.dst_ip, g.reply.dst_mac), (ip(30), DHCLIENT_MAC));
    // No record (usernet restarted) and .30 free: acknowledged, authoritatively.
    let mut h = H::new(cfg);
    let g = h.reply(0, DHCLIENT_MAC, &DHCLIENT_INIT_REBOOT);
    assert_eq!(
        (g.reply.message_type, g.msg.yiaddr()),
        (MessageType::Ack, ip(30))
    );
    assert_eq!(h.s.lease_for_mac(DHCLIENT_MAC), Some(ip(30)));
    // Bound elsewhere: NAK, broadcast.
    let mut h = H::new(slirp());
    assert_eq!(h.bind(0, DHCLIENT_MAC), ip(15));
    let g = h.reply(1, DHCLIENT_MAC, &DHCLIENT_INIT_REBOOT);
    assert_eq!(
        (g.reply.message_type, g.reply.dst_ip, g.reply.dst_mac),
        (MessageType::Nak, Ipv4Addr::BROADCAST, BCAST)
    );
    // Someone else holds .30: NAK.
    let mut cfg = slirp();
    cfg.pool_start = ip(30);
    let mut h = H::new(cfg);
    assert_eq!(h.bind(0, MAC_A), ip(30));
    let g = h.reply(1, DHCLIENT_MAC, &DHCLIENT_INIT_REBOOT);
    assert_eq!(g.reply.message_type, MessageType::Nak);
}

#[test]
fn request_for_address_not_offered_is_nak_broadcast() {
    let mut h = H::new(slirp());
    assert_eq!(
        h.reply(0, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr(),
        ip(15)
    );
    // The captured REQUEST asks for .21.
    let nak = h.reply(1, UDHCPC_MAC, &UDHCPC_REQUEST);
    assert_eq!(nak.reply.message_type, MessageType::Nak);
    assert_eq!(
        (nak.reply.dst_ip, nak.reply.dst_mac),
        (Ipv4Addr::BROADCAST, BCAST)
    );
    assert_eq!(nak.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(nak.codes(), vec![53, 54, 56]);
    assert!(!nak.has(51) && !nak.has(1));
    assert_eq!(
        h.state_of(ip(15)),
        Some(LeaseState::Offered),
        "the offer stands"
    );
}

#[test]
fn udhcpc_and_dhclient_on_one_mac_share_the_lease() {
    let mut h = H::new(slirp());
    // udhcpc identifies itself by client-id 01:<mac>; dhclient by chaddr alone.
    let a = h.reply(0, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr();
    let plain = msg(MessageType::Discover, UDHCPC_MAC);
    assert_eq!(h.reply(1, UDHCPC_MAC, &plain.bytes()).msg.yiaddr(), a);
    // A different client-id on the same MAC is a different client.
    let other = msg(MessageType::Discover, UDHCPC_MAC).opt(61, b"\xffduid-ish");
    assert_ne!(h.reply(2, UDHCPC_MAC, &other.bytes()).msg.yiaddr(), a);
}

// ---- options ----

#[test]
fn no_parameter_request_list_sends_the_usual_set() {
    let mut cfg = slirp();
    cfg.mtu = Some(1500);
    cfg.lease_time = Duration::from_secs(3600);
    let mut h = H::new(cfg);
    let g = h.reply(0, MAC_A, &msg(MessageType::Discover, MAC_A).bytes());
    // No host name, domain, search or routes configured: those stay out.
    assert_eq!(g.codes(), vec![53, 54, 51, 1, 3, 6, 26, 58, 59]);
    assert_eq!(
        g.opt(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(g.opt(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(
        g.opt(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
}

#[test]
fn parameter_request_list_is_honoured_and_deduplicated() {
    let mut cfg = slirp();
    cfg.dns_servers = vec![];
    let mut h = H::new(cfg);
    let m = msg(MessageType::Discover, MAC_A).opt(55, &[59, 58, 6, 1, 59, 200, 0]);
    let g = h.reply(0, MAC_A, &m.bytes());
    assert_eq!(
        g.codes(),
        vec![53, 54, 51, 1, 59, 58],
        "empty DNS list omitted, 1 not twice"
    );
    let m = msg(MessageType::Discover, MAC_A).opt(55, &[]);
    assert_eq!(h.reply(0, MAC_A, &m.bytes()).codes(), vec![53, 54, 51, 1]);
}

#[test]
fn long_options_are_split_and_fit_the_client_limit() {
    let mut cfg = slirp();
    // 8 names of 4 labels of 20 bytes: 8 * 85 = 680 bytes of option 119.
    cfg.search = (0..8)
        .map(|i| {
            format!(
                "{}{i}.{}.{}.{}",
                "a".repeat(19),
                "b".repeat(20),
                "c".repeat(20),
                "d".repeat(20)
            )
        })
        .collect();
    cfg.dns_servers = (1..=100).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    let mut h = H::new(cfg);
    // Default limit: 576-byte datagrams, so neither 680 bytes of search list nor 400
    // bytes of DNS fit; the mandatory options and the router still go out.
    let small = h.reply(
        0,
        MAC_A,
        &msg(MessageType::Discover, MAC_A)
            .opt(55, &[6, 3, 119])
            .bytes(),
    );
    assert!(small.reply.len <= 548, "{}", small.reply.len);
    assert_eq!(small.codes(), vec![53, 54, 51, 1, 3]);
    // With option 57 = 1500 both fit, split into 255-byte pieces (RFC 3396).
    let big = msg(MessageType::Discover, MAC_A)
        .opt(55, &[6, 3, 119])
        .opt(57, &1500u16.to_be_bytes());
    let g = h.reply(1, MAC_A, &big.bytes());
    assert!(g.reply.len <= 1472);
    assert_eq!(g.codes(), vec![53, 54, 51, 1, 6, 6, 3, 119, 119, 119]);
    let Some(DhcpOption::DomainNameServer(dns)) = g.opt(OptionCode::DomainNameServer) else {
        panic!()
    };
    assert_eq!(dns.len(), 100);
    let Some(DhcpOption::DomainSearch(names)) = g.opt(OptionCode::DomainSearch) else {
        panic!()
    };
    assert_eq!(names.len(), 8);
    // A caller buffer smaller than the client limit is respected too.
    let mut out = vec![0u8; 700];
    let Outcome::Reply(r) = h.s.handle(h.at(2), MAC_A, &big.bytes(), &mut out) else {
        panic!()
    };
    assert!(r.len <= 700);
}

// ---- message types and addressing ----

#[test]
fn broadcast_flag_means_broadcast_reply() {
    let mut h = H::new(slirp());
    let g = h.reply(
        0,
        MAC_A,
        &msg(MessageType::Discover, MAC_A).broadcast().bytes(),
    );
    assert_eq!(
        (g.reply.dst_ip, g.reply.dst_mac),
        (Ipv4Addr::BROADCAST, BCAST)
    );
    assert!(g.msg.flags().broadcast(), "flags copied");
    let req = msg(MessageType::Request, MAC_A)
        .broadcast()
        .requested(ip(15))
        .server_id(ip(2));
    let g = h.reply(0, MAC_A, &req.bytes());
    assert_eq!(
        (g.reply.message_type, g.reply.dst_ip, g.reply.dst_mac),
        (MessageType::Ack, Ipv4Addr::BROADCAST, BCAST)
    );
}

#[test]
fn renewing_and_rebinding_extend_the_lease_by_unicast() {
    let mut h = H::new(slirp());
    let a = h.bind(0, MAC_A);
    // RENEWING: unicast, ciaddr set, no 50/54. The frame may come from another MAC
    // (a bridge); the reply goes to the frame's source.
    let renew = msg(MessageType::Request, MAC_A).ciaddr(a);
    let g = h.reply(40_000, MAC_B, &renew.bytes());
    assert_eq!(g.reply.message_type, MessageType::Ack);
    assert_eq!((g.reply.dst_ip, g.reply.dst_mac), (a, MAC_B));
    assert_eq!((g.msg.ciaddr(), g.msg.yiaddr()), (a, a));
    assert_eq!(h.s.poll_at(), Some(h.at(40_000 + 86_400)));
    // REBINDING: broadcast, ciaddr set.
    let rebind = msg(MessageType::Request, MAC_A).ciaddr(a).broadcast();
    let g = h.reply(80_000, MAC_A, &rebind.bytes());
    assert_eq!(
        (g.reply.message_type, g.reply.dst_ip),
        (MessageType::Ack, a)
    );
    // Renewing someone else's address is refused.
    let wrong = msg(MessageType::Request, MAC_A).ciaddr(ip(99));
    assert_eq!(
        h.reply(80_001, MAC_A, &wrong.bytes()).reply.message_type,
        MessageType::Nak
    );
}

#[test]
fn init_reboot() {
    let mut h = H::new(slirp());
    let a = h.bind(0, MAC_A);
    // Right address: ACK.
    let ok = msg(MessageType::Request, MAC_A).requested(a);
    let g = h.reply(10, MAC_A, &ok.bytes());
    assert_eq!(
        (g.reply.message_type, g.msg.yiaddr()),
        (MessageType::Ack, a)
    );
    // Wrong address (the client moved networks): NAK, broadcast; the lease stays.
    let wrong = msg(MessageType::Request, MAC_A).requested(Ipv4Addr::new(192, 168, 1, 50));
    let g = h.reply(11, MAC_A, &wrong.bytes());
    assert_eq!(
        (g.reply.message_type, g.reply.dst_ip, g.reply.dst_mac),
        (MessageType::Nak, Ipv4Addr::BROADCAST, BCAST)
    );
    let other = msg(MessageType::Request, MAC_A).requested(ip(20));
    assert_eq!(
        h.reply(12, MAC_A, &other.bytes()).reply.message_type,
        MessageType::Nak
    );
    assert_eq!(h.s.lease_for_mac(MAC_A), Some(a));
    // A client we have no record of (usernet restarted) gets a free address it asks for.
    let newcomer = msg(MessageType::Request, MAC_B).requested(ip(40));
    let g = h.reply(13, MAC_B, &newcomer.bytes());
    assert_eq!(
        (g.reply.message_type, g.msg.yiaddr()),
        (MessageType::Ack, ip(40))
    );
    // ... but not one that is taken, nor one outside the pool.
    let taken = msg(MessageType::Request, [9; 6]).requested(a);
    assert_eq!(
        h.reply(14, [9; 6], &taken.bytes()).reply.message_type,
        MessageType::Nak
    );
    let outside = msg(MessageType::Request, [9; 6]).requested(ip(3));
    assert_eq!(
        h.reply(14, [9; 6], &outside.bytes()).reply.message_type,
        MessageType::Nak
    );
}

#[test]
fn selecting_another_server_withdraws_our_offer() {
    let mut h = H::new(slirp());
    h.reply(0, MAC_A, &msg(MessageType::Discover, MAC_A).bytes());
    let elsewhere = msg(MessageType::Request, MAC_A)
        .requested(ip(15))
        .server_id(ip(1));
    assert_eq!(
        h.ignored(1, MAC_A, &elsewhere.bytes()),
        IgnoreReason::NotForUs
    );
    assert_eq!(h.s.leases().count(), 0);
    assert_eq!(h.s.poll_at(), None);
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut cfg = slirp();
    cfg.mtu = Some(1500);
    let mut h = H::new(cfg);
    let m = msg(MessageType::Inform, MAC_A).ciaddr(ip(100));
    let g = h.reply(0, MAC_A, &m.bytes());
    assert_eq!(g.reply.message_type, MessageType::Ack);
    assert_eq!(
        (g.msg.ciaddr(), g.msg.yiaddr()),
        (ip(100), Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!((g.reply.dst_ip, g.reply.dst_mac), (ip(100), MAC_A));
    assert_eq!(g.codes(), vec![53, 54, 1, 3, 6, 26]);
    assert_eq!(h.s.leases().count(), 0);
}

#[test]
fn release_frees_and_remembers() {
    let mut h = H::new(slirp());
    let a = h.bind(0, MAC_A);
    let wrong_server = msg(MessageType::Release, MAC_A).ciaddr(a).server_id(ip(1));
    assert_eq!(
        h.ignored(1, MAC_A, &wrong_server.bytes()),
        IgnoreReason::NotForUs
    );
    let not_theirs = msg(MessageType::Release, MAC_B).ciaddr(a);
    assert_eq!(
        h.ignored(1, MAC_B, &not_theirs.bytes()),
        IgnoreReason::UnknownClient
    );
    let rel = msg(MessageType::Release, MAC_A).ciaddr(a).server_id(ip(2));
    assert_eq!(h.ignored(2, MAC_A, &rel.bytes()), IgnoreReason::Released);
    assert_eq!(h.s.leases().count(), 0);
    // Someone else arrives: gets a fresh address, not the remembered one.
    let b = h.bind(3, MAC_B);
    assert_ne!(a, b);
    // The first client comes back: same address.
    assert_eq!(h.bind(4, MAC_A), a);
}

#[test]
fn same_address_after_client_restart() {
    let mut h = H::new(slirp());
    let a = h.reply(0, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr();
    let req = msg(MessageType::Request, UDHCPC_MAC)
        .opt(61, &[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])
        .requested(a)
        .server_id(ip(2));
    assert_eq!(
        h.reply(1, UDHCPC_MAC, &req.bytes()).reply.message_type,
        MessageType::Ack
    );
    // Restart while bound: the fresh DISCOVER is offered the bound address.
    assert_eq!(h.reply(100, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr(), a);
    assert_eq!(
        h.state_of(a),
        Some(LeaseState::Bound),
        "re-offering keeps the binding"
    );
    // The lease runs out while the guest is away; another client takes one address.
    h.s.expire(h.at(100 + 86_400 + 1));
    assert_eq!(h.s.leases().count(), 0);
    let other = h.bind(200_000, MAC_B);
    assert_ne!(other, a);
    // The guest comes back: its old address again.
    assert_eq!(
        h.reply(200_001, UDHCPC_MAC, &UDHCPC_DISCOVER).msg.yiaddr(),
        a
    );
}

#[test]
fn two_macs_get_two_addresses_lowest_first() {
    let mut h = H::new(slirp());
    assert_eq!(h.bind(0, MAC_A), ip(15));
    assert_eq!(h.bind(0, MAC_B), ip(16));
    assert_eq!(h.s.lease_for_mac(MAC_A), Some(ip(15)));
    assert_eq!(h.s.lease_for_mac(MAC_B), Some(ip(16)));
    let addrs: Vec<Ipv4Addr> = h.s.leases().map(|l| l.addr).collect();
    assert_eq!(addrs, [ip(15), ip(16)]);
}

#[test]
fn requested_address_honoured_when_free() {
    let mut h = H::new(slirp());
    let m = msg(MessageType::Discover, MAC_A).requested(ip(77));
    assert_eq!(h.reply(0, MAC_A, &m.bytes()).msg.yiaddr(), ip(77));
    // Taken, excluded, outside the pool: fall back to the lowest free.
    for bad in [
        ip(77),
        ip(100),
        ip(3),
        ip(2),
        ip(5),
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        let m = msg(MessageType::Discover, [7, 7, 7, 7, 7, bad.octets()[3]]).requested(bad);
        let got = h.reply(0, MAC_B, &m.bytes()).msg.yiaddr();
        assert_ne!(got, bad);
        assert!(got >= ip(15));
    }
}

#[test]
fn reservation_is_kept_for_its_mac_only() {
    let mut cfg = slirp();
    cfg.reservations = vec![(MAC_B, ip(15)), (MAC_A, ip(200))];
    let mut h = H::new(cfg);
    // A stranger asking for the reserved address does not get it.
    let m = msg(MessageType::Discover, [1; 6]).requested(ip(15));
    assert_eq!(h.reply(0, [1; 6], &m.bytes()).msg.yiaddr(), ip(16));
    let steal = msg(MessageType::Request, [2; 6]).requested(ip(15));
    assert_eq!(
        h.reply(0, [2; 6], &steal.bytes()).reply.message_type,
        MessageType::Nak
    );
    // Its owner gets it, whatever it asks for.
    let m = msg(MessageType::Discover, MAC_B).requested(ip(50));
    assert_eq!(h.reply(1, MAC_B, &m.bytes()).msg.yiaddr(), ip(15));
    assert_eq!(h.bind(2, MAC_A), ip(200));
    assert_eq!(h.state_of(ip(200)), Some(LeaseState::Reserved));
    let wrong = msg(MessageType::Request, MAC_A).requested(ip(16));
    assert_eq!(
        h.reply(3, MAC_A, &wrong.bytes()).reply.message_type,
        MessageType::Nak
    );
    // After expiry it is still theirs, and still nobody else's.
    h.s.expire(h.at(1_000_000));
    for i in 0..5u8 {
        let got = h.bind(1_000_000, [3, 3, 3, 3, 3, i]);
        assert!(got != ip(15) && got != ip(200));
    }
    assert_eq!(h.bind(1_000_001, MAC_B), ip(15));
}

#[test]
fn decline_sets_the_address_aside() {
    let mut h = H::new(slirp());
    let a = h.bind(0, MAC_A);
    let not_theirs = msg(MessageType::Decline, MAC_B)
        .requested(a)
        .server_id(ip(2));
    assert_eq!(
        h.ignored(1, MAC_B, &not_theirs.bytes()),
        IgnoreReason::UnknownClient
    );
    let d = msg(MessageType::Decline, MAC_A)
        .requested(a)
        .server_id(ip(2));
    assert_eq!(h.ignored(1, MAC_A, &d.bytes()), IgnoreReason::Declined);
    assert_eq!(h.state_of(a), Some(LeaseState::Declined));
    assert_eq!(h.s.lease_for_mac(MAC_A), None);
    assert_eq!(h.s.poll_at(), Some(h.at(1) + DECLINE_HOLD));
    // The client starts over and gets another address; so does anyone else.
    let b = h.bind(2, MAC_A);
    assert_ne!(a, b);
    assert_ne!(h.bind(2, MAC_B), a);
    let ask = msg(MessageType::Request, [4; 6]).requested(a);
    assert_eq!(
        h.reply(3, [4; 6], &ask.bytes()).reply.message_type,
        MessageType::Nak
    );
    // After the hold the address is free again.
    h.s.expire(h.at(1) + DECLINE_HOLD);
    assert_eq!(h.state_of(a), None);
    assert_eq!(h.bind(700, [5; 6]), a);
}

#[test]
fn exhaustion_refuses_without_panic_and_recovers_on_expiry() {
    let mut cfg = slirp();
    cfg.pool_start = ip(15);
    cfg.pool_end = ip(16);
    let mut h = H::new(cfg);
    assert_eq!(h.bind(0, MAC_A), ip(15));
    h.reply(0, MAC_B, &msg(MessageType::Discover, MAC_B).bytes());
    let third = msg(MessageType::Discover, [3; 6]);
    assert_eq!(
        h.ignored(1, [3; 6], &third.bytes()),
        IgnoreReason::PoolExhausted
    );
    let ask = msg(MessageType::Request, [3; 6]).requested(ip(16));
    assert_eq!(
        h.reply(1, [3; 6], &ask.bytes()).reply.message_type,
        MessageType::Nak
    );
    // B never requested its offer: it lapses and the third client gets it.
    let g = h.reply(61, [3; 6], &third.bytes());
    assert_eq!(g.msg.yiaddr(), ip(16));
}

#[test]
fn leases_expire_at_poll_at() {
    let mut cfg = slirp();
    cfg.lease_time = Duration::from_secs(120);
    let mut h = H::new(cfg);
    assert_eq!(h.s.poll_at(), None);
    h.reply(0, MAC_A, &msg(MessageType::Discover, MAC_A).bytes());
    assert_eq!(h.s.poll_at(), Some(h.at(60)));
    let a = h.bind(10, MAC_A);
    assert_eq!(h.s.poll_at(), Some(h.at(130)));
    h.s.expire(h.at(129));
    assert_eq!(h.s.lease_for_mac(MAC_A), Some(a));
    h.s.expire(h.at(130));
    assert_eq!(h.s.lease_for_mac(MAC_A), None);
    assert_eq!(h.s.poll_at(), None);
    // A renew after expiry is still granted: the address is free and was theirs.
    let renew = msg(MessageType::Request, MAC_A).ciaddr(a);
    assert_eq!(
        h.reply(131, MAC_A, &renew.bytes()).reply.message_type,
        MessageType::Ack
    );
    // handle() expires by itself too.
    let g = h.reply(1000, MAC_B, &msg(MessageType::Discover, MAC_B).bytes());
    assert_eq!(
        g.msg.yiaddr(),
        ip(16),
        "A's lapsed address stays remembered for A"
    );
    assert_eq!(h.state_of(a), None);
}

// ---- what gets ignored ----

#[test]
fn bad_input_is_ignored_with_a_reason() {
    let mut h = H::new(slirp());
    let good = msg(MessageType::Discover, MAC_A).bytes();
    assert_eq!(h.ignored(0, MAC_A, &[]), IgnoreReason::Malformed);
    assert_eq!(h.ignored(0, MAC_A, &good[..239]), IgnoreReason::Malformed);
    let mut server_msg = good.clone();
    server_msg[0] = 2;
    assert_eq!(
        h.ignored(0, MAC_A, &server_msg),
        IgnoreReason::NotBootRequest
    );
    let mut bootp = good.clone();
    bootp[236] = 0;
    assert_eq!(h.ignored(0, MAC_A, &bootp), IgnoreReason::NotDhcp);
    let no_type = Msg {
        opts: vec![],
        ..msg(MessageType::Discover, MAC_A)
    };
    assert_eq!(h.ignored(0, MAC_A, &no_type.bytes()), IgnoreReason::NotDhcp);
    for t in [2u8, 5, 6, 9, 0, 255] {
        let m = Msg {
            opts: vec![(53, vec![t])],
            ..msg(MessageType::Discover, MAC_A)
        };
        assert_eq!(
            h.ignored(0, MAC_A, &m.bytes()),
            IgnoreReason::UnexpectedMessageType
        );
    }
    let mut truncated = good[..240].to_vec();
    truncated.extend_from_slice(&[53, 1, 1, 55, 10, 1, 2]);
    assert_eq!(h.ignored(0, MAC_A, &truncated), IgnoreReason::Malformed);
    let bad_len = msg(MessageType::Discover, MAC_A).opt(50, &[10, 0, 2]);
    assert_eq!(
        h.ignored(0, MAC_A, &bad_len.bytes()),
        IgnoreReason::Malformed
    );
    let bare = msg(MessageType::Request, MAC_A);
    assert_eq!(
        h.ignored(0, MAC_A, &bare.bytes()),
        IgnoreReason::UnknownClient
    );
    let mut small = [0u8; 299];
    assert_eq!(
        h.s.handle(h.at(0), MAC_A, &good, &mut small),
        Outcome::Ignored(IgnoreReason::OutputTooSmall)
    );
    assert_eq!(h.s.leases().count(), 0);
    // A missing END option and trailing garbage after END are tolerated.
    let mut no_end = good.clone();
    no_end.pop();
    assert!(matches!(h.handle(0, MAC_A, &no_end), Outcome::Reply(_)));
}

#[test]
fn huge_hlen_and_odd_hardware_use_the_frame_source() {
    let mut h = H::new(slirp());
    let mut m = msg(MessageType::Discover, MAC_A).bytes();
    m[1] = 6; // htype IEEE 802
    m[2] = 255; // hlen far beyond chaddr: the dhcproto borrowed view would panic here
    let Outcome::Reply(r) = h.handle(0, MAC_B, &m) else {
        panic!()
    };
    assert_eq!(r.dst_mac, MAC_B);
    assert_eq!(h.s.leases().next().map(|l| l.mac), Some(MAC_B));
}

#[test]
fn client_host_names_are_sanitised() {
    let mut h = H::new(slirp());
    let cases: [(&[u8], Option<&str>); 5] = [
        (b"guest\0\0", Some("guest")),
        (b"has space", None),
        (b"\xff\xfe", None),
        (&[b'a'; 64], None),
        (b"", None),
    ];
    for (i, (raw, want)) in cases.into_iter().enumerate() {
        let mac = [6, 6, 6, 6, 6, i as u8];
        h.reply(
            0,
            mac,
            &msg(MessageType::Discover, mac).opt(12, raw).bytes(),
        );
        let l = h.s.leases().find(|l| l.mac == mac).unwrap();
        assert_eq!(l.hostname.as_deref(), want, "{raw:?}");
    }
}

#[test]
fn ignore_reasons_index_their_table() {
    for (i, r) in IgnoreReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(!r.name().is_empty());
    }
    let names: std::collections::HashSet<_> = IgnoreReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), IgnoreReason::ALL.len());
}

// ---- configuration ----

#[test]
fn slirp_default_layout() {
    let c = slirp();
    assert_eq!(c.server_addr, ip(2));
    assert_eq!(c.dns_servers, [ip(3)]);
    assert_eq!((c.pool_start, c.pool_end), (ip(15), ip(254)));
    assert_eq!(c.excluded, [ip(2), ip(3), ip(100)]);
    assert_eq!(c.lease_time, Duration::from_secs(86_400));
    let s = Server::new(c).unwrap();
    assert_eq!(s.config().prefix_len, 24);
    // Host bits in `network` are ignored; big subnets are capped; small ones still work.
    let c = ServerConfig::slirp_default(Ipv4Addr::new(10, 0, 2, 77), 24);
    assert_eq!(c.server_addr, ip(2));
    let c = ServerConfig::slirp_default(Ipv4Addr::new(10, 0, 0, 0), 8);
    assert_eq!(
        u32::from(c.pool_end) - u32::from(c.pool_start) + 1,
        MAX_POOL_SIZE
    );
    assert!(Server::new(c).is_ok());
    let c = ServerConfig::slirp_default(Ipv4Addr::new(10, 0, 2, 0), 28);
    assert_eq!((c.pool_start, c.pool_end), (ip(4), ip(14)));
    assert!(Server::new(c).is_ok());
}

#[test]
fn slirp_default_never_panics_on_any_prefix() {
    for net in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 0, 2, 0),
        Ipv4Addr::BROADCAST,
    ] {
        for p in 0..=40u8 {
            let ok = Server::new(ServerConfig::slirp_default(net, p)).is_ok();
            assert_eq!(ok, (1..=29).contains(&p), "{net}/{p}");
        }
    }
}

#[test]
fn bad_configurations_are_refused_with_sentences() {
    let check = |f: &dyn Fn(&mut ServerConfig), want: &str| {
        let mut c = slirp();
        f(&mut c);
        let e = Server::new(c).unwrap_err();
        assert_eq!(e.to_string(), want);
    };
    check(
        &|c| c.prefix_len = 31,
        "DHCP prefix length /31 is not usable: expected 1 to 30",
    );
    check(
        &|c| c.server_addr = ip(255),
        "DHCP server address 10.0.2.255 is the network or broadcast address of 10.0.2.0/24",
    );
    check(
        &|c| {
            c.pool_start = ip(40);
            c.pool_end = ip(20);
        },
        "DHCP range \"10.0.2.40-10.0.2.20\": the first address must not be above the last",
    );
    check(
        &|c| c.pool_end = Ipv4Addr::new(10, 0, 3, 5),
        "DHCP range \"10.0.2.15-10.0.3.5\": 10.0.3.5 is not a host address of the subnet 10.0.2.0/24",
    );
    check(
        &|c| c.pool_end = ip(255),
        "DHCP range \"10.0.2.15-10.0.2.255\": 10.0.2.255 is not a host address of the subnet 10.0.2.0/24",
    );
    check(
        &|c| {
            c.pool_start = ip(2);
            c.pool_end = ip(3);
        },
        "DHCP range \"10.0.2.2-10.0.2.3\" has no address left to hand out once the gateway, DNS and excluded addresses are removed",
    );
    check(
        &|c| {
            c.prefix_len = 8;
            c.server_addr = Ipv4Addr::new(10, 0, 0, 2);
            c.pool_start = Ipv4Addr::new(10, 0, 0, 1);
            c.pool_end = Ipv4Addr::new(10, 2, 0, 0);
        },
        "DHCP range \"10.0.0.1-10.2.0.0\" holds 131072 addresses: at most 65536 are supported",
    );
    check(
        &|c| c.lease_time = Duration::from_secs(59),
        "DHCP lease time 59 s is out of range: expected 60 to 4294967294 seconds",
    );
    check(
        &|c| c.mtu = Some(67),
        "DHCP MTU 67 is too small: expected at least 68",
    );
    check(
        &|c| c.search = vec!["ok.test".into(), "bad..name".into()],
        "DHCP search domain \"bad..name\" is not a valid DNS name: it has an empty label",
    );
    check(
        &|c| c.domain_name = Some("sp ace".into()),
        "DHCP domain name \"sp ace\" is not a valid DNS name: expected only letters, digits, '-' and '_' between dots",
    );
    check(
        &|c| c.hostname = Some("x".repeat(64)),
        &format!(
            "DHCP host name \"{}\" is not a valid DNS name: a label is longer than 63 bytes",
            "x".repeat(64)
        ),
    );
    check(
        &|c| c.classless_routes = vec![(Ipv4Addr::new(10, 1, 2, 3), 16, ip(2))],
        "DHCP classless route 10.1.2.3/16 via 10.0.2.2: the destination has bits set beyond the prefix length",
    );
    check(
        &|c| c.classless_routes = vec![(Ipv4Addr::UNSPECIFIED, 33, ip(2))],
        "DHCP classless route 0.0.0.0/33 via 10.0.2.2: the prefix length must be 0 to 32",
    );
    check(
        &|c| c.reservations = vec![(MAC_A, Ipv4Addr::new(10, 0, 3, 1))],
        "DHCP host \"52:54:00:00:00:0a,10.0.3.1\": the address is not a host address of the DHCP subnet",
    );
    check(
        &|c| c.reservations = vec![(MAC_A, ip(100))],
        "DHCP host \"52:54:00:00:00:0a,10.0.2.100\": the address is excluded from DHCP",
    );
    check(
        &|c| c.reservations = vec![(MAC_A, ip(50)), (MAC_A, ip(51))],
        "DHCP host \"52:54:00:00:00:0a,10.0.2.51\": this MAC address already has a reservation",
    );
    check(
        &|c| c.reservations = vec![(MAC_A, ip(50)), (MAC_B, ip(50))],
        "DHCP host \"52:54:00:00:00:0b,10.0.2.50\": this address is already reserved for another MAC address",
    );
}

// ---- fuzz target and properties ----

#[test]
fn fuzz_target_replays_the_seed_corpus() {
    for seed in [
        &UDHCPC_DISCOVER[..],
        &UDHCPC_REQUEST,
        &DHCLIENT_DISCOVER,
        &DHCLIENT_REQUEST,
        &DHCLIENT_INIT_REBOOT,
    ] {
        fuzz::dhcpv4(seed);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dhcpv4");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        fuzz::dhcpv4(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 4);
    // Several messages in one input, joined by the marker.
    let mut joined = UDHCPC_DISCOVER.to_vec();
    for m in [&UDHCPC_REQUEST[..], &DHCLIENT_DISCOVER, &DHCLIENT_REQUEST] {
        joined.extend_from_slice(&[0xff; 4]);
        joined.extend_from_slice(m);
    }
    fuzz::dhcpv4(&joined);
}

fn header_prefix() -> Vec<u8> {
    let mut b = UDHCPC_DISCOVER[..240].to_vec();
    b[2] = 6;
    b
}

proptest! {
    #[test]
    fn cli_parsers_never_panic(s in "\\PC{0,40}", t in "[0-9a-fA-F:,.\\-smhd ]{0,40}") {
        for input in [&s, &t] {
            let _ = parse_range(input);
            let _ = parse_host(input);
            let _ = parse_mac(input);
            if let Ok(d) = parse_lease_time(input) {
                prop_assert!(d >= MIN_LEASE_TIME);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut h = H::new(slirp());
        let _ = h.handle(0, MAC_A, &data);
        fuzz::dhcpv4(&data);
    }

    #[test]
    fn valid_header_with_arbitrary_options_never_panics(
        opts in proptest::collection::vec(any::<u8>(), 0..600),
        mt in 0u8..10,
        hlen in any::<u8>(),
        flags in any::<u16>(),
        ciaddr in any::<u32>(),
    ) {
        let mut data = header_prefix();
        data[2] = hlen;
        data[10..12].copy_from_slice(&flags.to_be_bytes());
        data[12..16].copy_from_slice(&ciaddr.to_be_bytes());
        data.extend_from_slice(&[53, 1, mt]);
        data.extend_from_slice(&opts);
        let mut h = H::new(slirp());
        for step in 0..3 {
            if let Outcome::Reply(r) = h.handle(step * 100, MAC_A, &data) {
                prop_assert!(r.len <= 1500);
                let decoded = v4::Message::decode(&mut Decoder::new(&h.out[..r.len]));
                prop_assert!(decoded.is_ok());
            }
        }
        fuzz::dhcpv4(&data);
    }

    #[test]
    fn structured_option_soup_never_panics(
        opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..12),
        mt in 1u8..9,
        mac_low in 0u8..4,
    ) {
        let mut m = msg(MessageType::Discover, [0x52, 0x54, 0, 0, 0, mac_low]);
        m.opts = vec![(53, vec![mt])];
        m.opts.extend(opts);
        let mut h = H::new(slirp());
        for step in 0..4 {
            let _ = h.handle(step * 30, MAC_A, &m.bytes());
        }
    }
}

/// One step of a random conversation between up to eight clients and the server.
#[derive(Clone, Debug)]
enum Step {
    Discover {
        c: u8,
        want: Option<u8>,
        bcast: bool,
    },
    Select {
        c: u8,
        addr: u8,
        ours: bool,
    },
    Reboot {
        c: u8,
        addr: u8,
    },
    Renew {
        c: u8,
        addr: u8,
    },
    Release {
        c: u8,
        addr: u8,
    },
    Decline {
        c: u8,
        addr: u8,
    },
    Inform {
        c: u8,
    },
    Wait {
        secs: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0u8..8;
    let addr = 12u8..28;
    prop_oneof![
        (c.clone(), proptest::option::of(addr.clone()), any::<bool>())
            .prop_map(|(c, want, bcast)| Step::Discover { c, want, bcast }),
        (c.clone(), addr.clone(), any::<bool>()).prop_map(|(c, addr, ours)| Step::Select {
            c,
            addr,
            ours
        }),
        (c.clone(), addr.clone()).prop_map(|(c, addr)| Step::Reboot { c, addr }),
        (c.clone(), addr.clone()).prop_map(|(c, addr)| Step::Renew { c, addr }),
        (c.clone(), addr.clone()).prop_map(|(c, addr)| Step::Release { c, addr }),
        (c.clone(), addr).prop_map(|(c, addr)| Step::Decline { c, addr }),
        c.prop_map(|c| Step::Inform { c }),
        (0u16..2000).prop_map(|secs| Step::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever clients do, the table stays consistent, bounded, and faithful to the
    /// pool, the exclusions and the reservation.
    #[test]
    fn random_conversations_keep_the_table_sound(steps in proptest::collection::vec(step(), 1..60)) {
        let mut cfg = slirp();
        cfg.pool_start = ip(15);
        cfg.pool_end = ip(20);
        cfg.excluded.push(ip(17));
        cfg.lease_time = Duration::from_secs(600);
        cfg.reservations = vec![([0x52, 0x54, 0, 0, 0, 7], ip(25))];
        let mut h = H::new(cfg);
        let mut t = 0u64;
        for s in steps {
            let m = |c: u8, mt| {
                let m = msg(mt, [0x52, 0x54, 0, 0, 0, c]);
                if c == 6 { m.opt(61, b"\x00client-six") } else { m }
            };
            let (c, bytes) = match s {
                Step::Discover { c, want, bcast } => {
                    let mut d = m(c, MessageType::Discover);
                    if let Some(w) = want { d = d.requested(ip(w)); }
                    if bcast { d = d.broadcast(); }
                    (c, d.bytes())
                }
                Step::Select { c, addr, ours } => {
                    (c, m(c, MessageType::Request).requested(ip(addr)).server_id(if ours { ip(2) } else { ip(1) }).bytes())
                }
                Step::Reboot { c, addr } => (c, m(c, MessageType::Request).requested(ip(addr)).bytes()),
                Step::Renew { c, addr } => (c, m(c, MessageType::Request).ciaddr(ip(addr)).bytes()),
                Step::Release { c, addr } => (c, m(c, MessageType::Release).ciaddr(ip(addr)).bytes()),
                Step::Decline { c, addr } => (c, m(c, MessageType::Decline).requested(ip(addr)).bytes()),
                Step::Inform { c } => (c, m(c, MessageType::Inform).ciaddr(ip(60)).bytes()),
                Step::Wait { secs } => {
                    t += u64::from(secs);
                    h.s.expire(h.at(t));
                    h.s.check_invariants().unwrap();
                    continue;
                }
            };
            let mac = [0x52, 0x54, 0, 0, 0, c];
            if let Outcome::Reply(r) = h.handle(t, mac, &bytes) {
                let g = v4::Message::decode(&mut Decoder::new(&h.out[..r.len])).unwrap();
                let y = g.yiaddr();
                if r.message_type == MessageType::Ack && !y.is_unspecified() {
                    prop_assert_eq!(h.s.lease_for_mac(mac), Some(y));
                }
                if !y.is_unspecified() {
                    prop_assert!((ip(15) <= y && y <= ip(20) && y != ip(17)) || (y == ip(25) && c == 7), "{y}");
                }
            }
            let leases: Vec<LeaseInfo> = h.s.leases().collect();
            prop_assert!(leases.len() <= 6);
            for c in 0..8u8 {
                let m = [0x52, 0x54, 0, 0, 0, c];
                prop_assert_eq!(h.s.holds_lease(m), h.s.lease_for_mac(m).is_some());
            }
            for l in &leases {
                prop_assert!(l.addr != ip(17));
                prop_assert!(l.addr != ip(25) || l.mac[5] == 7);
                let held = leases.iter().filter(|o| o.mac == l.mac && o.state != LeaseState::Declined).count();
                prop_assert!(held <= 1, "{:?} holds {} addresses", l.mac, held);
            }
            prop_assert_eq!(h.s.poll_at(), leases.iter().map(|l| l.expires).min());
        }
    }
}

// ---- networks of guests ----

#[test]
fn internal_network_sends_no_router() {
    let mut cfg = slirp();
    cfg.advertise_router = false;
    let mut h = H::new(cfg);
    let m = msg(MessageType::Discover, MAC_A).opt(55, &[1, 3, 6, 15, 51]);
    let offer = h.reply(0, MAC_A, &m.bytes());
    assert!(!offer.has(3), "option 3 sent: {:?}", offer.codes());
    assert!(offer.has(1));
    // The default configuration does send it.
    let mut h = H::new(slirp());
    let offer = h.reply(0, MAC_A, &m.bytes());
    assert_eq!(offer.raw_opt(3), ip(2).octets());
}

#[test]
fn allocate_leases_without_an_exchange_and_agrees_with_dhcp() {
    let mut cfg = slirp();
    cfg.reservations = vec![(MAC_B, ip(40))];
    let mut h = H::new(cfg);
    let t = h.at(0);
    let a = h.s.allocate(t, MAC_A, Some("box-1")).unwrap();
    assert_eq!(a, ip(15));
    h.s.check_invariants().unwrap();
    // Same MAC again: same address; a reservation wins.
    assert_eq!(h.s.allocate(t, MAC_A, None), Some(ip(15)));
    assert_eq!(h.s.allocate(t, MAC_B, None), Some(ip(40)));
    assert_eq!(h.s.lease_for_mac(MAC_A), Some(ip(15)));
    assert_eq!(h.s.mac_for_addr(ip(15)), Some(MAC_A));
    assert_eq!(h.s.mac_for_addr(ip(40)), Some(MAC_B));
    assert_eq!(h.s.mac_for_addr(ip(16)), None);
    let l = h.s.leases().find(|l| l.addr == ip(15)).unwrap();
    assert_eq!(l.hostname.as_deref(), Some("box-1"));
    // A DHCP client on another MAC gets the next address, and the allocated MAC's own
    // DHCP client is acknowledged on the allocated address.
    assert_eq!(h.bind(1, MAC_C), ip(16));
    let req = msg(MessageType::Request, MAC_A)
        .requested(ip(15))
        .server_id(ip(2));
    assert_eq!(
        h.reply(2, MAC_A, &req.bytes()).reply.message_type,
        MessageType::Ack
    );
    h.s.check_invariants().unwrap();
}

#[test]
fn allocate_refuses_when_the_pool_is_exhausted() {
    let mut cfg = slirp();
    cfg.pool_start = ip(15);
    cfg.pool_end = ip(16);
    let mut h = H::new(cfg);
    let t = h.at(0);
    assert!(h.s.allocate(t, [1; 6], None).is_some());
    assert!(h.s.allocate(t, [2; 6], None).is_some());
    assert_eq!(h.s.allocate(t, [3; 6], None), None);
    h.s.check_invariants().unwrap();
}

#[test]
fn one_mac_cannot_take_the_pool_with_made_up_client_ids() {
    let mut h = H::new(slirp());
    let id = |n: u8| [1, 0x52, 0x54, 0, 0, 0, n];
    // Four client identifiers on one MAC: four offers, then four leases.
    let mut got = Vec::new();
    for n in 0..MAX_LEASES_PER_MAC as u8 {
        let d = msg(MessageType::Discover, MAC_A).opt(61, &id(n));
        let offer = h.reply(0, MAC_A, &d.bytes());
        let a = offer.msg.yiaddr();
        let r = msg(MessageType::Request, MAC_A)
            .opt(61, &id(n))
            .requested(a)
            .server_id(ip(2));
        assert_eq!(
            h.reply(0, MAC_A, &r.bytes()).reply.message_type,
            MessageType::Ack
        );
        got.push(a);
    }
    // A fifth is not served, by DISCOVER nor by a straight REQUEST.
    let d = msg(MessageType::Discover, MAC_A).opt(61, &id(9));
    assert_eq!(h.ignored(0, MAC_A, &d.bytes()), IgnoreReason::TooManyLeases);
    let r = msg(MessageType::Request, MAC_A)
        .opt(61, &id(9))
        .requested(ip(100));
    assert_eq!(h.ignored(0, MAC_A, &r.bytes()), IgnoreReason::TooManyLeases);
    // The clients that hold one renew as before, and other MACs are served.
    let again = msg(MessageType::Discover, MAC_A).opt(61, &id(0));
    assert_eq!(h.reply(1, MAC_A, &again.bytes()).msg.yiaddr(), got[0]);
    assert!(!got.contains(&h.bind(1, MAC_B)));
    // Offers count too: four DISCOVERs without a REQUEST use up a MAC's quota.
    for n in 0..MAX_LEASES_PER_MAC as u8 {
        let d = msg(MessageType::Discover, MAC_C).opt(61, &id(n));
        h.reply(2, MAC_C, &d.bytes());
    }
    let d = msg(MessageType::Discover, MAC_C).opt(61, &id(7));
    assert_eq!(h.ignored(2, MAC_C, &d.bytes()), IgnoreReason::TooManyLeases);
}
