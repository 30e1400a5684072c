//! The DHCP server and the DNS relay, against real peers: busybox udhcpc and ISC dhclient
//! in the guest, `dig` in the guest, dnsmasq upstreams on 127.0.0.53/127.0.0.54 inside
//! the test's host namespace.
//!
//! The DHCP clients never run their distribution scripts (which would rewrite the
//! machine's /etc/resolv.conf: the guest shares the mount namespace): every client gets
//! `-s`/`-sf` with a script written here that only records what it was given.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use usernet_tests::*;

const DNS: &str = "10.0.2.3";

// ---------------------------------------------------------------------------------------
// DHCP helpers
// ---------------------------------------------------------------------------------------

/// Engine WITHOUT --configure (the guest asks DHCP), `extra` options; tap0 is brought up
/// in the guest (no address).
fn dhcp_setup(extra: &[&str]) -> Setup {
    for t in ["udhcpc", "dhclient"] {
        require_tool(t);
    }
    let opts = EngineOpts {
        args: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let s = Setup::with(Owner::Root, &opts);
    s.guest.sh_ok("ip link set lo up && ip link set tap0 up");
    s
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Runs busybox udhcpc once in the guest (DISCOVER → lease → quit) with a recording
/// script; returns what the script saw on `bound`.
fn udhcpc(s: &Setup, tag: &str) -> HashMap<String, String> {
    let dir = &s.host.dir;
    let out = dir.join(format!("udhcpc-{tag}.env"));
    let script = dir.join(format!("udhcpc-{tag}.sh"));
    let _ = std::fs::remove_file(&out);
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             case \"$1\" in bound|renew)\n\
             {{ echo \"event=$1\"; echo \"ip=$ip\"; echo \"subnet=$subnet\"; echo \"mask=$mask\";\n\
             echo \"router=$router\"; echo \"dns=$dns\"; echo \"serverid=$serverid\";\n\
             echo \"lease=$lease\"; echo \"mtu=$mtu\"; echo \"domain=$domain\";\n\
             echo \"search=$search\"; }} > '{}' ;;\n\
             esac\nexit 0\n",
            out.display()
        ),
    );
    let out_cmd = s.guest.sh(&format!(
        "udhcpc -i tap0 -f -q -n -t 5 -T 2 -O mtu -O domain -O search -s '{}'",
        script.display()
    ));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        out_cmd.status.success() && !text.is_empty(),
        "udhcpc ({tag}) got no lease ({}): {}{}\nengine: {}",
        out_cmd.status,
        String::from_utf8_lossy(&out_cmd.stdout),
        String::from_utf8_lossy(&out_cmd.stderr),
        s.engine.stderr()
    );
    parse_env(&text)
}

/// Sets tap0's MAC in the guest.
fn set_mac(s: &Setup, mac: &str) {
    s.guest.sh_ok(&format!(
        "ip link set tap0 down && ip link set tap0 address {mac} && ip link set tap0 up"
    ));
}

fn check(env: &HashMap<String, String>, key: &str, want: &str, who: &str) {
    assert_eq!(
        env.get(key).map(String::as_str),
        Some(want),
        "{who}: option `{key}` (everything it saw: {env:?})"
    );
}

