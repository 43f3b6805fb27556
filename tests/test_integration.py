"""The built kubenetprobe.pyz attached to a veth pair: exact counts against what was sent and the kernel's
counters with every loader, attach method and mode; signals, detach, other programs, the Python API."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import EMPTY_OBJECT, PYZ, ROOT
from frames import ETH_ARP, ETH_LLDP
from netns import HookProgram, ProbeRun, VethPair, raw_frames, settle

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built_pyz")]


def assert_matches_kernel(report, before, after):
    """Each direction's packets equal the kernel's own count on both ends, and so do bytes, but for rx with
    native XDP.

    With native XDP on veth the kernel counts rx bytes without the 14-byte Ethernet header, on both ends
    of the pair: a kernel quirk, not ours to copy, so there bytes are checked against what was sent.
    """
    for direction, crossed in (("rx", ("rx", "tx")), ("tx", ("tx", "rx"))):
        c = report[direction]
        here, there = crossed  # the probe's end counts it as `here`, the peer's as `there`
        assert c["packets"] == after["probe"][here + "_packets"] - before["probe"][here + "_packets"], direction
        assert c["packets"] == after["peer"][there + "_packets"] - before["peer"][there + "_packets"], direction
        if not (direction == "rx" and report["hooks"]["rx"] == "xdp" and report["mode"] == "native"):
            assert c["bytes"] == after["probe"][here + "_bytes"] - before["probe"][here + "_bytes"], direction
            assert c["bytes"] == after["peer"][there + "_bytes"] - before["peer"][there + "_bytes"], direction
        assert c["packets"] == sum(n["packets"] for n in c["l3"].values())
        assert c["bytes"] == sum(n["bytes"] for n in c["l3"].values())
        assert sum(n["packets"] for n in c["l4"].values()) == c["l3"]["ipv4"]["packets"] + c["l3"]["ipv6"]["packets"]


def kernel_counters(pair):
    return {"probe": pair.counters(pair.probe_ns, pair.probe_if), "peer": pair.counters(pair.peer_ns, pair.peer_if)}


def qdiscs(pair):
    """The kinds of the qdiscs on the probe's interface."""
    return sorted(q["kind"] for q in json.loads(pair.run(pair.probe_ns, "tc", "-j", "qdisc", "show", "dev",
                                                         pair.probe_if).stdout))


PING_REPLY = 14 + 20 + 8 + 56
# What the probe's end answers a 300-byte UDP datagram to a closed port with: an ICMP port unreachable quoting
# the datagram's IP header and all of its 308 bytes.
PORT_UNREACHABLE = 14 + 20 + 8 + 20 + 8 + 300


# rx at native XDP, generic XDP, or TC ingress (the default on a veth); tx at TC egress in every case.
@pytest.mark.parametrize("loader", ["libbpf", "native"])
@pytest.mark.parametrize("method", ["link", "netlink"])
@pytest.mark.parametrize("hook,mode", [("xdp", "native"), ("xdp", "generic"), ("tc", None)],
                         ids=["native", "generic", "tc"])
