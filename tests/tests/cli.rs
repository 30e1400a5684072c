//! The command line: errors for bad values, `--help`, and `usernet run`.

use std::process::Command;
use std::time::Duration;
use usernet_tests::*;

/// Runs the engine with `args` inside `host` (so that nothing it might do touches the
/// machine's network); expects a quick non-zero exit with a stderr sentence containing
/// every string in `must_name`.
fn expect_cli_error(host: &HostNs, args: &[String], must_name: &[&str]) {
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.args(args);
    let out = match try_run_timeout(&mut c, Duration::from_secs(10)) {
        Ok(o) => o,
        Err((_, _, stderr)) => panic!(
            "engine {args:?} kept running for 10 s instead of rejecting its arguments; \
             stderr: {}",
            String::from_utf8_lossy(&stderr)
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "engine {args:?} should exit with a non-zero status, got {}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.trim().len() >= 10,
        "engine {args:?} should explain the error on stderr, got: {stderr:?}"
    );
    let lower = stderr.to_lowercase();
    for s in must_name {
        assert!(
            lower.contains(&s.to_lowercase()),
            "engine {args:?}: stderr should name `{s}`: {stderr}"
        );
    }
}

/// Bad `--mtu` values: too small and too large. usernet-only wording: slirp4netns fails
/// ("cannot set MTU: Invalid argument") without naming the value.
#[test]
fn cli_error_bad_mtu() {
    let host = HostNs::new();
    let g = Guest::new(Owner::Root);
    let pid = g.pid.to_string();
    for bad in ["67", "70000"] {
        expect_cli_error(
            &host,
            &[
                format!("--mtu={bad}"),
                "--configure".into(),
                pid.clone(),
                "tap0".into(),
            ],
            &[bad],
        );
    }
}

#[test]
fn cli_error_bad_cidr() {
    let host = HostNs::new();
    let g = Guest::new(Owner::Root);
    expect_cli_error(
        &host,
        &[
            "--cidr=bogus".into(),
            "--configure".into(),
            g.pid.to_string(),
            "tap0".into(),
        ],
        &["bogus"],
    );
}

/// usernet-only wording: slirp4netns treats any unknown type as `path`.
#[test]
fn cli_error_bad_netns_type() {
    let host = HostNs::new();
    let g = Guest::new(Owner::Root);
    expect_cli_error(
        &host,
        &["--netns-type=foo".into(), g.pid.to_string(), "tap0".into()],
        &["foo"],
    );
}

/// usernet-only: slirp4netns prints its usage to stdout and nothing to stderr.
#[test]
fn cli_error_missing_pid() {
    let host = HostNs::new();
    expect_cli_error(&host, &["--configure".into()], &["pid"]);
}

#[test]
fn cli_error_nonexistent_pid() {
    let host = HostNs::new();
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let pid = (2..200)
        .map(|i| max - i)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let p = pid.to_string();
    expect_cli_error(
        &host,
        &["--configure".into(), p.clone(), "tap0".into()],
        &[&p],
    );
}

#[test]
fn help_lists_supported_options() {
    let mut c = Command::new(engine_bin());
    c.arg("--help");
    let out = run_timeout(&mut c, Duration::from_secs(10));
    assert!(out.status.success(), "--help exit status: {}", out.status);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for opt in [
        "--configure",
        "--mtu",
        "--ready-fd",
        "--exit-fd",
        "--cidr",
        "--disable-host-loopback",
        "--macaddress",
        "--netns-type",
    ] {
        assert!(text.contains(opt), "--help should list {opt}: {text}");
    }
}

// ---- usernet run (usernet-only: these fail against slirp4netns) ----

fn usernet_run(host: &HostNs, cmd: &[&str], timeout: Duration) -> std::process::Output {
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.arg("run").arg("--").args(cmd);
    run_timeout(&mut c, timeout)
}

#[test]
fn run_exit_status_and_address() {
    let host = HostNs::new();
    let out = usernet_run(
        &host,
        &["sh", "-c", "ip -o addr; ip route; exit 3"],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "usernet run should exit with the command's status 3: {}; stdout: {stdout}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("10.0.2.100/24"),
        "guest address missing: {stdout}"
    );
    assert!(
        stdout.contains("default via 10.0.2.2"),
        "default route missing: {stdout}"
    );
}

#[test]
fn run_curl_reaches_host_loopback_and_outside() {
    require_tool("curl");
    const LEN: usize = 5 * 1024 * 1024;
    let host = HostNs::new();
    let lo = host.tcp_server("127.0.0.1:0", http_handler(70, LEN));
    let out_srv = host.tcp_server("198.51.100.1:0", http_handler(71, LEN));
    let url = format!("http://10.0.2.2:{}/", lo.port());
    let out = usernet_run(
        &host,
        &["curl", "-sS", "--fail", "--max-time", "60", "-o", "-", &url],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "usernet run -- curl {url}: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), LEN);
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&pattern(70, LEN)));
    let url = format!("http://198.51.100.1:{}/", out_srv.port());
    let out = usernet_run(
        &host,
        &["curl", "-sS", "--fail", "--max-time", "60", "-o", "-", &url],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "usernet run -- curl {url}: {}",
        out.status
    );
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&pattern(71, LEN)));
}

