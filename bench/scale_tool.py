#!/usr/bin/env python3
"""Helpers for bench/scale.sh: host-side server, idle-flow holder, churn client,
process snapshots and the result table.

Every loop is bounded in count and in time. Clients only talk to the address they
are given; scale.sh gives only the gateway 10.0.2.2 of the guest namespace it made
(mapped by the engine to the host namespace's 127.0.0.1).

Subcommands
  serve --bind ADDR --hold P --greet P --lifetime S
          hold: accept and keep every connection, echo what arrives;
          greet: accept, send b"g", close (the churn peer)
  idle HOST PORT LIFETIME
          reads commands on stdin, one JSON line per command on stdout:
            open N   open connections until N are held (sequential connect)
            check    send 1 byte on every held connection, count the echoes
            close    close them all
            quit
  churn HOST PORT COUNT LIMIT_S
          COUNT x sequential (connect, read the 1-byte greeting, close)
  snap PID
          {"rss_kb", "hwm_kb", "fds", "threads", "cpu_s"} of one process
  hwm-reset PID
  iperf FILE      Gbit/s (receiver side) and retransmits from iperf3 -J output
  table RESULTS.jsonl META.json   Markdown table (stdout)
"""
import json
import os
import selectors
import socket
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def out(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


# ------------------------------------------------------------------ server
def serve(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="serve")
    ap.add_argument("--bind", required=True)
    ap.add_argument("--hold", type=int, required=True)
    ap.add_argument("--greet", type=int, required=True)
    ap.add_argument("--lifetime", type=float, default=900.0)
    a = ap.parse_args(argv)
    deadline = time.monotonic() + a.lifetime
    sel = selectors.DefaultSelector()

    def listener(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.bind, port))
        s.listen(4096)
        s.setblocking(False)
        return s

    sel.register(listener(a.hold), selectors.EVENT_READ, "hold-listen")
    sel.register(listener(a.greet), selectors.EVENT_READ, "greet-listen")
    held = 0
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s, kind = key.fileobj, key.data
            if kind == "hold-listen":
                for _ in range(512):
                    try:
                        c, _peer = s.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:  # EMFILE: report, keep serving
                        print(f"serve: accept: {e}", file=sys.stderr, flush=True)
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, "hold")
                    held += 1
            elif kind == "greet-listen":
                for _ in range(512):
                    try:
                        c, _peer = s.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        print(f"serve: accept: {e}", file=sys.stderr, flush=True)
                        break
                    try:
                        c.send(b"g")
                    except OSError:
                        pass
                    c.close()
            else:  # a held connection: echo, or drop it on EOF/error
                try:
                    d = s.recv(65536)
                    if d:
                        s.send(d)
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                sel.unregister(s)
                s.close()
                held -= 1


