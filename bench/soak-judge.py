#!/usr/bin/python3
"""The verdict of bench/soak.sh (standard library only).

usage: bench/soak-judge.py SAMPLES.csv [LIMIT_PCT]
For each series, a least-squares line over the second half of the samples (the first half is the
warm-up); growth = slope x the half's time span, as a percentage of the half's mean. RSS (rss_kib) and
open fds (fds) are judged: growth >= LIMIT_PCT (default 2) fails. The pooled connections and Postgres
backends are reported the same way but not judged (they follow the load and the reloads).
Prints one line per series, "FIT name intercept slope" per series (for the plot), then "RESULT verdict=PASS|FAIL ..." ; exit 0 (pass), 1 (a judged series
grew), 2 (too few samples to judge).
"""
import csv
import sys

JUDGED = ("rss_kib", "fds")
REPORTED = ("pool_http", "pool_pg", "pg_backends", "clients")


def fit(ts, ys):
    """(slope per second, intercept) of the least-squares line through (ts, ys)."""
    n = len(ts)
    mt = sum(ts) / n
    my = sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    sxy = sum((t - mt) * (y - my) for t, y in zip(ts, ys))
    slope = sxy / sxx if sxx > 0 else 0.0
    return slope, my - slope * mt


def main():
    path = sys.argv[1]
    limit = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 6:
        print("only %d samples: too few to judge (run longer than a minute)" % len(rows))
        print("RESULT verdict=UNJUDGED samples=%d" % len(rows))
        return 2
    half = rows[len(rows) // 2:]
    ts = [float(r["t_s"]) for r in half]
    span = ts[-1] - ts[0]
    print("fit over the second half: %d samples, t = %.0f..%.0f s (%.1f min); limit: growth < %.1f %% of the mean"
          % (len(half), ts[0], ts[-1], span / 60, limit))
    verdict = "PASS"
    parts = []
    fits = []
    for name in JUDGED + REPORTED:
        if name not in half[0]:
            continue
        ys = [float(r[name]) for r in half]
        slope, icpt = fit(ts, ys)
        mean = sum(ys) / len(ys)
        growth = slope * span
        pct = 100.0 * growth / mean if mean else 0.0
        judged = name in JUDGED
        bad = judged and pct >= limit
        if bad:
            verdict = "FAIL"
        unit_h = slope * 3600
        print("  %-12s mean %10.1f  min %9.0f  max %9.0f  slope %+9.3f/h  growth over the half %+8.2f (%+6.2f %%)  %s"
              % (name, mean, min(ys), max(ys), unit_h, growth, pct,
                 ("GROWS (>= %.1f %%): FAIL" % limit) if bad else ("flat: ok" if judged else "(reported)")))
        fits.append("FIT %s %.6g %.6g" % (name, icpt, slope))
        parts.append("%s_growth_pct=%.2f %s_slope_per_h=%.3f" % (name, pct, name, unit_h))
    print("\n".join(fits))
    print("RESULT verdict=%s samples=%d %s" % (verdict, len(rows), " ".join(parts)))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
