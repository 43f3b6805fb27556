"""The command line: its arguments, and what the environment and the options choose (interface, loader,
object), checked in process with a monitor that records instead of attaching."""
import pytest

from probe import cli
from probe.errors import ProbeError
from probe.net import interfaces


def test_defaults():
    args = cli.parser().parse_args([])
    assert (args.interface, args.interval, args.count, args.json, args.mode, args.force) == \
        (None, 1.0, None, False, "auto", False)
    assert (args.direction, args.hook, args.method) == ("both", "auto", "auto")


def test_repeated_interfaces_and_values():
    args = cli.parser().parse_args(["-i", "a", "--interface", "b", "--interval", "0.5", "--count", "3",
                                    "--mode", "generic", "--force", "--json", "-v", "--direction", "rx",
                                    "--hook", "xdp"])
    assert args.interface == ["a", "b"] and args.interval == 0.5 and args.count == 3
    assert args.mode == "generic" and args.force and args.json and args.verbose
    assert (args.direction, args.hook) == ("rx", "xdp")


@pytest.mark.parametrize("argv", [["--interval", "-1"], ["--interval", "abc"], ["--interval", "inf"],
                                  ["--interval", "nan"], ["--count", "0"], ["--count", "1.5"],
                                  ["--mode", "offload"], ["--bogus"], ["--direction", "in"],
                                  ["--direction", "rxtx"], ["--hook", "tcx"], ["--hook", "egress"],
                                  ["--direction"], ["--hook"], ["--talkers", "-1"], ["--talkers", "x"],
                                  ["--talkers-capacity", "0"], ["--talkers-capacity", str((1 << 24) + 1)]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("usage: kubenetprobe")


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for words in ("NETWORK_INTERFACE", "--count 1 --interval 0", "exit status", "generic", "--direction {rx,tx,both}",
                  "--hook {auto,xdp,tc}", "tx is always counted at tc egress", "TC ingress"):
        assert words in text


class RecordingMonitor(object):
    """Stands in for NetworkMonitor: records what run() attaches to, and with which loader."""

    def __init__(self, loader, pin_dir, object_path, talkers=0, talkers_capacity=None):
        self.loader, self.pin_dir, self.object_path = loader, pin_dir, object_path
        self.talkers, self.talkers_capacity = talkers, talkers_capacity
        self.attached = []
        RecordingMonitor.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def attach(self, name, mode, force, method, hook, directions):
        self.attached.append((name, mode, force, method, hook, directions))
        raise ProbeError("stop here")


@pytest.fixture
def recording(monkeypatch):
    monkeypatch.setattr(cli, "NetworkMonitor", RecordingMonitor)
    monkeypatch.setattr(cli, "_Signals", lambda: None)  # leave pytest's own signal handlers alone
    monkeypatch.setattr(interfaces, "default_interface", lambda: "eth-default")


def test_talkers_reach_the_monitor(recording):
    """--talkers K and --talkers-capacity N go to the monitor; talkers are off by default, 4096 peers the
    default capacity, whose memory --help states."""
    cli.main(["-i", "eth3"])
    assert (RecordingMonitor.last.talkers, RecordingMonitor.last.talkers_capacity) == (0, 4096)
    cli.main(["-i", "eth3", "--talkers", "5", "--talkers-capacity", "100"])
    assert (RecordingMonitor.last.talkers, RecordingMonitor.last.talkers_capacity) == (5, 100)
    assert "MiB for 4096 peers" in " ".join(cli.parser().format_help().split())


def test_interface_from_environment(recording, monkeypatch):
    monkeypatch.setenv("NETWORK_INTERFACE", "veth7")
    assert cli.main(["--mode", "native", "--force", "--attach", "netlink"]) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.attached == [("veth7", "native", True, "netlink", "auto", ("rx", "tx"))]


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
    assert RecordingMonitor.last.attached == [("eth-default", "auto", False, "auto", "auto", ("rx", "tx"))]


@pytest.mark.parametrize("argv,hook,directions", [
    ([], "auto", ("rx", "tx")),
    (["--direction", "both"], "auto", ("rx", "tx")),
    (["--direction", "rx"], "auto", ("rx",)),
    (["--direction", "tx"], "auto", ("tx",)),
    (["--hook", "xdp"], "xdp", ("rx", "tx")),
    (["--hook", "tc", "--direction", "rx"], "tc", ("rx",)),
    (["--direction", "tx", "--hook", "xdp"], "xdp", ("tx",)),  # the monitor decides what rx's hook means to tx
])
def test_direction_and_hook_reach_the_monitor(recording, argv, hook, directions):
    assert cli.main(["-i", "eth3"] + argv) == cli.EXIT_FAILURE
    assert RecordingMonitor.last.attached == [("eth3", "auto", False, "auto", hook, directions)]
