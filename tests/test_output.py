"""How reports are printed: sizes and rates for people, a block on a terminal, columns in a pipe, JSON lines."""
import io
import json

import pytest

from fakes import FakeHook, FakeMonitor, counters, rx_tc, tx_tc
from probe import layout, output
from probe.reports import Reporter


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


def report_of(name, rx=None, tx=None, final=False):
    """A report of `name` whose directions carry (packets, pps, bps) and one l3/l4 class each."""
    report = {"time": "2026-12-01T15:30:12.345Z", "interface": name, "final": final, "hooks": {}}
    for direction, values, l3, l4 in (("rx", rx, "ipv4", "tcp"), ("tx", tx, "ipv6", "udp")):
        if values is not None:
            packets, pps, bps = values
            report[direction] = {"packets": packets, "bytes": packets * 100, "pps": pps, "bps": bps,
                                 "l3": {n: {"packets": packets if n == l3 else 0} for n in layout.L3},
                                 "l4": {n: {"packets": packets if n == l4 else 0} for n in layout.L4}}
    return report


def table(lines):
    """The rows of a drawn table, by their first cell, split on runs of two spaces."""
    return {line.split()[0]: [cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[2:]}


def test_table_has_a_row_per_interface_busiest_first_and_a_total():
    lines = output.format_table([report_of("eth0", rx=(10, 1.0, 800.0), tx=(5, 0.5, 400.0)),
                                 report_of("veth1", rx=(3000, 2500.0, 9.8e6)),
                                 report_of("veth2", tx=(7, 0.0, 0.0))])
    assert lines[0] == "kubenetprobe  15:30:12 UTC  3 interfaces"
    assert lines[1].split()[:3] == ["INTERFACE", "RX", "pps"]
    assert [line.split()[0] for line in lines[2:]] == ["veth1", "eth0", "veth2", "total"]
    rows = table(lines)
    assert rows["veth1"] == ["veth1", "2.5k", "9.8M", "-", "-", "3000", "-", "ipv4 100%", "tcp 100%"]
    assert rows["eth0"] == ["eth0", "1", "800", "0", "400", "10", "5", "ipv4 66%", "tcp 66%"]
    assert rows["total"] == ["total", "2.5k", "9.8M", "0", "400", "3010", "12"]
    end = lines[1].index("RX packets") + len("RX packets")  # numbers line up at their head's right edge
    assert [line[:end].split()[-1] for line in lines[1:]] == ["packets", "3000", "10", "-", "3010"]
    assert all("\x1b" not in line for line in lines)


def test_table_names_owners_when_there_are_some():
    pod = report_of("veth1", rx=(3, 3.0, 24.0))
    pod["owner"] = {"kind": "pod", "name": "web", "namespace": "shop", "uid": "u", "runtime": "cri-o"}
    lines = output.format_table([pod, report_of("eth0", rx=(1, 1.0, 8.0))])
    assert lines[1].split()[-1] == "OWNER"
    assert table(lines)["veth1"][-1] == "shop/web" and table(lines)["eth0"][-1] == "-"
    assert "OWNER" not in output.format_table([report_of("eth0", rx=(1, 1.0, 8.0))])[1]


def test_table_gives_way_to_the_terminal_height():
    reports = [report_of("veth%d" % i, rx=(i, float(i), 8.0 * i)) for i in range(50)]
    lines = output.format_table(reports, height=10)
    assert len(lines) == 9  # the title, the head, 5 busiest, how many more, the total
    assert [line.split()[0] for line in lines[2:7]] == ["veth49", "veth48", "veth47", "veth46", "veth45"]
    assert lines[7].split() == ["(45", "quieter)"]
    assert lines[8].split()[5] == str(sum(range(50)))  # the total still counts every interface


def test_terminal_table_is_redrawn_in_place_and_shows_gone_interfaces_once():
    stream = Terminal()
    printer = output.Printer(stream, height=40)
    printer.write([report_of("eth0", rx=(1, 1.0, 8.0))])
    first = stream.getvalue()
    assert not first.startswith("\x1b") and len(first.splitlines()) == 4
    printer.vanished([report_of("veth9", rx=(4, 0.0, 0.0), final=True)])
    assert stream.getvalue() == first  # nothing until the next table
    printer.write([report_of("eth0", rx=(2, 1.0, 8.0))])
    second = stream.getvalue()[len(first):]
    assert second.startswith("\x1b[4F\x1b[J")  # up over the 4 lines drawn, cleared, drawn again
    rows = table(second[len("\x1b[4F\x1b[J"):].splitlines())
    assert rows["veth9"][-1] == "gone" and rows["total"][5] == "6"
    printer.write([report_of("eth0", rx=(3, 1.0, 8.0))])
    third = stream.getvalue()[len(first) + len(second):]
    assert third.startswith("\x1b[5F\x1b[J") and "veth9" not in third
    printer.write([report_of("eth0", rx=(3, 1.0, 8.0), final=True)])  # the last table, as the probe ends
    assert "gone" not in stream.getvalue()[len(first) + len(second) + len(third):]


def test_vanished_interfaces_in_a_pipe_are_written_at_once():
    stream = io.StringIO()
    gone = report_of("veth9", rx=(4, 0.0, 0.0), final=True)
    gone["hooks"] = {"rx": "tc"}
    output.Printer(stream).vanished([gone])
    assert [line.split()[1:3] for line in stream.getvalue().splitlines()[1:]] == [["veth9", "rx"]]


def test_table_shows_the_top_five_talkers_under_each_row_and_the_rest_as_other():
    """Under an interface's row, each direction's first five peers, then `other` summing every peer beyond them
    and the report's own `other`; a direction without talkers shows none; they count toward the height."""
    report = report_of("eth0", rx=(28, 28.0, 224.0), tx=(1, 1.0, 8.0))
    listed = [{"address": "198.18.0.%d" % i, "packets": i, "bytes": 100 * i, "pps": float(i), "bps": 800.0 * i}
              for i in range(7, 0, -1)]
    report["talkers"] = {"rx": listed + [{"address": "other", "packets": 3, "bytes": 300, "pps": 0.5, "bps": 4.0}]}
    quiet = report_of("veth1", rx=(0, 0.0, 0.0))
    lines = output.format_table([report, quiet])
    assert lines[2].split()[0] == "eth0"
    assert [line.split()[:2] for line in lines[3:9]] == [["rx", "198.18.0.%d" % i] for i in range(7, 2, -1)] + [
        ["rx", "other"]]
    assert lines[3].split()[2:] == ["7", "pps", "5.6k", "bit/s", "7", "packets"]
    assert lines[8].split()[2:] == ["4", "pps", "2.4k", "bit/s", "6", "packets"]  # 2 + 1 + the report's other
    assert [line.split()[0] for line in lines[9:]] == ["veth1", "total"]
    assert len(output.format_table([report, quiet], height=12)) == 11  # all of it, and the cursor's line
    cut = output.format_table([report, quiet], height=11)  # room for eth0 and its talkers, not for veth1 too
    assert [line.split()[0] for line in cut[-2:]] == ["(1", "total"] and len(cut) == 11


def test_json_lines():
    stream = Terminal()
    output.Printer(stream, json_lines=True).write([sample_report(), sample_report()])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["rx"]["l4"]["icmpv6"]["packets"] == 1
    assert json.loads(lines[0])["tx"]["l4"]["icmp"]["packets"] == 2
