"""The Prometheus endpoint: the text format (checked by promtool), the process metrics, the server on a real
socket with well- and ill-behaved clients, and a real Prometheus scraping it. No root needed."""
import json
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import ROOT, tool
from exposition import promtool
from probe import prometheus
from probe.errors import ProbeError
from probe.prometheus import Family, MetricsServer, parse_listen, process_families, render

# The golden families and their text: labels in the dict's order, the empty family left out.
GOLDEN = [
    Family("knp_packets_total", "counter", "Packets seen.",
           [({"interface": "eth0", "direction": "rx"}, 2 ** 64 - 1), ({"interface": "eth0", "direction": "tx"}, 0)]),
    Family("knp_nothing_total", "counter", "Never sampled.", []),
    Family("knp_rate", "gauge", "A rate.", [({}, 1.5), ({"kind": "up"}, float("inf"))]),
    Family("knp_other", "untyped", "Something.", [({}, -3)]),
]
GOLDEN_TEXT = """\
# HELP knp_packets_total Packets seen.
# TYPE knp_packets_total counter
knp_packets_total{interface="eth0",direction="rx"} 18446744073709551615
knp_packets_total{interface="eth0",direction="tx"} 0
# HELP knp_rate A rate.
# TYPE knp_rate gauge
knp_rate 1.5
knp_rate{kind="up"} +Inf
# HELP knp_other Something.
# TYPE knp_other untyped
knp_other -3
"""


def gauge(value, labels=None, name="g", help="h"):
    return Family(name, "gauge", help, [(labels or {}, value)])


def test_render_golden():
    assert render(GOLDEN) == GOLDEN_TEXT


def test_render_nothing():
    assert render([]) == "" and render([GOLDEN[1]]) == ""


def test_help_is_escaped():
    assert render([gauge(1, help="a \\ b\nc \"d\"")]).splitlines()[0] == '# HELP g a \\\\ b\\nc "d"'


def test_label_values_are_escaped():
    assert render([gauge(1, {"path": 'C:\\dir\n"x"'})]).splitlines()[2] == 'g{path="C:\\\\dir\\n\\"x\\""} 1'


