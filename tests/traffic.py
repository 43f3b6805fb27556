"""Traffic through both of the probe's hooks on a veth pair (netns.VethPair), and what else sees it.

rx is what the peer's end sends to the probe's end, tx what the probe's end sends to the peer's. Here: frames of
every class from either end, a sniffer on the peer's end that counts both directions, blasts that keep one
direction busy, a tap, the kernel's counters of an interface and of its namespace's IP and TCP stacks, the
programs on an interface's TC and XDP hooks, other tools' programs there, and the probe itself run until stopped.

Not a test module: tests/test_directions.py uses it.
"""
import contextlib
import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import time

import frames
from conftest import PYZ, tool
from netns import settle, sh
from probe.attach import tc
from probe.attach.common import program_name
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_GET_FD_BY_ID
from probe.bpf.objects import Map

OWNER = "kubenetprobe"  # the prefix of the probe's program names
DIRECTIONS = ("rx", "tx")
TC_HOOK = {"rx": "ingress", "tx": "egress"}
ETH_HLEN = 14
# A TCP segment's headers on these pairs: Ethernet, IPv4 and TCP with the timestamp option (20 + 12 bytes).
TCP_HEADERS = ETH_HLEN + 20 + 32
CLONE_NEWNET = 0x40000000
COUNTER = struct.Struct("=QQ")  # struct counter of tests/bpf/count.bpf.c

# Counts what crosses an interface, each way, until SIGTERM: {"sent": [packets, bytes], "received": [...],
# "drops": n}. A VLAN tag the stack took off a received frame (PACKET_AUXDATA says so) was on the wire: its 4 bytes
# count; tp_len is the frame's length however little of it is read.
SNIFF = """
import json, signal, socket, struct, sys
SOL_PACKET, PACKET_AUXDATA, PACKET_STATISTICS, TP_STATUS_VLAN_VALID = 263, 8, 6, 0x10
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: room for every frame of a burst
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
s.bind((sys.argv[1], 0))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
counts = {"sent": [0, 0], "received": [0, 0]}
print("ready", flush=True)
try:
    while True:
        data, ancillary, _, addr = s.recvmsg(256, 256)
        status, size = struct.unpack_from("II", ancillary[0][2])
        if status & TP_STATUS_VLAN_VALID:
            size += 4
        counted = counts["sent" if addr[2] == socket.PACKET_OUTGOING else "received"]
        counted[0] += 1
        counted[1] += size
finally:
    counts["drops"] = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
    print(json.dumps(counts), flush=True)
"""

# Sends one frame as fast as it can until SIGTERM, then says how many sends the kernel took and how many it
# refused: a veth whose peer's backlog is full drops the frame after the egress hook and send() says ENOBUFS.
BLAST = """
import errno, signal, socket, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
send = s.send
sent = refused = 0
print("sending", flush=True)
while not stop:
    for _ in range(1000):
        try:
            send(frame)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            refused += 1
    sent += 1000
print(sent - refused, refused, flush=True)
"""

# Holds a TCX link per hook of an interface for another tool, each a program of its own (so a counter per hook),
# until killed: says {"ingress": program id, "egress": program id} once attached.
TCX_HOLDER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from probe.attach import tc
from probe.bpf.libbpf import LibbpfEngine
engine = LibbpfEngine()
objects = {d: engine.load_file(sys.argv[2]) for d in ("ingress", "egress")}
held = {d: tc.attach_tc(o.program(sys.argv[3]).fd, sys.argv[4], d, sys.argv[3], method="link")
        for d, o in objects.items()}
print(json.dumps({d: h.program_id for d, h in held.items()}), flush=True)
time.sleep(600)
"""


def crossing(pair, direction):
    """(namespace, interface, source MAC, destination MAC) of frames through the probe's `direction`: the peer's
    end sends rx, the probe's own end tx."""
    if direction == "rx":
        return pair.peer_ns, pair.peer_if, pair.peer_mac, pair.probe_mac
    return pair.probe_ns, pair.probe_if, pair.probe_mac, pair.peer_mac


