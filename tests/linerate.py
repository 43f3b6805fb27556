#!/usr/bin/env python3
"""Line rate: what the probe's programs cost a veth flooded with small frames. It reports; it never asserts.

Run as root. Two network namespaces this module creates, joined by a veth pair and nothing else (IPv6 off,
no addresses): a sender floods one end with 64-byte IPv4/UDP frames through an AF_PACKET TX ring; the other
end takes them in a threaded NAPI kthread, where XDP, TC ingress and the stack up to the drop run. Each
window reads, before and after:
  - the receiving end's rx_packets (frames its NAPI poll took off the ring) and the NAPI kthread's CPU time;
  - the sending end's tx_packets + tx_dropped (frames the sender pushed) and the sender's CPU time;
  - with the probe's program on, what the probe counted, which must match the kernel's count.
The configurations (no program; an empty program and the probe's on XDP generic, XDP native, TC ingress,
and on TC egress of the sending end) take turns within each round, each hook's two side by side, in an order
rotating from round to round; the figures are medians over the rounds. Two figures per configuration:
  a. frames per second through the veth, with both ends on whatever CPU(s) they run on;
  b. 1 s / the CPU time per frame of the side where the hook runs: the rate of a CPU doing only that work,
     which another task taking part of the CPU does not lower (a window's wall time does not enter it).

Both ends run on one CPU by default. On the 2-vCPU VM this was written on, with the sender on one CPU and the
NAPI kthread on the other, every frame batch crossed CPUs with a wake-up, and window-to-window spread was
20-60 % (the same configuration gave 0.67 or 1.33 Mpps); on one CPU it was 1-3 %, and other tasks moved
to the other CPU. --receiver-cpu puts the kthread elsewhere.

The frames go to a MAC address that is not the receiving end's, so the stack drops them right after the
hooks (ip_rcv, PACKET_OTHERHOST) and nothing ever answers. Little work after the hooks makes a hook's cost
a larger share than on a node whose traffic goes up the stack: the overheads here are upper bounds.

Nothing outlives the run: the namespaces are held only by this process's file descriptors and the sender
(which the kernel kills when the thread that started it dies), the programs are attached through bpf_links.

Usage: sudo .venv/bin/python tests/linerate.py [--rounds 5] [--seconds 2] [--json]
"""
import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from frames import ETH_IP, UDP, ether, ipv4, udp  # noqa: E402
from probe import layout, stats  # noqa: E402
from probe import talkers as peer_tables  # noqa: E402
from probe.attach.tc import attach_tc  # noqa: E402
from probe.attach.xdp import attach_xdp  # noqa: E402
from probe.bpf import syscall  # noqa: E402
from probe.bpf.constants import BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP  # noqa: E402
from probe.bpf.libbpf import LibbpfEngine  # noqa: E402
from probe.errors import ProbeError  # noqa: E402

OBJECT_FILE = os.path.join(ROOT, "probe", "_bytecode", "kubenetprobe.bpf.o")
EMPTY_OBJECT_FILE = os.path.join(ROOT, "build", "empty.bpf.o")
TARGET_PERCENT = 3.0  # the product's target: the probe costs at most 3 % of line rate
MPPS = 1e6

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
# The sender's socket buffer bounds the skbs in flight: kept below the 256 frames the receiving veth's ring
# holds, the sender sleeps until there is room instead of losing frames to a full ring (and its send(2)
# stopping at each loss). With 64-byte frames, this size lost none; twice as much overflowed the ring.
SENDER_SNDBUF = 65536  # SO_SNDBUFFORCE; the kernel doubles it
# The sender stops by itself this long after the run should have ended, should nobody stop it.
SENDER_SPARE_SECONDS = 60.0
# The veths' interface indexes start here ("KN"). probe.bpf.syscall.detach_xdp_links, which `kubenetprobe
# detach` and attach_xdp(force=True) call, detaches every XDP link whose ifindex matches, in any namespace:
# a test doing that on its own veth (ifindex 2 or 3 in its namespace) took this module's programs off too.
# Below the probe's slots map (layout.MAX_IFINDEX, 1 << 20), which refuses a larger ifindex: 0x4B4E0 + 2 * 0x8000.
IFINDEX_BASE = 0x4B4E0
# A window whose program someone else detached meanwhile is measured again, up to this many times in all.
WINDOW_TRIES = 3
# How long close() waits for the kernel to remove the veth pair after the namespaces' last fd closed.
TEARDOWN_SECONDS = 5.0

