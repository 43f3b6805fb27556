"""How reports are printed: sizes and rates for people, a block on a terminal, columns in a pipe, JSON lines."""
import io
import json

import pytest

from fakes import FakeHook, FakeMonitor, counters, rx_tc, tx_tc
from probe import output
from probe.reports import Reporter


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024 ** 3, "5.0 GiB"),
                                    (3 * 1024 ** 5, "3072.0 TiB")])
def test_human_bytes(n, text):
    assert output.human_bytes(n) == text


@pytest.mark.parametrize("n,text", [(0, "0.0 bit/s"), (999, "999.0 bit/s"), (9800, "9.8 kbit/s"),
                                    (1.25e9, "1.2 Gbit/s")])
def test_human_rate(n, text):
    assert output.human_rate(n, "bit/s") == text


def sample_report(hooks=None):
    """A report of rx (generic XDP unless `hooks` say otherwise) and tx (TC), or of the directions of `hooks`."""
    monitor = FakeMonitor(hooks)
    values = {"rx": [counters({}), counters({"ipv4": 4, "ipv6": 1}, l4={"tcp": 3, "icmpv6": 1, "other": 1})],
              "tx": [counters({}), counters({"ipv4": 2, "arp": 1}, bytes_per_packet=60, l4={"icmp": 2})]}
    monitor.attachments[0].values = {d: values[d] for d in monitor.attachments[0].hooks}
    return Reporter(monitor).reports()[0]


def test_pipe_output_is_plain_columns():
    stream = io.StringIO()
    printer = output.Printer(stream)
    printer.write([sample_report()])
    printer.write([sample_report()])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # one header, then a line per report per direction
    header = lines[0].split()
    assert header[:8] == ["time", "interface", "direction", "hook", "packets", "bytes", "pps", "bps"]
    assert all(len(line.split()) == len(header) for line in lines)
    rows = [dict(zip(header, line.split())) for line in lines[1:]]
    assert [(row["direction"], row["hook"]) for row in rows] == [("rx", "xdp-generic"), ("tx", "tc")] * 2
    rx, tx = rows[:2]
    assert (rx["interface"], rx["packets"], rx["bytes"], rx["l3_ipv4"], rx["l4_tcp"], rx["l4_other"]) == \
        ("eth0", "5", "500", "4", "3", "1")
    assert (tx["interface"], tx["packets"], tx["bytes"], tx["l3_ipv4"], tx["l3_arp"], tx["l4_icmp"], tx["l4_tcp"]) == \
        ("eth0", "3", "180", "2", "1", "2", "0")
    assert rx["time"] == tx["time"]
    assert "\x1b" not in stream.getvalue()


@pytest.mark.parametrize("hooks,expected", [
    ({"rx": rx_tc(), "tx": tx_tc()}, [("rx", "tc"), ("tx", "tc")]),
    ({"rx": FakeHook("xdp", "native", "link", 42)}, [("rx", "xdp-native")]),
    ({"tx": tx_tc()}, [("tx", "tc")]),
])
def test_pipe_output_names_each_directions_hook(hooks, expected):
    """A line per direction counted, none for the other; the hook one word, with XDP's mode."""
    stream = io.StringIO()
    output.Printer(stream).write([sample_report(hooks)])
    header, *lines = stream.getvalue().splitlines()
    assert [tuple(line.split()[2:4]) for line in lines] == expected
    assert all(len(line.split()) == len(header.split()) for line in lines)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_output_is_readable_block():
    stream = Terminal()
    output.Printer(stream).write([sample_report()])
    text = stream.getvalue()
    lines = text.splitlines()
    assert lines[0].endswith("  eth0")
    assert "rx  5 packets  500 B" in lines[1] and lines[1].endswith("(xdp generic)")
    assert "l3  ipv4 4  ipv6 1  arp 0  other 0" in lines[2]
    assert "l4  tcp 3  udp 0  icmp 0  icmpv6 1  other 1" in lines[3]
    assert "tx  3 packets  180 B" in lines[4] and lines[4].endswith("(tc)")
    assert "l3  ipv4 2  ipv6 0  arp 1  other 0" in lines[5]
    assert "l4  tcp 0  udp 0  icmp 2  icmpv6 0  other 0" in lines[6]
    assert lines[7:] == [""]  # a blank line between blocks


@pytest.mark.parametrize("hooks,shown,hidden", [
    ({"rx": rx_tc()}, "  rx  5 packets  500 B", "  tx  "),
    ({"tx": tx_tc()}, "  tx  3 packets  180 B", "  rx  "),
])
def test_terminal_block_of_one_direction(hooks, shown, hidden):
    stream = Terminal()
    output.Printer(stream).write([sample_report(hooks)])
    text = stream.getvalue()
    assert shown in text and text.splitlines()[1].endswith("(tc)")
    assert hidden not in text and text.splitlines()[4:] == [""]


def test_terminal_shows_the_top_five_talkers_and_the_rest_as_other():
    """Under a direction's counters, its first five peers, then `other` summing every peer beyond them and the
    report's own `other`; a direction without talkers shows none."""
    report = sample_report()
    listed = [{"address": "198.18.0.%d" % i, "packets": i, "bytes": 100 * i, "pps": float(i), "bps": 8.0 * i}
              for i in range(7, 0, -1)]
    report["talkers"] = {"rx": listed + [{"address": "other", "packets": 3, "bytes": 300, "pps": 0.5, "bps": 4.0}]}
    stream = Terminal()
    output.Printer(stream).write([report])
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines[4:10]] == ["198.18.0.%d" % i for i in range(7, 2, -1)] + ["other"]
    assert lines[4].split()[1:3] == ["7", "packets"] and "700 B" in lines[4] and "7.0 pps" in lines[4]
    assert lines[9].split()[1] == "6" and "600 B" in lines[9] and "3.5 pps" in lines[9]
    assert "tx  3 packets" in lines[10] and lines[13:] == [""]


def test_final_report_says_so():
    stream = Terminal()
    output.Printer(stream).write(Reporter(final_monitor()).reports(final=True))
    assert stream.getvalue().splitlines()[0].endswith("  eth0  final")


def final_monitor():
    monitor = FakeMonitor()
    monitor.attachments[0].values = {"rx": [counters({})] * 2, "tx": [counters({})] * 2}
    return monitor


def test_json_lines():
    stream = Terminal()
    output.Printer(stream, json_lines=True).write([sample_report(), sample_report()])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["rx"]["l4"]["icmpv6"]["packets"] == 1
    assert json.loads(lines[0])["tx"]["l4"]["icmp"]["packets"] == 2