def ether(pair, direction, ethertype, payload=b"", tags=()):
    """An Ethernet frame through the probe's `direction` hook."""
    _, _, src, dst = crossing(pair, direction)
    return frames.ether(ethertype, payload, tags, dst=dst, src=src)


def arp_request(pair, direction):
    """An ARP request for an address nobody on the pair has: no reply comes back."""
    _, _, src, _ = crossing(pair, direction)
    body = struct.pack("!HHBBH6s4s6s4s", 1, frames.ETH_IP, 6, 4, 1, bytes.fromhex(src.replace(":", "")),
                       bytes([198, 18, 0, 98]), bytes(6), bytes([198, 18, 0, 99]))
    return ether(pair, direction, frames.ETH_ARP, body)


def class_frames(pair, direction):
    """A frame of each class the probe tells apart, through one hook: [(frame, l3, l4 or None)].

    Nothing answers them: frames.ipv4 leaves the header checksum 0, so the far end's stack drops every IPv4
    frame (after the TC hooks counted it), IPv6 is off on both ends, and the ARP request asks for nobody.
    """
    def frame(ethertype, payload, tags=()):
        return ether(pair, direction, ethertype, payload, tags)
    return [
        (arp_request(pair, direction), "arp", None),
        (frame(frames.ETH_IP, frames.ipv4(frames.UDP, frames.udp(b"u" * 100))), "ipv4", "udp"),
        (frame(frames.ETH_IP, frames.ipv4(frames.TCP, frames.tcp(b"t" * 300))), "ipv4", "tcp"),
        (frame(frames.ETH_IP, frames.ipv4(frames.GRE, bytes(24))), "ipv4", "other"),
        (frame(frames.ETH_IPV6, frames.ipv6(frames.UDP, frames.udp(b"6" * 40))), "ipv6", "udp"),
        (frame(frames.ETH_IPV6, frames.ipv6(frames.ICMPV6, frames.icmp(128))), "ipv6", "icmpv6"),
        (frame(frames.ETH_LLDP, bytes(46)), "other", None),
        # a VLAN tag: at TC ingress the stack has taken it off into skb->vlan_tci; on the wire it was there
        (frame(frames.ETH_IP, frames.ipv4(frames.ICMP, frames.icmp()), tags=(frames.VLAN_Q,)), "ipv4", "icmp"),
        (frame(frames.ETH_IP, frames.ipv4(frames.ICMP, frames.icmp())[:12]), "ipv4", "other"),  # cut short
    ]


def send_out(pair, ns, ifname, frames_):
    """Send raw frames out of an interface."""
    pair.send_from(ns, ifname, frames_)


def send_frames(pair, direction, frames_):
    """Send raw frames through the probe's `direction` hook, from the end that sends that way."""
    ns, ifname, _, _ = crossing(pair, direction)
    send_out(pair, ns, ifname, frames_)


def ping(pair, direction, count, size=56):
    """`ping` whose requests cross the probe's `direction` hook (and replies the other): each way, `count`
    frames of 14 + 20 + 8 + size bytes."""
    ns, _, _, _ = crossing(pair, direction)
    target = pair.probe_ip if direction == "rx" else pair.peer_ip
    pair.run(ns, "ping", "-q", "-c", str(count), "-i", "0.01", "-s", str(size), "-W", "2", target)


def ping_frame_size(size=56):
    """The size of the frames of ping -s `size`."""
    return ETH_HLEN + 20 + 8 + size


def offloads(pair, ns, ifname, **features):
    """`ethtool -K` in a namespace: offloads(pair, ns, ifname, tso="off", gso="off", gro="on")."""
    args = []
    for name, value in sorted(features.items()):
        args += [name, value]
    pair.run(ns, tool("ethtool"), "-K", ifname, *args)


def raw_sends_from_the_probe_side(pair):
    """An AF_PACKET sender into a veth needs TSO and GSO off for its frames to cross as they were sent."""
    offloads(pair, pair.probe_ns, pair.probe_if, tso="off", gso="off")