_libc = ctypes.CDLL(None, use_errno=True)

# (hook, side, program of the probe's object): the hooks measured, in the order they are reported. The rx
# hooks run in the receiving end's NAPI kthread, TC egress in the sender's send(2).
HOOKS = (
    ("xdp generic", "rx", layout.PROGRAMS[("rx", "xdp")]),
    ("xdp native", "rx", layout.PROGRAMS[("rx", "xdp")]),
    ("tc ingress", "rx", layout.PROGRAMS[("rx", "tc")]),
    ("tc egress", "tx", layout.PROGRAMS[("tx", "tc")]),
)
NO_PROGRAM = (None, "none")  # (hook, role) of the configuration without any program

# The sender: an AF_PACKET socket with a TX ring (TPACKET_V2) of copies of one frame. Every send(2) hands
# the kernel the whole ring (each frame marked TP_STATUS_SEND_REQUEST), and, being blocking, returns once the
# last frame left. It goes through dev_queue_xmit, not PACKET_QDISC_BYPASS: the TC egress hook is on that
# path. Each frame carries a virtio_net_hdr (PACKET_VNET_HDR) whose hdr_len is the whole frame: the kernel
# then copies the frame into the skb's linear data, as a socket's skb has its headers. Without it a TX ring
# (trafgen's too) sends skbs holding only the Ethernet header linear, the rest in page fragments, and every TC
# program that reads the IP header has to pull it in first.
# argv: interface, frame in hex, seconds to run at most, SO_SNDBUFFORCE bytes, "linear" or "fragments".
SENDER_SCRIPT = '''\
import array, errno, mmap, socket, struct, sys, time

SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, PACKET_VNET_HDR, TPACKET_V2 = 263, 10, 13, 15, 1
SO_SNDBUFFORCE = 32
TP_STATUS_SEND_REQUEST = 1
TPACKET2_DATA = 32  # TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where a TX frame's bytes start
BLOCK_SIZE, BLOCKS = 1 << 16, 16

interface, frame, seconds, sndbuf = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
linear = sys.argv[5] == "linear"
if linear:  # struct virtio_net_hdr: no flags, no GSO, hdr_len = the frame: all of it in the linear data
    frame = struct.pack("<BBHHHH", 0, 0, len(frame), 0, 0, 0) + frame
frame_size = 128
while frame_size < TPACKET2_DATA + len(frame):
    frame_size *= 2
count = BLOCK_SIZE * BLOCKS // frame_size
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: it receives nothing
sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
if linear:
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
sock.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("=IIII", BLOCK_SIZE, BLOCKS, frame_size, count))
sock.bind((interface, 0))
ring = mmap.mmap(sock.fileno(), BLOCK_SIZE * BLOCKS)
for i in range(count):
    base = i * frame_size
    ring[base + 4:base + 8] = struct.pack("=I", len(frame))  # tp_len
    ring[base + TPACKET2_DATA:base + TPACKET2_DATA + len(frame)] = frame
status = memoryview(ring).cast("I")[::frame_size // 4]  # each frame's tp_status
requests = array.array("I", [TP_STATUS_SEND_REQUEST]) * count
print("sending", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    status[:] = requests
    try:
        sock.send(b"")
    except OSError as e:  # a frame the receiving ring had no room for: send the rest
        if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
            raise
'''


# ---- namespaces ------------------------------------------------------------------------------------------

def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def current_netns():
    """An fd of the calling thread's network namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY)


def setns(fd):
    """Move the calling thread into the network namespace open at `fd`."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def new_netns():
    """An fd of a new network namespace, held by nothing else: it goes when the fd closes."""
    home = current_netns()
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return current_netns()
    finally:
        setns(home)
        os.close(home)


@contextlib.contextmanager
def inside(netns):
    """Run the body (and the processes it starts) in another network namespace; come back after."""
    home = current_netns()
    try:
        setns(netns)
        yield
    finally:
        setns(home)
        os.close(home)


