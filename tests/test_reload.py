"""Object files, hot reload and pinned state: the program swapped under traffic without losing one count."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import OBJECT, PYZ, bpf_source, compile_bpf
from frames import ETH_LLDP
from netns import ProbeRun, settle
from probe import layout

pytestmark = pytest.mark.integration

# Sends one frame as fast as it can until SIGTERM, then says how many it sent.
BLAST = """
import signal, socket, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
send = s.send
sent = 0
print("sending", flush=True)
while not stop:
    for _ in range(1000):
        send(frame)
    sent += 1000
print(sent, flush=True)
"""


class Blast(object):
    """The peer sending frames at the highest rate it can, for as long as the `with` lasts (with `outgoing`,
    the probe's end)."""

    def __init__(self, pair, frame, outgoing=False):
        self.pair = pair
        ns, ifname = (pair.probe_ns, pair.probe_if) if outgoing else (pair.peer_ns, pair.peer_if)
        self.counter = "tx_packets" if outgoing else "rx_packets"  # of the probe's end
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", BLAST, ifname, frame.hex()],
                                     stdout=subprocess.PIPE, universal_newlines=True)
        self.sent = None

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "sending"
        # Only once frames arrive: a probe stopped before the first one would have counted none.
        start, deadline = self._arrived(), time.monotonic() + 10
        while self._arrived() < start + 1000:
            assert time.monotonic() < deadline, "the peer's frames do not arrive"
            time.sleep(0.05)
        return self

    def _arrived(self):
        return self.pair.counters(self.pair.probe_ns, self.pair.probe_if)[self.counter]

    def __exit__(self, *exc):
        self.proc.terminate()
        self.sent = int(self.proc.communicate(timeout=30)[0])
        settle()


@pytest.fixture
def object_file(tmp_path):
    """A copy of the built object, as someone iterating on bpf/ would point --object at."""
    path = str(tmp_path / "kubenetprobe.bpf.o")
    shutil.copy(OBJECT, path)
    return path


def reload(probe, expect="reloaded"):
    """SIGHUP the probe and wait for its word on the reload; returns that line."""
    probe.proc.send_signal(signal.SIGHUP)
    line = probe.proc.stderr.readline()
    assert expect in line, line
    return line


def frame_for(pair, outgoing=False):
    return pair.frame(ETH_LLDP, bytes(46), outgoing=outgoing)


@pytest.mark.parametrize("loader", ["libbpf", "native"])
@pytest.mark.parametrize("method", ["link", "netlink"])
def test_reloads_under_traffic_lose_no_count(pair, object_file, loader, method):
    """25 reloads while both ends send as fast as they can: each direction's final count is every frame sent."""
    frame, back = frame_for(pair), frame_for(pair, outgoing=True)
    before = pair.counters(pair.probe_ns, pair.probe_if)
    with ProbeRun(pair, "-i", pair.probe_if, "--object", object_file, "--loader", loader, "--attach", method,
                  "--interval", "60") as probe:
        first_programs = probe.wait_attached().programs[pair.probe_if]
        with Blast(pair, frame) as blast, Blast(pair, back, outgoing=True) as blast_back:
            lines = [reload(probe) for _ in range(25)]
        final = probe.stop()[pair.probe_if]
    after = pair.counters(pair.probe_ns, pair.probe_if)
    assert probe.returncode == 0, probe.stderr
    for sent in (blast.sent, blast_back.sent):
        assert sent >= 100000, "too little traffic to test anything: %d frames" % sent
    assert final["rx"]["packets"] == blast.sent == after["rx_packets"] - before["rx_packets"]
    assert final["rx"]["bytes"] == blast.sent * len(frame)
    assert final["tx"]["packets"] == blast_back.sent == after["tx_packets"] - before["tx_packets"]
    assert final["tx"]["bytes"] == blast_back.sent * len(back)
    assert final["reloads"] == 25 and "(reload 25)" in lines[-1]
    assert final["program_id"] == final["program_ids"]["rx"] != first_programs["ingress"]
    assert final["program_ids"]["tx"] != first_programs["egress"]
    assert pair.probe_programs() == []


def test_reload_of_the_embedded_object(pair):
    with ProbeRun(pair, "-i", pair.probe_if, "--interval", "60") as probe:
        before = probe.wait_attached().programs[pair.probe_if]
        line = reload(probe)
        pair.send_frames([frame_for(pair)] * 4)
        pair.send_frames([frame_for(pair, outgoing=True)] * 2, outgoing=True)
        settle()
        final = probe.stop()[pair.probe_if]
    ids = final["program_ids"]
    assert "reloaded the embedded object: knp0 runs program id %d for rx, program id %d for tx (reload 1)" % (
        ids["rx"], ids["tx"]) in line
    assert ids["rx"] != before["ingress"] and ids["tx"] != before["egress"] and final["reloads"] == 1
    assert final["rx"]["l3"]["other"]["packets"] == 4
    assert final["tx"]["l3"]["other"]["packets"] == 2


