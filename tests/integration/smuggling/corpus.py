"""The request-smuggling corpus: raw client bytes, one case each, with a category and what the RFCs
(9110, 9112) let a proxy do with them.

expect:
  forward  a valid request the proxy must pass on (the controls);
  refuse   the framing is ambiguous or invalid: the proxy must answer it itself (400, 501, ...) and,
           for bulkhead, close the connection;
  either   the RFCs allow refusing it or forwarding a normalized form (obs-fold replaced, a duplicate
           Content-Length merged, absolute-form turned into origin-form ...). Forwarding is judged by
           the strict upstream: whatever reaches it must be unambiguous.
refuse_status: the statuses a refusal may have (REFUSAL_STATUSES by default).
forwarded:     how many requests must reach the upstream when the proxy forwards (None: any).
checks:        what the first forwarded request must carry: target, method, host, body, xff_last (the
               last X-Forwarded-For element: the client address the proxy added).
bug:           the proxy fix (1..6, issue 8) this case depends on; these fail before the fix.

Targets are /c/<case name> so a request in the upstream's record names its case. SMUG is the request
that hides in a body: an upstream that parses it parsed a request the client never sent as one.
"""
from runner import REFUSAL_STATUSES


class Case:
    def __init__(self, name, category, raw, expect, refuse_status=None, forwarded=None, checks=None,
                 forwarded_checks=None, bug=None, close_on_refuse=True, why=""):
        assert expect in ("forward", "refuse", "either"), expect
        self.name = name
        self.category = category
        self.raw = raw
        self.expect = expect
        self.refuse_status = frozenset(refuse_status) if refuse_status else REFUSAL_STATUSES
        self.forwarded = forwarded
        self.checks = checks or {}
        self.forwarded_checks = forwarded_checks or {}
        self.bug = bug
        self.close_on_refuse = close_on_refuse
        self.why = why

    def __repr__(self):
        return "Case(%s)" % self.name


CASES = []
H = b"Host: localhost\r\n"
SMUG = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
SMUG_POST = b"POST /smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 15\r\n\r\nx=1"
BODY = b"5\r\nhello\r\n0\r\n\r\n"  # "hello", chunked


def case(name, category, raw, expect, **kw):
    assert all(c.name != name for c in CASES), name
    CASES.append(Case(name, category, raw, expect, **kw))


def line(method, name, version=b"HTTP/1.1"):
    return b"%s /c/%s %s\r\n" % (method, name.encode(), version)


def cl(body):
    return b"Content-Length: %d\r\n" % len(body)


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


# ---- controls: valid requests that must go through ----------------------------------------------
C = "control"
case("control-get", C, line(b"GET", "control-get") + H + b"\r\n", "forward", forwarded=1,
     checks={"target": "/c/control-get", "method": "GET", "host": "localhost", "xff_last": "127.0.0.1"})
case("control-post-cl", C, line(b"POST", "control-post-cl") + H + cl(b"hello world") + b"\r\nhello world",
     "forward", forwarded=1, checks={"body": b"hello world"})
case("control-post-chunked", C, line(b"POST", "control-post-chunked") + H
     + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"hello") + chunk(b" world") + b"0\r\n\r\n",
     "forward", forwarded=1, checks={"body": b"hello world"})
case("control-pipelined", C, line(b"GET", "control-pipelined-1") + H + b"\r\n"
     + line(b"POST", "control-pipelined-2") + H + cl(b"two") + b"\r\ntwo", "forward", forwarded=2,
     checks={"target": "/c/control-pipelined-1"},
     forwarded_checks={1: {"target": "/c/control-pipelined-2", "body": b"two"}})
case("control-http10-keepalive", C, line(b"GET", "control-http10-keepalive", b"HTTP/1.0") + H
     + b"Connection: keep-alive\r\n\r\n", "forward", forwarded=1,
     checks={"target": "/c/control-http10-keepalive"})

# ---- CL.TE and TE.CL: both framings in one message ----------------------------------------------
C = "cl-te"
why_clte = "Content-Length and Transfer-Encoding together (RFC 9112 6.3: ought to be handled as an error)"
b = b"0\r\n\r\n" + SMUG
case("clte-cl-first", C, line(b"POST", "clte-cl-first") + H + cl(b) + b"Transfer-Encoding: chunked\r\n\r\n" + b,
     "refuse", why=why_clte)
case("clte-te-first", C, line(b"POST", "clte-te-first") + H + b"Transfer-Encoding: chunked\r\n" + cl(b) + b"\r\n" + b,
     "refuse", why=why_clte)
b = chunk(SMUG_POST) + b"0\r\n\r\n"
case("tecl-short-cl", C, line(b"POST", "tecl-short-cl") + H
     + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + b,
     "refuse", why=why_clte + "; a CL hop stops after 4 bytes, the chunk data is the next request")
case("clte-cl-zero", C, line(b"POST", "clte-cl-zero") + H + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
     + chunk(SMUG) + b"0\r\n\r\n", "refuse", why=why_clte)