def run(*argv, **kwargs):
    """Run a setup command; failure raises with its stderr."""
    done = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          **kwargs)
    if done.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), done.stderr.strip()))
    return done.stdout


def write_sysctl(path, value):
    """Write a /proc/sys file of the current network namespace."""
    with open(os.path.join("/proc/sys", path), "w") as f:
        f.write(value)


def silence_ipv6(interfaces=()):
    """No IPv6 on the current namespace's interfaces, those made later included: no neighbour discovery."""
    for name in ("all", "default") + tuple(interfaces):
        write_sysctl("net/ipv6/conf/%s/disable_ipv6" % name, "1")


def interface_counters(interface):
    """{rx_packets, rx_dropped, tx_packets, tx_dropped} of an interface of the current namespace."""
    with open("/proc/thread-self/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, values = line.partition(":")
            if name.strip() == interface:
                v = [int(x) for x in values.split()]
                return {"rx_packets": v[1], "rx_dropped": v[3], "tx_packets": v[9], "tx_dropped": v[11]}
    raise RuntimeError("%s is gone from its namespace" % interface)


def schedstat(pid):
    """(ns a task ran on a CPU, ns it waited for one while runnable): /proc/PID/schedstat."""
    with open("/proc/%d/schedstat" % pid) as f:
        ran, waited = f.read().split()[:2]
    return int(ran), int(waited)


def napi_threads(interface):
    """Pids of the NAPI kthreads of an interface ("napi/IFNAME-ID")."""
    prefix = "napi/%s-" % interface
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open("/proc/%s/comm" % entry) as f:
                if f.read().startswith(prefix):
                    pids.append(int(entry))
    return pids


def ipv4_checksum(header):
    """The IPv4 header checksum of `header` (its checksum field zero)."""
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("!H", ~total & 0xFFFF)


def flood_frame(size, dst, src):
    """A `size`-byte Ethernet/IPv4/UDP frame (no FCS), from 198.18.0.1 to 198.18.0.2, its checksum right."""
    packet = ipv4(UDP, udp(bytes(size - 14 - 20 - 8)))
    return ether(ETH_IP, packet[:10] + ipv4_checksum(packet[:20]) + packet[12:], dst=dst, src=src)


def _sender_preexec(cpu):
    def preexec():
        os.sched_setaffinity(0, {cpu})
        # killed with the thread that started it, whatever way that thread ends (SIGKILL included)
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    return preexec


class Flood(object):
    """A veth pair between two namespaces of its own, one end flooded from the other.

    rx_if (in rx_ns) receives: GRO on, so that the veth takes frames off its ring in a NAPI poll, and
    threaded NAPI, so that the poll runs in a kthread pinned to receiver_cpu. tx_if (in tx_ns) sends: TSO
    and GSO off, so that each frame crosses alone (and the receiving end takes it through its ring).
    """

    def __init__(self, frame_bytes, sender_cpu, receiver_cpu, duration, linear=True):
        tag = "%x" % os.getpid()
        # "napi/" + name + "-" fits the 15 characters of a kthread's comm
        self.rx_if, self.tx_if = "knr" + tag, "knt" + tag
        # Interface indexes far from the small ones every new namespace hands out: some tools detach XDP links
        # by ifindex alone, whatever namespace the link's interface is in (see IFINDEX_BASE)
        self.rx_index = IFINDEX_BASE + 2 * (os.getpid() % 0x8000)
        self.tx_index = self.rx_index + 1
        self.frame_bytes = frame_bytes
        self.linear = linear
        self.sender_cpu, self.receiver_cpu = sender_cpu, receiver_cpu
        self.duration = duration
        self.rx_ns = self.tx_ns = self.sender = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        self.tx_ns, self.rx_ns = new_netns(), new_netns()
        with inside(self.tx_ns):
            silence_ipv6()
        with inside(self.rx_ns):
            silence_ipv6()
            run("ip", "link", "add", self.rx_if, "index", str(self.rx_index), "type", "veth",
                "peer", "name", self.tx_if, "index", str(self.tx_index), "netns", "/proc/self/fd/%d" % self.tx_ns,
                pass_fds=(self.tx_ns,))
            silence_ipv6([self.rx_if])
            run("ip", "link", "set", self.rx_if, "up")
            run("ethtool", "-K", self.rx_if, "gro", "on")
            rx_mac = self._mac(self.rx_if)
            # /sys shows the namespace of whoever mounted it: write the veth's `threaded` through a sysfs of
            # the receiving namespace, in a mount namespace that lives as long as the command
            run("unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t sysfs sysfs /sys && echo 1 > "/sys/class/net/$1/threaded"', "sh", self.rx_if)
        with inside(self.tx_ns):
            silence_ipv6([self.tx_if])
            run("ip", "link", "set", self.tx_if, "up")
            run("ethtool", "-K", self.tx_if, "tso", "off", "gso", "off")
            tx_mac = self._mac(self.tx_if)
        self.pin_receiver()
        # To a MAC address one bit away from the receiving end's: PACKET_OTHERHOST, which the stack drops
        other_host = "%02x" % (int(rx_mac[:2], 16) ^ 0x80) + rx_mac[2:]
        self.frame = flood_frame(self.frame_bytes, other_host, tx_mac)
        with inside(self.tx_ns):
            self.sender = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SENDER_SCRIPT, self.tx_if, self.frame.hex(),
                 str(self.duration + SENDER_SPARE_SECONDS), str(SENDER_SNDBUF),
                 "linear" if self.linear else "fragments"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                preexec_fn=_sender_preexec(self.sender_cpu))
        if self.sender.stdout.readline().strip() != "sending":
            raise RuntimeError("the sender did not start: %s" % self._sender_error())

    def _mac(self, interface):
        return json.loads(run("ip", "-j", "link", "show", interface))[0]["address"]

    def _sender_error(self):
        self.sender.kill()
        return self.sender.communicate()[1].strip() or "exit status %s" % self.sender.returncode

    def pin_receiver(self):
        """Pin the receiving end's NAPI kthreads to receiver_cpu; their pids. Called before every window:
        attaching a program may make the veth set up its NAPI again."""
        pids = napi_threads(self.rx_if)
        if not pids:
            raise RuntimeError("%s has no NAPI kthread: threaded NAPI did not take" % self.rx_if)
        for pid in pids:
            os.sched_setaffinity(pid, {self.receiver_cpu})
        return pids

    def sample(self, napi_pids):
        """Counters and CPU times now."""
        if self.sender.poll() is not None:
            raise RuntimeError("the sender stopped: %s" % self._sender_error())
        started = time.monotonic()
        with inside(self.rx_ns):
            rx = interface_counters(self.rx_if)
        with inside(self.tx_ns):
            tx = interface_counters(self.tx_if)
        receiver = [schedstat(pid) for pid in napi_pids]
        sender = schedstat(self.sender.pid)
        return {"time": (started + time.monotonic()) / 2, "rx_packets": rx["rx_packets"],
                "sent": tx["tx_packets"] + tx["tx_dropped"], "tx_dropped": tx["tx_dropped"],
                "rx_ran": sum(r for r, _ in receiver), "rx_waited": sum(w for _, w in receiver),
                "tx_ran": sender[0], "tx_waited": sender[1]}

    def close(self):
        """Stop the sender, then let the namespaces (and the veth pair with them) go."""
        if self.sender is not None:
            if self.sender.poll() is None:
                self.sender.kill()
            self.sender.communicate()
            self.sender = None
        fds, self.rx_ns, self.tx_ns = (self.rx_ns, self.tx_ns), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)
        # The kernel tears a namespace down in the background: return once the veth (its NAPI kthread) is gone
        deadline = time.monotonic() + TEARDOWN_SECONDS
        while napi_threads(self.rx_if) and time.monotonic() < deadline:
            time.sleep(0.05)