/// Runs ISC dhclient once (`-1`) in the guest with a recording script, a private lease
/// file, pid file and config; stops the daemon it leaves behind. `tag` picks the files,
/// so a second call with the same tag reuses the lease file (INIT-REBOOT).
fn dhclient(s: &Setup, tag: &str) -> HashMap<String, String> {
    let dir = &s.host.dir;
    let out = dir.join(format!("dhclient-{tag}.env"));
    let script = dir.join(format!("dhclient-{tag}.sh"));
    let conf = dir.join(format!("dhclient-{tag}.conf"));
    let lease = dir.join(format!("dhclient-{tag}.leases"));
    let pidfile = dir.join(format!("dhclient-{tag}.pid"));
    let _ = std::fs::remove_file(&out);
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             case \"$reason\" in BOUND|RENEW|REBIND|REBOOT)\n\
             {{ echo \"event=$reason\"; echo \"ip=$new_ip_address\"; echo \"subnet=$new_subnet_mask\";\n\
             echo \"router=$new_routers\"; echo \"dns=$new_domain_name_servers\";\n\
             echo \"serverid=$new_dhcp_server_identifier\"; echo \"lease=$new_dhcp_lease_time\";\n\
             echo \"mtu=$new_interface_mtu\"; echo \"domain=$new_domain_name\";\n\
             echo \"search=$new_domain_search\"; }} > '{}' ;;\n\
             esac\nexit 0\n",
            out.display()
        ),
    );
    std::fs::write(
        &conf,
        "timeout 20;\nretry 1;\ninitial-interval 1;\n\
         request subnet-mask, routers, domain-name-servers, domain-name, domain-search, \
         interface-mtu, dhcp-lease-time, dhcp-server-identifier;\n",
    )
    .expect("write dhclient.conf");
    let _guard = DhclientGuard {
        pidfile: pidfile.clone(),
    };
    let files = format!(
        "-sf '{}' -cf '{}' -lf '{}' -pf '{}'",
        script.display(),
        conf.display(),
        lease.display(),
        pidfile.display()
    );
    let out_cmd = s.guest.sh(&format!("dhclient -4 -1 -v {files} tap0"));
    // stop the daemon it left behind (the guard kills it if this does not).
    let _ = s.guest.sh(&format!("dhclient -x {files} tap0"));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        out_cmd.status.success() && !text.is_empty(),
        "dhclient ({tag}) got no lease ({}): {}{}\nengine: {}",
        out_cmd.status,
        String::from_utf8_lossy(&out_cmd.stdout),
        String::from_utf8_lossy(&out_cmd.stderr),
        s.engine.stderr()
    );
    parse_env(&text)
}

// ---------------------------------------------------------------------------------------
// DHCP tests
// ---------------------------------------------------------------------------------------

/// udhcpc: every option read back; asking again gives the same address; another MAC
/// gets another address; the first MAC still gets its own.
#[test]
fn udhcpc_lease_options_same_address_and_other_mac() {
    let mut s = dhcp_setup(&[
        "--mtu=4000",
        "--dhcp-lease-time=2h",
        "--domain=corp.test",
        "--dns-search=a.test",
    ]);
    set_mac(&s, "02:00:00:00:10:01");
    let first = udhcpc(&s, "a1");
    let who = "udhcpc";
    check(&first, "event", "bound", who);
    check(&first, "ip", "10.0.2.15", who);
    check(&first, "subnet", "255.255.255.0", who);
    check(&first, "mask", "24", who);
    check(&first, "router", "10.0.2.2", who);
    check(&first, "dns", DNS, who);
    check(&first, "serverid", "10.0.2.2", who);
    check(&first, "lease", "7200", who);
    check(&first, "mtu", "4000", who);
    check(&first, "domain", "corp.test", who);
    check(&first, "search", "a.test", who);

    let again = udhcpc(&s, "a2");
    check(&again, "ip", "10.0.2.15", "udhcpc asking again (same MAC)");

    set_mac(&s, "02:00:00:00:10:02");
    let other = udhcpc(&s, "b1");
    let ip_b = other.get("ip").cloned().unwrap_or_default();
    assert_ne!(
        ip_b, "10.0.2.15",
        "a second client (other MAC) got the first client's address: {other:?}"
    );
    check(
        &other,
        "ip",
        "10.0.2.16",
        "second client (lowest free address)",
    );
    check(&other, "router", "10.0.2.2", "second client");

    set_mac(&s, "02:00:00:00:10:01");
    let back = udhcpc(&s, "a3");
    check(&back, "ip", "10.0.2.15", "first MAC again");
    s.engine.assert_alive("after four DHCP exchanges");
}