# ------------------------------------------------------------------ idle flows
def idle(host, port, lifetime):
    addr = (host, int(port))
    deadline = time.monotonic() + float(lifetime)
    socks = []
    for _ in range(10000):  # commands; ends at EOF (scale.sh holds the FIFO open)
        line = sys.stdin.readline()
        if not line or time.monotonic() > deadline:
            break
        cmd = line.split()
        if not cmd:
            continue
        t0 = time.perf_counter()
        if cmd[0] == "open":
            target, err, errs = int(cmd[1]), 0, {}
            limit = time.monotonic() + 300.0
            while len(socks) < target and err < 100 and time.monotonic() < limit:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(10.0)
                try:
                    s.connect(addr)
                    socks.append(s)
                except OSError as e:
                    err += 1
                    errs[str(e)] = errs.get(str(e), 0) + 1
                    s.close()
            out({"cmd": "open", "held": len(socks), "errors": err, "error_kinds": errs,
                 "seconds": time.perf_counter() - t0})
        elif cmd[0] == "check":
            sel = selectors.DefaultSelector()
            sent = 0
            for s in socks:
                s.setblocking(False)
                try:
                    s.send(b"p")
                    sel.register(s, selectors.EVENT_READ)
                    sent += 1
                except OSError:
                    pass
            ok = bad = 0
            limit = time.monotonic() + 60.0
            while ok + bad < sent and time.monotonic() < limit:
                for key, _ in sel.select(timeout=1.0):
                    try:
                        d = key.fileobj.recv(16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        d = b""
                    sel.unregister(key.fileobj)
                    if d == b"p":
                        ok += 1
                    else:
                        bad += 1
            sel.close()
            for s in socks:
                s.settimeout(10.0)
            out({"cmd": "check", "held": len(socks), "sent": sent, "echoed": ok, "bad": bad,
                 "missing": sent - ok - bad, "seconds": time.perf_counter() - t0})
        elif cmd[0] == "close":
            n = len(socks)
            for s in socks:
                s.close()
            socks = []
            out({"cmd": "close", "closed": n, "seconds": time.perf_counter() - t0})
        elif cmd[0] == "quit":
            out({"cmd": "quit"})
            break
        else:
            out({"cmd": cmd[0], "error": "unknown command"})


# ------------------------------------------------------------------ churn
def churn(host, port, count, limit):
    count = int(count)
    deadline = time.monotonic() + float(limit)
    addr = (host, int(port))
    ok = err = 0
    errs = {}
    lat = []
    clock = time.perf_counter_ns
    AF, ST = socket.AF_INET, socket.SOCK_STREAM
    t0 = time.perf_counter()
    for i in range(count):
        t = clock()
        s = socket.socket(AF, ST)
        s.settimeout(5.0)
        try:
            s.connect(addr)
            if s.recv(1) == b"g":
                ok += 1
                lat.append(clock() - t)
            else:
                err += 1
                errs["no greeting"] = errs.get("no greeting", 0) + 1
        except OSError as e:
            err += 1
            errs[str(e)] = errs.get(str(e), 0) + 1
        finally:
            s.close()
        if (i & 255) == 0 and time.monotonic() > deadline:
            break
    el = time.perf_counter() - t0
    out({"value": ok / el, "ok": ok, "errors": err, "error_kinds": errs, "seconds": el,
         "p50_us": (pct(lat, 0.5) or 0) / 1e3, "p99_us": (pct(lat, 0.99) or 0) / 1e3,
         "max_us": (max(lat) if lat else 0) / 1e3})


# ------------------------------------------------------------------ process stats
def snap(pid):
    r = {"pid": int(pid)}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "VmSize"):
                r[k] = int(v.split()[0])
            elif k == "Threads":
                r["threads"] = int(v)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    r["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    r["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    r["rss_kb"], r["hwm_kb"] = r.pop("VmRSS", 0), r.pop("VmHWM", 0)
    out(r)


def hwm_reset(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def iperf(path):
    with open(path) as f:
        j = json.load(f)
    if "error" in j:
        raise SystemExit(f"iperf3: {j['error']}")
    end = j["end"]
    rx = end["sum_received"]
    out({"gbps": rx["bits_per_second"] / 1e9, "bytes": rx["bytes"],
         "retransmits": end.get("sum_sent", {}).get("retransmits", 0)})


# ------------------------------------------------------------------ table
def _f(v, nd=2):
    return "–" if v is None else f"{v:,.{nd}f}"


def table(results, meta):
    rows = [json.loads(l) for l in open(results) if l.strip()]
    m = json.load(open(meta))
    levels = [r for r in rows if r["kind"] == "level"]
    churns = [r for r in rows if r["kind"] == "churn"]
    med = lambda xs: statistics.median(xs) if xs else None
    L = ["# usernet scale and churn", "",
         f"Generated by `bench/scale.sh` on {m['date']} ({m['host']}); engine `{m['engine']}` "
         f"({m['version']}), guest MTU {m['mtu']}. Throughput: one iperf3 flow, "
         f"{m['duration']} s (+1 s omitted) × {m['reps']} reps, median (min–max); "
         "ratio = median / median with 0 idle flows (first row).", "",
         "| idle flows open | TCP guest→host Gbit/s | ratio | TCP host→guest (-R) Gbit/s | ratio "
         "| engine RSS with the flows open, MiB | engine fds | idle flows echo check |",
         "|---|---|---|---|---|---|---|---|"]
    base = levels[0] if levels else None
    for r in levels:
        cells = []
        for key in ("g2h", "h2g"):
            xs = r.get(key) or []
            md = med(xs)
            cells.append(f"{_f(md)} ({_f(min(xs) if xs else None)}–{_f(max(xs) if xs else None)})"
                         if xs else "n/a")
            b = med(base.get(key) or []) if base else None
            cells.append(f"×{md / b:.2f}" if md and b else "–")
        chk = r.get("check")
        chk_s = (f"{chk['echoed']}/{chk['held']} echoed" + (f", {chk['missing']} missing, {chk['bad']} bad"
                 if chk["missing"] or chk["bad"] else "")) if chk else "–"
        L.append(f"| {r['label']} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
                 f"{_f(r['rss_open_kb'] / 1024, 1)} | {r['fds_open']} | {chk_s} |")
    per = [r for r in levels if r.get("flows")]
    if per and base:
        L += ["", "RSS per idle flow (engine VmRSS with the flows open − VmRSS just before "
              "the first flow was opened, / flows): " + "; ".join(
                  f"{r['flows']:,} flows: +{_f((r['rss_open_kb'] - m['rss_before_flows_kb']) / 1024, 1)} MiB"
                  f" = {_f((r['rss_open_kb'] - m['rss_before_flows_kb']) / r['flows'], 1)} KiB/flow"
                  for r in per) + "."]
        if m.get("opened"):
            L += ["", "Opening the idle flows (sequential connect from the guest): " + "; ".join(
                f"{o['held']:,} held, {o['errors']} errors, {_f(o['seconds'], 1)} s" for o in m["opened"]) + "."]
        if m.get("after_close"):
            a = m["after_close"]
            L += ["", f"After closing all idle flows (+{m['settle']} s): RSS {_f(a['rss_kb'] / 1024, 1)} MiB, "
                  f"{a['fds']} fds (before the first flow: {_f(m['rss_before_flows_kb'] / 1024, 1)} MiB, "
                  f"{m['fds_before_flows']} fds)."]
    for c in churns:
        b, a, s, res = c["before"], c["after"], c["settled"], c["result"]
        L += ["", "## Connection churn", "",
              f"{c['count']:,} × sequential connect → read 1-byte greeting → close, guest → host "
              f"server via 10.0.2.2 (one Python client in the guest), run first on the freshly started "
              f"engine, before the idle-flow levels.", "",
              "| | value |", "|---|---|",
              f"| completed / errors | {res['ok']:,} / {res['errors']:,}"
              + (f" ({', '.join(f'{k}: {v}' for k, v in res['error_kinds'].items())})" if res["error_kinds"] else "")
              + " |",
              f"| time, rate | {_f(res['seconds'], 1)} s, {_f(res['value'], 0)} conn/s |",
              f"| latency p50 / p99 / max | {_f(res['p50_us'], 0)} / {_f(res['p99_us'], 0)} / {_f(res['max_us'], 0)} µs |",
              f"| engine RSS before → peak (VmHWM) → right after → +{c['settle']} s | "
              f"{_f(b['rss_kb'] / 1024, 1)} → {_f(a['hwm_kb'] / 1024, 1)} → {_f(a['rss_kb'] / 1024, 1)} → "
              f"{_f(s['rss_kb'] / 1024, 1)} MiB |",
              f"| engine fds before → right after → +{c['settle']} s | {b['fds']} → {a['fds']} → {s['fds']} |",
              f"| engine CPU during the churn | {_f(a['cpu_s'] - b['cpu_s'], 1)} s "
              f"({_f((a['cpu_s'] - b['cpu_s']) / max(res['ok'], 1) * 1e6, 1)} µs per connection) |"]
        if c.get("stats_after"):
            L += [f"| engine counters after (`usernet stats`) | {c['stats_after']} |"]
    if m.get("notes"):
        L += ["", "Notes:"] + [f"- {n}" for n in m["notes"]]
    print("\n".join(L))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"serve": lambda: serve(args), "idle": lambda: idle(*args), "churn": lambda: churn(*args),
          "snap": lambda: snap(*args), "hwm-reset": lambda: hwm_reset(*args),
          "iperf": lambda: iperf(*args), "table": lambda: table(*args)}.get(cmd)
    if fn is None:
        raise SystemExit(__doc__)
    fn()


if __name__ == "__main__":
    main()