case("clte-matching-lengths", C, line(b"POST", "clte-matching-lengths") + H + cl(BODY)
     + b"Transfer-Encoding: chunked\r\n\r\n" + BODY, "refuse",
     why=why_clte + ", even when both give the same length: bulkhead never guesses")
case("clte-te-xchunked", C, line(b"POST", "clte-te-xchunked") + H + cl(BODY) + b"Transfer-Encoding: xchunked\r\n\r\n"
     + BODY, "refuse", refuse_status={400, 501}, why="an unknown transfer coding next to Content-Length")
case("clte-te-ows", C, line(b"POST", "clte-te-ows") + H + cl(b"0\r\n\r\n" + SMUG)
     + b"Transfer-Encoding:  chunked \r\n\r\n0\r\n\r\n" + SMUG, "refuse", why=why_clte)

# ---- Content-Length: duplicates, lists, signs, leading zeros ---------------------------------------
C = "content-length"
case("cl-dup-different", C, line(b"POST", "cl-dup-different") + H + b"Content-Length: 0\r\n" + cl(SMUG)
     + b"\r\n" + SMUG,
     "refuse", why="two different lengths (RFC 9112 6.3: unrecoverable error)")
case("cl-dup-same", C, line(b"POST", "cl-dup-same") + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     "either", forwarded=1, checks={"body": b"hello"},
     why="identical duplicates MAY be accepted as one value (RFC 9110 8.6)")
case("cl-list-same", C, line(b"POST", "cl-list-same") + H + b"Content-Length: 5, 5\r\n\r\nhello",
     "either", forwarded=1, checks={"body": b"hello"}, why="a list of identical values MAY be accepted (RFC 9110 8.6)")
case("cl-list-different", C, line(b"POST", "cl-list-different") + H
     + b"Content-Length: 0, %d\r\n\r\n" % len(SMUG) + SMUG,
     "refuse", why="a list of different lengths")
case("cl-plus", C, line(b"POST", "cl-plus") + H + b"Content-Length: +%d\r\n\r\n" % len(SMUG) + SMUG,
     "refuse", why="Content-Length = 1*DIGIT: no sign")
case("cl-minus", C, line(b"POST", "cl-minus") + H + b"Content-Length: -1\r\n\r\n" + SMUG, "refuse",
     why="negative length")
case("cl-leading-zeros", C, line(b"POST", "cl-leading-zeros") + H + b"Content-Length: 0005\r\n\r\nhello",
     "either", forwarded=1, checks={"body": b"hello"}, why="1*DIGIT allows leading zeros")
case("cl-hex", C, line(b"POST", "cl-hex") + H + b"Content-Length: 0x%x\r\n\r\n" % len(SMUG) + SMUG, "refuse",
     why="not decimal digits")
case("cl-inner-space", C, line(b"POST", "cl-inner-space") + H + b"Content-Length: 4 5\r\n\r\n" + SMUG, "refuse",
     why="two numbers (a lax parser reads 45 or 4)")
case("cl-trailing-garbage", C, line(b"POST", "cl-trailing-garbage") + H + b"Content-Length: 5x\r\n\r\nhello" + SMUG,
     "refuse", why="digits then garbage (a lax parser reads 5)")
case("cl-empty", C, line(b"POST", "cl-empty") + H + b"Content-Length:\r\n\r\n" + SMUG, "refuse",
     why="empty value")
case("cl-overflow-wrap", C, line(b"POST", "cl-overflow-wrap") + H
     + b"Content-Length: 18446744073709551621\r\n\r\nhello"
     + SMUG, "refuse", why="2^64 + 5: a parser that wraps reads 5")
case("cl-huge", C, line(b"POST", "cl-huge") + H + b"Content-Length: 99999999999999999999999999\r\n\r\nhello",
     "refuse", why="overflows any integer")
case("cl-decimal-point", C, line(b"POST", "cl-decimal-point") + H + b"Content-Length: 5.0\r\n\r\nhello" + SMUG,
     "refuse", why="not 1*DIGIT")
case("cl-tab-ows", C, line(b"POST", "cl-tab-ows") + H + b"Content-Length:\t5\t\r\n\r\nhello", "either",
     forwarded=1, checks={"body": b"hello"}, why="OWS around a field value is SP or HTAB")
case("cl-trailing-comma", C, line(b"POST", "cl-trailing-comma") + H + b"Content-Length: 5,\r\n\r\nhello", "either",
     forwarded=1, checks={"body": b"hello"}, why="a list with an empty element")
case("cl-over-limit", C, line(b"POST", "cl-over-limit") + H + b"Content-Length: 20000000\r\n\r\nhello", "either",
     refuse_status={413}, why="above max_body_bytes (10 MiB): 413 before anything is forwarded")

# ---- Transfer-Encoding obfuscations ---------------------------------------------------------------
C = "transfer-encoding"


def te_case(name, te_line, expect, **kw):
    case(name, C, line(b"POST", name) + H + te_line + b"\r\n\r\n" + BODY, expect, **kw)


te_case("te-uppercase", b"Transfer-Encoding: CHUNKED", "either", forwarded=1, checks={"body": b"hello"},
        why="transfer-coding names are case-insensitive")
