"""Reports: what one holds (interface, hook, mode, loader, counters by class) and the rates between two."""
import json

from fakes import FakeMonitor, counters
from probe import output
from probe.reports import Reporter


def test_report_shape_and_rates(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("probe.reports.time.time", lambda: 1700000000.25)
    monitor = FakeMonitor()
    monitor.attachments[0].values = [counters({}), counters({"ipv4": 10, "arp": 2}, l4={"udp": 10}),
                                     counters({"ipv4": 30, "arp": 2}, l4={"udp": 25, "tcp": 5})]
    reporter = Reporter(monitor)  # starts at t=100
    first, = reporter.reports()
    assert first["rx"]["pps"] == 6.0 and first["rx"]["bps"] == 8 * 1200 / 2.0
    second, = reporter.reports(final=True)
    assert second["rx"]["pps"] == 20.0 and second["rx"]["bps"] == 8 * 2000.0
    assert second["time"] == "2023-11-14T22:13:20.250Z"
    assert set(second) == {"time", "interface", "ifindex", "hook", "mode", "loader", "attach", "program_id",
                           "reloads", "final", "rx"}
    assert (second["program_id"], second["reloads"]) == (42, 3)
    assert (second["interface"], second["ifindex"], second["hook"], second["mode"], second["final"]) == \
        ("eth0", 2, "xdp", "generic", True)
    assert (second["loader"], second["attach"]) == ("libbpf", "netlink")
    rx = second["rx"]
    assert set(rx) == {"packets", "bytes", "pps", "bps", "l3", "l4"}
    assert list(rx["l3"]) == ["ipv4", "ipv6", "arp", "other"]
    assert list(rx["l4"]) == ["tcp", "udp", "icmp", "icmpv6", "other"]
    assert rx["packets"] == 32 and rx["l3"]["ipv4"] == {"packets": 30, "bytes": 3000}
    json.loads(output.format_json(second))  # a valid single line
    assert "\n" not in output.format_json(second)


def test_rates_count_from_the_counters_found_at_start(monkeypatch):
    """Pinned state taken over starts with counts: the first rate is not all of them over one interval."""
    clock = iter([10.0, 11.0])
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: next(clock))
    monitor = FakeMonitor()
    monitor.attachments[0].values = [counters({"ipv4": 1000}), counters({"ipv4": 1010})]
    report, = Reporter(monitor).reports()
    assert report["rx"]["packets"] == 1010 and report["rx"]["pps"] == 10.0


def test_zero_interval_has_zero_rates(monkeypatch):
    monkeypatch.setattr("probe.reports.time.monotonic", lambda: 5.0)
    monitor = FakeMonitor()
    monitor.attachments[0].values = [counters({}), counters({"ipv4": 3})]
    report, = Reporter(monitor).reports()
    assert report["rx"]["pps"] == 0.0 and report["rx"]["bps"] == 0.0
