"""Reports: what one holds (interface, hooks, mode, loader, counters by class, each direction) and the rates
between two."""
import json

import pytest

from fakes import FakeMonitor, counters, rx_tc, rx_xdp, tx_tc
from probe import output
from probe.reports import Reporter

KEYS = {"time", "interface", "ifindex", "hook", "mode", "loader", "attach", "program_id", "hooks", "program_ids",
        "reloads", "final"}


def test_report_shape_and_rates(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("probe.reports.time.time", lambda: 1700000000.25)
    monitor = FakeMonitor()
    monitor.attachments[0].values = {
        "rx": [counters({}), counters({"ipv4": 10, "arp": 2}, l4={"udp": 10}),
               counters({"ipv4": 30, "arp": 2}, l4={"udp": 25, "tcp": 5})],
        "tx": [counters({}), counters({"ipv4": 4}, bytes_per_packet=50, l4={"icmp": 4}),
               counters({"ipv4": 10, "arp": 1}, bytes_per_packet=50, l4={"icmp": 10})],
    }
    reporter = Reporter(monitor)  # starts at t=100
    first, = reporter.reports()
    assert first["rx"]["pps"] == 6.0 and first["rx"]["bps"] == 8 * 1200 / 2.0
    assert first["tx"]["pps"] == 2.0 and first["tx"]["bps"] == 8 * 200 / 2.0
    second, = reporter.reports(final=True)
    assert second["rx"]["pps"] == 20.0 and second["rx"]["bps"] == 8 * 2000.0
    assert second["tx"]["pps"] == 7.0 and second["tx"]["bps"] == 8 * 350.0
    assert second["time"] == "2023-11-14T22:13:20.250Z"
    assert set(second) == KEYS | {"rx", "tx"}
    assert (second["program_id"], second["reloads"]) == (42, 3)
    assert (second["interface"], second["ifindex"], second["hook"], second["mode"], second["final"]) == \
        ("eth0", 2, "xdp", "generic", True)
    assert (second["loader"], second["attach"]) == ("libbpf", "netlink")
    assert second["hooks"] == {"rx": "xdp", "tx": "tc"}
    assert second["program_ids"] == {"rx": 42, "tx": 43}
    for direction in ("rx", "tx"):
        c = second[direction]
        assert list(c) == ["packets", "bytes", "pps", "bps", "l3", "l4"]
        assert list(c["l3"]) == ["ipv4", "ipv6", "arp", "other"]
        assert list(c["l4"]) == ["tcp", "udp", "icmp", "icmpv6", "other"]
    rx, tx = second["rx"], second["tx"]
    assert rx["packets"] == 32 and rx["l3"]["ipv4"] == {"packets": 30, "bytes": 3000}
    assert (tx["packets"], tx["bytes"]) == (11, 550) and tx["l3"]["arp"] == {"packets": 1, "bytes": 50}
    assert tx["l4"]["icmp"] == {"packets": 10, "bytes": 500}
    json.loads(output.format_json(second))  # a valid single line
    assert "\n" not in output.format_json(second)


def test_rates_count_from_the_counters_found_at_start(monkeypatch):
    """Pinned state taken over starts with counts: the first rate is not all of them over one interval."""
    clock = iter([10.0, 11.0])
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: next(clock))
    monitor = FakeMonitor()
    monitor.attachments[0].values = {"rx": [counters({"ipv4": 1000}), counters({"ipv4": 1010})],
                                     "tx": [counters({"ipv4": 500}), counters({"ipv4": 503})]}
    report, = Reporter(monitor).reports()
    assert report["rx"]["packets"] == 1010 and report["rx"]["pps"] == 10.0
    assert report["tx"]["packets"] == 503 and report["tx"]["pps"] == 3.0


def test_zero_interval_has_zero_rates(monkeypatch):
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: 5.0)
    monitor = FakeMonitor()
    monitor.attachments[0].values = {"rx": [counters({}), counters({"ipv4": 3})],
                                     "tx": [counters({}), counters({"ipv6": 2})]}
    report, = Reporter(monitor).reports()
    for direction in ("rx", "tx"):
        assert report[direction]["pps"] == 0.0 and report[direction]["bps"] == 0.0


def test_each_direction_has_its_own_rates(monkeypatch):
    """Traffic in one direction only: the other's rates stay zero, over the same intervals."""
    clock = iter([0.0, 1.0, 3.0])
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: next(clock))
    monitor = FakeMonitor()
    monitor.attachments[0].values = {"rx": [counters({})] * 3,
                                     "tx": [counters({}), counters({"ipv4": 8}), counters({"ipv4": 12})]}
    reporter = Reporter(monitor)
    first, = reporter.reports()
    second, = reporter.reports()
    assert [r["rx"]["pps"] for r in (first, second)] == [0.0, 0.0]
    assert [r["tx"]["pps"] for r in (first, second)] == [8.0, 2.0]
    assert [r["tx"]["bps"] for r in (first, second)] == [8 * 800.0, 8 * 200.0]


@pytest.mark.parametrize("rx,hook,mode,attach,program_id", [
    (rx_xdp, "xdp", "generic", "netlink", 42),
    (rx_tc, "tc", None, "link", 44),
])
def test_hook_mode_attach_and_program_id_are_the_rx_sides(monkeypatch, rx, hook, mode, attach, program_id):
    """rx at XDP or at TC ingress: the report's hook, mode, attach and program_id are rx's, never tx's."""
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: 1.0)
    monitor = FakeMonitor({"rx": rx(), "tx": tx_tc()})
    monitor.attachments[0].values = {"rx": [counters({})] * 2, "tx": [counters({})] * 2}
    report, = Reporter(monitor).reports()
    assert (report["hook"], report["mode"], report["attach"], report["program_id"]) == (hook, mode, attach, program_id)
    assert report["hooks"] == {"rx": hook, "tx": "tc"}
    assert report["program_ids"] == {"rx": program_id, "tx": 43}


def test_tx_alone(monkeypatch):
    """--direction tx: no "rx" counters, and the rx side's keys are there, as None."""
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: 1.0)
    monitor = FakeMonitor({"tx": tx_tc()})
    monitor.attachments[0].values = {"tx": [counters({}), counters({"arp": 2})]}
    report, = Reporter(monitor).reports()
    assert set(report) == KEYS | {"tx"}
    assert (report["hook"], report["mode"], report["attach"], report["program_id"]) == (None, None, None, None)
    assert (report["hooks"], report["program_ids"]) == ({"tx": "tc"}, {"tx": 43})
    assert report["tx"]["l3"]["arp"] == {"packets": 2, "bytes": 200}
    json.loads(output.format_json(report))


def test_rx_alone(monkeypatch):
    """--direction rx: no "tx" counters, and tx is never read."""
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: 1.0)
    monitor = FakeMonitor({"rx": rx_xdp()})
    monitor.attachments[0].values = {"rx": [counters({}), counters({"ipv6": 1})]}
    report, = Reporter(monitor).reports()
    assert set(report) == KEYS | {"rx"}
    assert (report["hooks"], report["program_ids"]) == ({"rx": "xdp"}, {"rx": 42})
    assert report["rx"]["packets"] == 1
