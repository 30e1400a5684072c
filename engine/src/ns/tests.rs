//! Tests against real namespaces and the kernel's own TAP driver. They need root (they create
//! network namespaces and join namespaces owned by other users) and fail, not skip, without it.
//! All traffic stays inside namespaces the tests create.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::*;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the ns tests need root (uid 0): they create network namespaces and join namespaces \
         owned by other users; run them as root (CI does)"
    );
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `sleep 30` in its own namespaces (created by `unshare`, possibly as another user); killed
/// and reaped on drop.
struct NsProcess {
    child: Child,
}

impl NsProcess {
    fn spawn(program: &str, args: &[&str]) -> NsProcess {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let p = NsProcess { child };
        // Ready once `sleep` runs: unshare has created the namespaces and written the maps.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{program} {args:?} did not start sleep in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// `unshare -r -n sleep 30` as root.
    fn unshare() -> NsProcess {
        NsProcess::spawn("unshare", &["-r", "-n", "sleep", "30"])
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run a command inside its user + network namespaces.
    fn run(&self, args: &[&str]) -> String {
        let pid = self.pid().to_string();
        let mut full = vec!["-t", pid.as_str(), "-U", "-n", "--preserve-credentials"];
        full.extend_from_slice(args);
        output("nsenter", &full)
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace made with `ip netns add`, deleted on drop (also on panic).
struct IpNetns {
    name: String,
}

impl IpNetns {
    fn new() -> IpNetns {
        let name = unique("usernet-nstest");
        output("ip", &["netns", "add", &name]);
        IpNetns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn run(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        output("ip", &full)
    }
}

impl Drop for IpNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_target(pid: u32) -> TapTarget {
    TapTarget {
        netns_type: NetnsType::Pid,
        target: pid.to_string(),
        userns_path: None,
        tap_name: "tap0".to_owned(),
    }
}

fn configured(mtu: u32, mac: Option<[u8; 6]>) -> IfConfig {
    IfConfig {
        configure: true,
        mtu,
        mac,
        ..IfConfig::default()
    }
}

/// The `"flags":[...]` array of the first object in `ip -j` output.
fn flags_of(json: &str) -> &str {
    let start = json.find("\"flags\":[").expect("no flags in ip output") + 9;
    let end = json[start..].find(']').expect("unterminated flags") + start;
    &json[start..end]
}

/// Check, with `ip` run inside the namespace, everything `--configure` must set up.
fn assert_configured(ip: impl Fn(&[&str]) -> String, tap: &OpenedTap, mtu: u32) {
    let mac = report::format_mac(tap.mac);
    let addr = ip(&["-j", "addr", "show", "tap0"]);
    assert!(
        addr.contains("\"local\":\"10.0.2.100\",\"prefixlen\":24"),
        "no 10.0.2.100/24 on tap0: {addr}"
    );
    assert!(
        addr.contains(&format!("\"mtu\":{mtu},")),
        "tap0 MTU is not {mtu}: {addr}"
    );
    assert!(
        addr.contains(&format!("\"address\":\"{mac}\"")),
        "tap0 MAC is not {mac}: {addr}"
    );
    assert!(
        addr.contains(&format!(
            "\"ifindex\":{},",
            tap.ifindex.expect("no ifindex")
        )),
        "ifindex mismatch ({:?}): {addr}",
        tap.ifindex
    );
    let link = ip(&["-j", "link", "show", "tap0"]);
    assert!(flags_of(&link).contains("\"UP\""), "tap0 is not UP: {link}");
    let lo = ip(&["-j", "link", "show", "lo"]);
    assert!(flags_of(&lo).contains("\"UP\""), "lo is not UP: {lo}");
    let route = ip(&["-j", "route"]);
    assert!(
        route.contains("\"dst\":\"default\",\"gateway\":\"10.0.2.2\",\"dev\":\"tap0\""),
        "no default route via 10.0.2.2 on tap0: {route}"
    );
}

fn assert_nonblocking(fd: &OwnedFd) {
    let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap());
    assert!(fl.contains(OFlag::O_NONBLOCK), "TAP fd is not O_NONBLOCK");
    let fdfl = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).unwrap());
    assert!(
        fdfl.contains(FdFlag::FD_CLOEXEC),
        "TAP fd is not close-on-exec"
    );
}

/// Wait up to `ms` milliseconds for `fd` to become readable.
fn poll_in(fd: std::os::fd::BorrowedFd<'_>, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd, alive for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

const GW_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Send an ARP "who has 10.0.2.100" from 10.0.2.2 into the TAP and wait for the guest
/// kernel's reply: proves the fd is the configured interface inside the namespace.
fn assert_arp_reply(tap: &OpenedTap) {
    let mut frame = [0u8; 60];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&GW_MAC);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&GW_MAC);
    frame[28..32].copy_from_slice(&[10, 0, 2, 2]);
    frame[38..42].copy_from_slice(&[10, 0, 2, 100]);
    let n = nix::unistd::write(&tap.fd, &frame).expect("write ARP request to the TAP");
    assert_eq!(n, frame.len());

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        poll_in(tap.fd.as_fd(), 100);
        let n = match nix::unistd::read(&tap.fd, &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => continue,
            Err(e) => panic!("read from TAP: {e}"),
        };
        let f = &buf[..n];
        if n >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
            assert_eq!(f[0..6], GW_MAC, "ARP reply to the wrong MAC");
            assert_eq!(
                f[22..28],
                tap.mac,
                "ARP reply sender MAC is not the TAP's MAC"
            );
            assert_eq!(f[28..32], [10, 0, 2, 100], "ARP reply sender IP");
            assert_eq!(f[38..42], [10, 0, 2, 2], "ARP reply target IP");
            return;
        }
    }
    panic!("no ARP reply from 10.0.2.100 within 5 s");
}