/// dhclient: every option read back; a second run with its lease file (INIT-REBOOT)
/// gets the same address; a second MAC gets a different one.
#[test]
fn dhclient_lease_options_and_reboot() {
    let s = dhcp_setup(&[
        "--mtu=4000",
        "--dhcp-lease-time=3600",
        "--domain=corp.test",
        "--dns-search=a.test",
        "--dns-search=b.test",
    ]);
    set_mac(&s, "02:00:00:00:20:01");
    let first = dhclient(&s, "a");
    let who = "dhclient";
    check(&first, "event", "BOUND", who);
    check(&first, "ip", "10.0.2.15", who);
    check(&first, "subnet", "255.255.255.0", who);
    check(&first, "router", "10.0.2.2", who);
    check(&first, "dns", DNS, who);
    check(&first, "serverid", "10.0.2.2", who);
    check(&first, "lease", "3600", who);
    check(&first, "mtu", "4000", who);
    check(&first, "domain", "corp.test", who);
    check(&first, "search", "a.test. b.test.", who);

    // same lease file: dhclient starts in INIT-REBOOT and asks for its old address.
    let again = dhclient(&s, "a");
    check(&again, "ip", "10.0.2.15", "dhclient asking again");
    check(
        &again,
        "event",
        "REBOOT",
        "dhclient asking again with its lease file (INIT-REBOOT ACKed)",
    );

    set_mac(&s, "02:00:00:00:20:02");
    let other = dhclient(&s, "b");
    check(&other, "ip", "10.0.2.16", "dhclient with a second MAC");
}

/// `--dhcp-host MAC,ADDR` is honoured, and `--dhcp-range` picks where others start.
#[test]
fn dhcp_static_reservation_and_range() {
    let s = dhcp_setup(&[
        "--dhcp-range=10.0.2.50-10.0.2.60",
        "--dhcp-host=02:00:00:00:30:42,10.0.2.42",
    ]);
    set_mac(&s, "02:00:00:00:30:01");
    let other = udhcpc(&s, "o");
    check(
        &other,
        "ip",
        "10.0.2.50",
        "client without reservation (range start)",
    );
    set_mac(&s, "02:00:00:00:30:42");
    let res = udhcpc(&s, "r");
    check(
        &res,
        "ip",
        "10.0.2.42",
        "client with a --dhcp-host reservation",
    );
    let res2 = dhclient(&s, "r");
    check(
        &res2,
        "ip",
        "10.0.2.42",
        "dhclient with a --dhcp-host reservation",
    );
}

/// With --configure the engine's own guest address (10.0.2.100) is never leased, even
/// inside the range; a full pool gives no lease (and no crash).
#[test]
fn dhcp_pool_skips_configured_address_and_full_pool_gives_no_lease() {
    require_tool("udhcpc");
    let opts = EngineOpts::configure(&["--dhcp-range=10.0.2.99-10.0.2.101"]);
    let mut s = Setup::with(Owner::Root, &opts);
    let mut got = Vec::new();
    for (i, mac) in ["02:00:00:00:50:01", "02:00:00:00:50:02"]
        .iter()
        .enumerate()
    {
        set_mac(&s, mac);
        let env = udhcpc(&s, &format!("c{i}"));
        got.push(env.get("ip").cloned().unwrap_or_default());
    }
    assert_eq!(
        got,
        ["10.0.2.99", "10.0.2.101"],
        "the pool 10.0.2.99-101 minus the configured 10.0.2.100"
    );
    // a third client: the pool is full.
    set_mac(&s, "02:00:00:00:50:03");
    let out = s
        .guest
        .sh("udhcpc -i tap0 -f -q -n -t 2 -T 1 -s /bin/true; echo rc=$?");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("rc=1"),
        "a client beyond the pool should get no lease: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.engine.assert_alive("after a full pool");
    // the first client still gets its address back.
    set_mac(&s, "02:00:00:00:50:01");
    check(&udhcpc(&s, "c0b"), "ip", "10.0.2.99", "first client again");
}

