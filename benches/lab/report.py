#!/usr/bin/env python3
"""Turns the raw results of benches/lab/run.sh (results.jsonl) into the tables of
docs/benchmarks.md, and prints them.

    report.py RESULTS.jsonl [--doc docs/benchmarks.md]

With --doc, the text between the markers
    <!-- results:begin --> ... <!-- results:end -->
is replaced (the rest of the document, written by hand, is kept); a missing file or missing
markers get a minimal document / the markers appended.

Every figure is the median over the repetitions, with the spread (min-max) in parentheses.
Ratios are paired: ftpct/kernel within each repetition (the variants of one repetition run back
to back), then the median of those ratios.
"""

import json
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
ALGS = ("ftpct", "kernel", "none")


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


def paired(by_rep, num="ftpct", den="kernel"):
    """Per-repetition ratios num/den."""
    out = []
    for rep, v in sorted(by_rep.items()):
        a, b = v.get(num), v.get(den)
        if a is not None and b not in (None, 0):
            out.append(a / b)
    return out


def f0(x):
    return f"{x:.0f}"


def f1(x):
    return f"{x:.1f}"


def f2(x):
    return f"{x:.2f}"


def fus(ns):
    return f"{ns / 1000:.1f}"


def verdict(ok):
    return {True: "**met**", False: "**missed**", None: "inconclusive"}[ok]


