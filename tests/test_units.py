"""Unit tests that need no privileges: arguments, reports and their formats, parsers, error conversion."""
import errno
import io
import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import ROOT
from probe import cli, layout, output
from probe.net import interfaces, rtnetlink
from probe.net import link as netlink
from probe.errors import ProbeError
from probe.bpf.engine import verifier_error
from probe.bpf.libbpf import LibbpfEngine, verifier_log
from probe.reports import Reporter


def counters(packets_by_l3, bytes_per_packet=100, l4=None):
    """A decoded counters dict as layout.decode_stats returns it."""
    l3 = {n: {"packets": packets_by_l3.get(n, 0), "bytes": packets_by_l3.get(n, 0) * bytes_per_packet}
          for n in layout.L3}
    l4 = {n: {"packets": (l4 or {}).get(n, 0), "bytes": (l4 or {}).get(n, 0) * bytes_per_packet} for n in layout.L4}
    return {"packets": sum(c["packets"] for c in l3.values()), "bytes": sum(c["bytes"] for c in l3.values()),
            "l3": l3, "l4": l4}


class FakeAttachment(object):
    interface, ifindex, mode, hook, method, program_id, reloads = "eth0", 2, "generic", "xdp", "netlink", 42, 3

    def __init__(self):
        self.values = []

    def counters(self, direction):
        assert direction == "rx"
        return self.values.pop(0)


class FakeEngine(object):
    name = "libbpf"


class FakeMonitor(object):
    def __init__(self):
        self.engine = FakeEngine()
        self.attachments = [FakeAttachment()]


# Arguments

def test_defaults():
    args = cli.parser().parse_args([])
    assert (args.interface, args.interval, args.count, args.json, args.mode, args.force) == \
        (None, 1.0, None, False, "auto", False)


def test_repeated_interfaces_and_values():
    args = cli.parser().parse_args(["-i", "a", "--interface", "b", "--interval", "0.5", "--count", "3",
                                    "--mode", "generic", "--force", "--json", "-v"])
    assert args.interface == ["a", "b"] and args.interval == 0.5 and args.count == 3
    assert args.mode == "generic" and args.force and args.json and args.verbose