# ---- programs --------------------------------------------------------------------------------------------

def program_of_type(obj, prog_type, path):
    """The name of the one program of a type in an object."""
    names = sorted(name for name, p in obj.programs.items() if p.info().type == prog_type)
    if len(names) != 1:
        kind = {BPF_PROG_TYPE_XDP: "XDP", BPF_PROG_TYPE_SCHED_CLS: "TC"}[prog_type]
        raise RuntimeError("%s should hold one %s program; it has %s" % (path, kind, ", ".join(names) or "none")
                           + ("" if names else ": rebuild it (`make build/empty.bpf.o`)"))
    return names[0]


def attach(flood, hook, program):
    """Attach a program (a Program) to a hook of the flood's veth: (the attachment, a bpf_link; its ifindex)."""
    owner = layout.OWNER if program.name.startswith(layout.OWNER) else program.name
    if hook == "tc egress":
        with inside(flood.tx_ns):
            return attach_tc(program.fd, flood.tx_if, "egress", owner, method="link"), flood.tx_index
    with inside(flood.rx_ns):
        if hook == "tc ingress":
            return attach_tc(program.fd, flood.rx_if, "ingress", owner, method="link"), flood.rx_index
        return attach_xdp(program.fd, flood.rx_if, mode=hook.split()[1], method="link"), flood.rx_index