// ---------------------------------------------------------------------------------------
// DNS helpers
// ---------------------------------------------------------------------------------------

/// Ten 200-character strings: a TXT record of about 2 KB, too big for a 512-byte
/// or 1232-byte UDP answer.
fn big_txt_strings() -> Vec<String> {
    (0..10u8)
        .map(|i| {
            (0..200)
                .map(|j| char::from(b'a' + ((i as usize * 7 + j) % 26) as u8))
                .collect()
        })
        .collect()
}

fn records(a: &str) -> Vec<String> {
    let big = big_txt_strings();
    vec![
        format!("--host-record=www.test.example,{a},2001:db8::10"),
        "--mx-host=test.example,mail.test.example,10".into(),
        "--txt-record=txt.test.example,hello usernet".into(),
        format!("--txt-record=big.test.example,{}", big.join(",")),
    ]
}

/// A host namespace whose resolv.conf names 127.0.0.53, a dnsmasq there (A of
/// www.test.example = `a`), and an engine with --configure plus `extra`.
fn dns_setup(a: &str, extra: &[&str]) -> (Setup, Dnsmasq) {
    require_tool("dig");
    let host = HostNs::with_resolv_conf("nameserver 127.0.0.53\n");
    host.add_lo_addr("127.0.0.53/8");
    let dm = Dnsmasq::start(&host, Ipv4Addr::new(127, 0, 0, 53), &records(a));
    let guest = Guest::new(Owner::Root);
    let engine = Engine::start(&host, &guest, &EngineOpts::configure(extra));
    (
        Setup {
            engine,
            guest,
            host,
        },
        dm,
    )
}

