#!/usr/bin/python3
"""Count test results for scripts/test.sh. Prints one line: "PASSED FAILED SKIPPED NOTE...".

usage: testcount.py meson <testlog.json> [RC]
       testcount.py junit <file.xml>... [--rc RC]

meson: one record per meson test (one executable). When the executable is a cmocka runner, its own summary
lines ("[  PASSED  ] N test(s).", "[  FAILED  ] N ...", "[  SKIPPED ] N ...") give per-case counts; an
executable that meson calls failed (crash, sanitizer report at exit, timeout) adds one failure when cmocka
reported none. Without cmocka output, each meson test counts once by its result.
junit: per <testcase>: failure or error -> failed, skipped -> skipped, otherwise passed (a test that passed
and then errored in teardown counts once, as failed). A runner exit code other than 0 (or pytest's 5, no tests)
with no failure in the XML adds one failure, so a crash never reads as a pass.
"""
import json
import re
import sys
import xml.etree.ElementTree as ET

SUMMARY = re.compile(r"^\[\s*(PASSED|FAILED|SKIPPED)\s*\]\s+(\d+) test\(s\)", re.M)
RUNNING = re.compile(r"^\[=+\] Running (\d+) test\(s\)", re.M)
CASE_OK = re.compile(r"^\[\s+OK \]", re.M)
MESON_PASS = {"OK", "EXPECTEDFAIL"}
MESON_SKIP = {"SKIP"}


def count_meson(path, rc=None):
    p = f = s = 0
    notes = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            res = d.get("result", "ERROR")
            out = (d.get("stdout") or "") + "\n" + (d.get("stderr") or "")
            sums = SUMMARY.findall(out)
            announced = sum(int(n) for n in RUNNING.findall(out))
            if sums:
                tp = sum(int(n) for k, n in sums if k == "PASSED")
                tf = sum(int(n) for k, n in sums if k == "FAILED")
                ts = sum(int(n) for k, n in sums if k == "SKIPPED")
                missing = announced - tp - tf - ts
                if missing > 0:          # a group cut short after printing part of its summary
                    tf += missing
            elif announced:              # started, never summarised: crashed mid-run
                tp = len(CASE_OK.findall(out))
                ts = 0
                tf = max(1, announced - tp)
            else:                        # not a cmocka runner: one test
                tp = 1 if res in MESON_PASS else 0
                ts = 1 if res in MESON_SKIP else 0
                tf = 0 if (tp or ts) else 1
            if res not in MESON_PASS and res not in MESON_SKIP and tf == 0:
                tf = 1
            if res not in MESON_PASS and res not in MESON_SKIP:
                notes.append("%s:%s" % (d.get("name", "?"), res))
            p += tp
            f += tf
            s += ts
    if rc not in (None, 0) and f == 0:
        f += 1
        notes.append("meson-test-rc=%s" % rc)
    return p, f, s, notes


def count_junit(paths, rc=None):
    p = f = s = 0
    notes = []
    for path in paths:
        root = ET.parse(path).getroot()
        for tc in root.iter("testcase"):
            tags = {c.tag for c in tc}
            if "failure" in tags or "error" in tags:
                f += 1
                if len(notes) < 3:
                    name = "%s::%s" % (tc.get("classname", ""), tc.get("name", ""))
                    notes.append(name.replace("tests.integration.", "").replace("tests.compat.", ""))
            elif "skipped" in tags:
                s += 1
            else:
                p += 1
        # errors outside any testcase (e.g. collection errors written as suite-level errors)
        for ts in root.iter("testsuite"):
            if ts.find("testcase") is None and int(ts.get("errors", 0) or 0) > 0:
                f += int(ts.get("errors"))
    if f > 3:
        notes.append("(+%d more)" % (f - 3))
    if rc not in (None, 0, 5) and f == 0:
        f += 1
        notes.append("runner-rc=%s" % rc)
    return p, f, s, notes


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    kind = argv[1]
    if kind == "meson":
        rc = int(argv[3]) if len(argv) > 3 else None
        p, f, s, notes = count_meson(argv[2], rc)
    elif kind == "junit":
        args = argv[2:]
        rc = None
        if "--rc" in args:
            i = args.index("--rc")
            rc = int(args[i + 1])
            args = args[:i] + args[i + 2:]
        p, f, s, notes = count_junit(args, rc)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(p, f, s, " ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
