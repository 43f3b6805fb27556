"""Test hosts: a veth pair between two network namespaces that a test makes and removes, and the probe run there.

The pair is silent: IPv6 is off on both ends and neighbours are static, so the probe's end receives
exactly the frames a test sends from the peer's end and nothing else, and sends only what it answers (ping,
TCP, ICMP errors) and what a test sends out of it.
"""
import collections
import contextlib
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import frames
from conftest import PYZ

_serial = itertools.count()
CLONE_NEWNET = 0x40000000

# A program on one of an interface's hooks: hook "xdp", "ingress" or "egress" (TC), with the program's id and name.
HookProgram = collections.namedtuple("HookProgram", "hook prog_id name")

# Small programs run inside the peer namespace with its Python; each reads its arguments from argv.
SEND_FRAMES = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
"""
SEND_UDP = """
import socket, sys
dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"k" * size, (dst, port))
"""
TCP_SERVER = """
import socket, sys
srv = socket.socket()
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
total = 0
while True:
    data = conn.recv(65536)
    if not data:
        break
    total += len(data)
conn.close()
print(total, flush=True)
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"t" * int(sys.argv[3]))
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
"""
SNIFF_SENT = """
import signal, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: room for every frame of a burst
s.bind((sys.argv[1], 0))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
packets = size = 0
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(65536)
        if addr[2] == socket.PACKET_OUTGOING:
            packets += 1
            size += len(data)
finally:
    _, drops = struct.unpack("II", s.getsockopt(263, 6, 8))  # SOL_PACKET, PACKET_STATISTICS
    print(packets, size, drops, flush=True)
