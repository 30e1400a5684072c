//! Reading the host's `resolv.conf` to learn the upstream servers.
//!
//! Only `nameserver`, `search` and `domain` are read; `options`, `sortlist`
//! and anything unknown are ignored, as glibc ignores what it does not know.
//! The parser is total: any text gives a (possibly empty) [`ResolvConf`].
//! Reading the file and watching it for changes is the engine's job.

use std::net::IpAddr;

/// Most `nameserver` entries kept. glibc uses only the first 3 (`MAXNS`); we
/// keep a few more so failover has somewhere to go, but stay bounded.
pub const MAX_NAMESERVERS: usize = 8;

/// Most search domains kept (glibc had 6 before 2.26; today it is unbounded,
/// but a guest never needs more than a handful).
pub const MAX_SEARCH: usize = 32;

/// What the relay needs from `resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Upstream servers in file order, duplicates removed. IPv6 zone ids
    /// (`fe80::1%eth0`) are dropped: `IpAddr` cannot carry them.
    pub nameservers: Vec<IpAddr>,
    /// Search list from the last `search` or `domain` line (the later line
    /// wins, as in glibc). Trailing dots removed.
    pub search: Vec<String>,
}

/// Parses `resolv.conf` text. Comments start with `#` or `;` anywhere on a
/// line; keywords are matched exactly (lower case), as glibc does.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for raw in text.lines() {
        let line = match raw.find(['#', ';']) {
            Some(i) => raw.get(..i).unwrap_or(""),
            None => raw,
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(word) = words.next() else { continue };
                let addr = word.split('%').next().unwrap_or(word);
                if let Ok(ip) = addr.parse::<IpAddr>()
                    && !conf.nameservers.contains(&ip)
                    && conf.nameservers.len() < MAX_NAMESERVERS
                {
                    conf.nameservers.push(ip);
                }
            }
            Some("search") => {
                conf.search = words
                    .map(|w| w.trim_end_matches('.').to_string())
                    .filter(|w| !w.is_empty())
                    .take(MAX_SEARCH)
                    .collect();
            }
            Some("domain") => {
                conf.search = words
                    .next()
                    .map(|w| w.trim_end_matches('.').to_string())
                    .filter(|w| !w.is_empty())
                    .into_iter()
                    .collect();
            }
            _ => {}
        }
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn systemd_resolved_stub() {
        let text = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n\
                    # Do not edit.\n\
                    nameserver 127.0.0.53\n\
                    options edns0 trust-ad\n\
                    search lan corp.example.com.\n";
        let c = parse_resolv_conf(text);
        assert_eq!(
            c.nameservers,
            vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))]
        );
        assert_eq!(c.search, vec!["lan", "corp.example.com"]);
    }

    #[test]
    fn ipv6_scopes_comments_and_junk() {
        let text = "nameserver ::1\n\
                    ; a comment\n\
                    nameserver fe80::1%eth0   # link-local\n\
                    nameserver 192.0.2.53;trailing\n\
                    nameserver not-an-address\n\
                    nameserver\n\
                    nameserver ::1\n\
                    \tnameserver   198.51.100.53  \n\
                    Nameserver 203.0.113.53\n\
                    options ndots:5 timeout:1 attempts:2 rotate\n\
                    sortlist 130.155.160.0/255.255.240.0\n";
        let c = parse_resolv_conf(text);
        assert_eq!(
            c.nameservers,
            vec![
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                "fe80::1".parse::<IpAddr>().unwrap(),
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "198.51.100.53".parse::<IpAddr>().unwrap(),
            ]
        );
        assert!(c.search.is_empty());
    }

    #[test]
    fn domain_and_search_last_wins() {
        let c = parse_resolv_conf("search a.example b.example\ndomain c.example\n");
        assert_eq!(c.search, vec!["c.example"]);
        let c = parse_resolv_conf("domain c.example\nsearch a.example b.example\n");
        assert_eq!(c.search, vec!["a.example", "b.example"]);
        let c = parse_resolv_conf("search .\n");
        assert!(c.search.is_empty());
    }

    #[test]
    fn bounded() {
        let mut text = String::new();
        for i in 0..20 {
            text.push_str(&format!("nameserver 10.0.0.{i}\n"));
        }
        text.push_str("search");
        for i in 0..100 {
            text.push_str(&format!(" d{i}.example"));
        }
        let c = parse_resolv_conf(&text);
        assert_eq!(c.nameservers.len(), MAX_NAMESERVERS);
        assert_eq!(c.search.len(), MAX_SEARCH);
        assert_eq!(parse_resolv_conf(""), ResolvConf::default());
    }
}