def test_counts_known_traffic_exactly(pair, hook, mode, method, loader):
    """ping, UDP, TCP and raw frames: each class counted exactly, both ways, totals equal to the kernel's, with
    every loader, attach method, mode and rx hook."""
    where = ["--hook", hook] + (["--mode", mode] if mode else [])
    with ProbeRun(pair, "-i", pair.probe_if, "--attach", method, "--loader", loader, "--interval", "60",
                  *where) as probe:
        probe.wait_attached()
        attached = pair.probe_programs()
        before = kernel_counters(pair)
        pair.ping(7)
        pair.send_udp(11, 300)
        sniffed, sniffed_back = pair.sniff_sent(), pair.sniff_sent(outgoing=True)
        pair.send_tcp(200000)
        (tcp_packets, tcp_bytes), (tcp_back, tcp_back_bytes) = sniffed(), sniffed_back()
        frames = raw_frames(pair)
        pair.send_frames([f for f, _, _ in frames])
        settle()
        after = kernel_counters(pair)
        final = probe.stop()[pair.probe_if]
    assert probe.returncode == 0, probe.stderr
    rx = final["rx"]
    assert tcp_packets > 0 and tcp_back > 0
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
    # What the probe's end sent: 7 ping replies, port unreachables for some of the UDP datagrams (the kernel
    # rate-limits them), the TCP listener's segments; nothing for the raw frames (none is its to answer).
    tx = final["tx"]
    unreachables = tx["l4"]["icmp"]["packets"] - 7
    assert 1 <= unreachables <= 11
    expected_tx_l4 = {
        "icmp": (7 + unreachables, 7 * PING_REPLY + unreachables * PORT_UNREACHABLE),
        "udp": (0, 0),
        "tcp": (tcp_back, tcp_back_bytes),
        "icmpv6": (0, 0),
        "other": (0, 0),
    }
    assert {k: (v["packets"], v["bytes"]) for k, v in tx["l4"].items()} == expected_tx_l4
    assert {k: (v["packets"], v["bytes"]) for k, v in tx["l3"].items()} == {
        "ipv4": (tx["packets"], tx["bytes"]), "ipv6": (0, 0), "arp": (0, 0), "other": (0, 0)}
    assert tx["packets"] == 7 + unreachables + tcp_back
    assert_matches_kernel(final, before, after)
    assert final["final"] is True and final["interface"] == pair.probe_if
    assert (final["hook"], final["mode"], final["attach"], final["loader"]) == (hook, mode, method, loader)
    assert final["hooks"] == {"rx": hook, "tx": "tc"}
    rx_hook = "xdp" if hook == "xdp" else "ingress"
    assert final["program_ids"] == {"rx": probe.programs[pair.probe_if][rx_hook],
                                    "tx": probe.programs[pair.probe_if]["egress"]}
    assert sorted((p.hook, p.name) for p in attached) == sorted([
        (rx_hook, "kubenetprobe_rx" if hook == "xdp" else "kubenetprobe_in"), ("egress", "kubenetprobe_tx")])
    assert pair.probe_programs() == [], "the probe left a program attached"
    assert qdiscs(pair) == ["noqueue"], "the probe left its clsact qdisc"