"""


def sh(*cmd, **kwargs):
    """Run a command; fail loudly with its output if it fails."""
    kwargs.setdefault("check", True)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("universal_newlines", True)
    try:
        return subprocess.run(list(cmd), **kwargs)
    except subprocess.CalledProcessError as e:
        raise AssertionError("%s failed: %s%s" % (" ".join(cmd), e.stdout, e.stderr))


class VethPair(object):
    """Namespaces `probe_ns` (interface `probe_if`, 198.18.0.1) and `peer_ns` (`peer_if`, 198.18.0.2)."""

    probe_if, peer_if = "knp0", "knp1"
    probe_ip, peer_ip = "198.18.0.1", "198.18.0.2"

    def __init__(self):
        tag = "knp%d-%d" % (os.getpid(), next(_serial))
        self.probe_ns, self.peer_ns = tag + "-probe", tag + "-peer"

    def __enter__(self):
        sh("ip", "netns", "add", self.probe_ns)
        sh("ip", "netns", "add", self.peer_ns)
        try:
            self._wire()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wire(self):
        sh("ip", "link", "add", self.probe_if, "netns", self.probe_ns, "type", "veth",
           "peer", "name", self.peer_if, "netns", self.peer_ns)
        for ns, ifname, ip in ((self.probe_ns, self.probe_if, self.probe_ip),
                               (self.peer_ns, self.peer_if, self.peer_ip)):
            self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.run(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            self.run(ns, "sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % ifname)
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", ifname)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        # Segment on the peer, so that what it sends is what crosses the wire, frame by frame.
        self.run(self.peer_ns, "ethtool", "-K", self.peer_if, "tso", "off", "gso", "off")
        self.probe_mac = self.mac(self.probe_ns, self.probe_if)
        self.peer_mac = self.mac(self.peer_ns, self.peer_if)
        # Static neighbours: no ARP crosses the pair unless a test sends it.
        sh("ip", "-n", self.probe_ns, "neigh", "replace", self.peer_ip, "lladdr", self.peer_mac,
           "dev", self.probe_if, "nud", "permanent")
        sh("ip", "-n", self.peer_ns, "neigh", "replace", self.probe_ip, "lladdr", self.probe_mac,
           "dev", self.peer_if, "nud", "permanent")

    def __exit__(self, *exc):
        for ns in (self.probe_ns, self.peer_ns):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)

    def run(self, ns, *cmd, **kwargs):
        """Run a command inside one of the namespaces."""
        return sh("ip", "netns", "exec", ns, *cmd, **kwargs)

    def mac(self, ns, ifname):
        return json.loads(sh("ip", "-j", "-n", ns, "link", "show", ifname).stdout)[0]["address"]

    def counters(self, ns, ifname):
        """The kernel's own counters of an interface: rx_packets, rx_bytes, tx_packets, tx_bytes."""
        names = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
        paths = ["/sys/class/net/%s/statistics/%s" % (ifname, n) for n in names]
        values = self.run(ns, "cat", *paths).stdout.split()
        return dict(zip(names, map(int, values)))

    def xdp_program(self):
        """The id of the XDP program on the probe's interface, or None."""
        info = json.loads(sh("ip", "-j", "-n", self.probe_ns, "link", "show", self.probe_if).stdout)[0]
        return (info.get("xdp") or {}).get("prog", {}).get("id")

    @contextlib.contextmanager
    def inside(self):
        """This thread in the probe's namespace for the length of the `with`: interface names, netlink and
        ifindexes are then that namespace's, as they are for a probe running there."""
        from probe.bpf.syscall import libc

        def setns(fd):
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, "setns: %s" % os.strerror(err))
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            inside = os.open("/run/netns/" + self.probe_ns, os.O_RDONLY)
            try:
                setns(inside)
                try:
                    yield self
                finally:
                    setns(home)
            finally:
                os.close(inside)
        finally:
            os.close(home)

    def probe_programs(self, ifname=None):
        """What runs on an interface of the probe's namespace (by default the probe's end), hook by hook in the
        order it runs: [HookProgram], XDP's as `ip link` shows it, TC's (TCX programs, then cls_bpf filters)
        as the kernel lists them."""
        from probe.attach import tc
        ifname = ifname or self.probe_if
        info = json.loads(sh("ip", "-j", "-n", self.probe_ns, "link", "show", ifname).stdout)[0]
        xdp = (info.get("xdp") or {}).get("prog")
        found = [HookProgram("xdp", xdp["id"], xdp.get("name", ""))] if xdp else []
        with self.inside():
            return found + [HookProgram(p.direction, p.prog_id, p.name) for p in tc.programs(ifname)]

    # Traffic from the peer's end towards the probe's (its rx), unless `outgoing` (its tx).

    def frame(self, ethertype, payload=b"", tags=(), outgoing=False):
        """An Ethernet frame from the peer's end to the probe's, or with `outgoing` from the probe's end to the
        peer's (frames.ether with their MACs)."""
        if outgoing:
            return frames.ether(ethertype, payload, tags, dst=self.peer_mac, src=self.probe_mac)
        return frames.ether(ethertype, payload, tags, dst=self.probe_mac, src=self.peer_mac)

    def send_frames(self, frames, outgoing=False, ifname=None):
        """Send raw Ethernet frames (bytes) out of the peer's interface; with `outgoing`, out of the probe's
        (or `ifname` of the probe's namespace), through its TC egress."""
        ns, ifname = (self.probe_ns, ifname or self.probe_if) if outgoing else (self.peer_ns, self.peer_if)
        self.send_from(ns, ifname, frames)

    def send_both_ways(self, frames):
        """Send raw Ethernet frames out of the peer's end, then the same frames out of the probe's: the probe's end
        receives them all and sends them all."""
        self.send_frames(frames)
        self.send_frames(frames, outgoing=True)

    def send_from(self, ns, ifname, frames):
        """Send raw Ethernet frames (bytes) out of interface `ifname` of namespace `ns`, one send each."""
        self.run(ns, sys.executable, "-c", SEND_FRAMES, ifname, *[f.hex() for f in frames])

    def ping(self, count, size=56):
        """`ping` the probe's address; each request is one 14+20+8+size byte frame."""
        self.run(self.peer_ns, "ping", "-q", "-c", str(count), "-i", "0.01", "-s", str(size), "-W", "2",
                 self.probe_ip)

    def send_udp(self, count, size, port=9):
        """Send UDP datagrams of `size` bytes to the probe's address."""
        self.run(self.peer_ns, sys.executable, "-c", SEND_UDP, self.probe_ip, str(port), str(count), str(size))

    def sniff_sent(self, outgoing=False):
        """Start counting the frames the peer sends (with `outgoing`, the probe's end); call the result to stop
        and get (packets, bytes)."""
        return sniff_sent(*((self.probe_ns, self.probe_if) if outgoing else (self.peer_ns, self.peer_if)))

    def send_tcp(self, nbytes, port=5001):
        """Carry `nbytes` over one TCP connection from the peer to a listener at the probe's end."""
        server = subprocess.Popen(["ip", "netns", "exec", self.probe_ns, sys.executable, "-c", TCP_SERVER,
                                   self.probe_ip, str(port)], stdout=subprocess.PIPE, universal_newlines=True)
        try:
            assert server.stdout.readline().strip() == "listening"
            self.run(self.peer_ns, sys.executable, "-c", TCP_CLIENT, self.probe_ip, str(port), str(nbytes))
            assert int(server.stdout.readline()) == nbytes
        finally:
            server.kill()
            server.wait()


