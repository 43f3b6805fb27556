"""The built kubenetprobe.pyz attached to a veth pair: exact counts against what was sent and the kernel's
counters with every loader, attach method and mode; signals, detach, other programs, the Python API."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import EMPTY_OBJECT, PYZ, ROOT
from frames import ETH_ARP, ETH_LLDP
from netns import ProbeRun, VethPair, raw_frames, settle

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built_pyz")]


def assert_matches_kernel(report, before, after, mode):
    """rx packets equal the kernel's own count, and so do bytes in generic mode.

    With native XDP on veth the kernel counts bytes without the 14-byte Ethernet header, on both ends
    of the pair: a kernel quirk, not ours to copy, so there bytes are checked against what was sent.
    """
    rx = report["rx"]
    assert rx["packets"] == after["probe"]["rx_packets"] - before["probe"]["rx_packets"]
    assert rx["packets"] == after["peer"]["tx_packets"] - before["peer"]["tx_packets"]
    if mode == "generic":
        assert rx["bytes"] == after["probe"]["rx_bytes"] - before["probe"]["rx_bytes"]
        assert rx["bytes"] == after["peer"]["tx_bytes"] - before["peer"]["tx_bytes"]
    assert rx["packets"] == sum(c["packets"] for c in rx["l3"].values())
    assert rx["bytes"] == sum(c["bytes"] for c in rx["l3"].values())
    assert sum(c["packets"] for c in rx["l4"].values()) == rx["l3"]["ipv4"]["packets"] + rx["l3"]["ipv6"]["packets"]


def kernel_counters(pair):
    return {"probe": pair.counters(pair.probe_ns, pair.probe_if), "peer": pair.counters(pair.peer_ns, pair.peer_if)}


@pytest.mark.parametrize("loader", ["libbpf", "native"])
@pytest.mark.parametrize("method", ["link", "netlink"])
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_counts_known_traffic_exactly(pair, mode, method, loader):
    """ping, UDP, TCP and raw frames: each class counted exactly, totals equal to the kernel's, with every
    loader, attach method and mode."""
    with ProbeRun(pair, "-i", pair.probe_if, "--mode", mode, "--attach", method, "--loader", loader,
                  "--interval", "60") as probe:
        probe.wait_attached()
        before = kernel_counters(pair)
        pair.ping(7)
        pair.send_udp(11, 300)
        sniffed = pair.sniff_sent()
        pair.send_tcp(200000)
        tcp_packets, tcp_bytes = sniffed()
        frames = raw_frames(pair)
        pair.send_frames([f for f, _, _ in frames])
        settle()
        after = kernel_counters(pair)
        final = probe.stop()[pair.probe_if]
    assert probe.returncode == 0, probe.stderr
    rx = final["rx"]
    assert tcp_packets > 0
    expected_l4 = {
        "icmp": (7 + 1, 7 * (14 + 20 + 8 + 56) + len(frames[3][0])),
        "udp": (11 + 1, 11 * (14 + 20 + 8 + 300) + len(frames[1][0])),
        "tcp": (tcp_packets, tcp_bytes),
        "icmpv6": (0, 0),
        "other": (1, len(frames[4][0])),
    }
    assert {k: (v["packets"], v["bytes"]) for k, v in rx["l4"].items()} == expected_l4
    ipv4 = [expected_l4[k] for k in ("icmp", "tcp", "other")] + [(11, 11 * 342)]
    expected_l3 = {
        "ipv4": (sum(p for p, _ in ipv4), sum(b for _, b in ipv4)),
        "ipv6": (1, len(frames[1][0])),
        "arp": (1, len(frames[0][0])),
        "other": (1, len(frames[2][0])),
    }
    assert {k: (v["packets"], v["bytes"]) for k, v in rx["l3"].items()} == expected_l3
    assert_matches_kernel(final, before, after, mode)
    assert final["final"] is True and final["hook"] == "xdp" and final["interface"] == pair.probe_if
    assert (final["mode"], final["attach"], final["loader"]) == (mode, method, loader)
    assert pair.xdp_program() is None, "the probe left its program attached"


def test_auto_mode_takes_native_on_veth(pair):
    """--mode auto (the default) gets native XDP where the driver has it."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--count", "1", "--interval", "0")
    out, err = probe.proc.communicate(timeout=20)
    assert probe.proc.returncode == 0, err
    assert '"mode": "native"' in out


def test_sigkill_leaves_no_program(pair):
    """A bpf_link dies with the process: SIGKILL leaves the interface as it was."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--interval", "60").wait_attached()
    assert pair.xdp_program() is not None
    probe.proc.send_signal(signal.SIGKILL)
    probe.proc.wait()
    deadline = time.time() + 5
    while pair.xdp_program() is not None and time.time() < deadline:
        time.sleep(0.05)
    assert pair.xdp_program() is None


@pytest.mark.parametrize("method", ["link", "netlink"])
def test_sigterm_prints_final_report_and_detaches(pair, method):
    probe = ProbeRun(pair, "-i", pair.probe_if, "--attach", method, "--interval", "60").wait_attached()
    pair.ping(3)
    settle()
    final = probe.stop(signal.SIGTERM)[pair.probe_if]
    assert probe.returncode == 0
    assert final["rx"]["l4"]["icmp"]["packets"] == 3
    assert pair.xdp_program() is None


def test_detach_removes_what_a_killed_netlink_probe_left(pair):
    """Attached through netlink, SIGKILL leaves the program; `detach` removes it, and only ours."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--attach", "netlink", "--interval", "60").wait_attached()
    probe.proc.send_signal(signal.SIGKILL)
    probe.proc.wait()
    left = pair.xdp_program()
    assert left is not None
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if)
    assert result.stdout == "detached XDP program id %d (kubenetprobe_rx), native mode from %s\n" % (
        left, pair.probe_if)
    assert pair.xdp_program() is None
    again = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, check=False)
    assert (again.returncode, again.stderr) == (1, "kubenetprobe: error: %s has no XDP program\n" % pair.probe_if)


