#!/usr/bin/env python3
"""Summaries of bench/dns/run.sh's results file.

  report.py median RESULTS PHASE MIX SERVER FIELD    median of FIELD over the rounds
  report.py table RESULTS RATE...                    the final tables (Markdown)

RESULTS lines (tab separated):
  dnsperf  MIX SERVER ROUND QPS LOST BUSY0 BUSY1
  PHASE    MIX SERVER ROUND key=value ...       (udpload: PHASE is udpload or fixed-RATE)
"""
import statistics
import sys

SERVERS = ["knot", "nsd", "cairn"]


def rows(path):
    out = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        phase, mix, server, rnd = f[:4]
        if phase == "dnsperf":
            d = {"qps": float(f[4]), "lost": float(f[5] or 0), "busy0": float(f[6]), "busy1": float(f[7])}
        else:
            d = {k: float(v) for k, v in (kv.split("=", 1) for kv in f[4].split())}
        d.update(phase=phase, mix=mix, server=server, round=int(rnd))
        out.append(d)
    return out


def pick(data, phase, mix, server):
    return [d for d in data if d["phase"] == phase and d["mix"] == mix and d["server"] == server]


def median(data, phase, mix, server, field):
    vals = [d[field] for d in pick(data, phase, mix, server) if field in d]
    return statistics.median(vals) if vals else float("nan")


def qps_cell(data, phase, mix, server):
    runs = pick(data, phase, mix, server)
    if not runs:
        return "-"
    each = ", ".join(f"{d['qps'] / 1000:.0f}k" for d in sorted(runs, key=lambda d: d["round"]))
    return f"{median(data, phase, mix, server, 'qps'):,.0f} ({each})"


def ratio(data, phase, mix, server, to="knot"):
    base = median(data, phase, mix, to, "qps")
    value = median(data, phase, mix, server, "qps") / base if base else float("nan")
    return "-" if value != value else f"{value:.2f}"


def num(value, fmt):
    return "-" if value != value else format(value, fmt)


def lost(data, phase, mix, server):
    runs = pick(data, phase, mix, server)
    total = sum(d.get("lost", 0) for d in runs)
    other = sum(d.get("other_rcode", 0) for d in runs)
    sent = sum(d.get("sent", 0) for d in runs)
    text = f"{total:.0f}"
    if sent:
        text += f" / {sent:,.0f}"
    if other:
        text += f", {other:.0f} not NOERROR"
    return text


def stalls(data, phase, server):
    runs = pick(data, phase, "a", server)
    n = sum(d.get("client_stalls", 0) for d in runs)
    return f"{n:.0f}, {sum(d.get('client_stall_ms', 0) for d in runs):.1f} ms"


def ms(us):
    return f"{us / 1000:.3f}"


def table(path, rates):
    data = rows(path)
    rate1 = rates[0]
    fixed1 = f"fixed-{rate1}"
    rounds = max((d["round"] for d in data), default=0)
    print(f"Medians over {rounds} round(s); per-round values in parentheses. Latency in ms.")
    print()
    print(f"A queries. Max qps: dnsperf. Latency: udpload at a fixed {rate1:,} qps "
          "(50% of Knot's dnsperf max).")
    print()
    print("| server | max qps (rounds) | ratio to Knot | ratio to NSD | p50 | p99 | p99.9 | lost / sent (+ errors) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in SERVERS:
        print(f"| {s} | {qps_cell(data, 'dnsperf', 'a', s)} | {ratio(data, 'dnsperf', 'a', s)} "
              f"| {ratio(data, 'dnsperf', 'a', s, 'nsd')} "
              f"| {ms(median(data, fixed1, 'a', s, 'p50_us'))} | {ms(median(data, fixed1, 'a', s, 'p99_us'))} "
              f"| {ms(median(data, fixed1, 'a', s, 'p999_us'))} | {lost(data, fixed1, 'a', s)} |")
    print()
    print("Max qps by client and query mix (A10x: A queries over 10x the catalog, 10,000 services "
          "x 3); core0/core1 = busy % of cores 0 and 1 (median; pinned, core0 is the server's and "
          "core1 the client's). udpload busy-polls, so its core always reads 100%.")
    print()
    print("| server | mix | dnsperf qps (rounds) | ratio to Knot | ratio to NSD | core0/core1 | udpload qps (rounds) | ratio | core0 | lost (dnsperf, udpload) | answer bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mix in ("a", "srv", "a10x"):
        for s in SERVERS:
            if not pick(data, "dnsperf", mix, s):
                continue
            print(f"| {s} | {mix.upper()} | {qps_cell(data, 'dnsperf', mix, s)} | {ratio(data, 'dnsperf', mix, s)} "
                  f"| {ratio(data, 'dnsperf', mix, s, 'nsd')} "
                  f"| {median(data, 'dnsperf', mix, s, 'busy0'):.0f}/{median(data, 'dnsperf', mix, s, 'busy1'):.0f} "
                  f"| {qps_cell(data, 'udpload', mix, s)} | {ratio(data, 'udpload', mix, s)} "
                  f"| {num(median(data, 'udpload', mix, s, 'busy0'), '.0f')} "
                  f"| {sum(d['lost'] for d in pick(data, 'dnsperf', mix, s)):.0f}, "
                  f"{sum(d['lost'] for d in pick(data, 'udpload', mix, s)):.0f} "
                  f"| {num(median(data, 'udpload', mix, s, 'avg_size'), '.1f')} |")
    print()
    print("Latency at fixed rates (udpload, A queries): the first = 50% of Knot's dnsperf max, "
          "the second (pinned runs) = 50% of Knot's udpload max. Client stalls: gaps of >= 0.2 ms "
          "in udpload's loop (count, total over the rounds).")
    print()
    print("| server | rate qps | p50 | p90 | p99 | p99.9 | max | lost / sent (+ errors) | core0 | client stalls |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        phase = f"fixed-{rate}"
        for s in SERVERS:
            m = lambda f: median(data, phase, "a", s, f)
            print(f"| {s} | {rate:,} | {ms(m('p50_us'))} | {ms(m('p90_us'))} | {ms(m('p99_us'))} "
                  f"| {ms(m('p999_us'))} | {ms(m('max_us'))} | {lost(data, phase, 'a', s)} | {m('busy0'):.0f} "
                  f"| {stalls(data, phase, s)} |")
    print()
    verdict = lambda ok: "met" if ok else "NOT met"
    cells = []
    for mix in ("a", "srv", "a10x"):
        for peer in ("knot", "nsd"):
            q = median(data, "dnsperf", mix, "cairn", "qps") / median(data, "dnsperf", mix, peer, "qps")
            if q == q:
                cells.append(f"{mix.upper()} /{peer} {q:.2f} -> {verdict(q >= 1.0)}")
    p99 = median(data, fixed1, "a", "cairn", "p99_us") / 1000
    print(f"targets (issue 15): cairn max qps (dnsperf) >= 1.0x Knot and NSD: {'; '.join(cells)}. "
          f"cairn p99 < 1 ms at {rate1:,} qps: {p99:.3f} ms -> {verdict(p99 < 1)}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "median":
        print(median(rows(sys.argv[2]), *sys.argv[3:7]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "table":
        table(sys.argv[2], [int(r) for r in sys.argv[3:]])
    else:
        sys.exit(__doc__)