@pytest.mark.parametrize("broken", ["not-elf", "verifier", "layout"])
def test_broken_object_on_reload_keeps_the_running_program(pair, object_file, tmp_path, broken):
    """The old programs stay attached and counting, the probe says why, and a fixed object reloads."""
    good = open(object_file, "rb").read()
    bad = {"not-elf": lambda: b"\x7fELF but not really",
           "verifier": lambda: compile_bpf(tmp_path, bpf_source("verifier_refuses.bpf.c")).read_bytes(),
           "layout": lambda: compile_bpf(tmp_path, bpf_source("other_layout.bpf.c")).read_bytes()}[broken]()
    frame, back = frame_for(pair), frame_for(pair, outgoing=True)
    with ProbeRun(pair, "-i", pair.probe_if, "--object", object_file, "--interval", "60") as probe:
        running = probe.wait_attached().programs
        pair.send_frames([frame] * 5)
        pair.send_frames([back] * 1, outgoing=True)
        with open(object_file, "wb") as f:
            f.write(bad)
        line = reload(probe, expect="reload failed; the running program stays: %s: " % object_file)
        assert probe.attached() == running
        pair.send_frames([frame] * 7)
        pair.send_frames([back] * 2, outgoing=True)
        with open(object_file, "wb") as f:
            f.write(good)
        reload(probe)
        pair.send_frames([frame] * 3)
        pair.send_frames([back] * 4, outgoing=True)
        settle()
        final = probe.stop()[pair.probe_if]
    assert final["rx"]["packets"] == 15 and final["tx"]["packets"] == 7 and final["reloads"] == 1
    reasons = {"not-elf": "truncated object: 19 bytes, shorter than an ELF header",
               "verifier": "the verifier rejected the program: ",
               "layout": "the object's map knp_stats has another layout: value_size 8, not 144"}
    assert reasons[broken] in line, line


@pytest.mark.parametrize("loader", ["libbpf", "native"])
@pytest.mark.parametrize("method", ["link", "netlink"])
@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_pinned_state_outlives_the_probe_and_is_taken_over(pair, bpffs, hook, method, loader):
    """Stop and start the probe during traffic both ways: the second run's final counts are everything sent."""
    pins = os.path.join(bpffs, "knp")
    frame, back = frame_for(pair), frame_for(pair, outgoing=True)
    options = ["-i", pair.probe_if, "--hook", hook, "--pin", pins, "--attach", method, "--loader", loader,
               "--interval", "60"]
    kind = "link" if method == "link" else "prog"
    with contextlib.ExitStack() as runs:
        first = runs.enter_context(ProbeRun(pair, *options))
        first.wait_attached()
        with Blast(pair, frame) as blast, Blast(pair, back, outgoing=True) as blast_back:
            first_final = first.stop()[pair.probe_if]
            assert first.returncode == 0, first.stderr
            assert "left pinned in %s" % pins in first.stderr
            kept = first.attached()
            assert kept is not None, "pinned programs must stay after the probe exits"
            # The maps shared by every interface, then the interface's hooks in a folder of its own.
            assert sorted(os.listdir(pins)) == sorted(list(layout.MAPS) + [pair.probe_if])
            names = ["rx_%s_%s" % (hook, kind), "tx_tc_%s" % kind]
            assert sorted(os.listdir(os.path.join(pins, pair.probe_if))) == names
            for name in ["knp_stats", "knp_slots"] + [os.path.join(pair.probe_if, name) for name in names]:
                st = os.stat(os.path.join(pins, name))
                assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
            second = runs.enter_context(ProbeRun(pair, *options))
            second.wait_attached(replacing=kept[pair.probe_if].values())
        final = second.stop()[pair.probe_if]
    assert second.returncode == 0, second.stderr
    assert "took over the programs pinned in" in second.stderr
    assert final["hooks"] == {"rx": hook, "tx": "tc"}
    assert 0 < first_final["rx"]["packets"] < final["rx"]["packets"] == blast.sent
    assert 0 < first_final["tx"]["packets"] < final["tx"]["packets"] == blast_back.sent
    assert second.attached() is not None
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--pin", pins)
    assert result.returncode == 0
    assert pair.probe_programs() == []
    assert os.listdir(pins) == []


def test_pin_outside_a_bpffs_is_refused(pair, tmp_path):
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--pin", str(tmp_path / "pins"),
                      "--count", "1", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: %s is not on a bpffs" % (tmp_path / "pins"))
    assert pair.probe_programs() == []


def test_pin_mounts_a_bpffs_at_sys_fs_bpf(pair):
    """Where /sys/fs/bpf has no bpffs (here: the one `ip netns exec` gives), the probe mounts one."""
    result = pair.run(pair.probe_ns, "sh", "-c", '"$@" && stat -f -c %T /sys/fs/bpf && ls /sys/fs/bpf/knp && '
                      'ls /sys/fs/bpf/knp/knp0', "sh", sys.executable, PYZ, "-i", pair.probe_if, "--pin",
                      "/sys/fs/bpf/knp", "--count", "1", "--interval", "0", "--json", check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    report, fs_type, files = lines[0], lines[1], result.stdout.split()[-(len(layout.MAPS) + 3):]
    assert json.loads(report)["final"] is True
    assert fs_type == "bpf_fs" and sorted(files) == sorted(list(layout.MAPS) + ["knp0", "rx_tc_link", "tx_tc_link"])


@pytest.mark.parametrize("source,reason", [
    ("missing-program", "the object has no program kubenetprobe_in or kubenetprobe_rx or kubenetprobe_tx (it has: "
                        "other_name)"),
    ("layout", "the object's map knp_stats has another layout: value_size 8, not 144"),
    ("not-elf", "not an ELF object"),
])
def test_object_without_what_the_probe_needs_is_refused(pair, tmp_path, source, reason):
    """Refused before anything is loaded, naming what differs; nothing attached."""
    if source == "not-elf":
        path = tmp_path / "object.o"
        path.write_bytes(b"just text")
    else:
        other_layout = bpf_source("other_layout.bpf.c")
        layout = other_layout if source == "layout" else other_layout.replace("kubenetprobe_rx", "other_name")
        path = compile_bpf(tmp_path, layout)
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--object", str(path),
                      "--count", "1", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: %s: " % path), result.stderr
    assert reason in result.stderr and len(result.stderr.splitlines()) == 1
    assert pair.probe_programs() == []