def link_stats(pair, ns, ifname):
    """The kernel's counters of an interface: {"rx": {"packets", "bytes", "dropped", ...}, "tx": {...}}."""
    return json.loads(sh("ip", "-j", "-s", "-n", ns, "link", "show", ifname).stdout)[0]["stats64"]


def delta(after, before):
    """after - before of two link_stats(), field by field."""
    return {d: {k: after[d][k] - before[d][k] for k in after[d]} for d in after}


def stack_counters(pair, ns):
    """Every counter of a namespace's IP and TCP stacks, as nstat reads them (absolute values, no history file
    written): {"TcpOutSegs": n, "IpExtInOctets": n, ...}."""
    counters = {}
    for line in pair.run(ns, "nstat", "-saz").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            counters[fields[0]] = int(fields[1])
    assert "TcpOutSegs" in counters, counters
    return counters


def stack_delta(after, before):
    """after - before of two stack_counters()."""
    return {name: value - before.get(name, 0) for name, value in after.items()}


def segments_sent(stack):
    """TCP segments a namespace sent: TcpOutSegs leaves out retransmissions, which TcpRetransSegs counts.
    Both count a GSO skb as its segments (tcp_skb_pcount)."""
    return stack["TcpOutSegs"] + stack["TcpRetransSegs"]


def segments_received(stack):
    """IP packets a namespace received, a GRO or GSO skb as its segments: ip_rcv counts each skb's gso_segs into
    one of the four ECN counters (TcpInSegs, by contrast, counts the skbs TCP gets)."""
    return sum(stack[name] for name in ("IpExtInNoECTPkts", "IpExtInECT1Pkts", "IpExtInECT0Pkts", "IpExtInCEPkts"))


def wire_bytes(segments, skbs, ip_octets):
    """The bytes on the wire of `segments` TCP frames that IP handled as `skbs` skbs of `ip_octets` bytes in all
    (IpExtOutOctets and IpOutRequests for sent ones, IpExtInOctets and IpInReceives for received ones): every
    frame adds its Ethernet header, and every segment but an skb's first repeats the IP and TCP headers as well
    (TCP_HEADERS). A SYN, with its longer options, is never more than one segment."""
    return ip_octets + (segments - skbs) * TCP_HEADERS + skbs * ETH_HLEN


def snapshot(pair):
    """The kernel's counters of both ends, each its interface's ("link") and its namespace's stack's ("stack"):
    {"probe": {"link": ..., "stack": ...}, "peer": {...}}."""
    ends = {"probe": (pair.probe_ns, pair.probe_if), "peer": (pair.peer_ns, pair.peer_if)}
    return {end: {"link": link_stats(pair, ns, ifname), "stack": stack_counters(pair, ns)}
            for end, (ns, ifname) in ends.items()}


def since(pair, then):
    """What the counters of snapshot() counted since `then`, in the same shape."""
    now = snapshot(pair)
    return {end: {"link": delta(now[end]["link"], then[end]["link"]),
                  "stack": stack_delta(now[end]["stack"], then[end]["stack"])} for end in now}


def tally(items):
    """Per-class totals of (length, l3, l4 or None) items, in a report's shape:
    {"l3": {class: (packets, bytes)}, "l4": {...}}, every class of the report present."""
    out = {"l3": {c: [0, 0] for c in ("ipv4", "ipv6", "arp", "other")},
           "l4": {c: [0, 0] for c in ("tcp", "udp", "icmp", "icmpv6", "other")}}
    for length, l3, l4 in items:
        for level, name in (("l3", l3), ("l4", l4)):
            if name is not None:
                out[level][name][0] += 1
                out[level][name][1] += length
    return {level: {name: tuple(v) for name, v in classes.items()} for level, classes in out.items()}


def classes(counts):
    """A report's direction ("rx" or "tx" of a report) in tally()'s shape."""
    return {level: {name: (c["packets"], c["bytes"]) for name, c in counts[level].items()} for level in ("l3", "l4")}


def totals(counts):
    """(packets, bytes) of a report's direction."""
    return counts["packets"], counts["bytes"]