@pytest.mark.parametrize("argv", [["--interval", "-1"], ["--interval", "abc"], ["--interval", "inf"],
                                  ["--interval", "nan"], ["--count", "0"], ["--count", "1.5"],
                                  ["--mode", "offload"], ["--bogus"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("usage: kubenetprobe")


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for words in ("NETWORK_INTERFACE", "--count 1 --interval 0", "exit status", "generic"):
        assert words in text


class RecordingMonitor(object):
    """Stands in for NetworkMonitor: records what run() attaches to, and with which loader."""

    def __init__(self, loader, pin_dir, object_path):
        self.loader, self.pin_dir, self.object_path = loader, pin_dir, object_path
        self.attached = []
        RecordingMonitor.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def attach(self, name, mode, force, method):
        self.attached.append((name, mode, force, method))
        raise ProbeError("stop here")


@pytest.fixture
def recording(monkeypatch):
    monkeypatch.setattr(cli, "NetworkMonitor", RecordingMonitor)
    monkeypatch.setattr(cli, "_Signals", lambda: None)  # leave pytest's own signal handlers alone
    monkeypatch.setattr(interfaces, "default_interface", lambda: "eth-default")


def test_interface_from_environment(recording, monkeypatch):
    monkeypatch.setenv("NETWORK_INTERFACE", "veth7")
    assert cli.main(["--mode", "native", "--force", "--attach", "netlink"]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.attached == [("veth7", "native", True, "netlink")]


@pytest.mark.parametrize("environ,loader", [
    ({}, "auto"),
    ({"KUBENETPROBE_LOADER": "native"}, "native"),
    ({"EBPF_IMPLEMENTATION": "cilium"}, "native"),
    ({"EBPF_IMPLEMENTATION": "libbpfgo"}, "libbpf"),
    ({"EBPF_IMPLEMENTATION": "embedded"}, "auto"),
    ({"KUBENETPROBE_LOADER": "libbpf", "EBPF_IMPLEMENTATION": "cilium"}, "libbpf"),
])
def test_loader_from_environment(environ, loader):
    assert cli.loader_from(environ) == loader


@pytest.mark.parametrize("environ", [{"KUBENETPROBE_LOADER": "bcc"}, {"EBPF_IMPLEMENTATION": "gobpf"}])
def test_unknown_loader_in_environment(environ):
    with pytest.raises(ProbeError) as e:
        cli.loader_from(environ)
    assert "use one of" in e.value.hint


def test_object_from_environment():
    assert cli.object_from({}) is None
    assert cli.object_from({"EBPF_IMPLEMENTATION": "cilium", "KUBENETPROBE_OBJECT": "/x.o"}) is None
    assert cli.object_from({"EBPF_IMPLEMENTATION": "object", "KUBENETPROBE_OBJECT": "/x.o"}) == "/x.o"
    assert cli.loader_from({"EBPF_IMPLEMENTATION": "object"}) == "auto"
    with pytest.raises(ProbeError) as e:
        cli.object_from({"EBPF_IMPLEMENTATION": "object"})
    assert "$KUBENETPROBE_OBJECT is not set" in e.value.message


def test_object_option_beats_environment(recording, monkeypatch):
    monkeypatch.setenv("EBPF_IMPLEMENTATION", "object")
    monkeypatch.setenv("KUBENETPROBE_OBJECT", "/from/env.o")
    assert cli.main(["--object", "/from/option.o", "--pin", "/sys/fs/bpf/x"]) == cli.EXIT_FAILURE
    assert (RecordingMonitor.last.object_path, RecordingMonitor.last.pin_dir) == ("/from/option.o", "/sys/fs/bpf/x")
    assert cli.main([]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.object_path == "/from/env.o"


def test_loader_option_beats_environment(recording, monkeypatch):
    monkeypatch.setenv("KUBENETPROBE_LOADER", "libbpf")
    assert cli.main(["--loader", "native"]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.loader == "native"
    assert cli.main([]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.loader == "libbpf"


def test_interface_from_default_route(recording, monkeypatch):
    monkeypatch.delenv("NETWORK_INTERFACE", raising=False)
    assert cli.main([]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.attached == [("eth-default", "auto", False, "auto")]


# Errors: one line, traceback only under -v

def failing_run(error):
    def run(args):
        raise error
    return run


def test_probe_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("eth9 is gone", hint="plug it in", log="a\nlog\n")))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err == "kubenetprobe: error: eth9 is gone; plug it in\n"


def test_verbose_error_shows_traceback_and_log(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("refused", log="the verifier's log\n")))
    assert cli.main(["-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "the verifier's log" in err
    assert err.splitlines()[-1] == "kubenetprobe: error: refused"


def test_unexpected_error_is_still_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(KeyError("x")))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kubenetprobe: error: unexpected KeyError")


def test_enosys_gets_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("BPF_MAP_CREATE: nope", errno=errno.ENOSYS)))
    assert cli.main([]) == 1
    assert "kernel has no bpf(2)" in capsys.readouterr().err


# Reports

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


# Parsers

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def test_default_interface_lowest_metric(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER
                      + "eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
                      + "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
                      + "eth2\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert interfaces.default_interface(str(routes), "/nonexistent") == "eth0"


def test_default_interface_falls_back_to_ipv6(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER)
    v6 = tmp_path / "ipv6_route"
    v6.write_text("%s 00 %s 00 %s 00000400 00000001 00000000 00000003 wlan0\n" % ("0" * 32, "0" * 32, "fe80" + "0" * 28)
                  + "%s 00 %s 00 %s ffffffff 00000001 00000000 00200200 lo\n" % ("0" * 32, "0" * 32, "0" * 32))
    assert interfaces.default_interface(str(routes), str(v6)) == "wlan0"


def test_no_default_route(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER)
    with pytest.raises(ProbeError) as e:
        interfaces.default_interface(str(routes), "/nonexistent")
    assert "-i IFACE or $NETWORK_INTERFACE" in str(e.value)


def test_netlink_attributes():
    inner = rtnetlink.attr(netlink.IFLA_XDP_PROG_ID, struct.pack("=I", 42)) + \
        rtnetlink.attr(netlink.IFLA_XDP_ATTACHED, b"\x02")
    outer = rtnetlink.parse_attrs(rtnetlink.attr(netlink.IFLA_XDP | rtnetlink.NLA_F_NESTED, inner))
    assert rtnetlink.parse_attrs(outer[netlink.IFLA_XDP]) == {netlink.IFLA_XDP_PROG_ID: struct.pack("=I", 42),
                                                       netlink.IFLA_XDP_ATTACHED: b"\x02"}


def test_netlink_malformed_attribute():
    with pytest.raises(ProbeError):
        rtnetlink.parse_attrs(struct.pack("=HH", 200, 1) + b"\0" * 4)


# The libbpf binding's error conversion (the library is opened, nothing is loaded)

@pytest.fixture(scope="module")
def engine():
    return LibbpfEngine()


def test_pointer_errors(engine):
    assert engine._pointer_error(0x55550000) == 0
    assert engine._pointer_error((1 << 64) - errno.ENOENT) == errno.ENOENT  # 0.x: ERR_PTR(-ENOENT)


def test_null_pointer_takes_errno(engine, monkeypatch):
    monkeypatch.setattr("probe.bpf.libbpf.ctypes.get_errno", lambda: errno.EINVAL)
    assert engine._pointer_error(None) == errno.EINVAL


VERIFIER_LOG = """libbpf: prog 'kubenetprobe_rx': BPF program load failed: Permission denied
libbpf: prog 'kubenetprobe_rx': -- BEGIN PROG LOAD LOG --
0: R1=ctx(off=0,imm=0) R10=fp0
; unsigned char *data = (void *)(long)ctx->data;
0: (61) r1 = *(u32 *)(r1 +0)
1: (71) r1 = *(u8 *)(r1 +100)
invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)
R1 offset is outside of the packet
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
-- END PROG LOAD LOG --
libbpf: failed to load program 'kubenetprobe_rx'
"""


# libbpf 0.x frames the log differently and returns its own error code, LIBBPF_ERRNO__VERIFY.
VERIFIER_LOG_0X = """libbpf: load bpf program failed: Permission denied
libbpf: -- BEGIN DUMP LOG ---
libbpf: 
0: (61) r1 = *(u32 *)(r1 +0)
1: (71) r1 = *(u8 *)(r1 +100)
invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)
R1 offset is outside of the packet
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0

libbpf: -- END LOG --
libbpf: failed to load program 'kubenetprobe_rx'
"""


@pytest.mark.parametrize("text", [VERIFIER_LOG, VERIFIER_LOG_0X], ids=["libbpf-1.x", "libbpf-0.x"])
def test_verifier_reason(text):
    assert verifier_error(verifier_log(text), 13).message == \
        "the verifier rejected the program: R1 offset is outside of the packet"


def test_no_verifier_reason_in_statistics_alone():
    assert verifier_error("processed 2 insns (limit 1000000)\n\n", 13) is None


def test_verifier_rejection_on_libbpf_0x(engine):
    engine._log.lines = [VERIFIER_LOG_0X]
    e = engine._error("the kernel refused to load the program", 4007)
    assert e.message == "the verifier rejected the program: R1 offset is outside of the packet"


def test_verifier_rejection_beats_eacces(engine):
    engine._log.lines = [VERIFIER_LOG]
    e = engine._error("the kernel refused to load the program", errno.EACCES)
    assert str(e) == ("the verifier rejected the program: R1 offset is outside of the packet; "
                      "run with -v for the verifier's log")
    assert e.log == VERIFIER_LOG and engine._log.lines == []


def test_eperm_is_permission(engine):
    engine._log.lines = ["libbpf: Error in bpf_object__probe_loading():Operation not permitted(1).\n"]
    e = engine._error("the kernel refused to load the program", errno.EPERM)
    assert str(e).startswith("permission denied (the kernel refused to load the program: Operation not permitted)")
    assert "run as root" in str(e) and "probe_loading" in e.log


def test_other_errors_carry_libbpf_last_line(engine):
    engine._log.lines = ["libbpf: elf: failed to open: hmm\n", "libbpf: map 'knp_stats': too big\n"]
    e = engine._error("libbpf cannot open the object", errno.E2BIG)
    assert e.message.endswith("(map 'knp_stats': too big)") and e.errno == errno.E2BIG


def test_missing_library_is_one_clear_error():
    with pytest.raises(ProbeError) as e:
        LibbpfEngine(sonames=("libbpf-does-not-exist.so.9",))
    assert "libbpf not found" in e.value.message and "apt-get install libbpf1" in e.value.hint


def test_runtime_code_needs_nothing_newer_than_python_3_6():
    """vermin finds no syntax or standard-library use newer than 3.6 in probe/ (the .pyz runs on 3.6 in the
    integration tests too, but only along the paths they take)."""
    probe_dir = os.path.join(ROOT, "probe")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.6-", "--no-tips",
                             "--violations", probe_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout
