//! Fuzz entry points, one per parser, for `usernet-fuzz` (cargo-fuzz) and for
//! `cargo test`, which replays the seed corpus through them on stable.
//!
//! Each function takes arbitrary bytes, must never panic on them, and asserts the
//! round trips that hold for whatever the parsers accept. A failed assertion is a
//! bug the fuzzer reports.

use crate::api::{
    self, MAX_REQUEST_BYTES, Reply, Request, RequestReader, parse_reply, parse_request,
};
use crate::rule::{MAX_RANGE_PORTS, RuleSpec, parse_natpf, parse_publish};
use crate::table::Table;

/// Writes a spec in `--natpf` syntax (addresses unbracketed).
fn natpf_text(spec: &RuleSpec) -> String {
    format!(
        "{},{},{},{},{},{}",
        spec.name.as_deref().unwrap_or(""),
        spec.proto,
        spec.host_addr,
        spec.host_port,
        spec.guest_addr.map(|a| a.to_string()).unwrap_or_default(),
        spec.guest_port
    )
}

/// Checks what holds for every accepted spec.
fn check_spec(spec: &RuleSpec) {
    assert!(spec.host_port != 0 && spec.guest_port != 0);
    let unnamed = RuleSpec {
        name: None,
        ..spec.clone()
    };
    let text = spec.to_string();
    assert_eq!(
        parse_publish(&text).ok(),
        Some(vec![unnamed.clone()]),
        "{text}"
    );
    assert_eq!(
        parse_request(&api::request_add(spec)).ok(),
        Some(Request::AddHostfwd(unnamed))
    );
}

/// Runs a rule string (bytes taken as lossy UTF-8) through both rule parsers and
/// the table.
pub fn rule(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    match parse_publish(&s) {
        Ok(specs) => {
            assert!(!specs.is_empty());
            assert!(specs.len() <= MAX_RANGE_PORTS as usize);
            let mut table = Table::new();
            for spec in &specs {
                check_spec(spec);
                // A range expands into distinct host ports: no conflicts.
                assert!(table.insert(spec.clone()).is_ok(), "{spec}");
            }
            assert_eq!(table.len(), specs.len());
        }
        Err(e) => assert!(e.to_string().starts_with("port-forward rule ")),
    }
    match parse_natpf(&s) {
        Ok(spec) => {
            check_spec(&spec);
            let text = natpf_text(&spec);
            assert_eq!(parse_natpf(&text).ok(), Some(spec), "{text}");
        }
        Err(e) => assert!(e.to_string().starts_with("port-forward rule ")),
    }
}

/// Runs bytes through the request parser, the [`RequestReader`] split at every
/// point (every 64th point for long inputs), and the client's reply parser.
pub fn api_request(data: &[u8]) {
    let direct = parse_request(data);

    if data.len() <= MAX_REQUEST_BYTES {
        let step = if data.len() <= 1024 { 1 } else { 64 };
        for split in (0..=data.len()).step_by(step) {
            let mut reader = RequestReader::new();
            assert!(reader.push(&data[..split]).is_ok());
            let _ = reader.is_complete();
            assert!(reader.push(&data[split..]).is_ok());
            let _ = reader.is_complete();
            assert_eq!(reader.finish(), direct);
        }
    }

    match &direct {
        Ok(req) => {
            let again = match req {
                Request::AddHostfwd(spec) => api::request_add(spec),
                Request::ListHostfwd => api::request_list(),
                Request::RemoveHostfwd { id } => api::request_remove(*id),
                Request::Stats => api::request_stats(),
                Request::ListPorts => api::request_plain("list_ports"),
                Request::ListLeases => api::request_plain("list_leases"),
                Request::Attach {
                    kind,
                    name,
                    mac,
                    addr,
                } => api::request_attach(*kind, name, *mac, *addr),
                Request::SetPolicy { guest, change } => {
                    let mut a = serde_json::Map::new();
                    if let Some(g) = guest {
                        a.insert("guest".into(), g.to_string().into());
                    }
                    for (k, v) in [
                        ("isolate", change.isolate),
                        ("block_host", change.block_host),
                        ("restrict", change.restrict),
                        ("allow_spoofing", change.allow_spoofing),
                    ] {
                        if let Some(b) = v {
                            a.insert(k.into(), b.into());
                        }
                    }
                    serde_json::json!({"execute": "set_policy", "arguments": a})
                        .to_string()
                        .into_bytes()
                }
                Request::SetFilters {
                    guest,
                    rules,
                    default,
                } => {
                    let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
                    serde_json::json!({"execute": "set_filters", "arguments": {
                        "guest": guest.map(|g| g.to_string()),
                        "rules": rules,
                        "default": default.map(|d| d.to_string()),
                    }})
                    .to_string()
                    .into_bytes()
                }
                Request::ListPolicy => api::request_plain("list_policy"),
                Request::Detach { port } => {
                    serde_json::json!({"execute": "detach", "arguments": {"port": port}})
                        .to_string()
                        .into_bytes()
                }
                Request::RequestLease { mac, hostname } => {
                    api::request_lease(*mac, hostname.as_deref())
                }
            };
            assert_eq!(parse_request(&again).as_ref(), Ok(req));
        }
        Err(e) => {
            assert_eq!(parse_reply(&e.reply()), Ok(Reply::Error(e.desc())));
        }
    }

    if let Ok(reply) = parse_reply(data) {
        let again = match &reply {
            Reply::Added { id } => api::reply_add(*id),
            Reply::List(rules) => api::reply_list(rules, None),
            Reply::Removed => api::reply_remove(),
            Reply::Stats(v) => api::reply_stats(v),
            Reply::Error(desc) => api::reply_error(desc),
        };
        assert_eq!(parse_reply(&again), Ok(reply));
        let _ = api::format_table(&[]);
    }
}

/// Parses a filter rule (UTF-8 input only), checks that an accepted rule's text
/// parses back to it, and decides flows derived from the bytes against it: the
/// verdict must come from the rule exactly when it matches, a flow to the rule's own
/// network must match, and an IPv4-mapped destination must match as its IPv4
/// address.
pub fn filter_rule(data: &[u8]) {
    use crate::filter::{Action, FilterProto, Flow, Matched, decide, parse_filter};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let parsed = std::str::from_utf8(data).ok().map(|s| (s, parse_filter(s)));
    let rule = match parsed {
        Some((_, Ok(rule))) => {
            let text = rule.to_string();
            assert_eq!(parse_filter(&text).as_ref(), Ok(&rule), "{text}");
            Some(rule)
        }
        Some((s, Err(e))) => {
            assert_eq!(e.rule(), s);
            assert!(e.to_string().starts_with("filter rule "));
            None
        }
        None => None,
    };

    // Flows from 19-byte windows of the input: protocol, port, address.
    let mut flows = Vec::new();
    for chunk in data.chunks(19).take(4).chain([&[][..]]) {
        let mut b = [0u8; 19];
        b[..chunk.len()].copy_from_slice(chunk);
        let proto = match b[0] % 3 {
            0 => FilterProto::Tcp,
            1 => FilterProto::Udp,
            _ => FilterProto::Icmp,
        };
        let dst_port = u16::from_be_bytes([b[1], b[2]]);
        let v4 = Ipv4Addr::new(b[3], b[4], b[5], b[6]);
        let mut v6 = [0u8; 16];
        v6.copy_from_slice(&b[3..19]);
        for dst in [
            IpAddr::V4(v4),
            IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::from(v6)),
        ] {
            flows.push(Flow {
                proto,
                dst,
                dst_port,
            });
        }
    }

    let Some(rule) = rule else {
        for flow in &flows {
            assert_eq!(
                decide(&[], &[], Action::Deny, flow).matched,
                Matched::Default
            );
        }
        return;
    };
    for flow in &flows {
        let hit = rule.matches(flow);
        let canonical = Flow {
            dst: flow.dst.to_canonical(),
            ..*flow
        };
        assert_eq!(rule.matches(&canonical), hit, "{rule} {flow:?}");
        let other = match rule.action {
            Action::Allow => Action::Deny,
            Action::Deny => Action::Allow,
        };
        let one = std::slice::from_ref(&rule);
        let v = decide(one, one, other, flow);
        assert_eq!(v.matched == Matched::Guest(0), hit, "{rule} {flow:?}");
        assert_eq!(v.action == rule.action, hit, "{rule} {flow:?}");
        let v = decide(&[], one, other, flow);
        assert_eq!(v.matched == Matched::Network(0), hit, "{rule} {flow:?}");

        // The same flow aimed at the rule's own network, protocol and ports.
        let own = Flow {
            proto: if rule.proto == FilterProto::Any {
                flow.proto
            } else {
                rule.proto
            },
            dst: if rule.any_addr { flow.dst } else { rule.net },
            dst_port: rule.ports.map_or(flow.dst_port, |(_, end)| end),
        };
        assert!(rule.matches(&own), "{rule} {own:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn corpus(name: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{}: too few seeds", dir.display());
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    #[test]
    fn replays_rule_corpus() {
        for seed in corpus("portfwd_rule") {
            rule(&seed);
        }
    }

    #[test]
    fn replays_api_request_corpus() {
        let seeds = corpus("api_request");
        for seed in &seeds {
            api_request(seed);
        }
        // The seeds include the real podman and rootlesskit requests, which parse.
        assert!(seeds.iter().filter(|s| parse_request(s).is_ok()).count() >= 4);
    }

    #[test]
    fn targets_survive_edge_inputs() {
        for input in [
            &b""[..],
            b"\0",
            b"\xff",
            b"[",
            b"1-1024:1-1024/udp",
            b"{\"return\":{\"id\":1}}",
            b"{\"entries\":[]}",
        ] {
            rule(input);
            api_request(input);
        }
    }

    /// JSON values of the kinds the API meets, valid and not.
    fn arb_json() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("{}".to_owned()),
            Just("[]".to_owned()),
            Just(r#""""#.to_owned()),
            Just(r#""tcp""#.to_owned()),
            Just(r#""udp""#.to_owned()),
            "-?[0-9]{1,6}(\\.[0-9]{1,2})?(e[0-9])?",
            "\"(10\\.0\\.2\\.[0-9]{1,3}|::[0-9a-f]{0,4}|0\\.0\\.0\\.0|[a-z]{0,5})\"",
        ]
    }

    proptest! {
        #[test]
        fn api_target_on_request_like_json(
            exec in prop_oneof![
                Just(r#""add_hostfwd""#), Just(r#""list_hostfwd""#),
                Just(r#""remove_hostfwd""#), Just(r#""stats""#), Just(r#""x""#), Just("1"),
            ],
            v in proptest::collection::vec(arb_json(), 6),
        ) {
            let req = format!(
                r#"{{"execute":{exec},"arguments":{{"proto":{},"host_addr":{},"host_port":{},"guest_addr":{},"guest_port":{},"id":{}}}}}"#,
                v[0], v[1], v[2], v[3], v[4], v[5]
            );
            api_request(req.as_bytes());
        }

        #[test]
        fn api_target_on_reply_like_json(v in proptest::collection::vec(arb_json(), 7)) {
            let entry = format!(
                r#"{{"id":{},"proto":{},"host_addr":{},"host_port":{},"guest_addr":{},"guest_port":{},"name":{}}}"#,
                v[0], v[1], v[2], v[3], v[4], v[5], v[6]
            );
            api_request(format!(r#"{{"entries":[{entry}]}}"#).as_bytes());
            api_request(format!(r#"{{"return":{{"entries":[{entry}]}}}}"#).as_bytes());
            api_request(format!(r#"{{"return":{{"id":{}}}}}"#, v[0]).as_bytes());
            api_request(format!(r#"{{"return":{{"id":{},"x":{}}}}}"#, v[0], v[1]).as_bytes());
            api_request(format!(r#"{{"error":{{"desc":{}}}}}"#, v[2]).as_bytes());
        }

        #[test]
        fn rule_target_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            rule(&b);
        }

        #[test]
        fn rule_target_on_rule_like_text(s in "[0-9:.\\[\\]/,a-f-]{0,32}(/(tcp|udp))?") {
            rule(s.as_bytes());
        }

        #[test]
        fn api_target_never_panics(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            api_request(&b);
        }
    }
}
