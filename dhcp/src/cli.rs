//! Parsers for the DHCP command-line options. Pure functions from text to values;
//! every error is a sentence naming the bad value and what was expected.

use std::net::Ipv4Addr;
use std::time::Duration;

use thiserror::Error;

use crate::config::{MAX_LEASE_SECS, MIN_LEASE_TIME};

/// A DHCP command-line value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// `--dhcp-range` is not two addresses.
    #[error("DHCP range \"{0}\": expected two IPv4 addresses as FIRST-LAST or FIRST,LAST")]
    RangeSyntax(String),
    /// One side of `--dhcp-range` is not an IPv4 address.
    #[error("DHCP range \"{input}\": \"{part}\" is not an IPv4 address")]
    RangeAddr {
        /// The whole value.
        input: String,
        /// The side that does not parse.
        part: String,
    },
    /// `--dhcp-range` with its bounds reversed.
    #[error("DHCP range \"{0}\": the first address must not be above the last")]
    RangeReversed(String),
    /// `--dhcp-host` is not `MAC,ADDRESS`.
    #[error("DHCP host \"{0}\": expected MAC,ADDRESS such as 52:54:00:12:34:56,10.0.2.50")]
    HostSyntax(String),
    /// The address of `--dhcp-host` is not an IPv4 address.
    #[error("DHCP host \"{input}\": \"{part}\" is not an IPv4 address")]
    HostAddr {
        /// The whole value.
        input: String,
        /// The address part.
        part: String,
    },
    /// A MAC address that is not six hex bytes.
    #[error(
        "MAC address \"{0}\": expected six hexadecimal bytes separated by ':' or '-', such as 52:54:00:12:34:56"
    )]
    Mac(String),
    /// A lease time that is not a number with an optional unit.
    #[error(
        "DHCP lease time \"{0}\": expected a number of seconds, optionally followed by s, m, h or d (such as 3600 or 12h)"
    )]
    LeaseSyntax(String),
    /// A lease time outside 60 s to `0xffff_fffe` s.
    #[error("DHCP lease time \"{0}\": expected at least 60 seconds and at most 4294967294 seconds")]
    LeaseRange(String),
}

/// Parses a pool range, `FIRST-LAST` or `FIRST,LAST` (inclusive).
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), ParseError> {
    let (a, b) = s
        .split_once('-')
        .or_else(|| s.split_once(','))
        .ok_or_else(|| ParseError::RangeSyntax(s.to_owned()))?;
    let addr = |part: &str| {
        part.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| ParseError::RangeAddr {
                input: s.to_owned(),
                part: part.trim().to_owned(),
            })
    };
    let (first, last) = (addr(a)?, addr(b)?);
    if first > last {
        return Err(ParseError::RangeReversed(s.to_owned()));
    }
    Ok((first, last))
}

/// Parses a static lease, `MAC,ADDRESS`.
pub fn parse_host(s: &str) -> Result<([u8; 6], Ipv4Addr), ParseError> {
    let (mac, addr) = s
        .split_once(',')
        .ok_or_else(|| ParseError::HostSyntax(s.to_owned()))?;
    let mac = parse_mac(mac.trim())?;
    let addr = addr
        .trim()
        .parse::<Ipv4Addr>()
        .map_err(|_| ParseError::HostAddr {
            input: s.to_owned(),
            part: addr.trim().to_owned(),
        })?;
    Ok((mac, addr))
}

/// Parses a MAC address: six two-digit hex bytes separated by `:` or `-`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ParseError> {
    let err = || ParseError::Mac(s.to_owned());
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = s.split(sep);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(err)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() {
        return Err(err());
    }
    Ok(mac)
}

