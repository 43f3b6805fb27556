"""The probe's Prometheus metrics: the families (probe.metrics) on a fake monitor, rendered and checked by promtool;
then the probe itself with --listen in a namespace of the test's own, scraped from inside it: counters exactly what
was sent, per protocol and direction, as /metrics says and as a real Prometheus scraping it every second says, the
rx and tx packets of node_exporter's netdev collector over the same window, series gone with their interface, the
BPF run-time statistics, and the endpoint abused while the probe counts."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

import fakes
from conftest import tool
from exposition import COUNTED, PEER_FAMILIES, PORT, Listening, counted, get, parse, promtool
from netns import settle, sh
from probe import layout, metrics
from probe.errors import KernelError
from probe.prometheus import render
from traffic import (DIRECTIONS, class_frames, classes, ping, ping_frame_size, raw_sends_from_the_probe_side,
                     send_frames, tally)

PROMETHEUS_PORT = 9090
NODE_EXPORTER_PORT = 9100


def total_packets(samples, interface, direction):
    """Packets of an interface's direction: the sum of its L3 classes."""
    return sum(int(v) for n, labels, v in samples if n == "kubenetprobe_l3_packets_total"
               and labels["interface"] == interface and labels["direction"] == direction)


# The families, on a fake monitor

def fake_monitor():
    """Two interfaces: eth0 with rx at generic XDP (program 42) and tx at TC (43), veth1 with rx at TC (44) and
    tx at TC (43, the same program as eth0's: one program serves every interface)."""
    monitor = fakes.FakeMonitor()
    monitor.attachments.append(fakes.FakeAttachment({"rx": fakes.rx_tc(), "tx": fakes.tx_tc()}, "veth1", 7))
    return monitor


FAKE_COUNTERS = {
    "eth0": {"rx": fakes.counters({"ipv4": 5, "ipv6": 2, "arp": 1}, 100, {"udp": 4, "tcp": 1, "icmpv6": 2}),
             "tx": fakes.counters({"ipv4": 3}, 60, {"icmp": 3})},
    "veth1": {"rx": fakes.counters({"other": 9}, 1514), "tx": fakes.counters({}, 0)},
}


