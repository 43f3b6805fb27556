"""The Prometheus text exposition as the tests read it: samples parsed, counters per interface, promtool's check;
and the probe serving it (--listen) in a namespace of the test's own, scraped from inside."""
import re
import subprocess
import urllib.error
import urllib.request

from conftest import tool
from netns import WatchedRun

COUNTED = ("kubenetprobe_l3_packets_total", "kubenetprobe_l3_bytes_total", "kubenetprobe_l4_packets_total",
           "kubenetprobe_l4_bytes_total")
PEER_FAMILIES = ("kubenetprobe_peer_packets_total", "kubenetprobe_peer_bytes_total")
PORT = 9199  # the probe's, on 127.0.0.1 of the probe's namespace (a fresh one: nothing else listens there)
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def promtool(text):
    """`promtool check metrics` of a text: its CompletedProcess, stderr in stdout."""
    return subprocess.run([tool("promtool"), "check", "metrics"], input=text, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)


def parse(text):
    """[(name, {label: value}, value)] of an exposition's samples."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, labels, value = SAMPLE.match(line).groups()
        samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def counted(samples, interface):
    """What the counter families say of an interface, in traffic.classes()'s shape, per direction:
    {"rx": {"l3": {protocol: (packets, bytes)}, "l4": {...}}, "tx": ...}."""
    found = {}
    for name, labels, value in samples:
        if name in COUNTED and labels["interface"] == interface:
            level, kind = name.split("_")[1:3]
            pair = found.setdefault(labels["direction"], {}).setdefault(level, {}).setdefault(labels["protocol"],
                                                                                               [0, 0])
            pair[kind == "bytes"] = int(value)
    return {d: {level: {p: tuple(v) for p, v in by.items()} for level, by in levels.items()}
            for d, levels in found.items()}


class Listening(WatchedRun):
    """kubenetprobe.pyz --json --listen 127.0.0.1:PORT in the pair's probe namespace, a periodic report a minute,
    its reports read as they come; scraped from inside that namespace."""

    def __init__(self, pair, *args):
        WatchedRun.__init__(self, pair.probe_ns, "--interval", "60", "--listen", "127.0.0.1:%d" % PORT, *args)
        self.pair = pair

    def wait_ready(self, timeout=10):
        """Wait until /healthz answers ok (the probe attached and serving)."""
        def ready():
            try:
                return get(self.pair, PORT, "/healthz") == (200, b"ok\n")
            except OSError:
                return False
        self.wait(ready, "answer ok from /healthz", timeout)
        return self

    def scrape(self):
        """The samples of one scrape of /metrics."""
        status, body = get(self.pair, PORT, "/metrics")
        assert status == 200, body
        return parse(body.decode())


def get(pair, port, path, timeout=10):
    """(status, body) of a GET of 127.0.0.1:port inside the pair's probe namespace."""
    with pair.inside():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