class Sniffer(object):
    """A packet socket on an interface counting both ways from its own point of view: `sent` and `received`."""

    def __init__(self, ns, ifname):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SNIFF, ifname],
                                     stdout=subprocess.PIPE, universal_newlines=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        """{"sent": (packets, bytes), "received": (packets, bytes)}, once frames in flight arrived; fails if the
        socket dropped any."""
        settle()
        self.proc.terminate()
        counts = json.loads(self.proc.communicate(timeout=10)[0])
        assert counts["drops"] == 0, "the sniffer lost %d frames" % counts["drops"]
        return {"sent": tuple(counts["sent"]), "received": tuple(counts["received"])}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def sniff_peer(pair):
    """A Sniffer on the peer's end: what it `sent` crossed the probe's rx, what it `received` the probe's tx."""
    return Sniffer(pair.peer_ns, pair.peer_if)


class Blast(object):
    """One end sending a frame through the probe's `direction` hook as fast as it can, for the `with`. After it:
    `sent`, the sends the kernel took, and `refused`, those it dropped after the egress hook (ENOBUFS)."""

    def __init__(self, pair, direction, frame):
        self.pair, self.direction, self.frame = pair, direction, frame
        ns, ifname, _, _ = crossing(pair, direction)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", BLAST, ifname, frame.hex()],
                                     stdout=subprocess.PIPE, universal_newlines=True)
        self.sent = self.refused = None

    def _crossed(self):
        return link_stats(self.pair, self.pair.probe_ns, self.pair.probe_if)[self.direction]["packets"]

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "sending"
        # Only once frames cross: a probe stopped before the first one would have counted none.
        start, deadline = self._crossed(), time.monotonic() + 10
        while self._crossed() < start + 1000:
            assert time.monotonic() < deadline, "the %s frames do not cross" % self.direction
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.sent, self.refused = map(int, self.proc.communicate(timeout=30)[0].split())
        settle()


# Makes a tap interface and writes into it each frame (hex) read from stdin, saying "written" after each: the
# kernel receives them on the tap. The tap goes when this process does.
TAP = """
import fcntl, os, struct, sys
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TAP | IFF_NO_PI))
print("ready", flush=True)
for line in sys.stdin:
    os.write(fd, bytes.fromhex(line))
    print("written", flush=True)
"""


