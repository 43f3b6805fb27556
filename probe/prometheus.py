"""A Prometheus endpoint from the standard library: the text exposition format (0.0.4), the process_* metrics
of Prometheus' client libraries, and a small HTTP server for /metrics and /healthz. Generic: what /metrics
shows comes from a callback; nothing here knows what is counted.

The server runs in a daemon thread with a select loop of its own, rather than being driven from the caller's
loop: the caller's loop stays as it is (make the server, close it at the end), no timeout there has to take
the server's deadlines into account, and no client, slow or hostile, can delay a report, since sockets are
non-blocking and the caller's thread never touches them. The price: the callback runs in the server's thread,
once per scrape, while the caller's thread goes on with its own work (taking turns with it under the GIL: a
long scrape slows a report a little, never stops it). It must read what it reports afresh (e.g. counters from
the kernel's maps) and share no mutable state with the caller without a lock.

Limits (constants below): a request head (request line and headers) of at most MAX_HEAD bytes, else 414 (the
request line is longer) or 431 (the headers are); a client has TIMEOUT seconds to send it (else 408), as long
again to take the answer, and again to close. Every answer says `Connection: close`; the server then shuts
its side and reads (and drops) whatever the client still sends until it closes, so that an error answer to a
client that is still sending is not lost to a TCP reset. At most MAX_CONNECTIONS clients at a time: beyond
that the server stops accepting, and new clients wait in the listen backlog until a slot frees (a silent
client holds one 2 * TIMEOUT, none more than 3 * TIMEOUT), so that a burst of scrapes is answered late
rather than refused.
"""
import collections
import errno
import math
import os
import re
import resource
import selectors
import socket
import threading
import time

from probe.bpf import log
from probe.errors import ProbeError

DEFAULT_HOST = "127.0.0.1"
MAX_HEAD = 8192  # bytes of request line and headers, as most servers allow
TIMEOUT = 5.0  # seconds to send a request, and again to take its answer
MAX_CONNECTIONS = 16
BACKLOG = 128
RECV_SIZE = 16384
ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of fds (else accept spins)
CLOSE_TIMEOUT = 5.0  # seconds close() waits for a scrape in progress

TYPES = ("counter", "gauge", "untyped")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


class Family(collections.namedtuple("Family", "name type help samples")):
    """A metric family: name, type (counter, gauge or untyped), help text and [(labels dict, value), ...]."""
    __slots__ = ()


def _check(family):
    """Refuse a family Prometheus would refuse, or misread: a programming error, hence ValueError."""
    if not METRIC_NAME.match(family.name):
        raise ValueError("%r is not a metric name" % (family.name,))
    if family.type not in TYPES:
        raise ValueError("%s: type %r is not one of %s" % (family.name, family.type, ", ".join(TYPES)))
    if family.type == "counter" and not family.name.endswith("_total"):
        raise ValueError("%s: a counter's name ends in _total" % family.name)


def _escape_help(text):
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text):
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(name, labels, pairs):
    """'{a="x",b="y"}' (in the dict's order), or '' without labels. `pairs` keeps the pairs rendered so far:
    a scrape repeats each interface's name in some forty series."""
    if not labels:
        return ""
    rendered = []
    for label, value in labels.items():
        pair = pairs.get((label, value)) if isinstance(value, str) else None
        if pair is None:
            # Names starting with __ are Prometheus' own.
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError("%s: %r is not a label name" % (name, label))
            if not isinstance(value, str):
                raise ValueError("%s: label %s has the value %r, not a string" % (name, label, value))
            pair = pairs[label, value] = '%s="%s"' % (label, _escape_label(value))
        rendered.append(pair)
    return "{%s}" % ",".join(rendered)