def still_attached(attachment, ifindex):
    """Whether a bpf_link still holds its hook: a link someone detached reports ifindex 0."""
    return syscall.link_info(attachment.fd).ifindex == ifindex


def probe_counted(slots, flood, side):
    """Frames the probe's programs counted for a side ("rx" or "tx"), all hooks together: under the receiving
    veth's keys, or the sending one's."""
    return slots.read(flood.rx_index if side == "rx" else flood.tx_index, side)["packets"]


# ---- measurement -----------------------------------------------------------------------------------------

def window(flood, warmup, seconds, counter=None):
    """One measurement: wait `warmup`, then the differences over `seconds`, per second or per frame.
    `counter`, a function, is read at both ends too: its difference is "counted"."""
    time.sleep(warmup)
    napi_pids = flood.pin_receiver()
    a = flood.sample(napi_pids)
    a["counted"] = counter() if counter else 0
    time.sleep(seconds)
    b = flood.sample(napi_pids)
    b["counted"] = counter() if counter else 0
    d = {key: b[key] - a[key] for key in a}
    frames = {"rx": d["rx_packets"], "tx": d["sent"]}
    result = {"frames": frames, "counted": d["counted"], "tx_dropped_per_s": d["tx_dropped"] / d["time"]}
    for side in ("rx", "tx"):
        result[side + "_pps"] = frames[side] / d["time"]
        # CPU time per frame where the side's work runs: what a frame costs, whatever share of the CPU it got
        result[side + "_cpu_ns"] = d[side + "_ran"] / frames[side] if frames[side] else None
        result[side + "_busy"] = d[side + "_ran"] / 1e9 / d["time"]  # share of its CPU it ran
        # ran or waited for the CPU: near 1, it always had work (this side set the rate); well below, it idled
        result[side + "_runnable"] = (d[side + "_ran"] + d[side + "_waited"]) / 1e9 / d["time"]
    return result


def measure_config(flood, hook, program, warmup, seconds, counter):
    """A window with a program on a hook (none: program None); None if the program was detached meanwhile."""
    attached, ifindex = attach(flood, hook, program) if program is not None else (None, None)
    try:
        result = window(flood, warmup, seconds, counter)
        return result if attached is None or still_attached(attached, ifindex) else None
    finally:
        if attached is not None:
            attached.close()


def round_order(units, r):
    """The configurations of round r: the units rotated by r, each hook's empty and probe side by side (so
    that both see much the same neighbours), their order alternating."""
    k = r % len(units)
    order = []
    for unit in units[k:] + units[:k]:
        order.extend(unit if r % 2 == 0 else unit[::-1])
    return order


def default_cpu():
    """The CPU both ends run on unless told otherwise: the first this process may use."""
    return min(os.sched_getaffinity(0))