#[test]
fn pid_target_is_configured_and_carries_frames() {
    require_root();
    let ns = NsProcess::unshare();
    let mac = [0x02, 0x50, 0x00, 0x00, 0x00, 0x42];
    let tap = open_tap(&pid_target(ns.pid()), &configured(65520, Some(mac))).unwrap();
    assert_eq!(tap.mac, mac);
    assert_nonblocking(&tap.fd);
    assert_configured(|a| ns.run(&[&["ip"][..], a].concat()), &tap, 65520);
    assert_arp_reply(&tap);
}

#[test]
fn path_target_is_configured_with_the_kernel_mac() {
    require_root();
    let netns = IpNetns::new();
    let target = TapTarget {
        netns_type: NetnsType::Path,
        target: netns.path(),
        userns_path: None,
        tap_name: "tap0".to_owned(),
    };
    let tap = open_tap(&target, &configured(1500, None)).unwrap();
    assert_ne!(tap.mac, [0; 6], "MAC not read back");
    assert_nonblocking(&tap.fd);
    assert_configured(|a| netns.run(a), &tap, 1500);
    assert_arp_reply(&tap);
}

#[test]
fn path_target_with_userns_path_and_no_configure() {
    require_root();
    // The rootlesskit shape: open only, no configuration.
    let ns = NsProcess::unshare();
    let target = TapTarget {
        netns_type: NetnsType::Path,
        target: format!("/proc/{}/ns/net", ns.pid()),
        userns_path: Some(PathBuf::from(format!("/proc/{}/ns/user", ns.pid()))),
        tap_name: "tap1".to_owned(),
    };
    let tap = open_tap(&target, &IfConfig::default()).unwrap();
    let link = ns.run(&["ip", "-j", "link", "show", "tap1"]);
    assert!(
        link.contains(&format!("\"address\":\"{}\"", report::format_mac(tap.mac))),
        "{link}"
    );
    assert!(
        !flags_of(&link).contains("\"UP\""),
        "tap1 should stay down: {link}"
    );
    let addr = ns.run(&["ip", "-j", "addr", "show", "tap1"]);
    assert!(
        !addr.contains("\"local\""),
        "tap1 should have no address: {addr}"
    );
    let lo = ns.run(&["ip", "-j", "link", "show", "lo"]);
    assert!(
        !flags_of(&lo).contains("\"UP\""),
        "lo should stay down: {lo}"
    );
}

