//! `usernet fwd` and `usernet stats`: clients of a running usernet's API socket.

use std::path::Path;
use std::process::ExitCode;

use usernet_portfwd::api::{self, Reply};
use usernet_portfwd::serde_json::Value;

use crate::cli::{FwdAction, FwdCli, StatsCli};

fn call(path: &Path, req: &[u8]) -> anyhow::Result<Reply> {
    let bytes = crate::control::call(path, req)
        .map_err(|e| anyhow::anyhow!("cannot talk to the API socket {}: {e}", path.display()))?;
    api::parse_reply(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "the API socket {} sent a bad reply: {}",
            path.display(),
            e.desc()
        )
    })
}

/// Run `usernet fwd`.
pub fn cmd_fwd(cli: FwdCli) -> anyhow::Result<ExitCode> {
    match cli.action {
        FwdAction::Add { api_socket, rules } => {
            for spec in rules.into_iter().flatten() {
                match call(&api_socket, &api::request_add(&spec))? {
                    Reply::Added { id } => println!("{id}\t{spec}"),
                    Reply::Error(e) => anyhow::bail!("adding {spec} failed: {e}"),
                    other => anyhow::bail!("adding {spec}: unexpected reply {other:?}"),
                }
            }
        }
        FwdAction::List { api_socket, json } => {
            if json {
                let bytes =
                    crate::control::call(&api_socket, &api::request_list()).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot talk to the API socket {}: {e}",
                            api_socket.display()
                        )
                    })?;
                println!("{}", String::from_utf8_lossy(&bytes));
                return Ok(ExitCode::SUCCESS);
            }
            match call(&api_socket, &api::request_list())? {
                Reply::List(rules) => print!("{}", api::format_table(&rules)),
                Reply::Error(e) => anyhow::bail!("listing failed: {e}"),
                other => anyhow::bail!("listing: unexpected reply {other:?}"),
            }
        }
        FwdAction::Remove { api_socket, ids } => {
            for id in ids {
                match call(&api_socket, &api::request_remove(id))? {
                    Reply::Removed => println!("removed {id}"),
                    Reply::Error(e) => anyhow::bail!("removing {id} failed: {e}"),
                    other => anyhow::bail!("removing {id}: unexpected reply {other:?}"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `usernet stats`.
pub fn cmd_stats(cli: StatsCli) -> anyhow::Result<ExitCode> {
    let v = match call(&cli.api_socket, &api::request_stats())? {
        Reply::Stats(v) => v,
        Reply::Error(e) => anyhow::bail!("stats failed: {e}"),
        other => anyhow::bail!("stats: unexpected reply {other:?}"),
    };
    if cli.json {
        println!("{v}");
    } else {
        print!("{}", format_stats(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// A readable rendering of the stats JSON.
pub fn format_stats(v: &Value) -> String {
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let mut s = String::new();
    s.push_str(&format!(
        "frames   from guest {:>12}   to guest {:>12}\nbytes    from guest {:>12}   to guest {:>12}\n",
        n("/frames/from_guest"),
        n("/frames/to_guest"),
        n("/bytes/from_guest"),
        n("/bytes/to_guest")
    ));
    for p in ["tcp", "udp", "icmp"] {
        s.push_str(&format!(
            "flows    {p:<4} open {:>8}   total {:>12}\n",
            n(&format!("/flows/{p}/open")),
            n(&format!("/flows/{p}/total"))
        ));
    }
    if v.pointer("/flows/tcp/splice").is_some_and(|x| !x.is_null()) {
        s.push_str(&format!(
            "spliced  open {:>8}   total {:>12}   not spliced {}\n",
            n("/flows/tcp/spliced"),
            n("/flows/tcp/spliced_total"),
            n("/flows/tcp/splice_fallbacks")
        ));
    }
    s.push_str(&format!("forwards {}\n", n("/forwards")));
    if let Some(d) = v.get("drops").and_then(Value::as_object) {
        if d.is_empty() {
            s.push_str("drops    none\n");
        }
        for (k, c) in d {
            s.push_str(&format!("drop     {k:<24} {}\n", c.as_u64().unwrap_or(0)));
        }
    }
    if let Some(l) = v.get("dhcp_leases").and_then(Value::as_array) {
        for le in l {
            let f = |k: &str| le.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            s.push_str(&format!(
                "lease    {:<15} {} {} {}\n",
                f("addr"),
                f("mac"),
                f("state"),
                f("hostname")
            ));
        }
    }
    s
}