def build(recs):
    env = next((r for r in recs if r["phase"] == "env"), {})
    end = next((r for r in recs if r["phase"] == "end"), {})
    reps = env.get("reps", "?")
    L = []
    w = L.append
    w(f"Run of {env.get('date', '?')} at commit `{env.get('commit', '?')}`"
      f"{' (**--quick**)' if env.get('quick') else ''}: {reps} repetitions, "
      f"{end.get('elapsed_s', '?')} s in all. Machine: {env.get('nproc', '?')} CPUs "
      f"({env.get('cpu', '?')}), {env.get('mem_gib', '?')} GiB, Linux {env.get('kernel', '?')}, "
      f"{env.get('vsftpd', 'vsftpd')}. Load average (1 min) at start {env.get('load1', '?')}, "
      f"at end {end.get('load1', '?')} (other processes share the machine: see the spreads). "
      + (f"CPU budget of the lab: {env.get('cpus')} CPU (cpu cgroup quota; see Method)."
         if env.get("cpus") not in (None, 0, 0.0) else "No CPU budget (--cpus 0)."))
    w("")
    w("Figures: median over the repetitions (min–max). Ratios: ftpct ÷ kernel helper within each "
      "repetition, median (min–max) of those. \"no ALG\" is the ceiling: plain routing, firewall "
      "open, no helper.")
    w("")
    w("| # | Measure | ftpct | kernel helper | no ALG (ceiling) | ftpct ÷ kernel | Target | |")
    w("|---|---|---|---|---|---|---|---|")

    def row(num, name, vals, ratio, target, ok, fmt):
        cells = [spread(vals.get(a, []), fmt) if vals.get(a) else "–" for a in ALGS]
        rs = spread(ratio, f2) if ratio else "–"
        v = verdict(ok) if target != "" else ""
        # A ratio target whose value lies inside the spread of the ratios: say so.
        t = target.replace("×", "").replace("≥", "").replace("≤", "").strip()
        if ratio and target.endswith("×") and len(ratio) > 1:
            try:
                tv = float(t)
                if min(ratio) <= tv <= max(ratio):
                    v += " (the spread crosses the target)"
            except ValueError:
                pass
        w(f"| {num} | {name} | {cells[0]} | {cells[1]} | {cells[2]} | {rs} | {target} | {v} |")

    # 1. bulk
    bulk = [r for r in recs if r["phase"] == "bulk"]
    for mode, label in (("port", "active (PORT)"), ("pasv", "passive (PASV)")):
        by_alg = defaultdict(list)
        by_rep = defaultdict(dict)
        for r in bulk:
            if r["mode"] != mode:
                continue
            v = med([x["mbps"] for x in r["xfers"]])
            by_alg[r["alg"]].append(v)
            by_rep[r["rep"]][r["alg"]] = v
        if not by_alg:
            continue
        size = next((r["xfers"][0]["bytes"] for r in bulk), 0) / 2**30
        nx = len(bulk[0]["xfers"])
        ratio = paired(by_rep)
        m = med(ratio)
        row("1", f"Bulk {size:.0f} GiB, {label}: MB/s (median of {nx} transfers per repetition)", by_alg, ratio, "≥ 0.98×",
            None if m is None else m >= 0.98, f0)
    for mode, label in (("port", "active"), ("pasv", "passive")):
        by_alg = defaultdict(list)
        by_rep = defaultdict(dict)
        for r in bulk:
            if r["mode"] != mode or r.get("lab_cpu_ns") is None:
                continue
            gib = sum(x["bytes"] for x in r["xfers"]) / 2**30
            v = r["lab_cpu_ns"] / 1e6 / gib
            by_alg[r["alg"]].append(v)
            by_rep[r["rep"]][r["alg"]] = v
        if by_alg:
            row("1", f"Lab CPU time per GiB transferred, {label} (ms; both ends, forwarding, ALG)", by_alg,
                paired(by_rep), "", None, f0)
    if bulk:
        q = [r["queued"] for r in bulk if r["alg"] == "ftpct" and r.get("queued") is not None]
        segs = next((r["xfers"][0]["bytes"] for r in bulk), 0) / 1448
        w(f"| 1 | Packets queued to ftpct per bulk transfer (control only; ≈{segs / 1e6:.1f} M data segments) | "
          f"{spread(q, f0)} | | | | data never queued | {verdict(bool(q) and max(q) < 1000)} |")

    # 2. rate
    rate = [r for r in recs if r["phase"] == "rate"]
    if rate:
        by_alg = defaultdict(list)
        by_rep = defaultdict(dict)
        fails = defaultdict(list)
        cpu = defaultdict(list)
        setup50 = defaultdict(list)
        setup99 = defaultdict(list)
        setup_rep = defaultdict(dict)
        cmd50 = defaultdict(list)
        cmd_rep = defaultdict(dict)
        for r in rate:
            a, x = r["alg"], r["r"]
            by_alg[a].append(x["rate"])
            by_rep[r["rep"]][a] = x["rate"]
            fails[a].append(x["failures"])
            cpu[a].append(x["cpu_frac"] * 100)
            setup50[a].append(x["setup_us"]["p50"])
            setup99[a].append(x["setup_us"]["p99"])
            setup_rep[r["rep"]][a] = x["setup_us"]["p50"]
            cmd50[a].append(x["cmd_us"]["p50"])
            cmd_rep[r["rep"]][a] = x["cmd_us"]["p50"]
        conc = rate[0]["r"]["concurrency"]
        ratio = paired(by_rep)
        m = med(ratio)
        row("2", f"Sessions/s, active mode (PORT/EPRT alternately), {conc} concurrent clients", by_alg,
            ratio, "≥ 0.9×", None if m is None else m >= 0.9, f0)
        lab = defaultdict(list)
        lab_rep = defaultdict(dict)
        for r in rate:
            if r.get("lab_cpu_ns") is not None and r["r"]["sessions_ok"]:
                v = r["lab_cpu_ns"] / 1000 / (r["r"]["sessions_ok"] + 1)
                lab[r["alg"]].append(v)
                lab_rep[r["rep"]][r["alg"]] = v
        if lab:
            row("2", "Lab CPU time per session (µs; server, client, forwarding, ALG)", lab, paired(lab_rep), "", None, f0)
        row("2", "Failed sessions per run", fails, [], "0", all(f == 0 for v in fails.values() for f in v), f0)
        row("2", "Load generator CPU (% of one CPU, wall-clock)", cpu, [], "", None, f1)
        thr = defaultdict(list)
        for r in rate:
            a, b = r.get("cg_before", {}), r.get("cg_after", {})
            if "cg_nr_periods" in b:
                dp = b["cg_nr_periods"] - a.get("cg_nr_periods", 0)
                dt = b["cg_nr_throttled"] - a.get("cg_nr_throttled", 0)
                if dp > 0:
                    thr[r["alg"]].append(100 * dt / dp)
        if thr:
            row("2", "Periods in which the lab hit its CPU budget (%): the rate is CPU-bound when high", thr, [], "", None, f0)
        ftp = [r for r in rate if r["alg"] == "ftpct"]
        if ftp:
            p50 = [r["ftpct_latency_p50_ns"] for r in ftp]
            p99 = [r["ftpct_latency_p99_ns"] for r in ftp]
            mx = [r["ftpct_latency_max_ns"] for r in ftp]
            ov = [r["ftpct_queue_overruns"] for r in ftp]
            per_sess = [r["ftpct_latency_count"] / max(1, r["r"]["sessions_ok"] + 1) for r in ftp]
            rew = [r["ftpct_rewrites"] / max(1, r["r"]["sessions_ok"]) for r in ftp if "ftpct_rewrites" in r]
            cpu_sess = [r["ftpct_cpu_ns"] / max(1, r["r"]["sessions_ok"] + 1) for r in ftp]
            cpu_frac = [r["ftpct_cpu_ns"] / 1e9 / r["r"]["wall_s"] * 100 for r in ftp]
            p99m = med(p99)
            # p99 = end of its histogram bucket, at most 12.5 % above the true value
            ok = None if p99m is None else (True if p99m <= 50_000 else (False if p99m / 1.125 >= 50_000 else None))
            w(f"| 3 | ftpct per queued packet, queue-in → verdict issued (`ftpct stats`, bucket ends, ≤ 12.5 % high), µs: p50 / p99 / max | "
              f"{spread(p50, fus)} / {spread(p99, fus)} / {spread(mx, fus)} | | | | p99 ≤ 50 µs | {verdict(ok)} |")
            w(f"| 3 | ftpct: queued packets per session / CPU per session (µs) / CPU used (% of one CPU) / queue overruns | "
              f"{spread(per_sess, f1)} / {spread([c / 1000 for c in cpu_sess], f0)} / {spread(cpu_frac, f1)} / {spread(ov, f0)} | | | | | |")
            if rew:
                w(f"| 2 | ftpct: PORT/EPRT rewritten per completed session (the ALG really worked) | {spread(rew, f2)} | | | | ≥ 1 | {verdict(min(rew) >= 1)} |")
            nv = [r["ftpct_nvcsw"] / max(1, r["ftpct_latency_count"]) * 100 for r in ftp if "ftpct_nvcsw" in r]
            if nv:
                w(f"| 3 | ftpct: involuntary context switches (preemptions) per 100 queued packets | {spread(nv, f2)} | | | | | |")
        ratio = paired(setup_rep)
        m = med(ratio)
        row("3", "Data-connection setup under load, RETR sent → accept() at the client, p50 µs", setup50,
            ratio, "≤ 1.5×", None if m is None else m <= 1.5, f0)
        row("3", "… same, p99 µs", setup99, [], "", None, f0)
        ratio = paired(cmd_rep)
        row("3", "PORT/EPRT → 200 round trip under load (two control packets through the ALG), p50 µs",
            cmd50, ratio, "", None, f0)

    # 3. unloaded latency
    lat = [r for r in recs if r["phase"] == "latency"]
    if lat:
        s50 = defaultdict(list)
        s_rep = defaultdict(dict)
        t50 = defaultdict(list)
        t99 = defaultdict(list)
        t_rep = defaultdict(dict)
        c50 = defaultdict(list)
        c_rep = defaultdict(dict)
        for r in lat:
            a, x = r["alg"], r["r"]
            s50[a].append(x["setup_us"]["p50"])
            s_rep[r["rep"]][a] = x["setup_us"]["p50"]
            c50[a].append(x["cmd_us"]["p50"])
            c_rep[r["rep"]][a] = x["cmd_us"]["p50"]
            t = r.get("syn_transit_us", {})
            if t.get("n"):
                t50[a].append(t["p50"])
                t99[a].append(t["p99"])
                t_rep[r["rep"]][a] = t["p50"]
        for variant, label in (("ftpct", ""), ("ftpct_rt", ", daemon under SCHED_FIFO (`chrt -f 10`)")):
            ftl = [r for r in lat if r["alg"] == variant and "ftpct_latency_p99_ns" in r]
            if not ftl:
                continue
            p50 = [r["ftpct_latency_p50_ns"] for r in ftl]
            p99 = [r["ftpct_latency_p99_ns"] for r in ftl]
            mx = [r["ftpct_latency_max_ns"] for r in ftl]
            nv = [r.get("ftpct_nvcsw", 0) / max(1, r["ftpct_latency_count"]) * 100 for r in ftl]
            p99m = med(p99)
            ok = None if p99m is None else (True if p99m <= 50_000 else (False if p99m / 2 >= 50_000 else None))
            w(f"| 3 | ftpct per queued packet, one session at a time{label} (`ftpct stats`), µs: p50 / p99 / max; preemptions per 100 packets | "
              f"{spread(p50, fus)} / {spread(p99, fus)} / {spread(mx, fus)}; {spread(nv, f2)} | | | | p99 ≤ 50 µs | {verdict(ok)} |")
            # the same, split by packet class (present in runs after 2026-11-26T16:30Z)
            for cls, what in (("plain", "packets that needed no kernel work before their verdict"),
                              ("work", "packets that did (conntrack lookup/create/mark, ipset add, state write)")):
                k = f"ftpct_latency_{cls}_p99_ns"
                sub = [r for r in ftl if k in r and r.get(f"ftpct_latency_{cls}_count", 0) > 0]
                if not sub:
                    continue
                share = [r[f"ftpct_latency_{cls}_count"] / max(1, r["ftpct_latency_count"]) * 100 for r in sub]
                k50 = [r[f"ftpct_latency_{cls}_p50_ns"] for r in sub]
                k99 = [r[k] for r in sub]
                w(f"| 3 | … {what}{label}: share of packets (%), µs p50 / p99 | "
                  f"{spread(share, f1)}; {spread(k50, fus)} / {spread(k99, fus)} | | | | | |")
            vc = [r for r in ftl if "ftpct_verdict_call_p50_ns" in r]
            if vc:
                w(f"| 3 | … the verdict call itself{label} (the kernel carries the packet on: rest of netfilter, "
                  f"routing, veth into the receiving namespace), µs p50 / p99 | "
                  f"{spread([r['ftpct_verdict_call_p50_ns'] for r in vc], fus)} / "
                  f"{spread([r['ftpct_verdict_call_p99_ns'] for r in vc], fus)} | | | | | |")
            ops = []
            for name, ns, cnt in (("conntrack lookup", "ct_lookup_ns", "ct_lookups"),
                                  ("conntrack mark", "ct_mark_ns", "ct_marked"),
                                  ("conntrack create", "ct_create_ns", "ct_created"),
                                  ("ipset add", "ipset_add_ns", "ipset_adds"),
                                  ("state write", "state_write_ns", "state_writes")):
                per = [r[f"ftpct_{ns}"] / r[f"ftpct_{cnt}"] for r in ftl
                       if r.get(f"ftpct_{cnt}", 0) > 0 and f"ftpct_{ns}" in r]
                if per:
                    ops.append(f"{name} {spread(per, fus)}")
            if ops:
                w(f"| 3 | … kernel work before the verdict{label}, µs per operation | {'; '.join(ops)} | | | | | |")
        ratio = paired(s_rep)
        m = med(ratio)
        row("3", "Data-connection setup, one session at a time, RETR sent → accept(), p50 µs", s50, ratio,
            "≤ 1.5×", None if m is None else m <= 1.5, f0)
        ratio = paired(c_rep)
        row("3", "PORT/EPRT → 200 round trip, one session at a time, p50 µs", c50, ratio, "", None, f0)
        ratio = paired(t_rep)
        row("3", "Data SYN transit through the gateway (tcpdump in the gateway: in on to-srv → out on to-cli), p50 µs",
            t50, ratio, "", None, f0)
        row("3", "… same, p99 µs", t99, [], "", None, f0)
        if s50.get("ftpct_rt"):
            for name, d, rep in (("Data-connection setup, one session at a time, p50 µs", s50, s_rep),
                                 ("PORT/EPRT → 200 round trip, one session at a time, p50 µs", c50, c_rep),
                                 ("Data SYN transit through the gateway, p50 µs", t50, t_rep)):
                r = paired(rep, num="ftpct_rt")
                w(f"| 3 | … {name}, ftpct under SCHED_FIFO | {spread(d['ftpct_rt'], f0)} | {spread(d.get('kernel', []), f0)} | | "
                  f"{spread(r, f2) if r else '–'} | | |")

    # client check
    sweep = [r["r"] for r in recs if r["phase"] == "sweep"]
    if sweep:
        w("")
        w("Client check (no ALG, firewall open): session rate against the number of concurrent "
          "clients, and the load generator's own CPU time ÷ wall time.")
        w("")
        w("| Concurrent clients | " + " | ".join(str(x["concurrency"]) for x in sweep) + " |")
        w("|---|" + "---|" * len(sweep))
        w("| Sessions/s | " + " | ".join(f0(x["rate"]) for x in sweep) + " |")
        w("| Load generator CPU (% of one CPU) | " + " | ".join(f1(x["cpu_frac"] * 100) for x in sweep) + " |")

    # 4. scale
    scale = [r["r"] for r in recs if r["phase"] == "scale"]
    if scale:
        w("")
        w("Scale (ftpct only; IPv6 lab, stub FTP server, daemon logging off): resident memory of the "
          "daemon (`VmRSS`; per entry from `RssAnon`, its own memory, when recorded: the mapped "
          "state file's pages, in the page cache either way, are shown apart), and its CPU time "
          "per queued packet during a NOOP probe over all open sessions "
          "(`/proc/PID/task/*/schedstat` ÷ packets counted by `ftpct stats`).")
        w("")
        w("| Step | Sessions | Expectations | RSS (MiB) | of which mapped files: state file (MiB) | Own memory per entry since the previous step (bytes) | "
          "CPU per queued packet, NOOP probe: median (each probe) (ns) | NOOP round trip p50 / p99 (µs) | Time to open / fill (s) | ipset errors |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        base = next((x for x in scale if x.get("phase") == "baseline"), None)
        own = lambda x: x.get("anon_kb", x["rss_kb"])
        mapped = lambda x: f"{x['mapped_kb'] / 1024:.1f}" if "mapped_kb" in x else ""
        prev_rss = own(base) if base else None
        prev_n = (0, 0)
        if base:
            w(f"| baseline | 0 | 0 | {base['rss_kb'] / 1024:.1f} | {mapped(base)} | | | | | |")
        pending = None
        for x in scale:
            ph = x.get("phase")
            if ph in ("sessions_open", "expect_fill"):
                pending = x
            elif ph in ("sessions_probe", "expect_probe") and pending:
                o = pending
                cur = (o["sessions"], o["expectations"])
                if ph == "sessions_probe":
                    d_n = cur[0] - prev_n[0]
                    what = "session"
                    t = o.get("open_s")
                else:
                    d_n = cur[1] - prev_n[1]
                    what = "expectation"
                    t = o.get("fill_s")
                per = (own(o) - prev_rss) * 1024 / d_n if d_n > 0 and prev_rss is not None else None
                rtt = x.get("noop_rtt_us", {})
                w(f"| {'+' if ph == 'expect_probe' else ''}{o['n']:,} {what}s | {o['sessions']:,} | {o['expectations']:,} | "
                  f"{o['rss_kb'] / 1024:.1f} | {mapped(o)} | {f0(per) + ' per ' + what if per is not None else ''} | "
                  f"{x.get('probe_cpu_ns_per_packet', 0):,.0f}"
                  f"{' (' + ', '.join(f'{v:,}' for v in x['probe_cpu_ns_per_packet_all']) + ')' if len(x.get('probe_cpu_ns_per_packet_all', [])) > 1 else ''}"
                  f" | {rtt.get('p50', 0)} / {rtt.get('p99', 0)} | "
                  f"{t if t is not None else ''} | {o['ipset_errors']:,} |")
                prev_rss, prev_n = own(o), cur
                pending = None
        fills = [x for x in scale if x.get("phase") == "expect_fill"]
        if fills:
            w("")
            w("CPU per EPRT while filling (daemon time ÷ EPRT lines; includes the ipset add of each "
              "expectation): " + ", ".join(
                  f"{x['n']:,}: {x.get('fill_cpu_ns_per_eprt', 0):,.0f} ns" for x in fills) + ".")
    return "\n".join(L) + "\n"


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    path = args[0]
    doc = None
    if "--doc" in args:
        doc = args[args.index("--doc") + 1]
    text = build(load(path))
    print(text)
    if doc:
        try:
            with open(doc) as f:
                cur = f.read()
        except FileNotFoundError:
            cur = "# Benchmarks: ftpct vs the kernel FTP helper\n\n"
        block = f"{BEGIN}\n{text}{END}"
        if BEGIN in cur and END in cur:
            a = cur.index(BEGIN)
            b = cur.index(END) + len(END)
            cur = cur[:a] + block + cur[b:]
        else:
            cur = cur.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
        with open(doc, "w") as f:
            f.write(cur)
        print(f"(tables written into {doc})", file=sys.stderr)


if __name__ == "__main__":
    main()
