"""The admin dashboard (issue 13): `GET /` on the admin port, loaded in a real browser.

Debian's headless Chromium opens the page against a running bulkhead while traffic flows, driven
over the DevTools protocol (python3-websocket): the tests read the DOM after the page's script has
polled /stats, through the data-* attributes the page puts on every number it shows, and compare
them with /stats fetched by the test. Chromium is a test dependency (scripts/deps.sh): when it is
missing the tests fail under BULKHEAD_REQUIRE_PG=1 or BULKHEAD_BUILD (what scripts/test.sh sets),
and skip only in a bare local run."""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import urllib.request

import pytest

from conftest import IO_TIMEOUT, fetch, named, resilient_upstream, stop_process, wait_until

TOKEN = "dash-t0ken"
PAGE_LIMIT = 50 * 1024
STRICT = os.environ.get("BULKHEAD_REQUIRE_PG") == "1" or bool(os.environ.get("BULKHEAD_BUILD"))


# ----------------------------------------------------------------------------------------------
# headless Chromium over the DevTools protocol

def chromium_path():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = "chromium not found (Debian package chromium; scripts/deps.sh installs it)"
    if STRICT:
        pytest.fail(reason)
    pytest.skip(reason)


class Browser:
    """One headless Chromium with a fresh profile, and a DevTools session on its first tab."""

    def __init__(self, tmp_path):
        import websocket  # python3-websocket
        self.profile = tmp_path / "chromium-profile"
        self.log_path = tmp_path / "chromium.log"
        port_file = self.profile / "DevToolsActivePort"
        if port_file.exists():  # a profile used before: the port of an earlier Chromium
            port_file.unlink()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 "--user-data-dir=%s" % self.profile, "--window-size=1280,900", "about:blank"],
                stdout=log, stderr=log)
        self.next_id = 0
        try:
            port = wait_until(lambda: self._alive() and port_file.exists()
                              and (port_file.read_text().split("\n")[0].strip() or None),
                              what="chromium's DevTools port")
            url = "http://127.0.0.1:%s/json/list" % port
            page = wait_until(lambda: [t for t in json.loads(urllib.request.urlopen(url, timeout=IO_TIMEOUT).read())
                                       if t["type"] == "page"], what="chromium's first tab")[0]
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=IO_TIMEOUT,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise

    def _alive(self):
        if self.proc.poll() is not None:
            raise AssertionError("chromium exited with %s:\n%s" % (self.proc.returncode, self.log()))
        return True

    def log(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError("%s: %r" % (method, msg["error"]))
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError("page script failed: %r" % r["exceptionDetails"])
        return r["result"].get("value")

    def open(self, url):
        """Loads url as a new document (also when only its fragment differs from the current one)
        and waits until it has loaded."""
        self.eval("window.__previous_document = true")
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        wait_until(lambda: self.eval("!window.__previous_document && location.protocol === 'http:' && "
                                     "document.readyState === 'complete'"),
                   what="chromium to load %s" % url)

    def screenshot(self, path):
        import base64
        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(r["data"]))

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        stop_process(self.proc)


@pytest.fixture
def browser(tmp_path):
    chromium_path()  # fail or skip before starting anything else
    b = Browser(tmp_path)
    yield b
    b.close()


# What the page shows, read from its DOM (the data-* attributes and the visible words).
READ_DOM = r"""(() => {
  const all = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const status = document.getElementById("status");
  return {
    status: status.dataset.state, polls: +status.dataset.polls,
    auth_shown: !document.getElementById("auth").hidden,
    auth_msg: document.getElementById("auth-msg").textContent,
    dash_shown: !document.getElementById("dash").hidden,
    process: Object.fromEntries(all("[data-field]").map(d => [d.dataset.field, d.dataset.value])),
    routes: all("tr[data-route]").map(tr => Object.assign({}, tr.dataset,
      {cells: all("td", tr).map(td => td.textContent)})),
    backends: all("section[data-backend]").map(s => {
      const badge = s.querySelector(".breaker");
      return Object.assign({}, s.dataset, {
        badge: badge.textContent, badge_colour: getComputedStyle(badge).backgroundColor,
        hint: s.querySelector("[data-half-open-in-ms]").textContent,
        legend: Object.fromEntries(all("[data-pool]", s).map(e => [e.dataset.pool, +e.textContent])),
        endpoints: Object.fromEntries(all("li[data-endpoint]", s).map(e => [e.dataset.endpoint, e.dataset.health]))});
    }),
  };
})()"""


def dom(browser):
    return browser.eval(READ_DOM)