#[test]
fn run_tcp_client_echo() {
    require_tool("socat");
    let host = HostNs::new();
    let srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let target = format!("TCP:10.0.2.2:{}", srv.port());
    let out = usernet_run(
        &host,
        &[
            "sh",
            "-c",
            "printf 'hello-usernet' | socat -t 5 - \"$0\"",
            &target,
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "usernet run socat: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-usernet");
    assert_eq!(srv.accepted(), 1);
}

#[test]
fn version_option() {
    let mut c = Command::new(engine_bin());
    c.arg("--version");
    let out = run_timeout(&mut c, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--version exit status: {}",
        out.status
    );
    // a dotted version number on the first line ("usernet 0.1.0", "slirp4netns version
    // 1.2.0").
    let first = text.lines().next().unwrap_or("");
    let has_version = first.split_whitespace().any(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() >= 2 && parts.iter().all(|p| p.parse::<u32>().is_ok())
    });
    assert!(
        has_version,
        "--version should print a version number: {text}"
    );
}

/// usernet-only (slirp4netns 1.2.0 has neither option).
#[test]
fn pid_file_and_log_file() {
    let host = HostNs::new();
    let guest = Guest::new(Owner::Root);
    let pid_file = host.dir.join("engine.pid");
    let log_file = host.dir.join("engine.log");
    let opts = EngineOpts::configure(&[
        &format!("--pid-file={}", pid_file.display()),
        &format!("--log-file={}", log_file.display()),
    ]);
    let engine = Engine::start(&host, &guest, &opts);
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(
        pid.trim(),
        engine.pid.to_string(),
        "--pid-file should hold the engine's PID"
    );
    assert!(log_file.exists(), "--log-file should create the log file");
}

/// usernet-only. `usernet run` by an unprivileged user (uid 65534, with a 0666 /dev/net/tun in a private
/// mount namespace, as on a normal machine): the rootless one-command sandbox.
#[test]
fn run_as_unprivileged_user() {
    require_tool("curl");
    let host = HostNs::new();
    let srv = host.tcp_server("127.0.0.1:0", http_handler(72, 100_000));
    let url = format!("http://10.0.2.2:{}/", srv.port());
    let mut c = host.command("sh");
    c.args([
        "-c",
        "mount -t tmpfs -o mode=0755 tmpfs /dev/net && \
         mknod -m 0666 /dev/net/tun c 10 200 || exit 97; \
         exec setpriv --reuid 65534 --regid 65534 --clear-groups \"$@\"",
        "sh",
    ]);
    c.arg(engine_bin()).args([
        "run",
        "--",
        "sh",
        "-c",
        "id -u; curl -sS --fail --max-time 30 -o - \"$0\" | sha256sum",
        &url,
    ]);
    let out = run_timeout(&mut c, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unprivileged usernet run: {}; stdout: {stdout}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&sha256_hex(&pattern(72, 100_000))),
        "download digest missing from: {stdout}"
    );
}

/// `usernet run --network NAME` and `usernet vm --network NAME` join a network whose
/// settings are the network's own: options that would change them are refused with a
/// sentence naming each and where they belong, before any network is started.
#[test]
fn joining_a_network_refuses_its_settings() {
    let host = HostNs::new();
    let dir = host.dir.join("run");
    expect_cli_error(
        &host,
        &[
            "run".into(),
            "--network".into(),
            "lab".into(),
            "--runtime-dir".into(),
            dir.to_string_lossy().into_owned(),
            "--mtu=9000".into(),
            "-p".into(),
            "8080:80".into(),
            "--".into(),
            "true".into(),
        ],
        &["--mtu", "-p/--publish", "usernet network lab"],
    );
    expect_cli_error(
        &host,
        &[
            "vm".into(),
            "--network".into(),
            "lab".into(),
            "--runtime-dir".into(),
            dir.to_string_lossy().into_owned(),
            "--filter".into(),
            "deny:any:0.0.0.0/0".into(),
            "--stream".into(),
            format!("unix:{}", host.dir.join("vm.sock").display()),
        ],
        &["--filter", "usernet network lab"],
    );
    assert!(
        !dir.join("lab").exists(),
        "no network should have been started"
    );
}