def _value(name, value):
    """Integers exactly, other numbers as Python's repr (which Go parses back exactly), +Inf, -Inf, NaN."""
    if isinstance(value, int):
        return "%d" % value
    if not isinstance(value, float):
        raise ValueError("%s: %r is not a number" % (name, value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(families):
    """The families in the text exposition format 0.0.4; families without samples are left out."""
    lines = []
    names = set()
    pairs = {}
    for family in families:
        _check(family)
        if family.name in names:
            raise ValueError("%s: two families of that name" % family.name)
        names.add(family.name)
        if not family.samples:
            continue
        lines += ["# HELP %s %s" % (family.name, _escape_help(family.help)),
                  "# TYPE %s %s" % (family.name, family.type)]
        lines += ["%s%s %s" % (family.name, _labels(family.name, labels, pairs), _value(family.name, value))
                  for labels, value in family.samples]
    return "".join(line + "\n" for line in lines)


_boot = []


def _boot_time():
    """The system's boot time (btime of /proc/stat, read once: the file is large on a big node, and it stays)."""
    if not _boot:
        with open("/proc/stat") as f:
            _boot.append(next(int(line.split()[1]) for line in f if line.startswith("btime ")))
    return _boot[0]


def process_families():
    """This process's process_* families, as Prometheus' client libraries export them, read from /proc."""
    with open("/proc/self/stat") as f:
        stat = f.read()
    # The command name, in parentheses, may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2:].split()

    def field(number):  # numbered as in proc(5): the first after the name, the state, is 3
        return int(fields[number - 3])

    ticks = os.sysconf("SC_CLK_TCK")
    return [
        Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
               [({}, (field(14) + field(15)) / ticks)]),
        Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
               [({}, field(24) * os.sysconf("SC_PAGE_SIZE"))]),
        Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", [({}, field(23))]),
        Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
               [({}, _boot_time() + field(22) / ticks)]),
        Family("process_open_fds", "gauge", "Number of open file descriptors.",
               [({}, len(os.listdir("/proc/self/fd")))]),
        Family("process_max_fds", "gauge", "Maximum number of open file descriptors.",
               [({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])]),
    ]


LISTEN_HINT = "write [HOST:]PORT, e.g. 9199 (on %s), 0.0.0.0:9199 or [::1]:9199" % DEFAULT_HOST
HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
PORT = re.compile(r"[0-9]{1,5}\Z")


def parse_listen(text):
    """(host, port) from "[HOST:]PORT"; the host is 127.0.0.1 unless given, an IPv6 address in brackets."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except (OSError, ValueError):
            bracket = ""
        if not bracket:
            raise ProbeError("listen address %r: no IPv6 address in brackets, then a colon and a port" % text,
                             hint=LISTEN_HINT)
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ProbeError("listen address %r: an IPv6 address goes in brackets" % text,
                             hint="write [%s]:%s" % (host, port))
        if not HOST_NAME.match(host):
            raise ProbeError("listen address %r: %r is no IPv4 address or host name" % (text, host),
                             hint=LISTEN_HINT + "; 0.0.0.0 listens on every interface")
    else:
        host, port = DEFAULT_HOST, text
    if not PORT.match(port) or not 1 <= int(port) <= 65535:
        raise ProbeError("listen address %r: the port %r is not a number from 1 to 65535" % (text, port),
                         hint=LISTEN_HINT)
    return host, int(port)


def format_address(host, port):
    """"127.0.0.1:9199", "[::1]:9199"."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there (`ss -ltnp` says which): choose another port",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024",
    errno.EADDRNOTAVAIL: "no interface here has that address: use one of this host's, or 0.0.0.0 for all",
}


def _listen(host, port):
    """A non-blocking socket listening on host:port."""
    where = format_address(host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                                             socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ProbeError("cannot listen on %s: %s" % (where, e.strerror),
                         hint="give an IP address, or a name this host resolves")
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted server takes its port back at once, despite connections of the last one in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ProbeError("cannot listen on %s: %s" % (where, e.strerror), hint=BIND_HINTS.get(e.errno),
                         errno=e.errno)
    sock.setblocking(False)
    return sock


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}
# What RFC 9112 allows, less the absolute form (http://host/path) and the asterisk, which no scraper sends.
REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/[\x21-\x7e]*) HTTP/1\.[0-9]\r?\Z")
HEAD_END = re.compile(rb"\n\r?\n")  # the empty line after the headers


def _response(status, body=None, content_type=TEXT_CONTENT_TYPE, head_only=False):
    """An HTTP/1.0 answer, by default with the status's reason as its text."""
    if body is None:
        body = (REASONS[status].lower() + "\n").encode("ascii")
    head = ["HTTP/1.0 %d %s" % (status, REASONS[status]), "Content-Type: " + content_type,
            "Content-Length: %d" % len(body), "Connection: close"]
    if status == 405:
        head.append("Allow: GET, HEAD")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)


def _answer(received, metrics):
    """The answer to the request head in `received` (metrics() gives /metrics' text), or None until complete."""
    line_end = received.find(b"\n", 0, MAX_HEAD)
    if line_end < 0:
        return _response(414) if len(received) >= MAX_HEAD else None
    if not HEAD_END.search(received, 0, MAX_HEAD):
        return _response(431) if len(received) >= MAX_HEAD else None
    request = REQUEST_LINE.match(received, 0, line_end)
    if not request:
        return _response(400)
    method, path = request.group(1), request.group(2).split(b"?", 1)[0]
    head_only = method == b"HEAD"
    if path not in (b"/metrics", b"/healthz"):
        return _response(404, head_only=head_only)
    if method not in (b"GET", b"HEAD"):
        return _response(405)
    if path == b"/healthz":
        return _response(200, b"ok\n", head_only=head_only)
    try:
        body = metrics().encode("utf-8")
    except Exception as e:  # the caller's bug or failure: this scrape fails, the server goes on
        log.warning("metrics: cannot answer a scrape: %s: %s", type(e).__name__, e)
        return _response(500, head_only=head_only)
    return _response(200, body, METRICS_CONTENT_TYPE, head_only)