def test_auto_mode_takes_native_on_veth(pair):
    """--mode auto (the default) gets native XDP where the driver has it."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--hook", "xdp", "--count", "1", "--interval", "0")
    out, err = probe.proc.communicate(timeout=20)
    assert probe.proc.returncode == 0, err
    report = json.loads(out)
    assert (report["hook"], report["mode"]) == ("xdp", "native")
    assert report["hooks"] == {"rx": "xdp", "tx": "tc"}


def test_auto_hook_takes_tc_on_veth(pair):
    """--hook auto (the default) counts a veth's rx at TC ingress, and says why under -v; tx is at TC egress."""
    probe = ProbeRun(pair, "-v", "-i", pair.probe_if, "--count", "1", "--interval", "0")
    out, err = probe.proc.communicate(timeout=20)
    assert probe.proc.returncode == 0, err
    report = json.loads(out)
    assert (report["hook"], report["mode"], report["attach"]) == ("tc", None, "link")
    assert report["hooks"] == {"rx": "tc", "tx": "tc"}
    assert "%s: counting rx at TC ingress: it is a veth" % pair.probe_if in err


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_sigkill_leaves_no_program(pair, hook):
    """bpf_links (XDP's, TCX's) die with the process: SIGKILL leaves the interface as it was."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--hook", hook, "--interval", "60").wait_attached()
    assert len(pair.probe_programs()) == 2
    probe.proc.send_signal(signal.SIGKILL)
    probe.proc.wait()
    deadline = time.time() + 5
    while pair.probe_programs() and time.time() < deadline:
        time.sleep(0.05)
    assert pair.probe_programs() == []
    assert qdiscs(pair) == ["noqueue"]


@pytest.mark.parametrize("method", ["link", "netlink"])
def test_sigterm_prints_final_report_and_detaches(pair, method):
    probe = ProbeRun(pair, "-i", pair.probe_if, "--attach", method, "--interval", "60").wait_attached()
    pair.ping(3)
    settle()
    final = probe.stop(signal.SIGTERM)[pair.probe_if]
    assert probe.returncode == 0
    assert final["rx"]["l4"]["icmp"]["packets"] == 3
    assert final["tx"]["l4"]["icmp"]["packets"] == 3  # the replies
    assert pair.probe_programs() == []
    assert qdiscs(pair) == ["noqueue"], "the probe left the clsact qdisc it added"


class TerminalProbeRun(ProbeRun):
    """kubenetprobe.pyz writing to a terminal (a pty of 24 rows) in the probe's namespace."""

    def __init__(self, pair, *args):
        import fcntl
        import pty
        import struct
        import termios
        self._expect(pair, args)
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self.proc = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, sys.executable, PYZ] + list(args),
                                     stdout=slave, stderr=subprocess.PIPE, universal_newlines=True)
        os.close(slave)

    def screen(self, sig=signal.SIGINT):
        """Signal the probe and return all it wrote to the terminal."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        out = b""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the probe's end is closed and drained
                break
            if not chunk:
                break
            out += chunk
        os.close(self.master)
        return out.decode()


def test_terminal_table_redraws_in_place_and_ends_exact(pair):
    """On a terminal: one table per interval, each drawn over the last, the final one exact."""
    probe = TerminalProbeRun(pair, "-i", pair.probe_if, "--interval", "0.2")
    probe.wait_attached()
    pair.ping(3)
    settle()
    time.sleep(0.5)
    screen = probe.screen()
    assert probe.proc.returncode == 0, probe.proc.stderr.read()
    tables = screen.split("\x1b[J")
    assert len(tables) >= 3 and all(t.endswith("\x1b[4F") for t in tables[1:-1])  # title, head, row, total
    assert not tables[0].startswith("\x1b")
    rows = {line.split()[0]: line.split() for line in tables[-1].replace("\r", "").splitlines()[2:]}
    assert rows[pair.probe_if][5:] == ["3", "3", "ipv4", "100%", "icmp", "100%"]  # rx and tx packets, the top classes
    assert rows["total"][5:] == ["3", "3"]
    assert sorted(rows) == sorted([pair.probe_if, "total"])


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_detach_removes_what_a_killed_netlink_probe_left(pair, hook):
    """Attached through netlink, SIGKILL leaves the programs; `detach` removes them, and only ours."""
    probe = ProbeRun(pair, "-i", pair.probe_if, "--hook", hook, "--attach", "netlink", "--interval", "60")
    left = probe.wait_attached().programs[pair.probe_if]
    probe.proc.send_signal(signal.SIGKILL)
    probe.proc.wait()
    assert {p.hook: p.prog_id for p in pair.probe_programs()} == left
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if)
    lines = ["detached TC egress program id %d (kubenetprobe_tx) from %s\n" % (left["egress"], pair.probe_if)]
    if hook == "xdp":
        lines.insert(0, "detached XDP program id %d (kubenetprobe_rx), native mode from %s\n" % (
            left["xdp"], pair.probe_if))
    else:
        lines.insert(0, "detached TC ingress program id %d (kubenetprobe_in) from %s\n" % (
            left["ingress"], pair.probe_if))
    assert result.stdout == "".join(lines)
    assert pair.probe_programs() == []
    again = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, check=False)
    assert (again.returncode, again.stderr) == (
        1, "kubenetprobe: error: %s has no program of kubenetprobe's\n" % pair.probe_if)


def test_detach_leaves_other_programs_without_force(pair):
    pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, "xdpgeneric", "obj", EMPTY_OBJECT,
             "sec", "xdp")
    theirs = pair.xdp_program()
    refused = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, check=False)
    assert refused.returncode == 1
    assert refused.stderr == ("kubenetprobe: error: the XDP program on %s is not kubenetprobe's: id %d (xdp_empty), "
                              "generic mode; --force removes it anyway\n" % (pair.probe_if, theirs))
    assert pair.probe_programs() == [HookProgram("xdp", theirs, "xdp_empty")]
    pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--force")
    assert pair.probe_programs() == []


# Holds an XDP bpf_link (generic mode) of xdp_empty on an interface, says "attached IFINDEX", waits to be killed.
XDP_LINK_HOLDER = """
import socket, sys, time
sys.path.insert(0, sys.argv[1])
from probe.bpf import syscall
from probe.bpf.libbpf import LibbpfEngine
index = socket.if_nametoindex(sys.argv[3])
obj = LibbpfEngine().load_file(sys.argv[2])
link = syscall.link_create_xdp(obj.program("xdp_empty").fd, index, 2)  # XDP_FLAGS_SKB_MODE
print("attached", index, flush=True)
time.sleep(600)
"""


def test_detach_leaves_other_namespaces_alone(pair):
    """An XDP link on an interface of another namespace that has the same ifindex is none of `detach`'s business
    (a bpf_link says its ifindex, not its namespace)."""
    with VethPair() as other:
        holder = subprocess.Popen(["ip", "netns", "exec", other.probe_ns, sys.executable, "-c", XDP_LINK_HOLDER,
                                   ROOT, EMPTY_OBJECT, other.probe_if], stdout=subprocess.PIPE,
                                  universal_newlines=True)
        try:
            word, index = holder.stdout.readline().split()
            assert word == "attached"
            assert int(index) == int(pair.run(pair.probe_ns, "cat", "/sys/class/net/%s/ifindex" % pair.probe_if).stdout)
            theirs = other.xdp_program()
            pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, "xdpgeneric", "obj", EMPTY_OBJECT,
                     "sec", "xdp")
            ours = pair.xdp_program()
            result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--force")
            assert "detached XDP program id %d" % ours in result.stdout
            assert other.xdp_program() == theirs, "detach removed another namespace's XDP link"
            assert pair.probe_programs() == [], "detach said it removed the program, which is still there"
        finally:
            holder.kill()
            holder.wait()


def test_other_program_is_not_replaced_without_force(pair):
    """A foreign XDP program stays, and the error names it; --hook auto counts beside it at TC and leaves it;
    --force replaces it and says so."""
    pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, "xdpgeneric", "obj", EMPTY_OBJECT,
             "sec", "xdp")
    theirs = pair.xdp_program()
    assert theirs is not None
    refused = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--hook", "xdp", "--count", "1",
                       "--interval", "0", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("kubenetprobe: error: %s already has an XDP program: id %d (xdp_empty)"
                                     % (pair.probe_if, theirs)), refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "--force" in refused.stderr
    assert pair.probe_programs() == [HookProgram("xdp", theirs, "xdp_empty")]  # tx's hook left as it was, too

    beside = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--count", "1", "--interval", "0",
                      "--json", check=False)
    assert beside.returncode == 0, beside.stderr
    assert json.loads(beside.stdout)["hooks"] == {"rx": "tc", "tx": "tc"}
    assert pair.probe_programs() == [HookProgram("xdp", theirs, "xdp_empty")]

    forced = pair.run(pair.probe_ns, sys.executable, PYZ, "-i", pair.probe_if, "--hook", "xdp", "--count", "1",
                      "--interval", "0", "--force", "--json", check=False)
    assert forced.returncode == 0, forced.stderr
    assert "replaced XDP program id %d" % theirs in forced.stderr
    assert json.loads(forced.stdout)["hooks"] == {"rx": "xdp", "tx": "tc"}
    assert pair.probe_programs() == []


def test_second_probe_is_refused_and_force_takes_over(pair):
    """Another process's XDP bpf_link is refused too; --force detaches it."""
    rx_at_xdp = ["-i", pair.probe_if, "--hook", "xdp", "--direction", "rx"]
    with ProbeRun(pair, *rx_at_xdp, "--interval", "60") as first:
        ours = first.wait_attached().programs[pair.probe_if]["xdp"]
        refused = pair.run(pair.probe_ns, sys.executable, PYZ, "--count", "1", "--interval", "0", *rx_at_xdp,
                           check=False)
        assert refused.returncode == 1
        assert "id %d (kubenetprobe_rx)" % ours in refused.stderr
        assert pair.probe_programs() == [HookProgram("xdp", ours, "kubenetprobe_rx")]
        with ProbeRun(pair, *rx_at_xdp, "--force", "--interval", "60") as second:
            second.wait_attached(replacing=ours)
            assert pair.xdp_program() not in (None, ours)
            assert [p.hook for p in pair.probe_programs()] == ["xdp"]
            pair.ping(2)
            settle()
            final = second.stop()[pair.probe_if]
            assert final["rx"]["l4"]["icmp"]["packets"] == 2
            assert "tx" not in final and final["hooks"] == {"rx": "xdp"}
        assert pair.probe_programs() == []


