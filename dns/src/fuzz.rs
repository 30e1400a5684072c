//! Fuzz entry points, called by the `usernet-fuzz` targets and replayed by
//! this crate's tests.
//!
//! The only clock read in the crate is here: one `Instant::now()` taken once
//! as the epoch of the fake clock, since `Instant` has no other constructor.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::wire::{HEADER_LEN, Header, MAX_NAME_LEN, NameBuf, Question, flags, parse_name};
use crate::{AnswerAction, QueryAction, Relay, RelayConfig};

/// Pending-table bound in the fuzz relay: small, so "full" is reachable.
const FUZZ_MAX_PENDING: usize = 4;
/// Most operations interpreted from one input.
const MAX_OPS: usize = 256;
/// Most start offsets tried by the name parser per input.
const MAX_NAME_STARTS: usize = 512;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

const UP4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);
const UP6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53);
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)), 53);

/// Feeds arbitrary bytes through the wire parser, [`Relay::on_query`],
/// [`Relay::on_answer`] and [`Relay::on_timeout`] with a fake clock, and
/// checks the invariants: no panic, every reported length fits `out`,
/// forwarded and delivered bytes differ from their input only in the id,
/// local answers are responses to the same id, the pending table stays
/// bounded and the counters add up.
///
/// The input is used whole (as a query, then as an answer, then echoed back
/// as its own answer) and then read as a list of operations
/// `[op, len, payload[len]]…`.
pub fn dns_message(data: &[u8]) {
    check_wire(data);

    let seed = data
        .iter()
        .take(8)
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let mut relay: Relay<u8> = Relay::new(RelayConfig {
        upstreams: vec![UP4, UP6],
        max_pending: FUZZ_MAX_PENDING,
        max_query_len: 1024,
        local_names: vec!["host.usernet.internal".into(), "Gateway.".into()],
        local_addr6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        rng_seed: seed,
        ..RelayConfig::default()
    });
    let mut now = epoch();
    let mut out = vec![0u8; 2048];
    let mut last_sent: Option<(SocketAddr, Vec<u8>)> = None;

    // The whole input as a query, as an answer, and echoed as its own answer.
    query(&mut relay, now, 0, data, &mut out, &mut last_sent);
    answer(&mut relay, now, UP4, data, &mut out);
    if let Some((up, mut sent)) = last_sent.take() {
        let mut h = Header::new_unchecked(&mut sent[..]);
        let f = h.flags();
        h.set_flags(f | flags::QR);
        let delivered = answer(&mut relay, now, up, &sent, &mut out);
        assert!(delivered, "an echo of the forwarded query must match");
    }

    let mut rest = data;
    for _ in 0..MAX_OPS {
        let [op, len, tail @ ..] = rest else { break };
        let n = usize::from(*len).min(tail.len());
        let (payload, r) = tail.split_at(n);
        rest = r;
        match op % 6 {
            0 => query(&mut relay, now, *op, payload, &mut out, &mut last_sent),
            1 => {
                let from = [UP4, UP6, STRANGER][usize::from(*op / 6) % 3];
                answer(&mut relay, now, from, payload, &mut out);
            }
            2 => {
                // Echo the last forwarded query, flipped to a response and
                // with the payload xored over it: reaches the matching code.
                if let Some((up, sent)) = &last_sent {
                    let mut msg = sent.clone();
                    if let Some(f) = msg.get_mut(2) {
                        *f |= 0x80;
                    }
                    for (b, x) in msg.iter_mut().skip(2).zip(payload) {
                        *b ^= x;
                    }
                    answer(&mut relay, now, *up, &msg, &mut out);
                }
            }
            3 => {
                now += Duration::from_millis(u64::from(*op) * 20);
                let ups = relay.upstreams().to_vec();
                relay.on_timeout(now, |up, bytes| {
                    assert!(ups.contains(&up), "re-sent to an unknown upstream");
                    assert!(bytes.len() >= HEADER_LEN);
                });
            }
            4 => {
                let ups = match op / 6 % 4 {
                    0 => vec![UP4, UP6],
                    1 => vec![UP6],
                    2 => vec![UP6, UP4, UP4],
                    _ => Vec::new(),
                };
                relay.set_upstreams(ups);
            }
            _ => {
                let small = usize::from(*op / 6);
                let mut tiny = vec![0u8; small];
                let _ = relay.on_query(now, *op, payload, &mut tiny);
                let _ = relay.on_answer(now, UP4, payload, &mut tiny);
            }
        }
        check_relay(&relay);
    }
}

fn query(
    relay: &mut Relay<u8>,
    now: Instant,
    client: u8,
    q: &[u8],
    out: &mut [u8],
    last_sent: &mut Option<(SocketAddr, Vec<u8>)>,
) {
    match relay.on_query(now, client, q, out) {
        QueryAction::Forward { upstream, len } => {
            assert_eq!(len, q.len());
            let sent = out.get(..len).expect("forwarded length fits out");
            assert_eq!(sent.get(2..), q.get(2..), "only the id may change");
            assert!(relay.upstreams().contains(&upstream));
            *last_sent = Some((upstream, sent.to_vec()));
        }
        QueryAction::Local { len } => {
            let ans = out.get(..len).expect("local answer fits out");
            let h = Header::new_checked(ans).expect("local answer has a header");
            assert!(h.is_response());
            assert_eq!(h.id(), Header::new_unchecked(q).id());
            assert_eq!(h.qdcount(), 1);
            let qa = Question::parse(ans, HEADER_LEN).expect("local answer question");
            let qq = Question::parse(q, HEADER_LEN).expect("query question");
            assert_eq!(ans.get(HEADER_LEN..qa.end), q.get(HEADER_LEN..qq.end));
        }
        QueryAction::Drop(_) => {}
    }
    check_relay(relay);
}

/// Returns true if the answer was delivered.
fn answer(relay: &mut Relay<u8>, now: Instant, from: SocketAddr, a: &[u8], out: &mut [u8]) -> bool {
    let before = relay.pending();
    let delivered = match relay.on_answer(now, from, a, out) {
        AnswerAction::Deliver { len, .. } => {
            assert_eq!(len, a.len());
            let got = out.get(..len).expect("delivered length fits out");
            assert_eq!(got.get(2..), a.get(2..), "only the id may change");
            assert_eq!(relay.pending() + 1, before);
            true
        }
        AnswerAction::Unmatched(_) => {
            assert_eq!(relay.pending(), before, "a stray answer must not cancel");
            false
        }
    };
    check_relay(relay);
    delivered
}

fn check_relay(relay: &Relay<u8>) {
    assert!(relay.pending() <= FUZZ_MAX_PENDING);
    assert_eq!(relay.poll_at().is_some(), relay.pending() > 0);
    let c = relay.counters();
    assert_eq!(
        c.queries,
        c.local_answers
            + c.forwarded
            + c.dropped_malformed
            + c.dropped_table_full
            + c.dropped_other
    );
}

fn check_wire(data: &[u8]) {
    if let Ok(h) = Header::new_checked(data) {
        let _ = (h.id(), h.opcode(), h.rcode(), h.qdcount(), h.arcount());
        if let Ok(q) = Question::parse(data, HEADER_LEN) {
            assert!(q.end <= data.len());
            let _ = q.name.to_string();
        }
    }
    let mut name = NameBuf::default();
    for start in 0..data.len().min(MAX_NAME_STARTS) {
        if let Ok(end) = parse_name(data, start, &mut name) {
            assert!(end > start && end <= data.len());
            assert!(name.as_wire().len() <= MAX_NAME_LEN);
            assert_eq!(name.as_wire().last(), Some(&0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_edge_inputs() {
        for seed in [
            &include_bytes!("testdata/a_query_cookie.bin")[..],
            include_bytes!("testdata/a_answer.bin"),
            include_bytes!("testdata/aaaa_query.bin"),
            include_bytes!("testdata/tc_answer.bin"),
            include_bytes!("testdata/txt_answer.bin"),
            &[],
            &[0],
            &[0xff; 300],
            &[0; 12],
        ] {
            dns_message(seed);
        }
    }

    static SEEDS: [&[u8]; 4] = [
        include_bytes!("testdata/a_query_cookie.bin"),
        include_bytes!("testdata/aaaa_query.bin"),
        include_bytes!("testdata/txt_query.bin"),
        include_bytes!("testdata/tc_answer.bin"),
    ];

    proptest::proptest! {
        /// Real messages with a few bytes flipped and an operation tail:
        /// reaches the forward, local, timeout and matching paths far more
        /// often than uniform bytes do.
        #[test]
        fn mutated_seeds(
            which in 0usize..SEEDS.len(),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut data = SEEDS[which].to_vec();
            for (pos, x) in flips {
                let n = data.len();
                data[pos % n] ^= x;
            }
            data.extend_from_slice(&tail);
            dns_message(&data);
        }

        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            dns_message(&data);
        }
    }
}
