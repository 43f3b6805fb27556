"""Following interfaces as they come and go (-i PATTERN, --all, --exclude): the probe in a namespace of the test's
own attaches to every interface that matches, at start and as it appears, counts it exactly while it lives,
gives it one final report when it goes (deleted, or moved to another namespace) and leaves nothing behind: no
program on a hook, no link or slot held for it, no fd or memory kept across a thousand veths made and deleted."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import frames
from conftest import PYZ
from frames import ETH_IP, ETH_IPV6, ETH_LLDP, TCP, UDP
from netns import settle, sh
from probe import layout, stats
from probe.attach import tc
from probe.attach.common import program_name
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_GET_FD_BY_ID
from probe.bpf.objects import Map
from probe.errors import ProbeError
from probe.net import interfaces
from probe.net import link as netlink
from traffic import classes, inside, tally, totals

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built_pyz")]

OWNER = layout.OWNER
VETH_HOOKS = {"ingress", "egress"}  # where the probe counts on a veth: rx at TC ingress, tx at TC egress
ATTACH_WITHIN = 1.0  # seconds from an interface's creation to the probe's programs on its hooks
HOT_PLUGGED = 50
SCALE = 500
FD_SLACK = 2
RSS_SLACK = 2 << 20

# Sends frames out of interfaces: each argument is IFNAME=HEX, one send each, in order.
SEND_MANY = """
import socket, sys
socks = {}
for arg in sys.argv[1:]:
    ifname, frame = arg.split("=")
    if ifname not in socks:
        socks[ifname] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        socks[ifname].bind((ifname, 0))
    socks[ifname].send(bytes.fromhex(frame))
