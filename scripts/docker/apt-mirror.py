#!/usr/bin/python3
"""Print the Debian mirror (and suites) this machine's apt sources use, for the local debian:12-slim.

usage: apt-mirror.py [--suite bookworm] [--lines]
  (default)  the URI of the first enabled "deb" source for the suite (main component): debootstrap's MIRROR
  --lines    every enabled "deb" source for the suite and its -updates/-security companions, one
             "deb URI SUITE main" line each: the apt sources written into the image
Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line form) and *.sources (deb822).
No host name is written anywhere in the repository: the answer comes from the machine it runs on.
"""
import glob
import sys


def one_line_entries(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            kind, rest = words[0], words[1:]
            if rest and rest[0].startswith("["):         # [ options ]
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2:
                yield kind, rest[0], [rest[1]], rest[2:]


def deb822_entries(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for kind in fields.get("types", "").split():
            for uri in fields.get("uris", "").split():
                yield kind, uri, fields.get("suites", "").split(), fields.get("components", "").split()


def entries():
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for f in files:
        try:
            yield from one_line_entries(f)
        except OSError:
            pass
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            yield from deb822_entries(f)
        except OSError:
            pass


def main(argv):
    suite = argv[argv.index("--suite") + 1] if "--suite" in argv else "bookworm"
    found = []
    for kind, uri, suites, comps in entries():
        if kind != "deb" or "main" not in comps:
            continue
        for s in suites:
            if s in (suite, suite + "-updates", suite + "-security", suite + "/updates"):
                found.append((uri.rstrip("/"), s))
    if "--lines" in argv:
        for uri, s in found:
            print("deb %s %s main" % (uri, s))
        return 0 if found else 1
    for uri, s in found:
        if s == suite:
            print(uri)
            return 0
    print("apt-mirror.py: no enabled 'deb URI %s main' source in /etc/apt/sources.list(.d)" % suite,
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