/// `dig` in the guest (bounded: +time/+tries); returns (exit status, stdout).
fn dig(s: &Setup, args: &str) -> (Option<i32>, String) {
    let out = s.guest.sh(&format!("dig {args}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `dig @10.0.2.3 +short ...`, must succeed; returns the trimmed lines.
fn dig_short(s: &Setup, args: &str) -> String {
    let (code, out) = dig(s, &format!("@{DNS} +time=3 +tries=2 +short {args}"));
    assert_eq!(
        code,
        Some(0),
        "dig {args} through {DNS} failed: {out}\nengine: {}",
        s.engine.stderr()
    );
    out.trim().to_string()
}

/// `dig @10.0.2.3 +short ARGS` must print exactly `want`; on a mismatch the test fails
/// with dig's full output of a second, verbose try.
fn dig_expect(s: &Setup, args: &str, want: &str, what: &str) {
    let got = dig_short(s, args);
    if got != want {
        let (_, full) = dig(s, &format!("@{DNS} +time=3 +tries=2 {args}"));
        panic!(
            "{what}: dig {args} through {DNS} gave {got:?}, expected {want:?}; \
             verbose retry:\n{full}\nengine: {}",
            s.engine.stderr()
        );
    }
}

// ---------------------------------------------------------------------------------------
// DNS tests
// ---------------------------------------------------------------------------------------

/// A, AAAA, MX and TXT through 10.0.2.3 over UDP and over TCP come from the dnsmasq on
/// 127.0.0.53 that resolv.conf names.
#[test]
fn dns_udp_and_tcp_reach_resolver_on_127_0_0_53() {
    let (s, dm) = dns_setup("192.0.2.10", &[]);
    for tcp in ["", "+tcp"] {
        let what = if tcp.is_empty() { "UDP" } else { "TCP" };
        assert_eq!(
            dig_short(&s, &format!("{tcp} www.test.example A")),
            "192.0.2.10",
            "A over {what}"
        );
        assert_eq!(
            dig_short(&s, &format!("{tcp} www.test.example AAAA")),
            "2001:db8::10",
            "AAAA over {what}"
        );
        assert_eq!(
            dig_short(&s, &format!("{tcp} test.example MX")),
            "10 mail.test.example.",
            "MX over {what}"
        );
        assert_eq!(
            dig_short(&s, &format!("{tcp} txt.test.example TXT")),
            "\"hello usernet\"",
            "TXT over {what}"
        );
        // a name dnsmasq does not know: NXDOMAIN passes through.
        let (_, out) = dig(
            &s,
            &format!("@{DNS} +time=3 +tries=2 {tcp} nope.invalid.example A"),
        );
        assert!(
            out.contains("status: NXDOMAIN") || out.contains("status: REFUSED"),
            "unknown name over {what} should get dnsmasq's error status: {out}"
        );
    }
    let log = dm.log();
    assert!(
        log.contains("query[A] www.test.example")
            && log.contains("query[AAAA] www.test.example")
            && log.contains("query[MX] test.example"),
        "the queries should have reached the dnsmasq on 127.0.0.53; its log: {log}"
    );
}

/// A TXT answer too big for UDP comes back with TC set over UDP, and whole over TCP
/// (both when dig retries by itself and with +tcp).
#[test]
fn dns_big_txt_truncated_over_udp_complete_over_tcp() {
    let (s, _dm) = dns_setup("192.0.2.10", &[]);
    let want: String = big_txt_strings()
        .iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(" ");
    for edns in ["+noedns", "+edns=0"] {
        let (code, out) = dig(
            &s,
            &format!("@{DNS} +time=3 +tries=2 +ignore {edns} big.test.example TXT"),
        );
        assert_eq!(code, Some(0), "dig +ignore {edns}: {out}");
        let flags = out
            .lines()
            .find(|l| l.starts_with(";; flags:"))
            .unwrap_or_default();
        assert!(
            flags.split([' ', ';']).any(|f| f == "tc"),
            "a ~2 KB TXT answer over UDP ({edns}) should be truncated (tc flag): {out}"
        );
    }
    // dig's default: UDP, sees TC, retries over TCP.
    let (code, out) = dig(&s, &format!("@{DNS} +time=3 +tries=2 big.test.example TXT"));
    assert_eq!(code, Some(0), "dig (UDP then TCP): {out}");
    assert!(
        out.contains("Truncated, retrying in TCP mode"),
        "dig should have seen a truncated UDP answer and retried over TCP: {out}"
    );
    let got = dig_short(&s, "big.test.example TXT");
    assert_eq!(got, want, "TXT after dig's own retry over TCP");
    let got = dig_short(&s, "+tcp big.test.example TXT");
    assert_eq!(got, want, "TXT over +tcp");
}

/// resolv.conf changes while the engine runs (rewritten in place, as a bind-mounted
/// file must be): the next query after ≥ 1.5 s goes to the new nameserver.
#[test]
fn dns_follows_resolv_conf_change() {
    let (s, dm1) = dns_setup("192.0.2.1", &[]);
    s.host.add_lo_addr("127.0.0.54/8");
    let dm2 = Dnsmasq::start(&s.host, Ipv4Addr::new(127, 0, 0, 54), &records("192.0.2.2"));
    assert_eq!(dig_short(&s, "www.test.example A"), "192.0.2.1", "before");
    // the file was written before the engine started; let the clock move on so that
    // any mtime comparison sees a change.
    std::thread::sleep(Duration::from_millis(1100));
    s.host.set_resolv_conf("nameserver 127.0.0.54\n");
    std::thread::sleep(Duration::from_millis(1600));
    // a different name first would be fair too; ask the same one: a cache would show.
    let got = dig_short(&s, "www.test.example A");
    assert_eq!(
        got,
        "192.0.2.2",
        "1.6 s after resolv.conf changed to 127.0.0.54 the relay should ask it; \
         127.0.0.53's log: {}\n127.0.0.54's log: {}",
        dm1.log(),
        dm2.log()
    );
    assert!(dm2.log().contains("query[A] www.test.example"));
    // and back again.
    s.host.set_resolv_conf("nameserver 127.0.0.53\n");
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(dig_short(&s, "www.test.example A"), "192.0.2.1", "back");
}

/// Like [`dns_follows_resolv_conf_change`], but the first query after the change is
/// over TCP: TCP clients must follow the file as well.
#[test]
fn dns_follows_resolv_conf_change_over_tcp() {
    let (s, _dm1) = dns_setup("192.0.2.1", &[]);
    s.host.add_lo_addr("127.0.0.54/8");
    let dm2 = Dnsmasq::start(&s.host, Ipv4Addr::new(127, 0, 0, 54), &records("192.0.2.2"));
    dig_expect(
        &s,
        "+tcp www.test.example A",
        "192.0.2.1",
        "before, over TCP",
    );
    std::thread::sleep(Duration::from_millis(1100));
    s.host.set_resolv_conf("nameserver 127.0.0.54\n");
    std::thread::sleep(Duration::from_millis(1600));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(dig_short(&s, "+tcp www.test.example A"));
    }
    assert!(
        got.iter().all(|g| g == "192.0.2.2"),
        "TCP queries 1.6 s after resolv.conf changed to 127.0.0.54 should go there, \
         got {got:?}; 127.0.0.54's log: {}",
        dm2.log()
    );
}

/// resolv.conf names a dead nameserver first and the dnsmasq second: UDP and TCP
/// queries are still answered (the relay tries the next upstream).
#[test]
fn dns_second_nameserver_used_when_first_is_dead() {
    require_tool("dig");
    let host = HostNs::with_resolv_conf("nameserver 127.0.0.59\nnameserver 127.0.0.53\n");
    host.add_lo_addr("127.0.0.53/8");
    let _dm = Dnsmasq::start(&host, Ipv4Addr::new(127, 0, 0, 53), &records("192.0.2.10"));
    let guest = Guest::new(Owner::Root);
    let engine = Engine::start(&host, &guest, &EngineOpts::configure(&[]));
    let s = Setup {
        engine,
        guest,
        host,
    };
    for tcp in ["", "+tcp"] {
        let args = format!("@{DNS} +time=5 +tries=2 +short {tcp} www.test.example A");
        let (code, out) = dig(&s, &args);
        assert!(
            code == Some(0) && out.trim() == "192.0.2.10",
            "with a dead first nameserver, dig {tcp} should get the second one's answer; \
             dig said ({code:?}): {out}\nengine: {}",
            s.engine.stderr()
        );
    }
}

/// `--dns-upstream` overrides resolv.conf.
#[test]
fn dns_upstream_option_overrides_resolv_conf() {
    let (s, dm1) = dns_setup("192.0.2.1", &["--dns-upstream=127.0.0.54"]);
    s.host.add_lo_addr("127.0.0.54/8");
    let _dm2 = Dnsmasq::start(&s.host, Ipv4Addr::new(127, 0, 0, 54), &records("192.0.2.2"));
    assert_eq!(dig_short(&s, "www.test.example A"), "192.0.2.2");
    assert_eq!(dig_short(&s, "+tcp www.test.example A"), "192.0.2.2");
    assert!(
        !dm1.log().contains("www.test.example"),
        "resolv.conf's 127.0.0.53 should not be asked with --dns-upstream: {}",
        dm1.log()
    );
}

/// `--disable-dns`: nothing answers on 10.0.2.3:53 (UDP or TCP), while the rest of the
/// network works.
#[test]
fn dns_disabled_leaves_port_dead() {
    let (s, dm) = dns_setup("192.0.2.10", &["--disable-dns"]);
    let start = Instant::now();
    for tcp in ["", "+tcp"] {
        let (code, out) = dig(
            &s,
            &format!("@{DNS} +time=1 +tries=1 +retry=0 {tcp} www.test.example A"),
        );
        assert_ne!(
            code,
            Some(0),
            "with --disable-dns, dig {tcp} through {DNS} should get no answer: {out}"
        );
        assert!(
            !out.contains("192.0.2.10") && !out.contains("ANSWER SECTION"),
            "with --disable-dns an answer came back ({tcp}): {out}"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "dig should give up quickly"
    );
    assert!(
        !dm.log().contains("query["),
        "nothing should reach the upstream: {}",
        dm.log()
    );
    // the guest's network itself works.
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(srv.addr, 5, 10_000);
}

/// Local names: host.usernet.internal by default, the --host-name ones otherwise, answer
/// 10.0.2.2 (case-insensitively); other names still go upstream.
#[test]
fn dns_local_host_names() {
    let (s, dm) = dns_setup("192.0.2.10", &[]);
    for tcp in ["", "+tcp"] {
        dig_expect(
            &s,
            &format!("{tcp} host.usernet.internal A"),
            "10.0.2.2",
            "default host name",
        );
        dig_expect(
            &s,
            &format!("{tcp} HOST.Usernet.Internal A"),
            "10.0.2.2",
            "names are case-insensitive",
        );
    }
    assert!(
        !dm.log().contains("host.usernet.internal"),
        "the local name should be answered locally, not relayed: {}",
        dm.log()
    );
    drop(s);
    drop(dm);

    let (s, _dm) = dns_setup(
        "192.0.2.10",
        &[
            "--host-name=host.containers.internal",
            "--host-name=gw.example.test",
        ],
    );
    for name in ["host.containers.internal", "gw.example.test"] {
        dig_expect(&s, &format!("{name} A"), "10.0.2.2", "--host-name");
        dig_expect(
            &s,
            &format!("+tcp {name} A"),
            "10.0.2.2",
            "--host-name over TCP",
        );
    }
    assert_eq!(dig_short(&s, "www.test.example A"), "192.0.2.10", "relayed");
}

/// `usernet run`: the command sees a resolv.conf naming 10.0.2.3, and a plain `dig`
/// (no @server) through it gets the upstream's answer. Neither the machine's nor the
/// host namespace's resolv.conf changes.
#[test]
fn run_resolv_conf_names_relay_and_works() {
    require_tool("dig");
    let host = HostNs::with_resolv_conf("nameserver 127.0.0.53\n");
    host.add_lo_addr("127.0.0.53/8");
    let _dm = Dnsmasq::start(&host, Ipv4Addr::new(127, 0, 0, 53), &records("192.0.2.77"));
    let machine_before = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let ns_before = std::fs::read(host.resolv_conf_path()).expect("read ns resolv.conf");
    let bin = engine_bin();
    let run = |args: &[&str]| {
        let mut c: Command = host.command(&bin.to_string_lossy());
        c.arg("run").arg("--").args(args);
        let out = run_timeout(&mut c, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "usernet run -- {args:?}: {}; stdout: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rc = run(&["cat", "/etc/resolv.conf"]);
    let servers: Vec<&str> = rc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    assert_eq!(
        servers.first().copied(),
        Some(DNS),
        "usernet run's resolv.conf should name {DNS} first: {rc}"
    );
    let ans = run(&[
        "dig",
        "+time=3",
        "+tries=2",
        "+short",
        "www.test.example",
        "A",
    ]);
    assert_eq!(
        ans.trim(),
        "192.0.2.77",
        "dig through usernet run's resolv.conf"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        machine_before,
        "usernet run changed the machine's /etc/resolv.conf"
    );
    assert_eq!(
        std::fs::read(host.resolv_conf_path()).expect("read"),
        ns_before,
        "usernet run changed the host namespace's resolv.conf"
    );
}