te_case("te-name-mixed-case", b"tRANSFER-eNCODING: chunked", "either", forwarded=1, checks={"body": b"hello"},
        why="field names are case-insensitive")
te_case("te-extra-ows", b"Transfer-Encoding:   chunked   ", "either", forwarded=1, checks={"body": b"hello"},
        why="OWS is not part of the value")
te_case("te-htab-ows", b"Transfer-Encoding:\tchunked", "either", forwarded=1, checks={"body": b"hello"},
        why="HTAB is OWS")
te_case("te-vtab-before", b"Transfer-Encoding:\x0bchunked", "refuse", why="VT is not OWS (some parsers strip it)")
te_case("te-vtab-after", b"Transfer-Encoding: chunked\x0b", "refuse", why="VT is a CTL")
te_case("te-nul", b"Transfer-Encoding: chunked\x00", "refuse", why="NUL in a field value")
te_case("te-formfeed", b"Transfer-Encoding:\x0cchunked", "refuse", why="FF is not OWS")
te_case("te-chunked-identity", b"Transfer-Encoding: chunked, identity", "refuse", refuse_status={400, 501},
        why="chunked not last: the length cannot be determined (RFC 9112 6.3: 400 and close)")
te_case("te-identity-chunked", b"Transfer-Encoding: identity, chunked", "refuse", refuse_status={400, 501}, bug=6,
        why="identity is no registered coding: any coding but a single chunked is 501")
case("te-identity", C, line(b"POST", "te-identity") + H
     + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
     "refuse", refuse_status={400, 501}, why="an unknown coding next to Content-Length")
te_case("te-gzip-chunked", b"Transfer-Encoding: gzip, chunked", "refuse", refuse_status={501}, bug=6,
        why="bulkhead does not apply transfer codings other than chunked: 501 (it used to drop gzip)")
case("te-dup-lines", C, line(b"POST", "te-dup-lines") + H
     + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     + BODY, "refuse", refuse_status={400, 501}, why="chunked applied twice (RFC 9112 7: MUST NOT)")
te_case("te-chunked-twice", b"Transfer-Encoding: chunked, chunked", "refuse", refuse_status={400, 501},
        why="chunked applied twice")
why_late = "; checked before the head is forwarded (llhttp rejects it only after on_headers_complete)"
te_case("te-xchunked", b"Transfer-Encoding: xchunked", "refuse", refuse_status={400, 501}, bug=6,
        why="unknown coding" + why_late)
te_case("te-gzip", b"Transfer-Encoding: gzip", "refuse", refuse_status={400, 501}, bug=6,
        why="a coding bulkhead does not undo, chunked not final" + why_late)
te_case("te-quoted", b'Transfer-Encoding: "chunked"', "refuse", refuse_status={400, 501}, bug=6,
        why="a quoted string is not a coding name" + why_late)
te_case("te-leading-comma", b"Transfer-Encoding: , chunked", "either", refuse_status={400, 501}, forwarded=1,
        checks={"body": b"hello"}, why="an empty list element is ignored (RFC 9110 5.6.1)")
te_case("te-param", b"Transfer-Encoding: chunked;q=1", "refuse", refuse_status={400, 501}, bug=6,
        why="chunked takes no parameters" + why_late)
te_case("te-space-in-name", b"Transfer Encoding: chunked", "refuse", why="SP is not a tchar: invalid field name")
case("te-name-underscore", C, line(b"POST", "te-name-underscore") + H + b"Transfer_Encoding: chunked\r\n\r\n" + BODY,
     "either", why="another field: the message has no body, the chunk lines that follow are not a request")

# ---- whitespace between field name and colon -------------------------------------------------------
C = "ws-before-colon"
why_ws = "whitespace between field name and colon: MUST 400 (RFC 9112 5.1)"
case("ws-cl", C, line(b"POST", "ws-cl") + H + b"Content-Length : %d\r\n\r\n" % len(SMUG) + SMUG, "refuse", why=why_ws)
case("ws-te", C, line(b"POST", "ws-te") + H + b"Transfer-Encoding : chunked\r\n\r\n" + chunk(SMUG) + b"0\r\n\r\n",
     "refuse", why=why_ws)
case("ws-host", C, line(b"GET", "ws-host") + b"Host : localhost\r\n\r\n", "refuse", why=why_ws)
case("ws-tab-cl", C, line(b"POST", "ws-tab-cl") + H + b"Content-Length\t: %d\r\n\r\n" % len(SMUG) + SMUG, "refuse",
     why=why_ws)
case("ws-custom-field", C, line(b"GET", "ws-custom-field") + H + b"X-Foo : bar\r\n\r\n", "refuse", why=why_ws)
case("ws-before-first-field", C, line(b"GET", "ws-before-first-field") + b" Host: evil.example\r\n" + H + b"\r\n",
     "either", checks={"host": "localhost"},
     why="a whitespace-preceded line after the request line: reject, or ignore that line (RFC 9112 2.2)")