class Tap(object):
    """A tap interface, up, in a namespace for the `with`: an interface that is no veth and has native XDP. What
    receive() writes into it, the kernel receives on it."""

    def __init__(self, pair, ns, name):
        self.pair, self.ns, self.name = pair, ns, name
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TAP, name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "ready", "cannot make the tap"
        self.pair.run(self.ns, "ip", "link", "set", self.name, "up")
        return self

    def receive(self, frames_):
        """Have the kernel receive these frames on the tap."""
        for frame in frames_:
            self.proc.stdin.write(frame.hex() + "\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "written"

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _setns(fd):
    if syscall.libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


@contextlib.contextmanager
def inside(ns):
    """This thread in network namespace `ns` for the `with`: interface names and ifindexes are that namespace's."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def tc_programs(ns, ifname):
    """What runs on an interface's TC hooks, as probe.attach.tc.programs() lists it: [TcProgram]."""
    with inside(ns):
        return tc.programs(ifname)


def probe_programs(ns, ifname):
    """{hook: program id} of the probe's programs on an interface: "ingress" and "egress" (TC), "xdp"."""
    found = {p.direction: p.prog_id for p in tc_programs(ns, ifname) if p.name.startswith(OWNER)}
    xdp = xdp_program(ns, ifname)
    if xdp is not None and program_name(xdp).startswith(OWNER):
        found["xdp"] = xdp
    return found


def tc_filters(pair, ns, ifname, hook):
    """The cls_bpf filters of one TC hook as the tc tool lists them: [(prio, handle, program id)]."""
    listed = json.loads(pair.run(ns, tool("tc"), "-j", "filter", "show", "dev", ifname, hook).stdout)
    return [(f["pref"], f["options"]["handle"], f["options"]["prog"]["id"]) for f in listed
            if f.get("kind") == "bpf" and "options" in f]


def xdp_program(ns, ifname):
    """The id of the XDP program on an interface, or None."""
    info = json.loads(sh("ip", "-j", "-n", ns, "link", "show", ifname).stdout)[0]
    return (info.get("xdp") or {}).get("prog", {}).get("id")


def counted(prog_id):
    """(packets, bytes) a counting program of tests/bpf/ (count.bpf.c), by its id, counted so far."""
    map_id = json.loads(sh(tool("bpftool"), "-j", "prog", "show", "id", str(prog_id)).stdout)["map_ids"][0]
    fd = syscall.bpf(BPF_MAP_GET_FD_BY_ID, syscall.GetIdAttr(id=map_id))
    try:
        return COUNTER.unpack(Map(fd).lookup(bytes(4)))
    finally:
        os.close(fd)


def add_filter_with_tc(pair, ns, ifname, hook, path):
    """Another tool's cls_bpf filter: tc's own loader puts the program of `path` at priority 1, handle 1 of a
    clsact qdisc (added if missing); returns the program's id."""
    if "clsact" not in pair.run(ns, tool("tc"), "qdisc", "show", "dev", ifname).stdout:
        pair.run(ns, tool("tc"), "qdisc", "add", "dev", ifname, "clsact")
    pair.run(ns, tool("tc"), "filter", "add", "dev", ifname, hook, "prio", "1", "handle", "1", "bpf", "da",
             "obj", str(path), "sec", "tc")
    [(_, _, prog_id)] = [f for f in tc_filters(pair, ns, ifname, hook) if f[:2] == (1, "0x1")]
    return prog_id


@contextlib.contextmanager
def tcx_holder(ns, ifname, path, program, root):
    """Another tool's TCX links on both hooks of an interface, held by a child process for the `with`: yields
    {hook: program id}."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TCX_HOLDER, root, str(path), program,
                             ifname], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        line = proc.stdout.readline()
        assert line, "the TCX holder failed to attach"
        yield json.loads(line)
    finally:
        proc.kill()
        proc.wait()


class Probe(object):
    """kubenetprobe.pyz --json on one interface of a namespace, a report a minute, until stopped."""

    def __init__(self, ns, ifname, *args):
        self.ns, self.ifname = ns, ifname
        cmd = ["ip", "netns", "exec", ns, sys.executable, PYZ, "--json", "-i", ifname, "--interval", "60"]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True)
        self.returncode = self.stderr = None

    def wait_attached(self, hooks=("ingress", "egress"), timeout=10):
        """Wait until the probe's programs are on these hooks of its interface (probe_programs() names them)."""
        deadline = time.monotonic() + timeout
        while not set(hooks) <= set(probe_programs(self.ns, self.ifname)):
            if self.proc.poll() is not None:
                raise AssertionError("probe exited with %s: %s" % (self.proc.returncode, self.proc.stderr.read()))
            assert time.monotonic() < deadline, "the probe did not attach within %ss" % timeout
            time.sleep(0.02)
        return self

    def wait_said(self, words):
        """The next line of the probe's stderr, which must hold `words`."""
        line = self.proc.stderr.readline()
        assert words in line, line
        return line

    def reload(self):
        """SIGHUP: the probe reloads and says so; returns its line."""
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_said("reloaded")

    def stop(self, sig=signal.SIGINT, timeout=10):
        """Signal the probe; returns its final report, after checking it exited 0 and printed one."""
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.returncode, self.stderr = self.proc.returncode, err
        assert self.returncode == 0, err
        finals = [r for r in map(json.loads, out.splitlines()) if r["final"] and r["interface"] == self.ifname]
        assert len(finals) == 1, out
        return finals[0]

    def kill(self):
        """SIGKILL, and wait for it to be gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def wait_gone(ns, ifname, timeout=5):
    """Wait until no program of the probe is on the interface (a closed link goes a moment later)."""
    deadline = time.monotonic() + timeout
    while probe_programs(ns, ifname):
        assert time.monotonic() < deadline, "the probe's programs outlived it: %s" % tc_programs(ns, ifname)
        time.sleep(0.05)