def test_two_interfaces_count_separately():
    """Each interface has its own counters, both ways."""
    with VethPair() as a, VethPair() as b:
        # Move b's probe end into a's namespace under another name, so one probe sees both.
        b.run(b.probe_ns, "ip", "link", "set", b.probe_if, "name", "knp2", "netns", a.probe_ns)
        a.run(a.probe_ns, "ip", "link", "set", "knp2", "up")
        with ProbeRun(a, "-i", a.probe_if, "-i", "knp2", "--interval", "60") as probe:
            probe.wait_attached()
            frame = a.frame(ETH_LLDP, bytes(50))
            a.send_frames([frame] * 3)
            b.send_frames([frame] * 5)
            a.send_frames([frame] * 2, outgoing=True)
            a.send_frames([frame] * 4, outgoing=True, ifname="knp2")
            settle()
            finals = probe.stop()
        assert finals[a.probe_if]["rx"]["l3"]["other"] == {"packets": 3, "bytes": 3 * len(frame)}
        assert finals["knp2"]["rx"]["l3"]["other"] == {"packets": 5, "bytes": 5 * len(frame)}
        assert finals[a.probe_if]["tx"]["l3"]["other"] == {"packets": 2, "bytes": 2 * len(frame)}
        assert finals["knp2"]["tx"]["l3"]["other"] == {"packets": 4, "bytes": 4 * len(frame)}
        assert finals[a.probe_if]["tx"]["packets"] == 2 and finals["knp2"]["tx"]["packets"] == 4
        assert a.probe_programs() == [] and a.probe_programs("knp2") == []