def test_detach_leaves_other_programs_without_force(pair):
    pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, "xdpgeneric", "obj", EMPTY_OBJECT,
             "sec", "xdp")
    theirs = pair.xdp_program()
    refused = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, check=False)
    assert refused.returncode == 1
    assert refused.stderr == ("kubenetprobe: error: the XDP program on %s is not kubenetprobe's: id %d (xdp_empty), "
                              "generic mode; --force removes it anyway\n" % (pair.probe_if, theirs))
    assert pair.xdp_program() == theirs
    pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--force")
    assert pair.xdp_program() is None


def test_other_program_is_not_replaced_without_force(pair):
    """A foreign XDP program stays, and the error names it; --force replaces it and says so."""
    pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, "xdpgeneric", "obj", EMPTY_OBJECT,
             "sec", "xdp")
    theirs = pair.xdp_program()
    assert theirs is not None
    refused = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--count", "1", "--interval", "0",
                       check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("kubenetprobe: error: %s already has an XDP program: id %d (xdp_empty)"
                                     % (pair.probe_if, theirs)), refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "--force" in refused.stderr
    assert pair.xdp_program() == theirs

    forced = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--count", "1", "--interval", "0",
                      "--force", "--json", check=False)
    assert forced.returncode == 0, forced.stderr
    assert "replaced XDP program id %d" % theirs in forced.stderr
    assert pair.xdp_program() is None


def test_second_probe_is_refused_and_force_takes_over(pair):
    """Another process's bpf_link is refused too; --force detaches it."""
    with ProbeRun(pair, "-i", pair.probe_if, "--interval", "60") as first:
        first.wait_attached()
        ours = pair.xdp_program()
        refused = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--count", "1", "--interval",
                           "0", check=False)
        assert refused.returncode == 1
        assert "id %d (kubenetprobe_rx)" % ours in refused.stderr
        assert pair.xdp_program() == ours
        with ProbeRun(pair, "-i", pair.probe_if, "--force", "--interval", "60") as second:
            second.wait_attached(replacing=ours)
            assert pair.xdp_program() not in (None, ours)
            pair.ping(2)
            settle()
            assert second.stop()[pair.probe_if]["rx"]["l4"]["icmp"]["packets"] == 2
        assert pair.xdp_program() is None


def test_two_interfaces_count_separately():
    """Each interface has its own counters."""
    with VethPair() as a, VethPair() as b:
        # Move b's probe end into a's namespace under another name, so one probe sees both.
        b.run(b.probe_ns, "ip", "link", "set", b.probe_if, "name", "knp2", "netns", a.probe_ns)
        a.run(a.probe_ns, "ip", "link", "set", "knp2", "up")
        with ProbeRun(a, "-i", a.probe_if, "-i", "knp2", "--interval", "60") as probe:
            probe.wait_attached()
            frame = a.frame(ETH_LLDP, bytes(50))
            a.send_frames([frame] * 3)
            b.send_frames([frame] * 5)
            settle()
            finals = probe.stop()
        assert finals[a.probe_if]["rx"]["l3"]["other"] == {"packets": 3, "bytes": 3 * len(frame)}
        assert finals["knp2"]["rx"]["l3"]["other"] == {"packets": 5, "bytes": 5 * len(frame)}


API_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from probe.monitor import NetworkMonitor
with NetworkMonitor(loader=sys.argv[3]) as monitor:
    attachment = monitor.attach(sys.argv[2], mode="generic")
    print(monitor.engine.name, attachment.mode, flush=True)
    sys.stdin.readline()  # the test sends its frames now
    print(json.dumps(monitor.packet_stats()), flush=True)
"""


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_python_api(pair, loader):
    """NetworkMonitor as a script uses it: attach, packet_stats() as plain data, detach on leaving."""
    script = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, sys.executable, "-c", API_SCRIPT,
                               ROOT, pair.probe_if, loader],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert script.stdout.readline().split() == [loader, "generic"]
        frame = pair.frame(ETH_ARP, bytes(28))
        pair.send_frames([frame] * 4)
        settle()
        script.stdin.write("go\n")
        script.stdin.flush()
        stats = json.loads(script.stdout.readline())
        assert script.wait(timeout=10) == 0
    finally:
        if script.poll() is None:
            script.kill()
    assert stats[pair.probe_if]["rx"]["l3"]["arp"] == {"packets": 4, "bytes": 4 * len(frame)}
    assert stats[pair.probe_if]["rx"]["packets"] == 4
    assert pair.xdp_program() is None


def test_closed_pipe_ends_quietly(pair):
    """`kubenetprobe | head -2`: the probe stops without a traceback and detaches."""
    result = pair.run(pair.probe_ns, "sh", "-c", '"$@" | head -n 2', "sh", sys.executable, PYZ,
                      "-i", pair.probe_if, "--interval", "0.01", check=False)
    assert len(result.stdout.splitlines()) == 2 and result.stdout.startswith("time interface mode")
    assert result.stderr == ""
    assert pair.xdp_program() is None