def test_families_render_and_promtool_accepts_them():
    """Every sample labelled as documented: counters by interface, direction, protocol (each class of the layout
    once); interface_info by interface, direction, ifindex, hook, mode, program_id; build_info by version and
    loader; counter values those given; and promtool finds nothing to say."""
    monitor = fake_monitor()
    text = render(metrics.families(monitor, FAKE_COUNTERS))
    result = promtool(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + text
    samples = parse(text)
    names = {n for n, _, _ in samples}
    assert set(COUNTED) | {"kubenetprobe_interface_info", "kubenetprobe_build_info"} <= names
    assert not names & {"kubenetprobe_program_run_seconds_total", "kubenetprobe_program_runs_total"}
    for name in COUNTED:
        protocols = layout.L3 if "_l3_" in name else layout.L4
        found = [(l["interface"], l["direction"], l["protocol"]) for n, l, _ in samples if n == name]
        assert all(list(l) == ["interface", "direction", "protocol"] for n, l, _ in samples if n == name)
        assert sorted(found) == sorted((i, d, p) for i in ("eth0", "veth1") for d in DIRECTIONS for p in protocols)
    for interface, by_direction in FAKE_COUNTERS.items():
        assert counted(samples, interface) == {d: classes(c) for d, c in by_direction.items()}
    info = [l for n, l, v in samples if n == "kubenetprobe_interface_info" and v == 1]
    assert info == [
        {"interface": "eth0", "direction": "rx", "ifindex": "2", "hook": "xdp", "mode": "generic", "program_id": "42"},
        {"interface": "eth0", "direction": "tx", "ifindex": "2", "hook": "tc", "mode": "", "program_id": "43"},
        {"interface": "veth1", "direction": "rx", "ifindex": "7", "hook": "tc", "mode": "", "program_id": "44"},
        {"interface": "veth1", "direction": "tx", "ifindex": "7", "hook": "tc", "mode": "", "program_id": "43"}]
    import probe
    assert [(l, v) for n, l, v in samples if n == "kubenetprobe_build_info"] == [
        ({"version": probe.__version__, "loader": "libbpf"}, 1)]
    assert {n for n in names if n.startswith("process_")} >= {"process_cpu_seconds_total", "process_open_fds"}


def test_an_interface_without_counters_is_left_out():
    """An attachment the scrape's read has no counters of (attached since) shows in no family."""
    counters = {"eth0": FAKE_COUNTERS["eth0"]}
    samples = parse(render(metrics.families(fake_monitor(), counters)))
    assert {l.get("interface") for _, l, _ in samples} == {"eth0", None}


def test_peer_families_are_the_top_talkers_and_other():
    """With talkers, kubenetprobe_peer_packets_total and _bytes_total carry, per interface and direction, each
    peer the reports list and `other`, labelled interface, direction, peer; promtool accepts them. Without
    talkers, neither family is there."""
    monitor = fake_monitor()
    assert not {n for n, _, _ in parse(render(metrics.families(monitor, FAKE_COUNTERS)))} & set(PEER_FAMILIES)
    listed = [{"address": "198.18.0.9", "packets": 4, "bytes": 400, "pps": 1.0, "bps": 8.0},
              {"address": "2001:2::9", "packets": 2, "bytes": 150, "pps": 0.0, "bps": 0.0},
              {"address": "other", "packets": 1, "bytes": 60, "pps": 0.0, "bps": 0.0}]
    monitor.talkers = object()
    monitor.talker_stats = lambda a: {d: listed for d in a.hooks} if a.interface == "eth0" else None
    text = render(metrics.families(monitor, FAKE_COUNTERS))
    result = promtool(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + text
    samples = parse(text)
    for name, field in zip(PEER_FAMILIES, ("packets", "bytes")):
        assert [(l, v) for n, l, v in samples if n == name] == [
            ({"interface": "eth0", "direction": d, "peer": p["address"]}, p[field]) for d in DIRECTIONS
            for p in listed]


class FakeProgramInfo(object):
    def __init__(self, run_time_ns, run_cnt):
        self.run_time_ns, self.run_cnt = run_time_ns, run_cnt


def test_run_time_families(monkeypatch):
    """With run-time statistics, one sample per (direction, hook): each program counted once however many
    interfaces run it; a program gone since (a reload) left out, not an error; promtool accepts them."""
    runs = {42: (2000000000, 100), 43: (500000000, 70), 44: (1500000000, 30)}  # run_time_ns, run_cnt; 45 is gone
    opened = {}

    def prog_fd_by_id(prog_id):
        if prog_id not in runs:
            raise KernelError("no such program", errno=2)
        fd = os.open(os.devnull, os.O_RDONLY)
        opened[fd] = prog_id
        return fd

    monkeypatch.setattr(metrics.syscall, "prog_fd_by_id", prog_fd_by_id)
    monkeypatch.setattr(metrics.syscall, "prog_info", lambda fd: FakeProgramInfo(*runs[opened[fd]]))
    monitor = fake_monitor()
    monitor.attachments.append(fakes.FakeAttachment({"rx": fakes.FakeHook("tc", None, "link", 45)}, "gone0", 9))
    counters = dict(FAKE_COUNTERS, gone0={"rx": fakes.counters({})})
    fds = len(os.listdir("/proc/self/fd"))
    text = render(metrics.families(monitor, counters, run_stats=True))
    assert len(os.listdir("/proc/self/fd")) == fds, "an fd of a program left open"
    result = promtool(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + text
    samples = parse(text)
    assert [(l, v) for n, l, v in samples if n == "kubenetprobe_program_runs_total"] == [
        ({"direction": "rx", "hook": "tc"}, 30), ({"direction": "rx", "hook": "xdp"}, 100),
        ({"direction": "tx", "hook": "tc"}, 70)]
    assert [(l, v) for n, l, v in samples if n == "kubenetprobe_program_run_seconds_total"] == [
        ({"direction": "rx", "hook": "tc"}, 1.5), ({"direction": "rx", "hook": "xdp"}, 2.0),
        ({"direction": "tx", "hook": "tc"}, 0.5)]


# The probe, for real

def exchange(pair, data, timeout=20):
    """What the probe answers to the bytes `data` on a connection of their own, read until it closes."""
    with pair.inside():
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    with sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # answered and closed before all was sent
            pass
        return read_all(sock)


def read_all(sock):
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.0 ") else None


def send_known(pair, rx_pings=7, tx_pings=5):
    """Frames of every class each way, and pings: returns what each direction carried, in tally()'s shape."""
    sent = {d: class_frames(pair, d) for d in DIRECTIONS}
    for direction in DIRECTIONS:
        send_frames(pair, direction, [f for f, _, _ in sent[direction]])
    ping(pair, "rx", rx_pings)  # requests in, replies out
    ping(pair, "tx", tx_pings, size=200)  # requests out, replies in
    pings = [(ping_frame_size(), "ipv4", "icmp")] * rx_pings + [(ping_frame_size(200), "ipv4", "icmp")] * tx_pings
    return {d: [(len(f), l3, l4) for f, l3, l4 in sent[d]] + pings for d in DIRECTIONS}


def expected_counts(items):
    """{direction: tally} of send_known()'s results, summed."""
    out = {d: [] for d in DIRECTIONS}
    for sent in items:
        for d in DIRECTIONS:
            out[d] += sent[d]
    return {d: tally(out[d]) for d in DIRECTIONS}


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_scrape_counts_exactly(pair):
    """After known traffic, /metrics says exactly what crossed, per direction and protocol, packets and bytes, and
    agrees with the final report; interface_info names the programs on the hooks; /healthz answers ok."""
    raw_sends_from_the_probe_side(pair)
    with Listening(pair, "-i", pair.probe_if) as probe:
        probe.wait_ready()
        sent = send_known(pair)
        settle()
        samples = probe.scrape()
        assert get(pair, PORT, "/healthz") == (200, b"ok\n")
        programs = {p.hook: p.prog_id for p in pair.probe_programs()}
        finals = probe.stop()
    want = expected_counts([sent])
    assert counted(samples, pair.probe_if) == want
    final = finals[pair.probe_if]
    assert {d: classes(final[d]) for d in DIRECTIONS} == want
    info = sorted((l["direction"], l["hook"], l["program_id"], l["ifindex"]) for n, l, _ in samples
                  if n == "kubenetprobe_interface_info")
    assert info == [("rx", "tc", str(programs["ingress"]), str(final["ifindex"])),
                    ("tx", "tc", str(programs["egress"]), str(final["ifindex"]))]


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_vanished_interface_leaves_the_next_scrape(pair):
    """-i 'knp*': a second veth's series are scraped while it lives; once the probe has reported it gone, the next
    scrape has none of them, and the first interface's still."""
    sh("ip", "link", "add", "knp5", "netns", pair.probe_ns, "type", "veth", "peer", "name", "knp6", "netns",
       pair.peer_ns)
    with Listening(pair, "-i", "knp*") as probe:
        probe.wait_ready()
        deadline = time.monotonic() + 5
        while {l.get("interface") for _, l, _ in probe.scrape()} != {pair.probe_if, "knp5", None}:
            assert time.monotonic() < deadline, "knp5 never scraped"
            time.sleep(0.05)
        sh("ip", "-n", pair.probe_ns, "link", "del", "knp5")
        deadline = time.monotonic() + 5
        while "knp5" not in [r["interface"] for r in probe.reports if r["final"]]:
            assert time.monotonic() < deadline, "no final report of knp5"
            time.sleep(0.01)
        interfaces = {l.get("interface") for _, l, _ in probe.scrape()}
        probe.stop()
    assert interfaces == {pair.probe_if, None}


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_run_time_statistics(pair):
    """kubenetprobe_program_run_seconds_total and _runs_total, by direction and hook, while the probe runs: runs
    grow by at least the packets sent each way, and time with them."""
    raw_sends_from_the_probe_side(pair)
    with Listening(pair, "-i", pair.probe_if) as probe:
        probe.wait_ready()
        before = probe.scrape()
        sent = send_known(pair)
        settle()
        after = probe.scrape()
        probe.stop()

    def stats(samples, name):
        return {(l["direction"], l["hook"]): v for n, l, v in samples if n == name}

    for name in ("kubenetprobe_program_runs_total", "kubenetprobe_program_run_seconds_total"):
        assert set(stats(before, name)) == set(stats(after, name)) == {("rx", "tc"), ("tx", "tc")}, name
    runs = {k: v - stats(before, "kubenetprobe_program_runs_total")[k]
            for k, v in stats(after, "kubenetprobe_program_runs_total").items()}
    seconds = {k: v - stats(before, "kubenetprobe_program_run_seconds_total")[k]
               for k, v in stats(after, "kubenetprobe_program_run_seconds_total").items()}
    for direction in DIRECTIONS:
        assert runs[direction, "tc"] >= len(sent[direction]) > 0, direction
        assert seconds[direction, "tc"] > 0, direction


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_real_prometheus_sees_exact_counters(pair, tmp_path):
    """Debian's Prometheus, inside the probe's namespace, scraping it every second: through its HTTP API, the
    counters of every protocol and direction become exactly what was sent, and the target is up."""
    raw_sends_from_the_probe_side(pair)
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                      "  - job_name: knp\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % PORT)
    log_path = tmp_path / "prometheus.log"
    with Listening(pair, "-i", pair.probe_if) as probe:
        probe.wait_ready()
        with open(str(log_path), "w") as log:
            server = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, tool("prometheus"),
                                       "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp_path / "data"),
                                       "--web.listen-address=127.0.0.1:%d" % PROMETHEUS_PORT],
                                      stdout=log, stderr=log, cwd=str(tmp_path))
        try:
            sent = send_known(pair)
            want = expected_counts([sent])
            selector = '{__name__=~"kubenetprobe_l[34]_(packets|bytes)_total",interface="%s"}' % pair.probe_if
            deadline = time.monotonic() + 30
            while True:
                seen = counted(query(pair, selector), pair.probe_if)
                if seen == want:
                    break
                if time.monotonic() > deadline:
                    pytest.fail("Prometheus saw %s, not %s; it said:\n%s" % (seen, want, log_path.read_text()[-3000:]))
                time.sleep(0.2)
            assert [v for _, _, v in query(pair, 'up{job="knp"}')] == [1]
            assert [v for _, _, v in query(pair, 'kubenetprobe_build_info')] == [1]
        finally:
            server.kill()
            server.wait()
        probe.stop()


def query(pair, expression):
    """Prometheus' answer to an instant query, as [(name, labels, value)]; [] while it is not up yet."""
    url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (PROMETHEUS_PORT, urllib.parse.quote(expression))
    with pair.inside():
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                result = json.loads(answer.read().decode())["data"]["result"]
        except OSError:
            return []
    return [(r["metric"].pop("__name__", None), r["metric"], float(r["value"][1])) for r in result]


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_node_exporter_agrees(pair):
    """Debian's node_exporter (netdev collector alone) inside the probe's namespace: over one window of raw
    frames and pings (no GSO: the veth's own counters count frames), the probe's rx and tx packets grow by what
    node_network_receive_packets_total and node_network_transmit_packets_total of the interface grow by."""
    raw_sends_from_the_probe_side(pair)
    exporter = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, tool("prometheus-node-exporter"),
                                 "--web.listen-address=127.0.0.1:%d" % NODE_EXPORTER_PORT,
                                 "--collector.disable-defaults", "--collector.netdev"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        with Listening(pair, "-i", pair.probe_if) as probe:
            probe.wait_ready()
            deadline = time.monotonic() + 10
            while True:
                try:
                    node_before = node_packets(pair)
                    break
                except OSError:
                    assert exporter.poll() is None, exporter.stderr.read()
                    assert time.monotonic() < deadline, "node_exporter does not answer"
                    time.sleep(0.1)
            probe_before = probe.scrape()
            for _ in range(3):
                send_known(pair, rx_pings=10, tx_pings=10)
            settle()
            node_after, probe_after = node_packets(pair), probe.scrape()
            probe.stop()
    finally:
        exporter.kill()
        exporter.wait()
    for direction, node_name in (("rx", "receive"), ("tx", "transmit")):
        node = node_after[node_name] - node_before[node_name]
        ours = (total_packets(probe_after, pair.probe_if, direction)
                - total_packets(probe_before, pair.probe_if, direction))
        assert ours == node > 0, direction


def node_packets(pair):
    """{"receive": n, "transmit": n}: node_exporter's packet counters of the probe's interface."""
    status, body = get(pair, NODE_EXPORTER_PORT, "/metrics")
    assert status == 200
    found = {}
    for name, labels, value in parse(body.decode()):
        m = re.match(r"node_network_(receive|transmit)_packets_total\Z", name)
        if m and labels.get("device") == pair.probe_if:
            found[m.group(1)] = int(value)
    assert set(found) == {"receive", "transmit"}, found
    return found


@pytest.mark.integration
@pytest.mark.usefixtures("built_pyz")
def test_endpoint_under_abuse_while_counting(pair):
    """While traffic crosses, the endpoint gets a client that sends nothing, 1,000 scrapes in a row, 50 clients at
    once, a 1 MB request line, unknown paths and methods: each answered as it should be, and the probe counts
    on exactly (its scrape after and its final report equal what was sent) and answers the next scrape."""
    raw_sends_from_the_probe_side(pair)
    with Listening(pair, "-i", pair.probe_if) as probe:
        probe.wait_ready()
        outcome = {}

        def abuse():
            try:
                outcome.update(abuse_endpoint(pair))
            except BaseException as e:
                outcome["error"] = e

        abuser = threading.Thread(target=abuse)
        abuser.start()
        sent = []
        while abuser.is_alive() or len(sent) < 3:
            sent.append(send_known(pair, rx_pings=3, tx_pings=3))
        abuser.join()
        if "error" in outcome:
            raise outcome["error"]
        settle()
        samples = probe.scrape()
        finals = probe.stop()
    want = expected_counts(sent)
    assert counted(samples, pair.probe_if) == want
    assert {d: classes(finals[pair.probe_if][d]) for d in DIRECTIONS} == want
    assert outcome["scrapes"] == [200] * 1000
    assert outcome["concurrent"] == [200] * 50
    assert outcome["huge"] == 414
    assert outcome["odd"] == {"/nope": 404, "POST /metrics": 405, "BREW /healthz": 405, "DELETE /x": 404,
                              "garbage": 400}
    assert outcome["silent"] == 408


def abuse_endpoint(pair):
    """The abuse of test_endpoint_under_abuse_while_counting; returns what each part got."""
    got = {}
    with pair.inside():
        silent = socket.create_connection(("127.0.0.1", PORT), timeout=20)
    try:
        got["scrapes"] = [get(pair, PORT, "/metrics")[0] for _ in range(1000)]
        results = []

        def scrape():
            results.append(get(pair, PORT, "/metrics", timeout=30)[0])

        threads = [threading.Thread(target=scrape) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        got["concurrent"] = results
        got["huge"] = status_of(exchange(pair, b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n"))
        odd = {"/nope": b"GET /nope HTTP/1.1\r\n\r\n", "POST /metrics": b"POST /metrics HTTP/1.1\r\n\r\n",
               "BREW /healthz": b"BREW /healthz HTTP/1.1\r\n\r\n", "DELETE /x": b"DELETE /x HTTP/1.1\r\n\r\n",
               "garbage": b"\x00\x01garbage\r\n\r\n"}
        got["odd"] = {name: status_of(exchange(pair, data)) for name, data in odd.items()}
        got["silent"] = status_of(read_all(silent))  # the server's TIMEOUT (5 s) after it connected
    finally:
        silent.close()
    return got