# ---- obs-fold --------------------------------------------------------------------------------------
C = "obs-fold"
why_fold = "obs-fold: reject with 400 or replace by SP before interpreting or forwarding (RFC 9112 5.2)"
case("fold-te", C, line(b"POST", "fold-te") + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + BODY, "either",
     forwarded=1, checks={"body": b"hello"}, why=why_fold)
case("fold-cl", C, line(b"POST", "fold-cl") + H + b"Content-Length:\r\n 5\r\n\r\nhello", "either", forwarded=1,
     checks={"body": b"hello"}, why=why_fold)
case("fold-custom", C, line(b"GET", "fold-custom") + H + b"X-Foo: a\r\n b\r\n\r\n", "either", forwarded=1,
     why=why_fold)
case("fold-custom-tab", C, line(b"GET", "fold-custom-tab") + H + b"X-Foo: a\r\n\tb\r\n\r\n", "either", forwarded=1,
     why=why_fold)
case("fold-host", C, line(b"GET", "fold-host") + b"Host: localhost\r\n evil.example\r\n\r\n", "either",
     why=why_fold + "; the folded Host is invalid")
case("fold-hides-te", C, line(b"POST", "fold-hides-te") + H + cl(BODY)
     + b"X-Foo: a\r\n Transfer-Encoding: chunked\r\n\r\n"
     + BODY, "either", forwarded=1, checks={"body": BODY},
     why=why_fold + "; a parser that splits the fold sees Transfer-Encoding next to Content-Length")

# ---- bare LF and bare CR ---------------------------------------------------------------------------
C = "bare-lf-cr"
why_lf = "a recipient MAY take a bare LF as a line terminator (RFC 9112 2.2); what it forwards must use CRLF"
why_cr = "a bare CR: the element is invalid, or each bare CR is replaced by SP (RFC 9112 2.2)"
case("lf-everywhere", C, b"GET /c/lf-everywhere HTTP/1.1\nHost: localhost\n\n", "either", forwarded=1,
     checks={"target": "/c/lf-everywhere"}, why=why_lf)
case("lf-request-line", C, b"GET /c/lf-request-line HTTP/1.1\n" + H + b"\r\n", "either", forwarded=1, why=why_lf)
case("lf-hides-cl", C, line(b"POST", "lf-hides-cl") + H + b"X-Foo: a\n" + cl(SMUG) + b"\r\n" + SMUG, "either",
     forwarded=1, why=why_lf + "; a parser that does not take it sees no Content-Length")
case("lf-end-of-head", C, line(b"GET", "lf-end-of-head") + H + b"\n", "either", forwarded=1, why=why_lf)
case("cr-in-value", C, line(b"GET", "cr-in-value") + H + b"X-Foo: a\rb\r\n\r\n", "either", forwarded=1, why=why_cr)
case("cr-hides-te", C, line(b"POST", "cr-hides-te") + H + cl(BODY) + b"X-Foo: a\rTransfer-Encoding: chunked\r\n\r\n"
     + BODY, "either", forwarded=1, checks={"body": BODY},
     why=why_cr + "; a parser that ends lines at CR sees Transfer-Encoding next to Content-Length")
case("cr-before-crlf", C, line(b"GET", "cr-before-crlf") + H + b"X-Foo: a\r\r\n\r\n", "either", forwarded=1,
     why=why_cr)
case("cr-request-line", C, b"GET /c/cr-request-line HTTP/1.1\rHost: localhost\r\n\r\n", "refuse", why=why_cr)
case("lf-chunk-size-line", C, line(b"POST", "lf-chunk-size-line") + H + b"Transfer-Encoding: chunked\r\n\r\n"
     + b"5\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
     why="chunk lines end with CRLF; a bare LF there is a guess")
case("lf-after-chunk-data", C, line(b"POST", "lf-after-chunk-data") + H + b"Transfer-Encoding: chunked\r\n\r\n"
     + b"5\r\nhello\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
     why="chunk data must be followed by CRLF")

# ---- chunk sizes and chunk extensions --------------------------------------------------------------
C = "chunked"


def chunked_case(name, body, expect, **kw):
    case(name, C, line(b"POST", name) + H + b"Transfer-Encoding: chunked\r\n\r\n" + body, expect, **kw)


chunked_case("chunk-overflow-wrap", b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUG, "refuse",
             refuse_status={400, 413}, why="2^64 + 5: a parser that wraps reads 5")
chunked_case("chunk-overflow-ff", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", "refuse", refuse_status={400, 413},
             why="overflows 64 bits")