API_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from probe.monitor import NetworkMonitor
with NetworkMonitor(loader=sys.argv[3]) as monitor:
    attachment = monitor.attach(sys.argv[2], mode="generic")
    print(monitor.engine.name, *["%s:%s:%s" % (d, h.hook, h.mode) for d, h in sorted(attachment.hooks.items())],
          flush=True)
    sys.stdin.readline()  # the test sends its frames now
    print(json.dumps(monitor.packet_stats()), flush=True)
"""


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_python_api(pair, loader):
    """NetworkMonitor as a script uses it: attach (mode generic: rx at XDP, tx at TC), packet_stats() as plain
    data, detach on leaving."""
    script = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, sys.executable, "-c", API_SCRIPT,
                               ROOT, pair.probe_if, loader],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert script.stdout.readline().split() == [loader, "rx:xdp:generic", "tx:tc:None"]
        frame = pair.frame(ETH_ARP, bytes(28))
        pair.send_frames([frame] * 4)
        back = pair.frame(ETH_ARP, bytes(28), outgoing=True)
        pair.send_frames([back] * 3, outgoing=True)
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
    assert stats[pair.probe_if]["tx"]["l3"]["arp"] == {"packets": 3, "bytes": 3 * len(back)}
    assert stats[pair.probe_if]["tx"]["packets"] == 3
    assert pair.probe_programs() == []


def test_closed_pipe_ends_quietly(pair):
    """`kubenetprobe | head -2`: the probe stops without a traceback and detaches."""
    result = pair.run(pair.probe_ns, "sh", "-c", '"$@" | head -n 2', "sh", sys.executable, PYZ,
                      "-i", pair.probe_if, "--interval", "0.01", check=False)
    assert len(result.stdout.splitlines()) == 2
    assert result.stdout.startswith("time interface direction hook packets bytes pps bps ")
    assert result.stdout.splitlines()[1].split()[1:4] == [pair.probe_if, "rx", "tc"]
    assert result.stderr == ""
    assert pair.probe_programs() == []
