"""How reports are printed: sizes and rates for people, a block on a terminal, columns in a pipe, JSON lines."""
import io
import json

import pytest

from fakes import FakeMonitor, counters
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


def sample_report():
    monitor = FakeMonitor()
    monitor.attachments[0].values = [counters({}),
                                     counters({"ipv4": 4, "ipv6": 1}, l4={"tcp": 3, "icmpv6": 1, "other": 1})]
    return Reporter(monitor).reports()[0]


def test_pipe_output_is_plain_columns():
    stream = io.StringIO()
    printer = output.Printer(stream)
    printer.write([sample_report()])
    printer.write([sample_report()])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one header, then a line per report
    header = lines[0].split()
    assert header[:7] == ["time", "interface", "mode", "packets", "bytes", "pps", "bps"]
    row = dict(zip(header, lines[1].split()))
    assert (row["interface"], row["packets"], row["bytes"], row["l3_ipv4"], row["l4_tcp"], row["l4_other"]) == \
        ("eth0", "5", "500", "4", "3", "1")
    assert "\x1b" not in stream.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_output_is_readable_block():
    stream = Terminal()
    output.Printer(stream).write([sample_report()])
    text = stream.getvalue()
    assert "eth0 (xdp generic)" in text
    assert "rx  5 packets  500 B" in text
    assert "l3  ipv4 4  ipv6 1  arp 0  other 0" in text
    assert "l4  tcp 3  udp 0  icmp 0  icmpv6 1  other 1" in text


def test_json_lines():
    stream = Terminal()
    output.Printer(stream, json_lines=True).write([sample_report(), sample_report()])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["rx"]["l4"]["icmpv6"]["packets"] == 1
