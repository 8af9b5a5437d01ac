#!/usr/bin/python3
"""A small compose runner for podman, used by scripts/docker-test.sh on machines without Docker.

usage: compose.py -f docker/compose.yaml --netns NAME [-p PROJECT] up [--build] [--timeout S]
       compose.py -f docker/compose.yaml --netns NAME [-p PROJECT] down
       compose.py -f docker/compose.yaml [-p PROJECT] config        (the file after interpolation, as JSON)

It follows the compose spec where podman-compose 1.0.3 does not: the project `name:`, `${VAR}`,
`${VAR:-default}`, `${VAR-default}` and `$$` interpolation (an empty default is the empty string),
`environment` entries without a value (taken from this process's environment, or left unset),
`depends_on` with `condition: service_started | service_healthy | service_completed_successfully`, and
healthchecks run as docker runs them: `CMD` as an argument list, `CMD-SHELL` through `/bin/sh -c`, in the
container (podman exec), until one passes.
Networking: every container joins the network namespace /run/netns/NAME (made by the caller with `ip netns
add`, loopback only), and each service name resolves to 127.0.0.1 there (--add-host), so services reach each
other by name as on a compose network. `ports:` are not published (nothing leaves the namespace).
Supported keys: image, build (context, dockerfile: built with --pull=never when the image is missing or
with --build), command, entrypoint, environment, volumes (bind mounts), depends_on, healthcheck (test,
interval, timeout, retries, start_period), stop_grace_period. Any other key is reported and ignored.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

import yaml

KNOWN = {"image", "build", "command", "entrypoint", "environment", "volumes", "depends_on", "healthcheck",
         "stop_grace_period", "ports"}
VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?+])((?:[^}])*))?\}|(\w+))")


def interpolate(value, env):
    if isinstance(value, str):
        def sub(m):
            if m.group(1):
                return "$"
            name = m.group(2) or m.group(5)
            op, arg = m.group(3), m.group(4) or ""
            have = env.get(name)
            if op in (":-", "-"):
                return arg if have is None or (op == ":-" and have == "") else have
            if op in (":+", "+"):
                return arg if have is not None and (op == "+" or have != "") else ""
            if op in (":?", "?"):
                if have is None or (op == ":?" and have == ""):
                    raise SystemExit("compose.py: required variable %s: %s" % (name, arg))
                return have
            return have or ""
        return VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def duration(text, default):
    """Compose durations: 5s, 1m30s, 200ms, 1h."""
    if text is None:
        return default
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(us|ms|s|m|h)", str(text)):
        total += float(num) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def podman(*args, check=True, capture=True, timeout=None):
    r = subprocess.run(["podman"] + list(args), capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit("compose.py: podman %s failed (%d): %s" % (" ".join(args[:2]), r.returncode,
                                                                    (r.stderr or "").strip()[-2000:]))
    return r


class Project:
    def __init__(self, path, name=None, netns=None):
        self.path = os.path.abspath(path)
        self.dir = os.path.dirname(self.path)
        with open(self.path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        self.data = interpolate(raw, dict(os.environ))
        self.name = name or self.data.get("name") or os.path.basename(self.dir)
        self.services = self.data.get("services") or {}
        self.netns = netns

    def cname(self, svc):
        return "%s-%s-1" % (self.name, svc)

    def deps(self, svc):
        d = self.services[svc].get("depends_on") or {}
        if isinstance(d, list):
            return {k: "service_started" for k in d}
        return {k: (v or {}).get("condition", "service_started") for k, v in d.items()}

    def order(self):
        done, out = set(), []

        def visit(s, path):
            if s in done:
                return
            if s in path:
                raise SystemExit("compose.py: depends_on cycle: %s" % " -> ".join(path + [s]))
            for d in self.deps(s):
                if d not in self.services:
                    raise SystemExit("compose.py: %s depends on unknown service %s" % (s, d))
                visit(d, path + [s])
            done.add(s)
            out.append(s)
        for s in self.services:
            visit(s, [])
        return out

    def host_path(self, p):
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(self.dir, p))

    def build(self, svc, force):
        spec = self.services[svc]
        image = spec.get("image") or "%s-%s" % (self.name, svc)
        if "build" not in spec:
            return image
        if not force and podman("image", "exists", image, check=False).returncode == 0:
            return image
        b = spec["build"]
        b = {"context": b} if isinstance(b, str) else b
        ctx = self.host_path(b.get("context", "."))
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
        print("compose: building %s from %s" % (image, os.path.relpath(df)), flush=True)
        podman("build", "--pull=never", "-f", df, "-t", image, ctx, capture=False)
        return image

    def run_args(self, svc, image):
        spec = self.services[svc]
        for k in spec:
            if k not in KNOWN:
                print("compose: %s: key %r ignored" % (svc, k), flush=True)
        args = ["run", "-d", "--pull=never", "--name", self.cname(svc), "--network", "ns:/run/netns/%s" % self.netns,
                "--label", "com.docker.compose.project=%s" % self.name,
                "--label", "com.docker.compose.service=%s" % svc]
        for other in self.services:
            args += ["--add-host", "%s:127.0.0.1" % other]
        env = spec.get("environment") or {}
        if isinstance(env, list):
            env = dict((e.split("=", 1) + [None])[:2] for e in env)
        for k, v in env.items():
            if v is None:
                if k in os.environ:
                    args += ["-e", "%s=%s" % (k, os.environ[k])]
                continue
            args += ["-e", "%s=%s" % (k, str(v).lower() if isinstance(v, bool) else v)]
        for v in spec.get("volumes") or []:
            parts = v.split(":")
            if not parts[0].startswith((".", "/")):
                raise SystemExit("compose.py: %s: only bind mounts are supported, not %r" % (svc, v))
            parts[0] = self.host_path(parts[0])
            args += ["-v", ":".join(parts)]
        if "stop_grace_period" in spec:
            args += ["--stop-timeout", str(int(duration(spec["stop_grace_period"], 10)))]
        ep = spec.get("entrypoint")
        if ep is not None:
            args += ["--entrypoint", json.dumps(shlex.split(ep) if isinstance(ep, str) else ep)]
        args.append(image)
        cmd = spec.get("command")
        if cmd is not None:
            args += shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        return args

    def probe(self, svc):
        """One run of the service's healthcheck in its container; True when it passed."""
        hc = self.services[svc].get("healthcheck") or {}
        test = hc.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if not test or test[0] == "NONE" or hc.get("disable"):
            return None
        argv = list(test[1:]) if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        try:
            r = podman("exec", self.cname(svc), *argv, check=False, timeout=duration(hc.get("timeout"), 30))
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def state(self, svc):
        r = podman("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", self.cname(svc), check=False)
        st = (r.stdout or "").split()
        return (st[0], int(st[1])) if len(st) == 2 else ("missing", -1)

    def wait(self, svc, condition, limit):
        """Blocks until svc meets a depends_on condition; exits with the service's logs when it cannot."""
        hc = self.services[svc].get("healthcheck") or {}
        budget = duration(hc.get("start_period"), 0) + duration(hc.get("interval"), 30) * int(hc.get("retries", 3))
        deadline = time.monotonic() + max(budget, limit)
        while time.monotonic() < deadline:
            status, code = self.state(svc)
            if condition == "service_completed_successfully":
                if status == "exited":
                    if code == 0:
                        return
                    self.fail(svc, "exited with %d" % code)
            elif status != "running":
                self.fail(svc, "is %s (exit %d) before it was healthy" % (status, code))
            elif condition == "service_started":
                return
            else:
                ok = self.probe(svc)
                if ok is None:
                    raise SystemExit("compose.py: %s has no healthcheck for condition service_healthy" % svc)
                if ok:
                    print("compose: %s healthy" % svc, flush=True)
                    return
            time.sleep(0.25)
        self.fail(svc, "not %s after %.0fs" % (condition, max(budget, limit)))

    def fail(self, svc, why):
        logs = podman("logs", "--tail", "30", self.cname(svc), check=False)
        raise SystemExit("compose.py: %s %s; its last log lines:\n%s%s" % (svc, why, logs.stdout, logs.stderr))

    def up(self, force_build, limit):
        for svc in self.order():
            image = self.build(svc, force_build)
            for dep, cond in self.deps(svc).items():
                self.wait(dep, cond, limit)
            podman("rm", "-f", self.cname(svc), check=False)
            podman(*self.run_args(svc, image))
            print("compose: started %s (%s)" % (self.cname(svc), image), flush=True)
        for svc in self.services:  # like `up --wait`: every service with a healthcheck is healthy at the end
            if (self.services[svc].get("healthcheck") or {}).get("test"):
                self.wait(svc, "service_healthy", limit)

    def down(self):
        rc = 0
        for svc in reversed(self.order()):
            name = self.cname(svc)
            if podman("container", "exists", name, check=False).returncode != 0:
                continue
            r = podman("stop", name, check=False)
            status, code = self.state(svc)
            print("compose: stopped %s (exit %d)" % (name, code), flush=True)
            if r.returncode != 0:
                print("compose: podman stop %s: %s" % (name, r.stderr.strip()), file=sys.stderr)
                rc = 1
            podman("rm", "-f", name, check=False)
        return rc


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-f", "--file", required=True)
    p.add_argument("-p", "--project-name")
    p.add_argument("--netns")
    p.add_argument("command", choices=["up", "down", "config"])
    p.add_argument("--build", action="store_true", help="up: build images that have a build: section")
    p.add_argument("--timeout", type=float, default=60, help="up: least seconds to wait for a condition")
    a = p.parse_args()
    proj = Project(a.file, a.project_name, a.netns)
    if a.command == "config":
        print(json.dumps({"name": proj.name, "services": proj.services}, indent=2))
        return 0
    if not a.netns or not os.path.exists("/run/netns/%s" % a.netns):
        raise SystemExit("compose.py: --netns NAME must name an existing /run/netns/NAME (ip netns add NAME)")
    if a.command == "up":
        proj.up(a.build, a.timeout)
        return 0
    return proj.down()


if __name__ == "__main__":
    sys.exit(main())