@pytest.mark.parametrize("value,text", [(0, "0"), (-7, "-7"), (2 ** 64, "18446744073709551616"), (True, "1"),
                                        (1.5, "1.5"), (0.1, "0.1"), (1e-07, "1e-07"), (1e300, "1e+300"),
                                        (-0.0, "-0.0"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
                                        (float("nan"), "NaN")])
def test_values(value, text):
    assert render([gauge(value)]).splitlines()[2] == "g " + text


@pytest.mark.parametrize("families", [
    [Family("1abc", "gauge", "h", [])],
    [Family("a-b", "gauge", "h", [])],
    [Family("", "gauge", "h", [])],
    [Family("packets", "counter", "h", [({}, 1)])],  # a counter without _total
    [Family("x", "counter", "h", [])],  # checked even without samples
    [Family("h", "histogram", "h", [({}, 1)])],
    [gauge(1, {"1a": "x"})],
    [gauge(1, {"a b": "x"})],
    [gauge(1, {"__name__": "x"})],
    [gauge(1, {"a": 1})],
    [gauge("1")],
    [gauge(None)],
    [gauge(1), gauge(2)],  # one name, two families
], ids=lambda f: repr(f)[:60])
def test_refused(families):
    with pytest.raises(ValueError):
        render(families)


def test_promtool_accepts_the_output():
    text = render(GOLDEN + [gauge(1, {"path": 'C:\\dir\n"x"'}, help="a \\ b\nc")] + process_families())
    result = promtool(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + text


def test_promtool_does_check():
    """The check above means something: promtool refuses a damaged text."""
    assert promtool(GOLDEN_TEXT.replace("+Inf", "infinite")).returncode != 0


# Process metrics

def process_values():
    return {f.name: f.samples[0][1] for f in process_families()}


def test_process_metrics_are_plausible():
    before = time.time()
    values = process_values()
    fds = len(os.listdir("/proc/self/fd"))  # like the metric, counts the listing's own fd
    assert set(values) == {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_start_time_seconds", "process_open_fds",
                           "process_max_fds"}
    assert abs(values["process_open_fds"] - fds) <= 1
    assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 1024 * 1024 < values["process_resident_memory_bytes"] < values["process_virtual_memory_bytes"]
    assert before - 6 * 3600 < values["process_start_time_seconds"] < before
    assert values["process_cpu_seconds_total"] >= 0


def test_cpu_seconds_count():
    start = process_values()["process_cpu_seconds_total"]
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert process_values()["process_cpu_seconds_total"] - start >= 0.25


def test_start_time_of_a_new_process():
    """A child started now says it started now (the boot time plus its start in clock ticks)."""
    before = time.time()
    out = subprocess.run([sys.executable, "-c", "from probe.prometheus import process_families; "
                          "print(repr([f.samples[0][1] for f in process_families()][3]))"],
                         cwd=ROOT, stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert before - 1.5 < float(out) < time.time() + 0.5


# parse_listen

@pytest.mark.parametrize("text,address", [("9199", ("127.0.0.1", 9199)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                          ("localhost:65535", ("localhost", 65535)), ("[::1]:9199", ("::1", 9199)),
                                          ("[::]:1", ("::", 1))])
def test_parse_listen(text, address):
    assert parse_listen(text) == address


@pytest.mark.parametrize("text,says", [
    ("", "port ''"), ("0", "port '0'"), ("65536", "port '65536'"), ("http", "port 'http'"), ("99999999", "port"),
    (" 9199", "port"), ("127.0.0.1:", "port ''"), (":9199", "'' is no IPv4"), ("a b:1", "'a b' is no IPv4"),
    ("::1:9199", "IPv6 address goes in brackets"), ("[::1]", "brackets"), ("[::1]9199", "brackets"),
    ("[1.2.3.4]:80", "brackets"), ("[::1]:x", "port 'x'"), ("[::1:80", "brackets"),
])
def test_parse_listen_refuses(text, says):
    with pytest.raises(ProbeError) as e:
        parse_listen(text)
    assert says in e.value.message and e.value.hint


def test_listen_errors_say_what_to_do():
    with MetricsServer(("127.0.0.1", 0), str) as server:
        with pytest.raises(ProbeError) as e:
            MetricsServer(server.address, str)
        assert "address already in use" in str(e.value).lower() and "another port" in e.value.hint
    with pytest.raises(ProbeError) as e:
        MetricsServer(("no-such-host.invalid", 9199), str)
    assert e.value.hint


# The server, on a real socket

def fd_count():
    return len(os.listdir("/proc/self/fd"))


class Target(object):
    """What the test server serves: a counter the test sets, or an exception the callback raises."""

    def __init__(self):
        self.value = 0
        self.error = None
        self.scrapes = 0

    def metrics(self):
        self.scrapes += 1
        if self.error:
            raise self.error
        return render([Family("knp_test_total", "counter", "Set by the test.", [({}, self.value)])])


@pytest.fixture
def target():
    return Target()


@pytest.fixture
def server(target, monkeypatch):
    """A server on 127.0.0.1 (a free port) with short timeouts, whose fds are all gone once it is closed."""
    monkeypatch.setattr(prometheus, "TIMEOUT", 0.5)
    fds = fd_count()
    with MetricsServer(("127.0.0.1", 0), target.metrics) as s:
        yield s
    deadline = time.monotonic() + 5
    while fd_count() > fds and time.monotonic() < deadline:  # clients closing in other threads
        time.sleep(0.01)
    assert fd_count() == fds


def exchange(server, data, timeout=10):
    """What the server answers to `data`, read until it closes the connection."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse(answer):
    """(status, headers with lowercase names, body) of an HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.0"
    headers = dict((name.lower(), value) for name, _, value in (line.partition(": ") for line in lines[1:]))
    return int(status), headers, body


def request(server, path, method="GET"):
    return parse(exchange(server, ("%s %s HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n" % (method, path)).encode()))


def test_metrics(server, target):
    target.value = 42
    status, headers, body = request(server, "/metrics")
    assert status == 200 and body == b"# HELP knp_test_total Set by the test.\n" \
                                     b"# TYPE knp_test_total counter\nknp_test_total 42\n"
    assert headers == {"content-type": "text/plain; version=0.0.4; charset=utf-8",
                       "content-length": str(len(body)), "connection": "close"}
    target.value = 43
    assert request(server, "/metrics?x=1")[2].endswith(b"knp_test_total 43\n")  # computed per scrape


def test_healthz_and_a_standard_client(server):
    assert request(server, "/healthz")[::2] == (200, b"ok\n")
    with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % server.address[1], timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b"ok\n"


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/nope"])
def test_head(server, path):
    status, headers, body = request(server, path, "HEAD")
    assert (status, body) == (200 if path != "/nope" else 404, b"")
    assert headers["content-length"] == str(len(request(server, path)[2]))


@pytest.mark.parametrize("data,status", [
    (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
    (b"get /metrics HTTP/1.1\r\n\r\n", 405),  # methods are case-sensitive
    (b"GET /metrics HTTP/1.0\n\n", 200),  # bare newlines, as some tools send
    (b"garbage\r\n\r\n", 400),
    (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET http://x/metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 400),  # TLS, more or less
    (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", 431),
])
def test_answers(server, data, status):
    got, headers, _ = parse(exchange(server, data))
    assert got == status and headers["connection"] == "close"
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


def test_huge_request_line(server, target):
    """1 MB of request line: a 414, read by the client after it sent everything; then scrapes go on."""
    assert parse(exchange(server, b"GET /" + b"a" * 2 ** 20 + b" HTTP/1.1\r\n\r\n"))[0] == 414
    assert request(server, "/metrics")[0] == 200


def test_silent_clients_do_not_stop_scrapes(server):
    """Clients that send nothing, or half a request, get a 408 after TIMEOUT; others are served meanwhile."""
    silent = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
    silent[1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    try:
        start = time.monotonic()
        for _ in range(5):
            assert request(server, "/metrics")[0] == 200
        assert time.monotonic() - start < prometheus.TIMEOUT
        for sock in silent:
            assert parse(read_all(sock))[0] == 408
        assert time.monotonic() - start < 2 * prometheus.TIMEOUT + 1
    finally:
        for sock in silent:
            sock.close()


def test_full_server_keeps_clients_waiting(server):
    """Past MAX_CONNECTIONS (all silent), a new client waits in the backlog, then is served."""
    silent = [socket.create_connection(server.address, timeout=10) for _ in range(prometheus.MAX_CONNECTIONS)]
    try:
        start = time.monotonic()
        assert request(server, "/metrics")[0] == 200
        # The silent ones are answered after TIMEOUT, and dropped after TIMEOUT more, as they never close.
        assert prometheus.TIMEOUT <= time.monotonic() - start < 2 * prometheus.TIMEOUT + 1
    finally:
        for sock in silent:
            sock.close()


def test_concurrent_clients(server):
    results = []

    def scrape():
        results.append(request(server, "/metrics")[0])

    threads = [threading.Thread(target=scrape) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 50


def test_many_scrapes(server, target):
    start = time.monotonic()
    for i in range(1000):
        target.value = i
        assert request(server, "/metrics")[2].endswith(b"knp_test_total %d\n" % i)
    assert time.monotonic() - start < 30


def test_failing_callback(server, target):
    target.error = KeyError("boom")
    status, headers, body = request(server, "/metrics")
    assert (status, body) == (500, b"internal server error\n")
    target.error = None
    assert request(server, "/metrics")[0] == 200
    assert target.scrapes == 2


def test_close_frees_the_port(target):
    server = MetricsServer(("127.0.0.1", 0), target.metrics)
    assert request(server, "/metrics")[0] == 200
    server.close()
    server.close()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=5)
    with MetricsServer(server.address, target.metrics) as again:
        assert request(again, "/metrics")[0] == 200


def test_ipv6(target):
    with MetricsServer(("::1", 0), target.metrics) as server:
        assert server.address[0] == "::1"
        assert request(server, "/healthz")[0] == 200


# A real Prometheus

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(port, expression):
    """The value of a Prometheus expression (its first series), or None."""
    url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, expression)
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            result = json.loads(answer.read().decode())["data"]["result"]
    except OSError:  # not up yet
        return None
    return result[0]["value"][1] if result else None


def wait_for(port, expression, value, prometheus_log, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(port, expression) == value:
            return
        time.sleep(0.2)
    with open(prometheus_log) as f:
        log = f.read()[-3000:]
    pytest.fail("%s never became %s (last: %s); Prometheus said:\n%s" % (expression, value,
                                                                           query(port, expression), log))


def test_real_prometheus_scrapes(target, tmp_path):
    binary = tool("prometheus")
    target.value = 42
    with MetricsServer(("127.0.0.1", 0), lambda: render([Family("knp_test_total", "counter", "Set by the test.",
                                                                 [({}, target.value)])] + process_families())
                       ) as server:
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                          "  - job_name: knp\n    static_configs:\n      - targets: ['%s']\n"
                          % prometheus.format_address(*server.address))
        port = free_port()
        log_path = str(tmp_path / "prometheus.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen([binary, "--config.file=%s" % config,
                                        "--storage.tsdb.path=%s" % (tmp_path / "data"),
                                        "--web.listen-address=127.0.0.1:%d" % port],
                                       stdout=log, stderr=log, cwd=str(tmp_path))
        try:
            wait_for(port, "knp_test_total", "42", log_path)
            target.value = 2 ** 40 + 1
            wait_for(port, "knp_test_total", str(2 ** 40 + 1), log_path)
            wait_for(port, 'up{job="knp"}', "1", log_path)
            assert float(query(port, "process_open_fds")) > 0
            assert math.isfinite(float(query(port, "process_start_time_seconds")))
        finally:
            process.kill()
            process.wait()