chunked_case("chunk-plus", b"+5\r\nhello\r\n0\r\n\r\n", "refuse", why="chunk-size = 1*HEXDIG")
chunked_case("chunk-minus", b"-5\r\nhello\r\n0\r\n\r\n", "refuse", why="chunk-size = 1*HEXDIG")
chunked_case("chunk-0x", b"0x5\r\nhello\r\n0\r\n\r\n", "refuse", why="a lax parser reads 0 (end) or 5")
chunked_case("chunk-leading-space", b" 5\r\nhello\r\n0\r\n\r\n", "refuse", why="chunk-size = 1*HEXDIG")
chunked_case("chunk-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="BWS is only allowed before ';'")
chunked_case("chunk-leading-zeros", b"0005\r\nhello\r\n0000\r\n\r\n", "either", forwarded=1,
             checks={"body": b"hello"}, why="valid: 1*HEXDIG")
chunked_case("chunk-uppercase-hex", b"A\r\n0123456789\r\n0\r\n\r\n", "either", forwarded=1,
             checks={"body": b"0123456789"}, why="valid: HEXDIG is case-insensitive")
chunked_case("chunk-ext", b"5;name=value\r\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="valid chunk extension")
chunked_case("chunk-ext-quoted", b'5;name="v;a\\"l"\r\nhello\r\n0\r\n\r\n', "either", forwarded=1,
             checks={"body": b"hello"}, why="valid quoted chunk-ext-val with a quoted-pair")
chunked_case("chunk-ext-bws", b"5 ; name = value\r\nhello\r\n0\r\n\r\n", "either", forwarded=1,
             checks={"body": b"hello"}, why="BWS around ';' and '=' is in the grammar")
why_ext = "; the size is clear: a proxy that re-chunks drops the extension, one that forwards it must not"
chunked_case("chunk-ext-no-name", b"5;\r\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="chunk-ext-name = token" + why_ext)
chunked_case("chunk-ext-ctl", b"5;na\x01me\r\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="CTL in a chunk extension" + why_ext)
chunked_case("chunk-ext-lf", b"5;ext\nhello\r\n0\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="a bare LF ending a chunk-size line")
chunked_case("chunk-size-missing", b"\r\nhello\r\n0\r\n\r\n", "refuse", why="empty chunk-size")
chunked_case("chunk-data-longer", b"3\r\nhello\r\n0\r\n\r\n", "refuse", why="data not followed by CRLF")
chunked_case("chunk-data-shorter", b"8\r\nhello\r\n0\r\n\r\n" + SMUG, "refuse",
             why="8 bytes are 'hello\\r\\n0', then no CRLF")
chunked_case("chunk-last-ext", b"5\r\nhello\r\n0;ext=1\r\n\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="valid extension on the last chunk")
chunked_case("chunk-body-hides-request", chunk(SMUG) + b"0\r\n\r\n", "either", forwarded=1,
             checks={"body": SMUG}, why="valid: a request inside a chunk is only data")

# ---- trailers with framing fields ------------------------------------------------------------------
C = "trailers"
why_tr = "framing, routing and connection fields are never taken from trailers (RFC 9110 6.5.1)"
chunk_tr = b"5\r\nhello\r\n0\r\n"


def trailer_case(name, trailer, expect, **kw):
    case(name, C, line(b"POST", name) + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunk_tr + trailer + b"\r\n",
         expect, **kw)


trailer_case("trailer-cl", b"Content-Length: %d\r\n" % len(SMUG), "either", forwarded=1, checks={"body": b"hello"},
             why=why_tr)
trailer_case("trailer-te", b"Transfer-Encoding: chunked\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why=why_tr)
trailer_case("trailer-host", b"Host: evil.example\r\n", "either", forwarded=1, checks={"host": "localhost"},
             why=why_tr)
trailer_case("trailer-connection", b"Connection: close\r\n", "either", forwarded=1, why=why_tr)
trailer_case("trailer-plain", b"X-Checksum: abc\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why="valid trailer")
trailer_case("trailer-obs-fold", b"X-A: a\r\n b\r\n", "either", why="obs-fold in a trailer")
trailer_case("trailer-ws-before-colon", b"X-A : a\r\n", "either", forwarded=1, checks={"body": b"hello"},
             why=why_ws + "; a proxy that drops trailers forwards nothing of it")

# ---- HTTP/1.0 and HTTP/0.9 -------------------------------------------------------------------------
C = "http-version"
case("http10-te", C, line(b"POST", "http10-te", b"HTTP/1.0") + H + b"Connection: keep-alive\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + BODY + line(b"GET", "http10-te-next") + H + b"\r\n", "refuse",
     refuse_status={400}, bug=3,
     why="Transfer-Encoding in HTTP/1.0: the framing is faulty (RFC 9112 6.1): 400 and close")
case("http10-te-cl", C, line(b"POST", "http10-te-cl", b"HTTP/1.0") + H + cl(b"0\r\n\r\n" + SMUG)
     + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUG, "refuse", why="HTTP/1.0 with both framings")
case("http10-no-host", C, line(b"GET", "http10-no-host", b"HTTP/1.0") + b"\r\n", "either", forwarded=1,
     why="valid HTTP/1.0 without Host; what is forwarded as HTTP/1.1 needs one Host")
case("http10-cl-pipelined", C, line(b"POST", "http10-cl-pipelined", b"HTTP/1.0") + H
     + b"Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello" + line(b"GET", "http10-cl-pipelined-2")
     + H + b"\r\n",
     "either", forwarded=2, checks={"body": b"hello"}, why="valid: HTTP/1.0 keep-alive with a body")
case("http10-close-pipelined", C, line(b"GET", "http10-close-pipelined", b"HTTP/1.0") + H + b"\r\n"
     + line(b"GET", "http10-close-pipelined-2") + H + b"\r\n", "either", forwarded=1,
     why="HTTP/1.0 without keep-alive: the connection ends after the first response")
case("http09", C, b"GET /c/http09\r\n", "refuse", why="HTTP/0.9 has no head: never forwarded")
case("http09-then-fields", C, b"GET /c/http09-then-fields\r\n" + H + b"\r\n", "refuse",
     why="a request line without a version")

# ---- Expect with Transfer-Encoding -----------------------------------------------------------------
C = "expect"
case("expect-100-cl", C, line(b"POST", "expect-100-cl") + H
     + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
     "either", forwarded=1, checks={"body": b"hello"}, why="valid")
case("expect-100-chunked", C, line(b"POST", "expect-100-chunked") + H + b"Expect: 100-continue\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + BODY, "either", forwarded=1, checks={"body": b"hello"}, why="valid")
case("expect-100-cl-te", C, line(b"POST", "expect-100-cl-te") + H + b"Expect: 100-continue\r\n"
     + cl(b"0\r\n\r\n" + SMUG)
     + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUG, "refuse", why=why_clte)
case("expect-100-te-gzip", C, line(b"POST", "expect-100-te-gzip") + H + b"Expect: 100-continue\r\n"
     b"Transfer-Encoding: gzip, chunked\r\n\r\n" + BODY, "refuse", refuse_status={501}, bug=6,
     why="a coding other than chunked: 501 before any 100 Continue")
case("expect-unknown", C, line(b"POST", "expect-unknown") + H + b"Expect: 200-ok\r\nContent-Length: 5\r\n\r\nhello",
     "either", refuse_status={417}, forwarded=1, why="an expectation bulkhead does not know: 417 allowed")
case("expect-100-http10", C, line(b"POST", "expect-100-http10", b"HTTP/1.0") + H
     + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", "either", forwarded=1, checks={"body": b"hello"},
     why="an HTTP/1.0 client's 100-continue is ignored (RFC 9110 10.1.1)")
case("expect-100-body-hides-request", C, line(b"POST", "expect-100-body-hides-request") + H
     + b"Expect: 100-continue\r\n" + cl(SMUG) + b"\r\n" + SMUG, "either", forwarded=1, checks={"body": SMUG},
     why="valid: the body is data")

# ---- request-line oddities -------------------------------------------------------------------------
C = "request-line"
case("rl-space-before-version", C, b"GET /c/rl-space-before-version  HTTP/1.1\r\n" + H + b"\r\n", "either",
     refuse_status={400}, forwarded=1, checks={"target": "/c/rl-space-before-version"}, bug=2,
     why="two SP: refuse, or parse on whitespace (RFC 9112 3) and forward the target alone")
case("rl-space-before-target", C, b"GET  /c/rl-space-before-target HTTP/1.1\r\n" + H + b"\r\n", "either",
     refuse_status={400}, forwarded=1, checks={"target": "/c/rl-space-before-target"}, bug=2,
     why="two SP: the target is '/c/...', never ' /c/...'")
case("rl-tabs", C, b"GET\t/c/rl-tabs\tHTTP/1.1\r\n" + H + b"\r\n", "either", refuse_status={400}, forwarded=1,
     checks={"target": "/c/rl-tabs"}, why="HTAB as separator MAY be accepted (RFC 9112 3)")
case("rl-leading-space", C, b" GET /c/rl-leading-space HTTP/1.1\r\n" + H + b"\r\n", "either", refuse_status={400},
     forwarded=1, checks={"target": "/c/rl-leading-space", "method": "GET"}, why="whitespace before the method")
case("rl-trailing-space", C, b"GET /c/rl-trailing-space HTTP/1.1 \r\n" + H + b"\r\n", "either",
     refuse_status={400, 505}, forwarded=1, checks={"target": "/c/rl-trailing-space"}, why="SP after the version")
case("rl-absolute-form", C, b"GET http://other.example/c/rl-absolute-form HTTP/1.1\r\n" + H + b"\r\n", "either",
     refuse_status={400}, forwarded=1, checks={"target": "/c/rl-absolute-form", "host": "other.example"}, bug=4,
     why="the target's authority wins over Host (RFC 9112 3.2.2)")
case("rl-absolute-form-port", C, b"GET http://other.example:8080/c/rl-absolute-form-port HTTP/1.1\r\n" + H + b"\r\n",
     "either", refuse_status={400}, forwarded=1,
     checks={"target": "/c/rl-absolute-form-port", "host": "other.example:8080"}, bug=4,
     why="the target's authority wins over Host")
case("rl-absolute-form-no-path", C, b"GET http://other.example HTTP/1.1\r\n" + H + b"\r\n", "either",
     refuse_status={400}, forwarded=1, checks={"target": "/", "host": "other.example"}, bug=4,
     why="an empty path is '/'")
case("rl-absolute-form-userinfo", C, b"GET http://user:pw@other.example/c/rl-absolute-form-userinfo HTTP/1.1\r\n" + H
     + b"\r\n", "either", refuse_status={400}, checks={"host": "other.example"}, bug=4,
     why="userinfo in an http URI SHOULD be treated as an error (RFC 9110 4.2.4); never part of Host")
case("rl-absolute-form-https", C, b"GET https://other.example/c/rl-absolute-form-https HTTP/1.1\r\n" + H + b"\r\n",
     "either", refuse_status={400}, checks={"host": "other.example"}, bug=4, why="another scheme")
case("rl-asterisk-get", C, b"GET * HTTP/1.1\r\n" + H + b"\r\n", "refuse", refuse_status={400, 404, 405},
     close_on_refuse=False, why="asterisk-form is for OPTIONS only; the framing is clear, no close needed")
case("rl-asterisk-options", C, b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", "either", refuse_status={400, 404, 501},
     close_on_refuse=False, why="valid, but about the proxy itself: no route matches '*'")
case("rl-fragment", C, b"GET /c/rl-fragment#frag HTTP/1.1\r\n" + H + b"\r\n", "refuse", refuse_status={400}, bug=5,
     why="a fragment is not part of a request-target")
case("rl-fragment-absolute", C, b"GET http://other.example/c/rl-fragment-absolute#frag HTTP/1.1\r\n" + H + b"\r\n",
     "refuse", refuse_status={400}, bug=5, why="a fragment is not part of a request-target")
case("rl-version-lowercase", C, b"GET /c/rl-version-lowercase http/1.1\r\n" + H + b"\r\n", "refuse",
     refuse_status={400, 505}, why="HTTP-name is case-sensitive")
case("rl-version-2", C, b"GET /c/rl-version-2 HTTP/2.0\r\n" + H + b"\r\n", "refuse", refuse_status={400, 505},
     why="not HTTP/1.x")
case("rl-version-1-2", C, b"GET /c/rl-version-1-2 HTTP/1.2\r\n" + H + b"\r\n", "either", refuse_status={400, 505},
     forwarded=1, why="a higher minor version is handled as the highest one known (RFC 9110 2.5)")
case("rl-version-0-9", C, b"GET /c/rl-version-0-9 HTTP/0.9\r\n" + H + b"\r\n", "refuse", refuse_status={400, 505},
     why="HTTP/0.9 with a version")
case("rl-version-leading-zero", C, b"GET /c/rl-version-leading-zero HTTP/01.1\r\n" + H + b"\r\n", "refuse",
     refuse_status={400, 505}, why="HTTP-version = HTTP-name '/' DIGIT '.' DIGIT")
case("rl-version-no-minor", C, b"GET /c/rl-version-no-minor HTTP/1\r\n" + H + b"\r\n", "refuse",
     refuse_status={400, 505}, why="HTTP-version = HTTP-name '/' DIGIT '.' DIGIT")
case("rl-connect", C, b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n", "refuse",
     refuse_status={400, 405, 501}, why="bulkhead is not a forward proxy")
case("rl-method-lowercase", C, b"get /c/rl-method-lowercase HTTP/1.1\r\n" + H + b"\r\n", "either",
     refuse_status={400, 405, 501}, forwarded=1, checks={"method": "get"},
     why="methods are case-sensitive: 'get' is another (unknown) method")
case("rl-method-bad-char", C, b"G(T /c/rl-method-bad-char HTTP/1.1\r\n" + H + b"\r\n", "refuse",
     refuse_status={400, 405, 501}, why="'(' is not a tchar")
case("rl-target-space", C, b"GET /c/rl-target space HTTP/1.1\r\n" + H + b"\r\n", "refuse", why="SP inside the target")
case("rl-target-ctl", C, b"GET /c/rl-target\x01ctl HTTP/1.1\r\n" + H + b"\r\n", "refuse", why="CTL inside the target")
case("rl-target-non-ascii", C, b"GET /c/rl-target-\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", "either",
     why="not a URI character; forwarded only percent-encoded")
case("rl-target-no-slash", C, b"GET c/rl-target-no-slash HTTP/1.1\r\n" + H + b"\r\n", "refuse",
     refuse_status={400, 404}, close_on_refuse=False, why="neither origin-form nor absolute-form")

# ---- Upgrade with a body ---------------------------------------------------------------------------
C = "upgrade"
ws = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
case("upgrade-ws-cl-body", C, line(b"GET", "upgrade-ws-cl-body") + H + ws + cl(SMUG) + b"\r\n" + SMUG, "either",
     forwarded=1, checks={"body": SMUG},
     why="the upstream did not switch protocols: the body is the body, not tunnelled bytes")
case("upgrade-ws-chunked-body", C, line(b"POST", "upgrade-ws-chunked-body") + H + ws
     + b"Transfer-Encoding: chunked\r\n\r\n"
     + chunk(SMUG) + b"0\r\n\r\n", "either", forwarded=1, checks={"body": SMUG}, why="likewise, chunked")
case("upgrade-h2c-pipelined", C, line(b"GET", "upgrade-h2c-pipelined") + H
     + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
     + line(b"GET", "upgrade-h2c-pipelined-2") + H + b"\r\n", "either",
     forwarded_checks={1: {"target": "/c/upgrade-h2c-pipelined-2"}},
     why="no 101: the next bytes are HTTP again, never a blind tunnel")
case("upgrade-without-connection", C, line(b"POST", "upgrade-without-connection") + H + b"Upgrade: websocket\r\n"
     + cl(SMUG) + b"\r\n" + SMUG, "either", forwarded=1, checks={"body": SMUG},
     why="Upgrade not listed in Connection: an ordinary request")

# ---- Connection naming framing fields --------------------------------------------------------------
C = "connection"
why_conn = "Connection never removes framing fields, Host, or fields the proxy sets"
case("conn-content-length", C, line(b"POST", "conn-content-length") + H + b"Connection: Content-Length\r\n" + cl(SMUG)
     + b"\r\n" + SMUG, "either", forwarded=1, checks={"body": SMUG}, bug=1, why=why_conn)
case("conn-keepalive-content-length", C, line(b"POST", "conn-keepalive-content-length") + H
     + b"Connection: keep-alive, Content-Length\r\n" + cl(SMUG) + b"\r\n" + SMUG, "either", forwarded=1,
     checks={"body": SMUG}, bug=1, why=why_conn)
case("conn-host", C, line(b"GET", "conn-host") + H + b"Connection: Host\r\n\r\n", "either", forwarded=1,
     checks={"host": "localhost"}, bug=1, why=why_conn)
case("conn-transfer-encoding", C, line(b"POST", "conn-transfer-encoding") + H + b"Connection: Transfer-Encoding\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + chunk(SMUG) + b"0\r\n\r\n", "either", forwarded=1,
     checks={"body": SMUG}, why=why_conn)
case("conn-x-forwarded-for", C, line(b"GET", "conn-x-forwarded-for") + H + b"X-Forwarded-For: 203.0.113.7\r\n"
     b"Connection: X-Forwarded-For\r\n\r\n", "either", forwarded=1, checks={"xff_last": "127.0.0.1"},
     why=why_conn + ": the proxy's X-Forwarded-For stays")
case("conn-proxy-connection-cl", C, line(b"POST", "conn-proxy-connection-cl") + H
     + b"Proxy-Connection: Content-Length\r\n"
     + cl(SMUG) + b"\r\n" + SMUG, "either", forwarded=1, checks={"body": SMUG},
     why="Proxy-Connection is not Connection: it names nothing")
case("conn-names-proxy-connection", C, line(b"POST", "conn-names-proxy-connection") + H
     + b"Connection: Proxy-Connection, Content-Length\r\nProxy-Connection: keep-alive\r\n" + cl(SMUG) + b"\r\n" + SMUG,
     "either", forwarded=1, checks={"body": SMUG}, bug=1, why=why_conn)
case("conn-close-pipelined", C, line(b"GET", "conn-close-pipelined") + H + b"Connection: close\r\n\r\n"
     + line(b"GET", "conn-close-pipelined-2") + H + b"\r\n", "either", forwarded=1,
     why="nothing after a request with Connection: close is read as a request")

# ---- classic payloads: a body that hides a second request under the other framing ------------------
C = "classic"
case("classic-clte-g", C, line(b"POST", "classic-clte-g") + H
     + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nG", "refuse", why=why_clte + " (CL.TE: 'G' prefixes the next user's request)")
case("classic-tecl", C, line(b"POST", "classic-tecl") + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     + chunk(SMUG) + b"0\r\n\r\n", "refuse", why=why_clte + " (TE.CL)")
case("classic-tete", C, line(b"POST", "classic-tete") + H + cl(b"0\r\n\r\n" + SMUG)
     + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"
     + SMUG, "refuse", refuse_status={400, 501},
     why="TE.TE: one hop ignores the unknown second coding")
case("classic-get-body", C, line(b"GET", "classic-get-body") + H + cl(SMUG) + b"\r\n" + SMUG, "either", forwarded=1,
     checks={"body": SMUG}, why="valid: a GET body is framed by Content-Length like any other")
case("classic-cl-zero-pipelined", C, line(b"GET", "classic-cl-zero-pipelined") + H
     + b"Content-Length: 0\r\n\r\n" + SMUG,
     "either", forwarded=2, forwarded_checks={1: {"target": "/smuggled"}},
     why="valid: Content-Length 0, then an ordinary pipelined request")
case("classic-chunked-then-request", C, line(b"POST", "classic-chunked-then-request") + H
     + b"Transfer-Encoding: chunked\r\n\r\n" + BODY + SMUG, "either", forwarded=2, checks={"body": b"hello"},
     why="valid: a chunked body, then an ordinary pipelined request")
case("classic-te-space-cl", C, line(b"POST", "classic-te-space-cl") + H + cl(b"0\r\n\r\n" + SMUG)
     + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUG, "refuse", why=why_ws)

CATEGORIES = []
for _c in CASES:
    if _c.category not in CATEGORIES:
        CATEGORIES.append(_c.category)
