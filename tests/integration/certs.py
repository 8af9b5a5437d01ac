"""A throwaway PKI for the TLS tests, made with the `openssl` command line (a real peer, no Python
crypto package): one test CA, server certificates for any names, client certificates, expired and
wrong-name certificates, and a second CA nobody trusts.

    pki = Pki(tmp_path)                       # the CA is made on first use
    site = pki.server("site.test", "localhost", "127.0.0.1")
    site.cert, site.key, site.serial          # file paths; the serial as upper-case hex
    pki.ca_cert                               # the CA's certificate (PEM)

Every certificate is ECDSA P-256 unless rsa=True. Files live under the directory given, one set per
name, so tests running in parallel never share them.
"""
import collections
import datetime
import ipaddress
import os
import subprocess

Cert = collections.namedtuple("Cert", "cert key serial names")


def _openssl(*args, cwd=None, stdin=None):
    r = subprocess.run(("openssl",) + args, cwd=cwd, input=stdin, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))
    return r.stdout


def _san(names):
    parts = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            parts.append("IP:" + n)
        except ValueError:
            parts.append("DNS:" + n)
    return ",".join(parts)


class Pki:
    def __init__(self, directory, name="Bulkhead Test CA"):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        slug = name.lower().replace(" ", "-")
        self.ca_cert = os.path.join(self.dir, slug + ".crt")
        self.ca_key = os.path.join(self.dir, slug + ".key")
        self._serial = int.from_bytes(os.urandom(7), "big")
        if not os.path.exists(self.ca_cert):
            self._make_ca()

    def _key(self, path, rsa=False):
        if rsa:
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
        else:
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        os.chmod(path, 0o644)  # the tests run bulkhead and Postgres as other users

    def _make_ca(self):
        self._key(self.ca_key)
        _openssl("req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca_cert, "-days", "3650",
                 "-subj", "/CN=" + self.name, "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _next_serial(self):
        self._serial += 1
        return self._serial

    def _issue(self, stem, subject, ext, days=30, not_before=None, not_after=None, rsa=False):
        """Signs a new key's certificate with the CA. not_before/not_after (datetime, UTC) override
        days, for expired certificates (openssl x509 -not_before needs 3.4; `ca` takes -startdate)."""
        key = os.path.join(self.dir, stem + ".key")
        csr = os.path.join(self.dir, stem + ".csr")
        crt = os.path.join(self.dir, stem + ".crt")
        extfile = os.path.join(self.dir, stem + ".ext")
        self._key(key, rsa)
        _openssl("req", "-new", "-utf8", "-key", key, "-out", csr, "-subj", subject)
        with open(extfile, "w") as f:
            f.write(ext)
        serial = self._next_serial()
        if not_before is None and not_after is None:
            _openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                     "-set_serial", str(serial), "-days", str(days), "-extfile", extfile, "-out", crt)
        else:
            self._issue_dated(csr, crt, extfile, serial, not_before, not_after)
        return Cert(crt, key, "%X" % serial, ())

    def _issue_dated(self, csr, crt, extfile, serial, not_before, not_after):
        db = os.path.join(self.dir, "ca-db")
        os.makedirs(db, exist_ok=True)
        index = os.path.join(db, "index.txt")
        open(index, "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("%X\n" % serial if len("%X" % serial) % 2 == 0 else "0%X\n" % serial)
        cnf = os.path.join(db, "ca.cnf")
        with open(cnf, "w") as f:
            f.write("[ca]\ndefault_ca=t\n[t]\ndatabase=%s\nnew_certs_dir=%s\nserial=%s\n"
                    "default_md=sha256\npolicy=p\nunique_subject=no\ncopy_extensions=none\n"
                    "[p]\ncommonName=supplied\n" % (index, db, os.path.join(db, "serial")))
        fmt = "%Y%m%d%H%M%SZ"
        _openssl("ca", "-batch", "-config", cnf, "-in", csr, "-out", crt, "-cert", self.ca_cert,
                 "-keyfile", self.ca_key, "-startdate", not_before.strftime(fmt),
                 "-enddate", not_after.strftime(fmt), "-extfile", extfile, "-notext")

    def server(self, cn, *more_names, days=30, rsa=False, stem=None):
        """A server certificate for cn and more_names (DNS names or IP addresses in the SAN)."""
        names = (cn,) + more_names
        ext = ("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n" % _san(names))
        c = self._issue(stem or "server-" + cn.replace("*", "star"), "/CN=" + cn, ext, days=days, rsa=rsa)
        return c._replace(names=names)

    def client(self, cn, days=30, stem=None):
        """A client certificate with subject O=Bulkhead Tests, CN=cn (UTF-8; "/" and "\\" in cn must be
        escaped as the `openssl req -subj` syntax wants)."""
        ext = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
        stem = stem or "client-" + "".join(ch if ch.isalnum() else "_" for ch in cn)
        return self._issue(stem, "/O=Bulkhead Tests/CN=" + cn, ext, days=days)

    def expired(self, cn, *more_names):
        """A server certificate for cn that expired yesterday (valid for a day, ten days ago)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        ext = ("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n" % _san((cn,) + more_names))
        c = self._issue("expired-" + cn, "/CN=" + cn, ext, not_before=now - datetime.timedelta(days=10),
                        not_after=now - datetime.timedelta(days=1))
        return c._replace(names=(cn,) + more_names)

    def expiring(self, cn, days_left=3):
        """A server certificate for cn valid from yesterday for days_left more days."""
        now = datetime.datetime.now(datetime.timezone.utc)
        ext = ("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n" % _san((cn,)))
        c = self._issue("expiring-" + cn, "/CN=" + cn, ext, not_before=now - datetime.timedelta(days=1),
                        not_after=now + datetime.timedelta(days=days_left))
        return c._replace(names=(cn,))


def served_serial(pem):
    """The serial (upper-case hex) of a PEM certificate given as text or bytes."""
    if isinstance(pem, str):
        pem = pem.encode()
    out = _openssl("x509", "-noout", "-serial", stdin=pem).decode()
    return out.strip().split("=", 1)[1].lstrip("0") or "0"


def chain_file(path, *certs):
    """Writes the certificates' PEM one after another (a leaf followed by its chain)."""
    with open(path, "w") as out:
        for c in certs:
            with open(c) as f:
                out.write(f.read())
    return path


def not_after(cert_path):
    """A certificate file's notAfter as Unix seconds (what `openssl x509 -enddate` says)."""
    import calendar
    out = _openssl("x509", "-noout", "-enddate", "-in", cert_path).decode().strip()
    when = datetime.datetime.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")
    return calendar.timegm(when.timetuple())


def subject_rfc2253(cert_path):
    """A certificate file's subject in OpenSSL's RFC 2253 one-line form ("CN=alice,O=Bulkhead Tests")."""
    out = _openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", cert_path).decode().strip()
    return out.split("=", 1)[1].strip()


def file_serial(cert_path):
    """The serial (upper-case hex, no leading zeros) of the first certificate of a PEM file."""
    with open(cert_path, "rb") as f:
        return served_serial(f.read())