def admin_get(bh, path, token=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", bh.admin_port, timeout=IO_TIMEOUT)
    try:
        conn.request(method, path, headers={"Authorization": "Bearer " + token} if token else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def stats(bh, token=None):
    status, _, body = admin_get(bh, "/stats", token)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def backend(d, name):
    found = [b for b in d["backends"] if b["backend"] == name]
    assert len(found) == 1, d["backends"]
    return found[0]


class Traffic:
    """Requests to one path in a loop on a thread, paced by an event wait, until stopped."""

    def __init__(self, port, path, pace_s=0.02):
        self.port, self.path, self.pace_s = port, path, pace_s
        self.stop_ev, self.codes, self.error = threading.Event(), [], None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop_ev.wait(self.pace_s):
                self.codes.append(fetch(self.port, "GET", self.path).status)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.stop_ev.set()
        self.thread.join(IO_TIMEOUT)
        assert self.error is None, self.error
        return self.codes


def dashboard_config(api, flaky, held):
    return {
        "workers": 2,
        "upstreams": {
            "api": resilient_upstream(api, retry={"attempts": 1}),
            "flaky": resilient_upstream(flaky, retry={"attempts": 1},
                                        breaker={"consecutive_failures": 2, "open_for": "60s",
                                                 "max_open_for": "60s"}),
            "held": resilient_upstream(held, retry={"attempts": 1}, pool={"max_connections": 9}),
        },
        "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "api"},
                   {"name": "flaky", "match": {"path_prefix": "/flaky"}, "upstream": "flaky"},
                   {"name": "held", "match": {"path_prefix": "/hold"}, "upstream": "held"}],
    }


def start_held(bh, n):
    """n requests to /hold?id=h on threads of their own; join them after releasing h."""
    out = []
    threads = [threading.Thread(target=lambda: out.append(fetch(bh.port, "GET", "/hold?id=h").status),
                                daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, out


# ----------------------------------------------------------------------------------------------
# the page as served

def test_page_is_one_small_self_contained_file(bulkhead, upstream):
    """GET / is one HTML page under 50 KB that loads nothing from elsewhere (and its policy forbids
    it); HEAD answers the same head; it is served without the token, /stats is not."""
    bh = bulkhead(upstream, admin={"token": TOKEN})
    status, headers, body = admin_get(bh, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8", headers
    assert len(body) == int(headers["content-length"]) and 0 < len(body) <= PAGE_LIMIT, len(body)
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    page = body.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # only the SVG namespace names a URL; no src=, href=, url(...), @import or <link>
    urls = set(re.findall(r"https?://[^\s\"')]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}, urls
    for needle in ("src=", "href=", "url(", "@import", "<link", "<iframe"):
        assert needle not in page, needle
    status, head_headers, head_body = admin_get(bh, "/", method="HEAD")
    assert status == 200 and head_body == b"" and head_headers["content-length"] == str(len(body))
    assert admin_get(bh, "/stats")[0] == 401
    assert admin_get(bh, "/stats", token=TOKEN)[0] == 200
    assert TOKEN not in page


# ----------------------------------------------------------------------------------------------
# the page in Chromium

def test_dashboard_shows_traffic_open_breaker_and_pools(bulkhead, upstream_factory, browser):
    """With traffic on one route, a breaker forced open on another and requests held on a third, the
    rendered page shows the route names, a non-zero rate, the open breaker (word, colour, time until
    half-open) and pool numbers equal to /stats."""
    api, flaky, held = upstream_factory("api"), upstream_factory("flaky"), upstream_factory("held")
    bh = bulkhead(config=dashboard_config(api, flaky, held))
    flaky.set_mode("fail-503")
    assert [fetch(bh.port, "GET", "/flaky/x").status for _ in range(3)] == [503, 503, 503]
    assert named(stats(bh)["upstreams"], "flaky")["breaker"] == "open"
    assert flaky.traffic() == 2  # the third was refused by the open breaker
    threads, held_codes = start_held(bh, 3)
    wait_until(lambda: named(stats(bh)["upstreams"], "held")["pool"]["busy"] == 3,
               what="three requests held on upstream held")
    traffic = Traffic(bh.port, "/api/echo-head")
    try:
        browser.open(bh.admin_url + "/")
        d = wait_until(lambda: (lambda d: d["polls"] >= 2 and d)(dom(browser)), what="two polls of /stats")
        assert d["status"] == "ok" and d["dash_shown"] and not d["auth_shown"], d

        # routes by name, and a non-zero rate on the one with traffic
        assert {r["route"] for r in d["routes"]} >= {"api", "flaky", "held"}, d["routes"]
        d = wait_until(lambda: (lambda d: float(named_route(d, "api")["rps"] or 0) > 0 and d)(dom(browser)),
                       what="a non-zero request rate on route api")
        api_row = named_route(d, "api")
        assert float(api_row["p50Ms"]) <= float(api_row["p99Ms"]), api_row
        flaky_row = named_route(d, "flaky")
        assert flaky_row["requests"] == "3" and flaky_row["errors"] == "3", flaky_row
        assert float(flaky_row["errorPct"]) == 100.0 and "100.0 %" in flaky_row["cells"], flaky_row

        # the breaker forced open, in words and in red, with the time until half-open
        f = backend(d, "flaky")
        assert f["breaker"] == "open" and f["badge"] == "open", f
        assert f["badge_colour"] == "rgb(208, 52, 58)", f
        assert 0 < int(f["halfOpenInMs"]) <= 66000 and f["hint"].startswith("half-open in "), f
        a = backend(d, "api")
        assert a["breaker"] == "closed" and a["badge_colour"] == "rgb(31, 157, 85)", a
        assert a["endpoints"] == {api.addr: "healthy"}, a

        # pool numbers equal to /stats read around the same DOM read: the held pool is steady
        def pools_match():
            before, page, after = stats(bh), dom(browser), stats(bh)
            ok = True
            for kind in ("upstreams", "databases"):
                for s in before[kind]:
                    if s != named(after[kind], s["name"]):
                        continue  # changed meanwhile (traffic): compare the steady ones only
                    b = backend(page, s["name"])
                    ok = ok and [int(b[k]) for k in ("poolIdle", "poolBusy", "poolConnecting", "poolMax",
                                                     "waiters")] == [
                        s["pool"]["idle"], s["pool"]["busy"], s["pool"]["connecting"], s["pool_max"],
                        s["waiters"]]
                    ok = ok and b["legend"] == {"idle": s["pool"]["idle"], "busy": s["pool"]["busy"],
                                                "connecting": s["pool"]["connecting"], "max": s["pool_max"]}
            h = backend(page, "held")
            return ok and h["poolBusy"] == "3" and h["poolMax"] == "9" and page
        d = wait_until(pools_match, what="the page's pool numbers to equal /stats")

        # the process strip
        st = stats(bh)
        assert d["process"]["workers"] == "2" and d["process"]["generation"] == str(st["generation"]), d
        assert d["process"]["last-reload"] == "none", d["process"]
        assert "reload-error" not in d["process"], d["process"]

        # a failed reload: the page says so, with the reason, while the old config keeps serving
        good = bh.config_path.read_text()
        bh.config_path.write_text(good + "not yaml: [\n")
        try:
            bh.proc.send_signal(signal.SIGHUP)
            d = wait_until(lambda: (lambda p: p["process"].get("last-reload") == "failure" and p)(dom(browser)),
                           what="the page to show the failed reload")
        finally:
            bh.config_path.write_text(good)
        err = stats(bh)["last_reload_error"]
        assert err.startswith(str(bh.config_path) + ":") and d["process"]["reload-error"] == err, d["process"]
    finally:
        codes = traffic.stop()
        held.release("h")
        for t in threads:
            t.join(IO_TIMEOUT)
    assert codes and set(codes) == {200}, set(codes)
    assert held_codes == [200, 200, 200]


def named_route(d, name):
    found = [r for r in d["routes"] if r["route"] == name]
    assert len(found) == 1, d["routes"]
    return found[0]


def test_dashboard_asks_for_the_token(bulkhead, upstream, browser):
    """With admin.token set the page shows no data and asks for the token; a wrong one is refused;
    the right one, typed into the form or given as #token=..., shows the stats."""
    bh = bulkhead(upstream, admin={"token": TOKEN})
    assert fetch(bh.port, "GET", "/echo-head").status == 200
    browser.open(bh.admin_url + "/")
    d = wait_until(lambda: (lambda d: d["status"] == "auth" and d)(dom(browser)), what="the page to ask")
    assert d["auth_shown"] and not d["dash_shown"] and d["routes"] == [] and d["polls"] == 0, d

    def submit(token):
        browser.eval("document.getElementById('token').value = %s;"
                     "document.getElementById('token-submit').click(); true" % json.dumps(token))

    submit("wrong")
    d = wait_until(lambda: (lambda d: "refused" in d["auth_msg"] and d)(dom(browser)),
                   what="the wrong token to be refused")
    assert d["status"] == "auth" and not d["dash_shown"] and d["routes"] == [], d
    submit(TOKEN)
    d = wait_until(lambda: (lambda d: d["status"] == "ok" and d)(dom(browser)), what="stats with the token")
    assert not d["auth_shown"] and d["dash_shown"], d
    assert named_route(d, "*/")["requests"] == "1", d["routes"]
    assert backend(d, "u")["breaker"] == "closed"

    # in a fresh tab session: the token from the URL fragment, which the page then removes
    browser.eval("sessionStorage.clear(); true")
    browser.open(bh.admin_url + "/#token=" + TOKEN)
    d = wait_until(lambda: (lambda d: d["status"] == "ok" and d)(dom(browser)),
                   what="stats with the token from the fragment")
    assert not d["auth_shown"] and named_route(d, "*/")["requests"] == "1", d
    assert browser.eval("location.hash") == ""