#[test]
fn pid_target_owned_by_an_unprivileged_user() {
    require_root();
    // The rootless shape: the user namespace belongs to uid 65534, not to us.
    let ns = NsProcess::spawn(
        "setpriv",
        &[
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "unshare",
            "-r",
            "-n",
            "sleep",
            "30",
        ],
    );
    let owner = std::fs::read_to_string(format!("/proc/{}/uid_map", ns.pid())).unwrap();
    assert!(
        owner.split_whitespace().nth(1) == Some("65534"),
        "uid_map: {owner}"
    );
    let tap = open_tap(&pid_target(ns.pid()), &configured(65520, None)).unwrap();
    assert_configured(|a| ns.run(&[&["ip"][..], a].concat()), &tap, 65520);
    assert_arp_reply(&tap);
}

#[test]
fn pid_target_in_our_own_user_namespace_is_tolerated() {
    require_root();
    // A process in an `ip netns` namespace shares our user namespace: setns(CLONE_NEWUSER)
    // would fail with EINVAL, so it must be skipped.
    let netns = IpNetns::new();
    let ns = NsProcess::spawn("ip", &["netns", "exec", &netns.name, "sleep", "30"]);
    let tap = open_tap(&pid_target(ns.pid()), &configured(9000, None)).unwrap();
    assert_configured(|a| netns.run(a), &tap, 9000);

    // Same with an explicit --userns-path naming our own user namespace.
    let target = TapTarget {
        netns_type: NetnsType::Path,
        target: netns.path(),
        userns_path: Some(PathBuf::from("/proc/self/ns/user")),
        tap_name: "tap5".to_owned(),
    };
    // (The device lives as long as its fd.)
    let _tap5 = open_tap(&target, &IfConfig::default()).unwrap();
    assert!(
        netns
            .run(&["-j", "link", "show", "tap5"])
            .contains("\"ifname\":\"tap5\"")
    );
}