/// Parses a lease time: seconds, or a number with an `s`, `m`, `h` or `d` suffix.
/// At least 60 s (shorter leases make guests renew continuously).
pub fn parse_lease_time(s: &str) -> Result<Duration, ParseError> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let mult: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(ParseError::LeaseSyntax(s.to_owned())),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::LeaseSyntax(s.to_owned()));
    }
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| ParseError::LeaseRange(s.to_owned()))?;
    let d = Duration::from_secs(secs);
    if d < MIN_LEASE_TIME || secs > MAX_LEASE_SECS {
        return Err(ParseError::LeaseRange(s.to_owned()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_forms() {
        let a = Ipv4Addr::new(10, 0, 2, 20);
        let b = Ipv4Addr::new(10, 0, 2, 40);
        assert_eq!(parse_range("10.0.2.20-10.0.2.40"), Ok((a, b)));
        assert_eq!(parse_range("10.0.2.20,10.0.2.40"), Ok((a, b)));
        assert_eq!(parse_range(" 10.0.2.20 - 10.0.2.40 "), Ok((a, b)));
        assert_eq!(parse_range("10.0.2.20-10.0.2.20"), Ok((a, a)));
    }

    #[test]
    fn range_errors_are_sentences() {
        let e = parse_range("10.0.2.40-10.0.2.20").unwrap_err();
        assert_eq!(
            e.to_string(),
            "DHCP range \"10.0.2.40-10.0.2.20\": the first address must not be above the last"
        );
        let e = parse_range("10.0.2.300-10.0.2.20").unwrap_err();
        assert_eq!(
            e.to_string(),
            "DHCP range \"10.0.2.300-10.0.2.20\": \"10.0.2.300\" is not an IPv4 address"
        );
        assert!(matches!(
            parse_range("10.0.2.20"),
            Err(ParseError::RangeSyntax(_))
        ));
        assert!(matches!(parse_range(""), Err(ParseError::RangeSyntax(_))));
    }

    #[test]
    fn mac_forms() {
        let m = [0x52, 0x54, 0x00, 0xab, 0xCD, 0xef];
        assert_eq!(parse_mac("52:54:00:ab:cd:ef"), Ok(m));
        assert_eq!(parse_mac("52-54-00-AB-CD-EF"), Ok(m));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00:ab:cd:e",
            "52:54:00:ab:cd:eg",
            "525400abcdef",
            "52:54-00:ab:cd:ef",
            "+2:54:00:ab:cd:ef",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn host_forms() {
        assert_eq!(
            parse_host("52:54:00:12:34:56,10.0.2.50"),
            Ok((
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                Ipv4Addr::new(10, 0, 2, 50)
            ))
        );
        assert!(matches!(
            parse_host("52:54:00:12:34:56"),
            Err(ParseError::HostSyntax(_))
        ));
        assert!(matches!(
            parse_host("52:54:00:12:34,10.0.2.50"),
            Err(ParseError::Mac(_))
        ));
        let e = parse_host("52:54:00:12:34:56,10.0.2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "DHCP host \"52:54:00:12:34:56,10.0.2\": \"10.0.2\" is not an IPv4 address"
        );
    }

    #[test]
    fn lease_time_forms() {
        let s = Duration::from_secs;
        assert_eq!(parse_lease_time("3600"), Ok(s(3600)));
        assert_eq!(parse_lease_time("60s"), Ok(s(60)));
        assert_eq!(parse_lease_time("90m"), Ok(s(5400)));
        assert_eq!(parse_lease_time("12h"), Ok(s(43_200)));
        assert_eq!(parse_lease_time("1d"), Ok(s(86_400)));
        assert_eq!(parse_lease_time("2D"), Ok(s(172_800)));
        for bad in ["", "h", "1x", "-5", "1.5h", "ten", "1 h"] {
            assert!(
                matches!(parse_lease_time(bad), Err(ParseError::LeaseSyntax(_))),
                "{bad}"
            );
        }
        for bad in ["59", "0", "1m1", "99999999999999999999", "100000d"] {
            assert!(parse_lease_time(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_lease_time("30s").unwrap_err().to_string(),
            "DHCP lease time \"30s\": expected at least 60 seconds and at most 4294967294 seconds"
        );
    }
}