def raw_frames(pair):
    """Frames of the classes ping and sockets do not make: (frame, l3, l4 or None)."""
    return [
        (pair.frame(frames.ETH_ARP, frames.arp()), "arp", None),
        (pair.frame(frames.ETH_IPV6, frames.ipv6(frames.UDP, frames.udp())), "ipv6", "udp"),
        (pair.frame(frames.ETH_LLDP, bytes(30)), "other", None),
        (pair.frame(frames.ETH_IP, frames.ipv4(frames.ICMP, frames.icmp()), tags=(frames.VLAN_Q,)), "ipv4", "icmp"),
        # IPv4 header cut short
        (pair.frame(frames.ETH_IP, frames.ipv4(frames.ICMP, frames.icmp())[:12]), "ipv4", "other"),
    ]


def frame_mix(pair):
    """Frames of every class, each sent a different number of times: [(frame, l3, l4 or None, times)]."""
    mix = raw_frames(pair) + [(pair.frame(frames.ETH_IP, frames.ipv4(frames.TCP, frames.tcp())), "ipv4", "tcp"),
                              (pair.frame(frames.ETH_IPV6, frames.ipv6(frames.ICMPV6, frames.icmp(128))), "ipv6",
                               "icmpv6")]
    return [(frame, l3, l4, times) for (frame, l3, l4), times in zip(mix, (3, 1, 4, 6, 5, 9, 2))]


def expected_counts(mix, level, classes):
    """{class: (packets, bytes)} that a mix of frames should give at one level ("l3" or "l4")."""
    counts = {c: (0, 0) for c in classes}
    for frame, l3, l4, times in mix:
        cls = l3 if level == "l3" else l4
        if cls:
            counts[cls] = (counts[cls][0] + times, counts[cls][1] + times * len(frame))
    return counts


def interleaved(mix):
    """The frames of a mix in the order to send them: interleaved, so that no class arrives as one burst."""
    return [f for rnd in range(max(t for *_, t in mix)) for f, _, _, t in mix if rnd < t]


def assert_counted(counted, mix):
    """One direction of a report ("rx" or "tx" of it) counted a mix of frames exactly, class by class."""
    assert {k: (v["packets"], v["bytes"]) for k, v in counted["l3"].items()} == \
        expected_counts(mix, "l3", ("ipv4", "ipv6", "arp", "other"))
    assert {k: (v["packets"], v["bytes"]) for k, v in counted["l4"].items()} == \
        expected_counts(mix, "l4", ("tcp", "udp", "icmp", "icmpv6", "other"))
    assert (counted["packets"], counted["bytes"]) == (sum(t for *_, t in mix), sum(len(f) * t for f, _, _, t in mix))


def without_libbpf():
    """A command prefix that runs its command with the system's libbpf hidden (a private mount namespace)."""
    libs = [line.split(" => ")[1] for line in sh("ldconfig", "-p").stdout.splitlines()
            if "libbpf.so." in line and " => " in line]
    assert libs, "libbpf is not installed here: nothing to hide"
    hide = " && ".join("mount --bind /dev/null %s" % lib for lib in libs)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", hide + ' && exec "$@"', "sh"]


# A seccomp filter under which bpf(2) fails with the errno argv[1] and every other call is allowed, then the
# command after it (the filter is inherited across exec).
REFUSE_BPF = """
import ctypes, os, struct, sys
nr = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
# BPF: load the syscall number; bpf(2) -> SECCOMP_RET_ERRNO | errno, else SECCOMP_RET_ALLOW.
insns = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | int(sys.argv[1])), (0x06, 0, 0, 0x7fff0000)]
prog = b"".join(struct.pack("HBBI", *i) for i in insns)
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execv(sys.argv[2], sys.argv[2:])
"""


def refusing_bpf(err, python=sys.executable):
    """A command prefix that runs its command (an absolute path) under a seccomp filter that makes bpf(2) fail
    with `err`, as a kernel without bpf(2) (ENOSYS) or a container runtime's default profile (EPERM) does."""
    return [python, "-c", REFUSE_BPF, str(err)]


def _values(args, *names):
    """The values given to an option (under any of its `names`) in a command line, in order."""
    return [value for name, value in zip(args, args[1:]) if name in names]


def _option(args, name, default):
    """The value of an option in a command line (its last), or `default`."""
    return (_values(args, name) or [default])[-1]


def run_hooks(args):
    """The hooks of a veth where a probe run with these arguments counts: rx at "xdp" (--hook xdp, or --mode
    native or generic) or "ingress" (--hook tc, and auto, as a veth's rx is counted at TC ingress), tx at
    "egress"."""
    direction = _option(args, "--direction", "both")
    xdp = _option(args, "--hook", "auto") == "xdp" or _option(args, "--mode", "auto") != "auto"
    hooks = []
    if direction in ("rx", "both"):
        hooks.append("xdp" if xdp else "ingress")
    if direction in ("tx", "both"):
        hooks.append("egress")
    return hooks


class ProbeRun(object):
    """kubenetprobe.pyz running with --json in the probe's namespace."""

    def __init__(self, pair, *args, python=sys.executable, pyz=PYZ, env=None, wrapper=()):
        """Start it: `wrapper` is a command prefix run inside the namespace, around the interpreter."""
        self._expect(pair, args)
        cmd = ["ip", "netns", "exec", pair.probe_ns] + list(wrapper) + [python, pyz, "--json"] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, env=env)

    def _expect(self, pair, args):
        """What wait_attached() waits for: the interfaces (-i) and hooks of a run with these arguments."""
        self.pair = pair
        self.reports = []
        args = list(args)
        self.interfaces = _values(args, "-i", "--interface") or [pair.probe_if]
        self.hooks = run_hooks(args)
        self.programs = None

    def attached(self, replacing=()):
        """{interface: {hook: program id}} of the probe's programs at the hooks of this run, or None while one is
        missing, or while one of the program ids in `replacing` is still on one of its interfaces."""
        from probe.layout import OWNER
        found = {}
        for ifname in self.interfaces:
            programs = self.pair.probe_programs(ifname)
            if any(p.prog_id in replacing for p in programs):
                return None
            ours = {}
            for p in programs:
                if p.name.startswith(OWNER):
                    ours.setdefault(p.hook, p.prog_id)
            if not all(hook in ours for hook in self.hooks):
                return None
            found[ifname] = {hook: ours[hook] for hook in self.hooks}
        return found

    def wait_attached(self, replacing=None, timeout=10):
        """Wait until the probe's programs are at every hook of this run on every interface it was given; with
        `replacing` (a program id, or several), until none of those ids remains there. Then `programs` holds
        {interface: {hook: program id}} of the probe's programs."""
        if replacing is None:
            replacing = ()
        elif isinstance(replacing, int):
            replacing = (replacing,)
        deadline = time.time() + timeout
        while True:
            self.programs = self.attached(tuple(replacing))
            if self.programs is not None:
                return self
            if self.proc.poll() is not None:
                raise AssertionError("probe exited with %s: %s" % (self.proc.returncode, self.proc.stderr.read()))
            if time.time() > deadline:
                raise AssertionError("probe did not attach within %ss: %s at %s" % (
                    timeout, ", ".join(self.interfaces), ", ".join(self.hooks)))
            time.sleep(0.02)

    def stop(self, sig=signal.SIGINT, timeout=10):
        """Signal the probe and collect every report; returns the final report of each interface."""
        self.proc.send_signal(sig)
        out, self.stderr = self.proc.communicate(timeout=timeout)
        self.returncode = self.proc.returncode
        self.reports += [json.loads(line) for line in out.splitlines()]
        return {r["interface"]: r for r in self.reports if r["final"]}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class WatchedRun(object):
    """kubenetprobe.pyz --json in network namespace `ns`, its reports read in a thread as they come (`reports`), for
    tests that look at them while it runs."""

    def __init__(self, ns, *args):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PYZ, "--json"] + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.reports = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.reports.append(json.loads(line))

    def of(self, interface):
        """The reports of an interface so far."""
        return [r for r in list(self.reports) if r["interface"] == interface]

    def wait(self, condition, what, timeout=20):
        """Wait until condition() is true (of the reports so far, say); fails at once if the probe exits."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError("probe exited with %s: %s" % (self.proc.returncode, self.proc.stderr.read()))
            assert time.monotonic() < deadline, "no %s after %ss" % (what, timeout)
            time.sleep(0.05)

    def next_report(self, interface):
        """The next report of an interface after those seen so far."""
        seen = len(self.of(interface))
        self.wait(lambda: len(self.of(interface)) > seen, "report of " + interface)
        return self.of(interface)[seen]

    def stop(self):
        """SIGINT: returns the final reports by interface, after checking the probe exited 0."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self._reader.join(10)
        self.stderr = self.proc.stderr.read()
        assert self.proc.returncode == 0, self.stderr
        return {r["interface"]: r for r in self.reports if r["final"]}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def sniff_sent(ns, ifname):
    """Start counting the frames sent out of an interface, as they leave it (after GSO); call the result to stop
    and get (packets, bytes). (The kernel's tx_bytes would not do: a veth running NAPI, GRO on at its peer,
    counts bytes from past the Ethernet header.)"""
    sniffer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SNIFF_SENT, ifname],
                               stdout=subprocess.PIPE, universal_newlines=True)
    assert sniffer.stdout.readline().strip() == "ready"

    def stop():
        settle()
        sniffer.terminate()
        packets, size, drops = map(int, sniffer.communicate(timeout=10)[0].split())
        assert drops == 0, "the sniffer lost %d frames" % drops
        return packets, size
    return stop


def settle():
    """Give frames in flight time to arrive before the counters are read."""
    time.sleep(0.2)