def measure(rounds, seconds, object_path, empty_object_path, warmup=0.5, frame_bytes=64, sender_cpu=None,
            receiver_cpu=None, linear=True, talkers=False):
    """Every line-rate figure, in one run, as a plain dict (report_lines prints it). With `talkers`, of the
    programs that count top talkers too (layout.PEER_PROGRAMS), in tables of the default capacity.

    Both ends run on one CPU unless sender_cpu and receiver_cpu differ: on a small VM, two CPUs handing
    frames to each other measured far noisier than one CPU doing both (see the module's notes).
    """
    if not 60 <= frame_bytes <= 1514:
        raise ValueError("frame_bytes must be 60 to 1514, not %d" % frame_bytes)
    sender_cpu = default_cpu() if sender_cpu is None else sender_cpu
    receiver_cpu = sender_cpu if receiver_cpu is None else receiver_cpu
    allowed = os.sched_getaffinity(0)
    for cpu in (sender_cpu, receiver_cpu):
        if cpu not in allowed:
            raise ValueError("CPU %d is not one this process may run on (%s)"
                             % (cpu, ", ".join(map(str, sorted(allowed)))))
    hooks = [(hook, side, layout.PEER_PROGRAMS[side, hook.split()[0]]) for hook, side, _ in HOOKS] if talkers \
        else HOOKS
    units = [[NO_PROGRAM]] + [[(hook, "empty"), (hook, "probe")] for hook, _, _ in hooks]
    duration = 1.0 + sum(len(u) for u in units) * rounds * (warmup + seconds)
    samples = {config: [] for unit in units for config in unit}
    counted = {}
    redone = []  # windows measured again: their program was detached meanwhile
    started = time.monotonic()
    load_before = os.getloadavg()
    engine = LibbpfEngine()
    sizes = peer_tables.max_entries(layout.PEERS_DEFAULT if talkers else 0)
    with engine.load_file(object_path, max_entries=sizes) as probe_obj, \
            engine.load_file(empty_object_path) as empty_obj:
        empty = {"xdp": program_of_type(empty_obj, BPF_PROG_TYPE_XDP, empty_object_path),
                 "tc": program_of_type(empty_obj, BPF_PROG_TYPE_SCHED_CLS, empty_object_path)}
        programs = {}
        for hook, side, probe_name in hooks:
            programs[(hook, "probe")] = probe_obj.program(probe_name)
            programs[(hook, "empty")] = empty_obj.program(empty[hook.split()[0]])
        slots = stats.Slots.of(probe_obj, talkers)
        if talkers:
            peer_tables.Talkers(probe_obj).close()  # the tables' mask and hash seed written, as the probe does
        sides = {hook: side for hook, side, _ in hooks}
        with Flood(frame_bytes, sender_cpu, receiver_cpu, duration, linear) as flood:
            for index in (flood.rx_index, flood.tx_index):
                slots.add(index)  # as the probe does before it attaches: else nothing counts
            time.sleep(1.0)  # the first frames: pages faulted in, caches and the NAPI kthread warm
            for r in range(rounds):
                for config in round_order(units, r):
                    hook, role = config
                    side = sides.get(hook)
                    counter = (lambda: probe_counted(slots, flood, side)) if role == "probe" else None
                    for attempt in range(WINDOW_TRIES):
                        result = measure_config(flood, hook, programs.get(config), warmup, seconds, counter)
                        if result is not None:
                            break
                        redone.append("%s %s, round %d" % (hook, role, r + 1))
                    else:
                        raise RuntimeError("someone detached the %s program from %s %d times in a row"
                                           % (hook, flood.rx_if, WINDOW_TRIES))
                    if role == "probe":
                        # proof that the program ran on every frame: its count beside the kernel's
                        total = counted.setdefault(hook, {"probe": 0, "kernel": 0})
                        total["probe"] += result["counted"]
                        total["kernel"] += result["frames"][side]
                    samples[config].append(result)
            frame = flood.frame
    figures = {
        "frame_bytes": frame_bytes, "frame": "Ethernet/IPv4/UDP to another host's MAC", "frame_hex": frame.hex(),
        "skb": "linear skbs" if linear else "skbs with only the Ethernet header linear",
        "rounds": rounds, "seconds": seconds, "warmup": warmup,
        "sender_cpu": sender_cpu, "receiver_cpu": receiver_cpu, "cpus": os.cpu_count(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "elapsed_s": time.monotonic() - started, "target_percent": TARGET_PERCENT,
        "none": summarize(samples[NO_PROGRAM]), "hooks": [], "redone_windows": redone, "talkers": talkers,
    }
    for hook, side, probe_name in hooks:
        empty_runs, probe_runs = samples[(hook, "empty")], samples[(hook, "probe")]
        e, p = summarize(empty_runs), summarize(probe_runs)
        pairs = list(zip(empty_runs, probe_runs))
        figures["hooks"].append({
            "hook": hook, "side": side, "program": probe_name, "empty_program": programs[(hook, "empty")].name,
            "empty": e, "probe": p,
            # the rate through the veth, its CPU (or CPUs) shared by both ends
            "rate_overhead_percent": rate_overhead(e["rx_pps"], p["rx_pps"]),
            "rate_round_overheads_percent": [rate_overhead(a["rx_pps"], b["rx_pps"]) for a, b in pairs],
            # the rate of a CPU doing only the work of the hook's side, from CPU time per frame
            "cpu_overhead_percent": cpu_overhead(e[side + "_cpu_ns"], p[side + "_cpu_ns"]),
            "cpu_round_overheads_percent": [cpu_overhead(a[side + "_cpu_ns"], b[side + "_cpu_ns"])
                                            for a, b in pairs],
            "probe_counted": counted.get(hook),
        })
    return figures


def median(runs, key):
    """The median of a key over windows, those without a value left out; None if none has one."""
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    """Medians of a configuration's windows, and each window's rx_packets per second."""
    keys = ("rx_pps", "rx_cpu_ns", "rx_busy", "rx_runnable", "tx_pps", "tx_cpu_ns", "tx_busy", "tx_runnable",
            "tx_dropped_per_s")
    summary = {key: median(runs, key) for key in keys}
    summary["rounds_rx_pps"] = [run["rx_pps"] for run in runs]
    # the worst window: the least CPU both ends ran together (of one CPU, when they share it), and the least
    # the receiving end was runnable (below 1 it had no frames to take at times: the sender set the pace)
    summary["min_both_busy"] = min(run["rx_busy"] + run["tx_busy"] for run in runs)
    summary["min_rx_runnable"] = min(run["rx_runnable"] for run in runs)
    return summary


def rate_overhead(empty_pps, probe_pps):
    """The rate the probe's program loses, in % of the empty program's rate."""
    return (empty_pps - probe_pps) / empty_pps * 100 if empty_pps else None


def cpu_overhead(empty_ns, probe_ns):
    """The same from CPU time per frame: a CPU doing only this work would lose 1 - empty/probe of its rate."""
    return (probe_ns - empty_ns) / probe_ns * 100 if empty_ns and probe_ns else None


# ---- output ----------------------------------------------------------------------------------------------

def table(header, rows):
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


def _mpps(pps):
    return "%.3f Mpps" % (pps / MPPS) if pps is not None else "-"


def _capacity(ns):
    return "%.3f Mpps (%.0f ns)" % (1e3 / ns, ns) if ns else "-"


def _percent(value):
    return "%+.1f %%" % value if value is not None else "-"


def _spread(values):
    values = [v for v in values if v is not None]
    return "%+.1f .. %+.1f" % (min(values), max(values)) if values else "-"


def report_lines(figures):
    """The line-rate report as plain text."""
    f, none = figures, figures["none"]
    cpus = ("CPU %d" % f["sender_cpu"] if f["sender_cpu"] == f["receiver_cpu"]
            else "CPUs %d and %d" % (f["sender_cpu"], f["receiver_cpu"]))
    lines = ["line rate: %d-byte frames (%s) flooded into a veth from another namespace; %d interleaved rounds "
             "of %.1f s after %.1f s; medians" % (f["frame_bytes"], f["frame"], f["rounds"], f["seconds"],
                                                  f["warmup"]),
             "sender (AF_PACKET TX ring, %s) on CPU %d, receiver (threaded NAPI kthread, GRO on) on CPU %d; "
             "load %.2f -> %.2f; %.0f s" % (f["skb"], f["sender_cpu"], f["receiver_cpu"],
                                           f["load_average_before"][0], f["load_average_after"][0], f["elapsed_s"]),
             "",
             "a. frames per second through the veth (the receiving end's rx_packets), both ends on %s%s" % (
                 cpus, "; probe: the programs counting top talkers too" if f.get("talkers") else "")]
    lines += table(["hook", "no program", "empty", "probe", "overhead", "rounds"],
                   [[h["hook"], _mpps(none["rx_pps"]), _mpps(h["empty"]["rx_pps"]), _mpps(h["probe"]["rx_pps"]),
                     _percent(h["rate_overhead_percent"]), _spread(h["rate_round_overheads_percent"])]
                    for h in f["hooks"]])
    lines += ["",
              "b. per CPU: 1 s / CPU time per frame of the side the hook runs on (rx: the NAPI kthread; tx: the "
              "sender), the rate of a CPU doing only that; the target applies here"]
    rows = []
    for h in f["hooks"]:
        key = h["side"] + "_cpu_ns"
        value = h["cpu_overhead_percent"]
        status = "-" if value is None else "ok" if value <= f["target_percent"] else "over"
        rows.append([h["hook"], h["side"], _capacity(none[key]), _capacity(h["empty"][key]),
                     _capacity(h["probe"][key]), _percent(value), _spread(h["cpu_round_overheads_percent"]), status])
    lines += table(["hook", "side", "no program", "empty", "probe", "overhead", "rounds",
                    "<= %g %%" % f["target_percent"]], rows)
    checks = []
    for h in f["hooks"]:
        c = h["probe_counted"]
        checks.append("%s %s" % (h["hook"], "%.4f" % (c["probe"] / c["kernel"]) if c and c["kernel"] else "-"))
    lines += ["", "frames the probe counted / frames the kernel counted: " + ", ".join(checks)]
    if f["redone_windows"]:
        lines.append("note: measured again, their program detached by someone else meanwhile: "
                     + "; ".join(f["redone_windows"]))
    runs = [none] + [h[role] for h in f["hooks"] for role in ("empty", "probe")]
    dropped = max(r["tx_dropped_per_s"] or 0 for r in runs)
    if dropped:
        lines.append("note: the receiving ring overflowed (up to %.0f frames/s dropped); the sender's figures count "
                     "them as sent" % dropped)
    if f["sender_cpu"] == f["receiver_cpu"]:
        share = min(r["min_both_busy"] for r in runs)
        if share < 0.95:
            lines.append("note: in some window both ends ran only %.0f %% of CPU %d: other tasks took the rest, "
                         "lowering (a) there; (b) counts CPU time, not wall time" % (share * 100, f["sender_cpu"]))
    else:
        runnable = min(r["min_rx_runnable"] for r in runs)
        if runnable < 0.95:
            lines.append("note: in some window the receiving end was runnable only %.0f %% of the time: it waited for "
                         "frames, and (a) there is the sender's pace" % (runnable * 100))
    return lines


# ---- main ------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--object", type=os.path.abspath, default=OBJECT_FILE,
                   help="the probe's object (default probe/_bytecode/kubenetprobe.bpf.o)")
    p.add_argument("--empty-object", type=os.path.abspath, default=EMPTY_OBJECT_FILE,
                   help="object holding one empty XDP and one empty TC program (default build/empty.bpf.o)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measured window (default 2)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds between attaching and measuring (default 0.5)")
    p.add_argument("--frame-bytes", type=int, default=64, help="frame size without FCS (default 64)")
    p.add_argument("--sender-cpu", type=int, help="CPU of the sender (default: the first this process may use)")
    p.add_argument("--receiver-cpu", type=int, help="CPU of the receiving NAPI kthread (default: the sender's)")
    p.add_argument("--fragments", action="store_true",
                   help="send skbs with only the Ethernet header linear, as a plain TX ring (trafgen) does")
    p.add_argument("--talkers", action="store_true",
                   help="measure the programs that count top talkers too (the probe's --talkers)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    return p.parse_args(argv)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # so that the sender and the namespaces go on the way out


def main(argv=None):
    """Measure and print; 0 unless something could not be measured at all."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("linerate: needs root (BPF programs, XDP, network namespaces)\n")
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    try:
        figures = measure(args.rounds, args.seconds, args.object, args.empty_object, warmup=args.warmup,
                          frame_bytes=args.frame_bytes, sender_cpu=args.sender_cpu, receiver_cpu=args.receiver_cpu,
                          linear=not args.fragments, talkers=args.talkers)
    except (ProbeError, RuntimeError, OSError, ValueError) as e:
        sys.stderr.write("linerate: %s\n" % e)
        return 1
    print(json.dumps(figures, indent=2) if args.json else "\n".join(report_lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