#[test]
fn missing_or_bad_targets_give_clear_errors() {
    require_root();
    let cfg = configured(1500, None);
    let e = open_tap(&pid_target(2147483646), &cfg).unwrap_err();
    assert!(matches!(e, NsError::OpenNamespace { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "cannot open /proc/2147483646/ns/net: no such process (is PID 2147483646 running?)"
    );

    let mut t = pid_target(1);
    t.target = "12ab".to_owned();
    let e = open_tap(&t, &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid PID \"12ab\": expected a positive process ID"
    );

    let t = TapTarget {
        netns_type: NetnsType::Path,
        target: "/nonexistent/usernet-netns".to_owned(),
        userns_path: None,
        tap_name: "tap0".to_owned(),
    };
    let e = open_tap(&t, &cfg).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot open /nonexistent/usernet-netns: no such file"),
        "{e}"
    );

    // A path that is not a network namespace: setns fails in the helper, which reports it.
    let t = TapTarget {
        target: "/proc/self/ns/uts".to_owned(),
        ..t
    };
    let e = open_tap(&t, &cfg).unwrap_err();
    assert!(
        matches!(
            e,
            NsError::JoinNetns {
                source: Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("cannot join the network namespace at /proc/self/ns/uts"),
        "{e}"
    );

    let ns = NsProcess::unshare();
    let mut t = pid_target(ns.pid());
    t.tap_name = "a-much-too-long-name".to_owned();
    let e = open_tap(&t, &cfg).unwrap_err();
    assert!(matches!(e, NsError::InvalidTapName { .. }), "{e:?}");

    // Gateway outside the subnet: the route cannot be added.
    let bad_gw = IfConfig {
        gateway: std::net::Ipv4Addr::new(192, 0, 2, 1),
        ..cfg.clone()
    };
    let e = open_tap(&pid_target(ns.pid()), &bad_gw).unwrap_err();
    assert!(matches!(e, NsError::AddRoute { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("cannot add the default route via 192.0.2.1 on \"tap0\""),
        "{e}"
    );
}

#[test]
fn busy_tap_name_is_reported() {
    require_root();
    let ns = NsProcess::unshare();
    let _first = open_tap(&pid_target(ns.pid()), &IfConfig::default()).unwrap();
    let e = open_tap(&pid_target(ns.pid()), &IfConfig::default()).unwrap_err();
    assert!(
        matches!(
            e,
            NsError::CreateTap {
                source: Errno::EBUSY,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("cannot create TAP device \"tap0\" in the target namespace: EBUSY"),
        "{e}"
    );
}

#[test]
fn tapfd_target_adopts_an_inherited_tap() {
    require_root();
    let ns = NsProcess::unshare();
    let first = open_tap(&pid_target(ns.pid()), &configured(1500, None)).unwrap();
    let mac = first.mac;
    // Hand the fd over by number, as a parent process would.
    let raw = first.fd.into_raw_fd();
    fcntl(
        // SAFETY: `raw` was just released from an OwnedFd and is open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
        FcntlArg::F_SETFL(OFlag::empty()),
    )
    .unwrap();
    let target = TapTarget {
        netns_type: NetnsType::TapFd,
        target: raw.to_string(),
        userns_path: None,
        tap_name: "ignored".to_owned(),
    };
    let tap = open_tap(&target, &IfConfig::default()).unwrap();
    assert_eq!(tap.fd.as_raw_fd(), raw);
    assert_eq!(tap.mac, mac);
    assert_eq!(tap.ifindex, None);
    assert_nonblocking(&tap.fd);
    assert_arp_reply(&tap);

    // Not open / not a TAP / not a number.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let t = TapTarget {
        target: devnull.as_raw_fd().to_string(),
        ..target.clone()
    };
    let e = open_tap(&t, &IfConfig::default()).unwrap_err();
    assert!(matches!(e, NsError::NotATap { .. }), "{e:?}");
    drop(devnull);
    // A number far above any descriptor in use (a closed low number could be reused by a
    // concurrently running test).
    let t = TapTarget {
        target: "999999".to_owned(),
        ..target.clone()
    };
    let e = open_tap(&t, &IfConfig::default()).unwrap_err();
    assert!(
        matches!(e, NsError::TapFdNotOpen { .. }) || matches!(e, NsError::NotATap { .. }),
        "{e:?}"
    );
    let t = TapTarget {
        target: "-3".to_owned(),
        ..target
    };
    let e = open_tap(&t, &IfConfig::default()).unwrap_err();
    assert!(matches!(e, NsError::InvalidFdNumber { .. }), "{e:?}");
}

fn wait_code(pid: Pid) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::StillAlive => {
                assert!(
                    Instant::now() < deadline,
                    "child {pid} did not exit in 20 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            status => return wait_status_code(status),
        }
    }
}

#[test]
fn run_child_runs_the_command_in_its_namespaces() {
    require_root();
    let out = std::env::temp_dir().join(unique("usernet-run-out"));
    let script = format!(
        "exec > {out}; ip -o addr show tap0; echo uid=$(id -u); cat /etc/resolv.conf; \
         echo ping=$(cat /proc/sys/net/ipv4/ping_group_range); ip route; exit 7",
        out = out.display()
    );
    let argv: Vec<OsString> = ["sh", "-c", script.as_str()]
        .iter()
        .map(OsString::from)
        .collect();
    let resolv = "nameserver 10.0.2.3\n# usernet test\n";
    let mac = [0x02, 0x50, 0x00, 0x00, 0x00, 0x07];
    let mut child =
        spawn_run_child(&argv, "tap0", &configured(65520, Some(mac)), Some(resolv)).unwrap();
    assert_eq!(child.tap.mac, mac);
    assert_nonblocking(&child.tap.fd);
    // The TAP works before the command runs.
    assert_arp_reply(&child.tap);
    let pidfd = child.pidfd().unwrap();
    child.start().unwrap();
    assert!(matches!(child.start(), Err(NsError::AlreadyStarted { .. })));

    // The pidfd becomes readable when the child exits.
    assert!(
        poll_in(pidfd.as_fd(), 20_000),
        "pidfd not readable within 20 s"
    );
    assert_eq!(wait_code(child.pid), 7);

    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(text.contains("inet 10.0.2.100/24"), "{text}");
    assert!(text.contains("uid=0\n"), "{text}");
    assert!(
        text.contains(resolv),
        "resolv.conf not bind-mounted: {text}"
    );
    assert!(text.contains("ping=0 "), "{text}");
    assert!(text.contains("default via 10.0.2.2 dev tap0"), "{text}");
    // The host's resolv.conf is untouched and the temporary file is gone.
    assert!(
        !std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .contains("# usernet test")
    );
}

#[test]
fn run_child_errors_and_drop() {
    require_root();
    let cfg = configured(1500, None);
    let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();

    let e = spawn_run_child(&argv(&["no-such-command-usernet"]), "tap0", &cfg, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "command \"no-such-command-usernet\" not found in PATH"
    );

    // exec fails after start: the error names the command, the child exits with 127.
    let dir = std::env::temp_dir().join(unique("usernet-noexec"));
    std::fs::write(&dir, "not a program").unwrap();
    let mut child = spawn_run_child(&argv(&[dir.to_str().unwrap()]), "tap0", &cfg, None).unwrap();
    let e = child.start().unwrap_err();
    let _ = std::fs::remove_file(&dir);
    assert!(
        matches!(
            e,
            NsError::Exec {
                source: Errno::EACCES,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(wait_code(child.pid), 127);

    // A killed command gives 128 + signal.
    let mut child =
        spawn_run_child(&argv(&["sh", "-c", "kill -TERM $$"]), "tap0", &cfg, None).unwrap();
    child.start().unwrap();
    assert_eq!(wait_code(child.pid), 128 + 15);

    // Dropped before start: killed and reaped (no zombie left behind).
    let child = spawn_run_child(&argv(&["true"]), "tap0", &cfg, None).unwrap();
    let pid = child.pid;
    drop(child);
    assert_eq!(waitpid(pid, None), Err(Errno::ECHILD));

    // Bad configuration is rejected before forking.
    let bad = IfConfig {
        prefix_len: 33,
        ..cfg.clone()
    };
    let e = spawn_run_child(&argv(&["true"]), "tap0", &bad, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid prefix length /33: it must be between 0 and 32"
    );
}

#[test]
fn wait_status_codes() {
    let p = Pid::from_raw(1);
    assert_eq!(wait_status_code(WaitStatus::Exited(p, 0)), 0);
    assert_eq!(wait_status_code(WaitStatus::Exited(p, 7)), 7);
    assert_eq!(
        wait_status_code(WaitStatus::Signaled(
            p,
            nix::sys::signal::Signal::SIGKILL,
            false
        )),
        137
    );
    assert_eq!(wait_status_code(WaitStatus::StillAlive), 1);
}

#[test]
fn tap_names_are_validated() {
    for bad in ["", "a/b", "a b", "x:1", ".", "..", "0123456789abcdef"] {
        assert!(
            matches!(
                tap::interface_name(bad),
                Err(NsError::InvalidTapName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    for good in ["tap0", "0123456789abcde", "eth-0_x"] {
        assert!(tap::interface_name(good).is_ok(), "{good:?} rejected");
    }
}

/// Environment variable that turns [`unprivileged_run_child_inner`] on (set only by
/// [`run_child_works_unprivileged`], which runs this test binary again as uid 65534).
const INNER_ENV: &str = "USERNET_NS_TEST_UNPRIVILEGED_INNER";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The inner test's name as the harness knows it (the module path without the crate name).
fn inner_test_name() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{module}::unprivileged_run_child_inner")
}

#[test]
fn run_child_works_unprivileged() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    // Run this test binary again as uid/gid 65534 (no capabilities at all), so that
    // spawn_run_child has to create its user namespace unprivileged. Distributions make
    // /dev/net/tun 0666; some containers make it 0600, so inside a private mount namespace
    // (invisible to the rest of the machine) a 0666 node for the same device is bound over it.
    let dir = TempDir(std::env::temp_dir().join(unique("usernet-unpriv")));
    std::fs::create_dir_all(dir.0.join("dev")).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.0.join("tests-exe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        "set -e; mount --make-rprivate /; mount -t tmpfs -o mode=755 tmpfs {d}/dev; \
         mknod -m 666 {d}/dev/tun c 10 200; mount --bind {d}/dev/tun /dev/net/tun; \
         exec setpriv --reuid 65534 --regid 65534 --clear-groups {exe} --exact \
         {inner} --nocapture --test-threads=1",
        d = dir.0.display(),
        exe = exe.display(),
        inner = inner_test_name(),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env(INNER_ENV, "1")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unprivileged run failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The inner test really ran (and was not filtered out).
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        stdout.contains("inner: unprivileged run child ok"),
        "{stdout}"
    );
}

/// The unprivileged half of [`run_child_works_unprivileged`]; does nothing unless that test
/// started it (with [`INNER_ENV`] set, as uid 65534).
#[test]
fn unprivileged_run_child_inner() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        65534,
        "inner test must run as uid 65534"
    );
    let out = std::env::temp_dir().join(unique("usernet-unpriv-out"));
    let script = format!(
        "exec > {out}; echo uid=$(id -u) gid=$(id -g); ip -o addr show tap0; ip route; \
         cat /etc/resolv.conf; exit 9",
        out = out.display()
    );
    let argv: Vec<OsString> = ["sh", "-c", script.as_str()]
        .iter()
        .map(OsString::from)
        .collect();
    let mut child = spawn_run_child(
        &argv,
        "tap0",
        &configured(65520, None),
        Some("nameserver 10.0.2.3\n"),
    )
    .unwrap();
    assert_arp_reply(&child.tap);
    child.start().unwrap();
    assert_eq!(wait_code(child.pid), 9);
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(text.contains("uid=0 gid=0\n"), "{text}");
    assert!(text.contains("inet 10.0.2.100/24"), "{text}");
    assert!(text.contains("default via 10.0.2.2 dev tap0"), "{text}");
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    println!("inner: unprivileged run child ok");
}

#[test]
fn socket_factory_sockets_belong_to_the_target_namespace() {
    require_root();
    let ns = NsProcess::unshare();
    ns.run(&["ip", "link", "set", "lo", "up"]);
    let mut f = spawn_socket_factory(&pid_target(ns.pid()))
        .expect("factory")
        .expect("a pid target has a namespace");
    // More than one batch: the pool refills.
    for i in 0..(factory::FACTORY_BATCH + 2) {
        let fd = f.take(false).unwrap_or_else(|| panic!("socket {i}"));
        assert_nonblocking(&fd);
        let s = socket2::Socket::from(fd);
        assert_eq!(s.r#type().expect("SO_TYPE"), socket2::Type::STREAM);
        // 127.0.0.1 exists in the new namespace only once its lo is up, and a listener
        // there is invisible from ours: the socket is the namespace's.
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind 127.0.0.1 in the target namespace");
        s.listen(1).expect("listen");
        let port = s
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet")
            .port();
        let listening = ns.run(&["ss", "-tlnH", &format!("sport = :{port}")]);
        assert!(
            listening.contains(&format!(":{port}")),
            "the listener should be in the target namespace: {listening:?}"
        );
    }
    let v6 = f.take(true).expect("an IPv6 socket");
    assert_eq!(
        socket2::Socket::from(v6).domain().expect("domain"),
        socket2::Domain::IPV6
    );
    assert!(f.working());
    drop(f); // kills and reaps the helper; nothing is left to wait for

    let tapfd = TapTarget {
        netns_type: NetnsType::TapFd,
        target: "3".to_owned(),
        userns_path: None,
        tap_name: "tap0".to_owned(),
    };
    assert!(
        spawn_socket_factory(&tapfd).expect("tapfd").is_none(),
        "--netns-type=tapfd names no namespace: no factory"
    );
}