"""


class Following(object):
    """kubenetprobe.pyz --json with these arguments in a namespace, a periodic report a minute; its reports are
    read as they come, each with the time it arrived."""

    def __init__(self, ns, *args):
        self.ns = ns
        # `ip netns exec` execs the interpreter: the process is the probe itself.
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PYZ, "--json", "--interval", "60"]
                                     + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True)
        self.reports = []  # (time.monotonic() of arrival, report)
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.reports.append((time.monotonic(), json.loads(line)))

    def finals(self):
        return [r for _, r in list(self.reports) if r["final"]]

    def wait_finals(self, count, timeout=10):
        """Wait until `count` final reports arrived; returns them."""
        deadline = time.monotonic() + timeout
        while len(self.finals()) < count:
            self.check_alive()
            assert time.monotonic() < deadline, "%d final reports of %d after %ss" % (len(self.finals()), count,
                                                                                       timeout)
            time.sleep(0.01)
        return self.finals()

    def check_alive(self):
        if self.proc.poll() is not None:
            self._reader.join(5)
            raise AssertionError("probe exited with %s: %s" % (self.proc.returncode, self.proc.stderr.read()))

    def wait_hooked(self, names, timeout=5, hooks=VETH_HOOKS):
        """Wait until the probe's programs are on these hooks (by default a veth's: TC ingress and egress) of each
        interface named; returns {name: the time.monotonic() when that was first seen}."""
        seen = {}
        deadline = time.monotonic() + timeout
        while True:
            for name, found in probe_hooks(self.ns, [n for n in names if n not in seen]).items():
                if found is not None and set(hooks) <= set(found):
                    seen[name] = time.monotonic()
            if len(seen) == len(names):
                return seen
            self.check_alive()
            assert time.monotonic() < deadline, "not attached after %ss: %s" % (
                timeout, sorted(set(names) - set(seen)))
            time.sleep(0.005)

    def fds(self):
        """{fd: what it is} of the probe: readlink of /proc/PID/fd/*."""
        folder = "/proc/%d/fd" % self.proc.pid
        found = {}
        for fd in os.listdir(folder):
            try:
                found[int(fd)] = os.readlink(os.path.join(folder, fd))
            except FileNotFoundError:
                pass
        return found

    def fdinfo(self, fd):
        with open("/proc/%d/fdinfo/%d" % (self.proc.pid, fd)) as f:
            return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)

    def link_ifindexes(self):
        """The ifindex of each bpf_link the probe holds, sorted (0: a link whose interface is gone)."""
        return sorted(int(self.fdinfo(fd)["ifindex"]) for fd, what in self.fds().items()
                      if what == "anon_inode:bpf_link")

    def slots(self, indexes):
        """{ifindex: slot} the probe's slots map gives each of these ifindexes (0: not followed)."""
        for fd, what in self.fds().items():
            if what != "anon_inode:bpf-map":
                continue
            map_fd = syscall.bpf(BPF_MAP_GET_FD_BY_ID, syscall.GetIdAttr(id=int(self.fdinfo(fd)["map_id"])))
            try:
                found = Map(map_fd)
                if found.name == layout.SLOTS_MAP:
                    return {index: stats.slot_of(found, index) for index in indexes}
            finally:
                os.close(map_fd)
        raise AssertionError("the probe holds no %s map" % layout.SLOTS_MAP)

    def rss(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def stop(self, timeout=10):
        """SIGINT; the probe must exit 0. Returns every report it printed."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout)
        self._reader.join(10)
        self.stderr = self.proc.stderr.read()
        assert self.proc.returncode == 0, self.stderr
        return [r for _, r in self.reports]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def ip_batch(ns, lines):
    """`ip -n NS -batch -`: many ip commands in one process."""
    sh("ip", "-n", ns, "-batch", "-", input="".join(line + "\n" for line in lines))


def probe_hooks(ns, names):
    """{name: {hook: program id}} of the probe's programs on interfaces of a namespace, hooks "xdp", "ingress",
    "egress"; None for an interface that is not there."""
    found = {}
    with inside(ns):
        for name in names:
            try:
                everything = hook_programs(name)
            except ProbeError:
                found[name] = None
                continue
            found[name] = {hook: prog_id for hook, prog_id, owner in everything if owner.startswith(OWNER)}
    return found


def hook_programs(name):
    """Every program on an interface of this thread's namespace, whoever's: [(hook, program id, name)]."""
    index = interfaces.ifindex(name)
    found = [(p.direction, p.prog_id, p.name) for p in tc.programs(name)]
    xdp = netlink.xdp_program(index)
    if xdp is not None:
        found.append(("xdp", xdp[0], program_name(xdp[0])))
    return found


def ifindexes(ns):
    """{name: ifindex} of a namespace's interfaces."""
    return {link["ifname"]: link["ifindex"] for link in json.loads(sh("ip", "-j", "-n", ns, "link", "show").stdout)}


def send(ns, sends):
    """Send frames out of interfaces of a namespace: sends is [(ifname, frame)], in order."""
    if sends:
        sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND_MANY, *["%s=%s" % (i, f.hex()) for i, f in sends])


def some_frames(k):
    """Frames of several classes, different for each k, as (frame, l3, l4): rx through one interface."""
    return [(frames.ether(ETH_LLDP, bytes(46 + k)), "other", None),
            (frames.ether(ETH_IP, frames.ipv4(UDP, frames.udp(b"u" * (10 * k)))), "ipv4", "udp"),
            (frames.ether(ETH_IPV6, frames.ipv6(UDP, frames.udp(b"6" * k))), "ipv6", "udp")] * (1 + k % 3)


def other_frames(k):
    """Other frames for the other direction: [(frame, l3, l4)]."""
    return [(frames.ether(ETH_IP, frames.ipv4(TCP, frames.tcp(b"t" * (3 * k)))), "ipv4", "tcp"),
            (frames.ether(ETH_LLDP, bytes(200 + k)), "other", None)] * (1 + k % 2)


def expected(sent):
    """What a report's direction should say of frames sent, in classes()'s shape, and (packets, bytes)."""
    counted = tally([(len(f), l3, l4) for f, l3, l4 in sent])
    return counted, (len(sent), sum(len(f) for f, _, _ in sent))


def check_counts(report, direction, sent):
    counted, total = expected(sent)
    assert classes(report[direction]) == counted, (report["interface"], direction)
    assert totals(report[direction]) == total, (report["interface"], direction)


@pytest.fixture
def away(pair):
    """A third namespace, to move interfaces into."""
    ns = pair.probe_ns + "-away"
    sh("ip", "netns", "add", ns)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def attached_names(ns, names):
    """The interfaces named that have a program of the probe's on a hook."""
    return sorted(name for name, hooks in probe_hooks(ns, names).items() if hooks)


def wait_unhooked(ns, names, timeout=2):
    """Wait until none of the interfaces named has a program of the probe's (a closed link goes a moment
    later)."""
    deadline = time.monotonic() + timeout
    while attached_names(ns, names):
        assert time.monotonic() < deadline, "the probe's programs stayed on %s" % attached_names(ns, names)
        time.sleep(0.01)


# Choosing interfaces

def test_pattern_and_exclude(pair):
    """-i 'fv*' --exclude 'fvx*': the matching interfaces there at start and those made later, not the others
    (the excluded, other names, lo); a plain -i name beside the pattern is attached too."""
    ns = pair.probe_ns
    ip_batch(ns, ["link add fv0 type veth peer name other0", "link add fvx0 type veth peer name zz0"])
    with Following(ns, "-i", "fv*", "--exclude", "fvx*", "-i", "zz0") as probe:
        probe.wait_hooked(["fv0", "zz0"])
        start = time.monotonic()
        ip_batch(ns, ["link add fv1 type veth peer name other1", "link add fvx1 type veth peer name zz1",
                      "link add name fv2 type bridge"])
        seen = probe.wait_hooked(["fv1", "fv2"])
        assert max(seen.values()) - start < ATTACH_WITHIN
        settle()
        everything = ["fv0", "fv1", "fv2", "fvx0", "fvx1", "other0", "other1", "zz0", "zz1", "lo", pair.probe_if]
        assert attached_names(ns, everything) == ["fv0", "fv1", "fv2", "zz0"]
        finals = probe.stop()
    assert sorted(r["interface"] for r in finals if r["final"]) == ["fv0", "fv1", "fv2", "zz0"]
    wait_unhooked(ns, everything)


def test_all_but_lo(pair):
    """--all: every interface there at start and made later, of any kind, but lo: veths and bridges (rx at TC
    ingress), a tap (rx at native XDP); with --exclude, not those it names."""
    ns = pair.probe_ns
    ip_batch(ns, ["link add name b0 type bridge", "link add name x0 type bridge"])
    with Following(ns, "--all", "--exclude", "x*") as probe:
        probe.wait_hooked([pair.probe_if, "b0"])
        ip_batch(ns, ["link add a1 type veth peer name a2", "link add name b1 type bridge",
                      "tuntap add t0 mode tap", "link add x1 type veth peer name x2"])
        probe.wait_hooked(["a1", "a2", "b1"])
        probe.wait_hooked(["t0"], hooks=("xdp", "egress"))
        settle()
        names = sorted(ifindexes(ns))
        assert names == sorted(["lo", pair.probe_if, "b0", "b1", "a1", "a2", "t0", "x0", "x1", "x2"])
        assert probe_hooks(ns, ["lo", "x0", "x1", "x2"]) == {"lo": {}, "x0": {}, "x1": {}, "x2": {}}
        reports = probe.stop()
    assert sorted(r["interface"] for r in reports if r["final"]) == sorted(["b0", "b1", "a1", "a2", "t0",
                                                                            pair.probe_if])
    wait_unhooked(ns, names)


@pytest.mark.parametrize("args", [["-i", "nosuch0"], ["-i", "fv*", "-i", "nosuch0"]])
def test_missing_name_fails_in_one_line(pair, args):
    """A plain -i NAME that does not exist ends the run at start: exit 1, one line saying so."""
    result = subprocess.run(["ip", "netns", "exec", pair.probe_ns, sys.executable, PYZ, "--json"] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kubenetprobe: error: ")
    assert "nosuch0" in result.stderr


def test_pattern_matching_nothing_yet(pair):
    """A pattern that matches nothing at start is no error: the probe waits, and takes the first that comes."""
    ns = pair.probe_ns
    with Following(ns, "-i", "later*") as probe:
        time.sleep(0.5)
        probe.check_alive()
        start = time.monotonic()
        ip_batch(ns, ["link add later0 type veth peer name other0"])
        assert probe.wait_hooked(["later0"])["later0"] - start < ATTACH_WITHIN
        assert attached_names(ns, [pair.probe_if, "other0"]) == []
        reports = probe.stop()
    assert [r["interface"] for r in reports if r["final"]] == ["later0"]
    assert probe.stderr == ""


# Hot-plug

def test_hot_plug(pair):
    """50 veths made under a probe run with --all (their other ends in the peer's namespace), ten at a time: each
    attached within 1 s of its making; frames sent through a tenth of them, both ways; then all deleted at once:
    each gets exactly one final report, with exactly what was sent, as it goes; the probe keeps no link and no
    slot of theirs; their hooks were never shared with another's counts (every other one counted nothing)."""
    ns, peer_ns = pair.probe_ns, pair.peer_ns
    names = ["fv%d" % i for i in range(HOT_PLUGGED)]
    with Following(ns, "--all") as probe:
        probe.wait_hooked([pair.probe_if])
        latency = {}
        for first in range(0, HOT_PLUGGED, 10):
            batch = names[first:first + 10]
            start = time.monotonic()
            ip_batch(ns, ["link add %s type veth peer name fp%s netns %s" % (n, n[2:], peer_ns) for n in batch])
            latency.update({n: t - start for n, t in probe.wait_hooked(batch).items()})
        assert max(latency.values()) < ATTACH_WITHIN, sorted(latency.items(), key=lambda x: -x[1])[:5]
        print("attached within %.0f ms of the making of their batch of 10" % (1000 * max(latency.values())))
        index = ifindexes(ns)
        ip_batch(ns, ["link set %s up" % n for n in names])
        ip_batch(peer_ns, ["link set fp%s up" % n[2:] for n in names])
        busy = names[::5]
        sh("ip", "netns", "exec", ns, "sh", "-c", "for i in %s; do ethtool -K $i tso off gso off; done" %
           " ".join(busy))
        rx = {n: some_frames(k) for k, n in enumerate(busy)}
        tx = {n: other_frames(k) for k, n in enumerate(busy)}
        send(peer_ns, [("fp" + n[2:], f) for n in busy for f, _, _ in rx[n]])
        send(ns, [(n, f) for n in busy for f, _, _ in tx[n]])
        settle()
        before = len(probe.finals())
        assert before == 0
        ip_batch(peer_ns, ["link del fp%s" % n[2:] for n in names])
        probe.wait_finals(HOT_PLUGGED)
        mine = index[pair.probe_if]
        assert probe.link_ifindexes() == [mine, mine]
        followed = probe.slots(index.values())
        assert {i for i, slot in followed.items() if slot} == {mine}, followed
        reports = probe.stop()
    finals = [r for r in reports if r["final"] and r["interface"] != pair.probe_if]
    assert sorted(r["ifindex"] for r in finals) == sorted(index[n] for n in names), "one final report each"
    for report in finals:
        name = report["interface"]
        assert report["ifindex"] == index[name]
        check_counts(report, "rx", rx.get(name, []))
        check_counts(report, "tx", tx.get(name, []))
    assert [r["interface"] for r in reports if r["final"] and r["interface"] == pair.probe_if] == [pair.probe_if]


def test_rename_and_move(pair, away):
    """Under -i 'fv*': an interface renamed keeps its counters under its new name (same ifindex), an interface
    moved to another namespace gets its final report there and then, and keeps no program of the probe's; one
    moved in from there is attached."""
    ns, peer_ns = pair.probe_ns, pair.peer_ns
    with Following(ns, "-i", "fv*") as probe:
        ip_batch(ns, ["link add fv1 type veth peer name fp1 netns %s" % peer_ns,
                      "link add fv2 type veth peer name fp2 netns %s" % peer_ns, "link set fv1 up",
                      "link set fv2 up"])
        ip_batch(peer_ns, ["link set fp1 up", "link set fp2 up"])
        probe.wait_hooked(["fv1", "fv2"])
        index = ifindexes(ns)
        sh("ip", "netns", "exec", ns, "sh", "-c", "for i in fv1 fv2; do ethtool -K $i tso off gso off; done")
        rx1, tx1, rx2 = some_frames(1), other_frames(1), some_frames(2)
        send(peer_ns, [("fp1", f) for f, _, _ in rx1] + [("fp2", f) for f, _, _ in rx2])
        send(ns, [("fv1", f) for f, _, _ in tx1])
        settle()
        ip_batch(ns, ["link set fv1 down", "link set fv1 name fvr1", "link set fvr1 up"])
        more_rx, more_tx = some_frames(4), other_frames(4)
        send(peer_ns, [("fp1", f) for f, _, _ in more_rx])
        send(ns, [("fvr1", f) for f, _, _ in more_tx])
        settle()
        assert probe.finals() == []
        moved = time.monotonic()
        ip_batch(ns, ["link set fv2 netns %s" % away])
        [final2] = probe.wait_finals(1, timeout=ATTACH_WITHIN)
        assert final2["interface"] == "fv2" and final2["ifindex"] == index["fv2"]
        check_counts(final2, "rx", rx2)
        check_counts(final2, "tx", [])
        deadline = moved + ATTACH_WITHIN
        while True:
            with inside(away):
                left = hook_programs("fv2")
            if not left:
                break
            assert time.monotonic() < deadline, "moved away with the probe's programs: %s" % left
            time.sleep(0.01)
        assert probe.link_ifindexes() == [index["fv1"]] * 2
        ip_batch(ns, ["link del fvr1"])
        probe.wait_finals(2)
        assert probe.link_ifindexes() == []
        assert probe.slots([index["fv1"], index["fv2"]]) == {index["fv1"]: 0, index["fv2"]: 0}
        ip_batch(away, ["link add fv9 type veth peer name other9", "link set fv9 netns %s" % ns])
        probe.wait_hooked(["fv9"])
        reports = probe.stop()
    finals = [r for r in reports if r["final"]]
    assert [r["interface"] for r in finals] == ["fv2", "fvr1", "fv9"]
    final1 = finals[1]
    assert final1["ifindex"] == index["fv1"]
    check_counts(final1, "rx", rx1 + more_rx)
    check_counts(final1, "tx", tx1 + more_tx)


def test_names_change_while_the_probe_is_busy(pair):
    """Events that pile up while the probe cannot read them (stopped): an interface deleted and a new one made
    under its name, one made and renamed, one made and deleted again. The new one under the old name is attached
    (the old one reported once), the renamed one under its new name; the short-lived one neither reported nor
    complained of."""
    ns = pair.probe_ns
    with Following(ns, "-i", "fv*") as probe:
        ip_batch(ns, ["link add fv1 type veth peer name other1"])
        probe.wait_hooked(["fv1"])
        old = ifindexes(ns)["fv1"]
        probe.proc.send_signal(signal.SIGSTOP)
        try:
            ip_batch(ns, ["link del fv1", "link add fv1 type veth peer name other1",
                          "link add fv2 type veth peer name other2", "link set fv2 name fv3",
                          "link add fv4 type veth peer name other4", "link del fv4"])
        finally:
            probe.proc.send_signal(signal.SIGCONT)
        start = time.monotonic()
        seen = probe.wait_hooked(["fv1", "fv3"])
        assert max(seen.values()) - start < ATTACH_WITHIN
        index = ifindexes(ns)
        assert index["fv1"] != old
        assert [(r["interface"], r["ifindex"]) for r in probe.wait_finals(1)] == [("fv1", old)]
        reports = probe.stop()
    assert sorted((r["interface"], r["ifindex"]) for r in reports if r["final"]) == sorted(
        [("fv1", old), ("fv1", index["fv1"]), ("fv3", index["fv3"])])
    assert probe.stderr == ""


def test_lost_events_resync(pair):
    """More events than the probe's socket holds arrive while it is stopped (the kernel drops the rest, and says
    so: ENOBUFS): the probe takes a fresh listing and catches up with what it missed, an interface deleted
    (reported once), one made (attached), one renamed (followed under its new name, counters kept)."""
    ns = pair.probe_ns
    with Following(ns, "-i", "fv*") as probe:
        ip_batch(ns, ["link add fv1 type veth peer name other1", "link add fv2 type veth peer name other2"])
        probe.wait_hooked(["fv1", "fv2"])
        index = ifindexes(ns)
        sh("ip", "netns", "exec", ns, "ethtool", "-K", "fv2", "tso", "off", "gso", "off")
        ip_batch(ns, ["link set fv2 up", "link set other2 up"])
        tx = other_frames(3)
        send(ns, [("fv2", f) for f, _, _ in tx])
        probe.proc.send_signal(signal.SIGSTOP)
        try:
            # ~2.3 KB an event: 20,000 overrun the probe's 16 MiB of socket buffer many times over.
            ip_batch(ns, ["link del fv1"] + ["link set other2 mtu %d" % (1400 + i % 2) for i in range(20000)] +
                     ["link add fv3 type veth peer name other3", "link set fv2 down", "link set fv2 name fvr2"])
        finally:
            probe.proc.send_signal(signal.SIGCONT)
        probe.wait_hooked(["fv3", "fvr2"])
        index.update(ifindexes(ns))
        assert [(r["interface"], r["ifindex"]) for r in probe.wait_finals(1)] == [("fv1", index["fv1"])]
        assert sorted(probe.link_ifindexes()) == sorted([index["fv3"], index["fv2"]] * 2)
        reports = probe.stop()
    finals = {r["interface"]: r for r in reports if r["final"]}
    assert sorted(finals) == ["fv1", "fv3", "fvr2"] and len([r for r in reports if r["final"]]) == 3
    assert finals["fvr2"]["ifindex"] == index["fv2"]
    check_counts(finals["fvr2"], "tx", tx)
    assert probe.stderr == ""


# Scale

def test_scale(pair):
    """500 veth pairs there at start (their other ends in the peer's namespace) under --all: all attached in both
    directions, each counted on its own; frames through every 25th, both ways, counted exactly while all the rest
    count nothing; one final report each at exit, and the kernel holds no program of the probe's after it."""
    ns, peer_ns = pair.probe_ns, pair.peer_ns
    names = ["sv%d" % i for i in range(SCALE)]
    ip_batch(ns, ["link add %s type veth peer name sp%s netns %s" % (n, n[2:], peer_ns) for n in names])
    ip_batch(ns, ["link set %s up" % n for n in names])
    ip_batch(peer_ns, ["link set sp%s up" % n[2:] for n in names])
    busy = names[::25]
    rx = {n: some_frames(k) for k, n in enumerate(busy)}
    tx = {n: other_frames(k) for k, n in enumerate(busy)}
    with Following(ns, "--all") as probe:
        wait_links(probe, 2 * (SCALE + 1), timeout=120)  # a TCX link per direction, for the pair's end too
        send(peer_ns, [("sp" + n[2:], f) for n in busy for f, _, _ in rx[n]])
        send(ns, [(n, f) for n in busy for f, _, _ in tx[n]])
        settle()
        reports = probe.stop(timeout=120)
    finals = {r["interface"]: r for r in reports if r["final"]}
    assert sorted(finals) == sorted(names + [pair.probe_if])
    for name in names:
        check_counts(finals[name], "rx", rx.get(name, []))
        check_counts(finals[name], "tx", tx.get(name, []))
    assert attached_names(ns, names[::10]) == []


# No growth

@pytest.mark.parametrize("method,cycles", [("link", 200), ("netlink", 1000)])
def test_no_growth(pair, method, cycles):
    """A veth pair made, both ends attached, deleted, both ends released, one pair after the other: the probe's fds
    and memory are what they were (after a warm-up), and it holds no link or slot of any of them. 1,000 pairs with
    cls_bpf filters (--attach netlink); 200 with TCX links, the default, whose every attach and detach waits for an
    RCU grace period in the kernel (~135 ms a pair here, against ~30 ms with filters)."""
    ns = pair.probe_ns
    with Following(ns, "-i", "fc*", "--attach", method) as probe:
        def cycle(i):
            ends = ["fca%d" % i, "fcb%d" % i]
            sh("ip", "-n", ns, "link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
            probe.wait_hooked(ends)
            finals = len(probe.finals())
            sh("ip", "-n", ns, "link", "del", ends[0])
            probe.wait_finals(finals + 2)
            wait_links(probe, 0)

        warmup = 20
        for i in range(warmup):
            cycle(i)
        fds, rss = len(probe.fds()), probe.rss()
        start = time.monotonic()
        for i in range(warmup, warmup + cycles):
            cycle(i)
        took = time.monotonic() - start
        fds_after, rss_after = len(probe.fds()), probe.rss()
        assert abs(fds_after - fds) <= FD_SLACK, (fds, fds_after, probe.fds())
        assert rss_after - rss <= RSS_SLACK, (rss, rss_after)
        gone = [r["ifindex"] for r in probe.finals()]
        assert set(probe.slots(gone).values()) == {0}
        reports = probe.stop()
    finals = [r for r in reports if r["final"]]
    assert len(finals) == 2 * (warmup + cycles) == len({r["ifindex"] for r in finals})
    assert all(totals(r["rx"]) == totals(r["tx"]) == (0, 0) for r in finals)
    print("%s: %d cycles in %.1f s; fds %d -> %d, RSS %d -> %d KB" % (method, cycles, took, fds, fds_after,
                                                                     rss >> 10, rss_after >> 10))


def wait_links(probe, count, timeout=5):
    """Wait until the probe holds `count` bpf_links."""
    deadline = time.monotonic() + timeout
    while True:
        links = [what for what in probe.fds().values() if what == "anon_inode:bpf_link"]
        if len(links) == count:
            return
        probe.check_alive()
        assert time.monotonic() < deadline, "the probe holds %d links, not %d" % (len(links), count)
        time.sleep(0.002)