READING, WRITING, DRAINING = "reading", "writing", "draining"


class _Connection(object):
    """A client: its request as it arrives, then its answer as the socket takes it, then its goodbye."""

    def __init__(self, sock):
        self.sock = sock
        self.state = READING
        self.received = bytearray()
        self.unsent = None  # a memoryview of the answer's bytes not yet sent
        self.deadline = time.monotonic() + TIMEOUT


class MetricsServer(object):
    """Serves /metrics (the text metrics() returns, per scrape) and /healthz on (host, port); 0: a free port."""

    def __init__(self, address, metrics):
        self._metrics = metrics
        self._listener = _listen(*address)
        self.address = self._listener.getsockname()[:2]
        self._connections = set()
        self._accepting = False
        self._paused_until = 0.0
        self._selector = selectors.DefaultSelector()
        self._wake = os.pipe()  # close() writes to it to end the thread's select
        self._selector.register(self._wake[0], selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="metrics-server", daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop serving and close every socket, waiting up to CLOSE_TIMEOUT for a scrape in progress."""
        if self._wake is None:
            return
        os.write(self._wake[1], b"\0")
        self._thread.join(CLOSE_TIMEOUT)
        # A scrape still running keeps the pipe: its thread ends (closing its sockets) when the scrape does.
        if not self._thread.is_alive():
            for fd in self._wake:
                os.close(fd)
        self._wake = None

    def _run(self):
        try:
            while True:
                self._accept_if_room()
                deadlines = [c.deadline for c in self._connections]
                if not self._accepting and len(self._connections) < MAX_CONNECTIONS:
                    deadlines.append(self._paused_until)
                timeout = min(deadlines) - time.monotonic() if deadlines else None
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.data is None:  # the wake pipe
                        return
                    else:
                        self._step(key.data, self._advance)
                now = time.monotonic()
                for conn in [c for c in self._connections if c.deadline <= now]:
                    self._step(conn, self._expire)
        finally:
            for conn in list(self._connections):
                self._drop(conn)
            self._selector.close()
            self._listener.close()

    def _accept_if_room(self):
        """Watch the listening socket only while a connection may be taken: else clients wait in the backlog."""
        room = len(self._connections) < MAX_CONNECTIONS and time.monotonic() >= self._paused_until
        if room and not self._accepting:
            self._selector.register(self._listener, selectors.EVENT_READ)
        elif self._accepting and not room:
            self._selector.unregister(self._listener)
        self._accepting = room

    def _accept(self):
        while len(self._connections) < MAX_CONNECTIONS:
            try:
                sock = self._listener.accept()[0]
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as e:  # EMFILE and the like: the listening socket stays readable
                log.warning("metrics: cannot accept a connection: %s", e.strerror)
                self._paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            conn = _Connection(sock)
            self._connections.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _step(self, conn, action):
        """action(conn), dropping the connection when its client is gone."""
        try:
            action(conn)
        except BlockingIOError:
            pass
        except OSError:  # reset, broken pipe
            self._drop(conn)

    def _advance(self, conn):
        """Do what the socket is ready for."""
        if conn.state == WRITING:
            self._send(conn)
            return
        data = conn.sock.recv(RECV_SIZE)
        if not data:
            self._drop(conn)
        elif conn.state == READING:
            conn.received += data
            answer = _answer(conn.received, self._metrics)
            if answer is not None:
                self._reply(conn, answer)

    def _expire(self, conn):
        if conn.state == READING:
            self._reply(conn, _response(408))
        else:
            self._drop(conn)

    def _reply(self, conn, answer):
        conn.state, conn.unsent, conn.deadline = WRITING, memoryview(answer), time.monotonic() + TIMEOUT
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._send(conn)

    def _send(self, conn):
        conn.unsent = conn.unsent[conn.sock.send(conn.unsent):]
        if not conn.unsent:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.state, conn.deadline = DRAINING, time.monotonic() + TIMEOUT
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drop(self, conn):
        self._selector.unregister(conn.sock)
        conn.sock.close()
        self._connections.discard(conn)
