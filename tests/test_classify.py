"""How the probe's programs classify and count frames, with each engine: every frame class run through
BPF_PROG_TEST_RUN on the XDP program and on both TC programs of a freshly loaded object, its counters read back
exactly under the keys of the test runs' interface; GSO packets counted as the wire frames they stand for; and the
TC programs on real skbs of a veth pair (VLAN tags the kernel holds apart, headers outside the linear data, GSO
and GRO) against what was sent."""
import ctypes
import errno
import os
import random
import socket
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, bpf_source, compile_bpf
from frames import (AH, DSTOPTS, ETH_ARP, ETH_IP, ETH_IPV6, ETH_LLDP, FRAGMENT, GRE, HOPOPTS, ICMP, ICMPV6,
                    IPIP, NONXT, ROUTING, TCP, UDP, VLAN_AD, VLAN_Q, arp, ether, icmp, ipv4, ipv6, ipv6_chain,
                    tcp, udp)
from netns import TCP_SERVER, settle, sniff_sent
from traffic import COUNTER, delta, link_stats
from probe import layout, stats
from probe.attach import tc
from probe.bpf import syscall
from probe.bpf.constants import BPF_PROG_TEST_RUN
from probe.bpf.engine import open_engine
from probe.bytecode import embedded_object
from probe.errors import ProbeError
from probe.monitor import check_stats_map
from probe.net import interfaces

pytestmark = pytest.mark.integration

XDP_PASS = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as BPF_PROG_TEST_RUN's u32 retval: the TC programs hand every packet on
# The interface of every BPF_PROG_TEST_RUN here: without a device in its context the kernel runs the program on the
# namespace's loopback (net/bpf/test_run.c), ifindex 1, whose keys the programs then count under.
LOOPBACK = 1
# hook: (program, the direction it counts in, its verdict for every frame)
HOOKS = {
    "xdp": (layout.PROGRAMS["rx", "xdp"], "rx", XDP_PASS),
    "tc-ingress": (layout.PROGRAMS["rx", "tc"], "rx", TC_ACT_UNSPEC),
    "tc-egress": (layout.PROGRAMS["tx", "tc"], "tx", TC_ACT_UNSPEC),
}

# ------------------------------------------------------------------------------------------------------ the cases

HTTP = b"GET / HTTP/1.1\r\n\r\n"
DNS = bytes(20)
EIGHT_EXTS = [(HOPOPTS, 0), (DSTOPTS, 1), (ROUTING, 2), (FRAGMENT, 0), (AH, 1), (AH, 4), (DSTOPTS, 0), (ROUTING, 0)]

# (id, frame, l3 class, l4 class or None when the frame must not reach any l4 slot)
CASES = [
    # IPv4
    ("ipv4-tcp", ether(ETH_IP, ipv4(TCP, tcp(HTTP))), "ipv4", "tcp"),
    ("ipv4-udp", ether(ETH_IP, ipv4(UDP, udp(DNS))), "ipv4", "udp"),
    ("ipv4-icmp", ether(ETH_IP, ipv4(ICMP, icmp() + bytes(56))), "ipv4", "icmp"),
    ("ipv4-tcp-exact-20-bytes", ether(ETH_IP, ipv4(TCP, tcp())), "ipv4", "tcp"),
    ("ipv4-tcp-19-bytes", ether(ETH_IP, ipv4(TCP, tcp()[:19])), "ipv4", "other"),
    ("ipv4-udp-exact-8-bytes", ether(ETH_IP, ipv4(UDP, udp())), "ipv4", "udp"),
    ("ipv4-udp-7-bytes", ether(ETH_IP, ipv4(UDP, udp()[:7])), "ipv4", "other"),
    ("ipv4-icmp-exact-8-bytes", ether(ETH_IP, ipv4(ICMP, icmp())), "ipv4", "icmp"),
    ("ipv4-icmp-7-bytes", ether(ETH_IP, ipv4(ICMP, icmp()[:7])), "ipv4", "other"),
    ("ipv4-proto58-icmpv6", ether(ETH_IP, ipv4(ICMPV6, icmp(128))), "ipv4", "other"),
    ("ipv4-gre", ether(ETH_IP, ipv4(GRE, struct.pack("!HH", 0, ETH_IP) + ipv4(TCP, tcp()))), "ipv4", "other"),
    ("ipv4-ipip", ether(ETH_IP, ipv4(IPIP, ipv4(TCP, tcp()))), "ipv4", "other"),
    ("ipv4-ihl0", ether(ETH_IP, ipv4(TCP, tcp(), ihl=0)), "ipv4", "other"),
    ("ipv4-ihl4", ether(ETH_IP, ipv4(TCP, tcp(), ihl=4)), "ipv4", "other"),
    ("ipv4-header-10-bytes", ether(ETH_IP, ipv4(TCP, tcp())[:10]), "ipv4", "other"),
    ("ipv4-header-19-bytes", ether(ETH_IP, ipv4(TCP, tcp())[:19]), "ipv4", "other"),
    ("ipv4-no-header-14-byte-frame", ether(ETH_IP), "ipv4", "other"),
    # Options cut short: 8 UDP-sized bytes follow the base header, but they are options, not UDP.
    ("ipv4-ihl15-options-cut-short", ether(ETH_IP, ipv4(UDP, udp(), ihl=15))[:14 + 20 + 8], "ipv4", "other"),
    ("ipv4-ihl6-tcp-cut-short", ether(ETH_IP, ipv4(TCP, tcp(), ihl=6))[:-1], "ipv4", "other"),
] + [
    # IP options (ihl 6..15): the protocol field decides, past the options, exact lengths.
    ("ipv4-ihl%d-%s" % (ihl, name), ether(ETH_IP, ipv4(proto, header, ihl=ihl)), "ipv4", name)
    for ihl in range(6, 16)
    for name, proto, header in [("tcp", TCP, tcp()), ("udp", UDP, udp()), ("icmp", ICMP, icmp())]
] + [
    # IPv6
    ("ipv6-tcp", ether(ETH_IPV6, ipv6(TCP, tcp(HTTP))), "ipv6", "tcp"),
    ("ipv6-udp", ether(ETH_IPV6, ipv6(UDP, udp(DNS))), "ipv6", "udp"),
    ("ipv6-icmpv6", ether(ETH_IPV6, ipv6(ICMPV6, icmp(128) + bytes(56))), "ipv6", "icmpv6"),
    ("ipv6-tcp-exact-20-bytes", ether(ETH_IPV6, ipv6(TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-tcp-19-bytes", ether(ETH_IPV6, ipv6(TCP, tcp()[:19])), "ipv6", "other"),
    ("ipv6-udp-exact-8-bytes", ether(ETH_IPV6, ipv6(UDP, udp())), "ipv6", "udp"),
    ("ipv6-icmpv6-7-bytes", ether(ETH_IPV6, ipv6(ICMPV6, icmp(128)[:7])), "ipv6", "other"),
    ("ipv6-nexthdr1-icmp", ether(ETH_IPV6, ipv6(ICMP, icmp())), "ipv6", "other"),
    ("ipv6-no-next-header", ether(ETH_IPV6, ipv6(NONXT, bytes(20))), "ipv6", "other"),
    ("ipv6-header-39-bytes", ether(ETH_IPV6, ipv6(TCP, tcp())[:39]), "ipv6", "other"),
    ("ipv6-no-header-14-byte-frame", ether(ETH_IPV6), "ipv6", "other"),
    # IPv6 extension headers: exact lengths, so a misjudged length reads FILLER or runs out of frame.
    ("ipv6-hopopts-tcp", ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 0)], TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-hopopts-24-bytes-udp", ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 2)], UDP, udp())), "ipv6", "udp"),
    ("ipv6-routing-tcp", ether(ETH_IPV6, ipv6_chain([(ROUTING, 2)], TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-fragment-udp", ether(ETH_IPV6, ipv6_chain([(FRAGMENT, 0)], UDP, udp())), "ipv6", "udp"),
    ("ipv6-fragment-reserved-byte-set-tcp", ether(ETH_IPV6, ipv6_chain([(FRAGMENT, 7)], TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-dstopts-icmpv6", ether(ETH_IPV6, ipv6_chain([(DSTOPTS, 0)], ICMPV6, icmp(128))), "ipv6", "icmpv6"),
    ("ipv6-ah-24-bytes-tcp", ether(ETH_IPV6, ipv6_chain([(AH, 4)], TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-ah-12-bytes-udp", ether(ETH_IPV6, ipv6_chain([(AH, 1)], UDP, udp())), "ipv6", "udp"),
    ("ipv6-5-ext-chain-tcp", ether(ETH_IPV6, ipv6_chain(
        [(HOPOPTS, 0), (ROUTING, 2), (FRAGMENT, 0), (AH, 4), (DSTOPTS, 1)], TCP, tcp())), "ipv6", "tcp"),
    ("ipv6-8-ext-udp", ether(ETH_IPV6, ipv6_chain(EIGHT_EXTS, UDP, udp())), "ipv6", "udp"),
    ("ipv6-8-ext-icmpv6", ether(ETH_IPV6, ipv6_chain(EIGHT_EXTS, ICMPV6, icmp(128))), "ipv6", "icmpv6"),
    ("ipv6-9-ext-tcp", ether(ETH_IPV6, ipv6_chain(EIGHT_EXTS + [(DSTOPTS, 0)], TCP, tcp())), "ipv6", "other"),
    ("ipv6-ext-1-byte", ether(ETH_IPV6, ipv6(HOPOPTS, bytes([TCP]))), "ipv6", "other"),
    ("ipv6-ext-16-bytes-cut-to-10", ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 1)], TCP)[:40 + 10]), "ipv6", "other"),
    ("ipv6-fragment-7-bytes", ether(ETH_IPV6, ipv6_chain([(FRAGMENT, 0)], UDP)[:40 + 7]), "ipv6", "other"),
    ("ipv6-ah-tcp-cut-short", ether(ETH_IPV6, ipv6_chain([(AH, 4)], TCP, tcp())[:-1]), "ipv6", "other"),
    ("ipv6-2nd-ext-cut-short", ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 0), (DSTOPTS, 1)], UDP)[:40 + 8 + 15]),
     "ipv6", "other"),
    # VLAN tags
    ("8021q-ipv4-tcp", ether(ETH_IP, ipv4(TCP, tcp()), tags=[VLAN_Q]), "ipv4", "tcp"),
    ("8021q-ipv6-udp", ether(ETH_IPV6, ipv6(UDP, udp()), tags=[VLAN_Q]), "ipv6", "udp"),
    ("8021ad-ipv4-icmp", ether(ETH_IP, ipv4(ICMP, icmp()), tags=[VLAN_AD]), "ipv4", "icmp"),
    ("8021ad-ipv6-tcp", ether(ETH_IPV6, ipv6(TCP, tcp()), tags=[VLAN_AD]), "ipv6", "tcp"),
    ("qinq-ipv4-udp", ether(ETH_IP, ipv4(UDP, udp()), tags=[VLAN_AD, VLAN_Q]), "ipv4", "udp"),
    ("qinq-ipv6-icmpv6", ether(ETH_IPV6, ipv6(ICMPV6, icmp(128)), tags=[VLAN_AD, VLAN_Q]), "ipv6", "icmpv6"),
    ("qinq-ipv4-header-cut-short", ether(ETH_IP, ipv4(TCP, tcp())[:19], tags=[VLAN_AD, VLAN_Q]), "ipv4", "other"),
    ("qinq-arp", ether(ETH_ARP, arp(), tags=[VLAN_AD, VLAN_Q]), "arp", None),
    ("three-tags-ipv4-tcp", ether(ETH_IP, ipv4(TCP, tcp()), tags=[VLAN_AD, VLAN_Q, VLAN_Q]), "other", None),
    ("8021q-tag-cut-to-2-bytes", ether(ETH_IP, tags=[VLAN_Q])[:14 + 2], "other", None),
    ("8021q-tag-missing-14-byte-frame", ether(ETH_IP, tags=[VLAN_Q])[:14], "other", None),
    ("qinq-inner-tag-cut-short", ether(ETH_IP, tags=[VLAN_AD, VLAN_Q])[:14 + 4 + 3], "other", None),
    ("8021q-lldp", ether(ETH_LLDP, bytes(46), tags=[VLAN_Q]), "other", None),
    # Neither IPv4 nor IPv6
    ("arp", ether(ETH_ARP, arp()), "arp", None),
    ("arp-14-byte-frame", ether(ETH_ARP), "arp", None),
    ("lldp", ether(ETH_LLDP, bytes(46)), "other", None),
    ("unknown-ethertype-14-byte-frame", ether(ETH_LLDP), "other", None),
]
assert len({case[0] for case in CASES}) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------------------------------------- helpers, fixtures

def slots_of(obj):
    """The Slots of a loaded object, one per object (kept on it), as the monitor keeps one."""
    if getattr(obj, "test_slots", None) is None:
        obj.test_slots = stats.Slots.of(obj)
    return obj.test_slots


def read_counters(obj, direction, ifindex=LOOPBACK):
    """An interface's counters of one direction in an object's stats map (by default the test runs')."""
    return slots_of(obj).read(ifindex, direction)


def zero_counters():
    """Counters of one direction with every class at zero, in read_counters' shape."""
    return {"packets": 0, "bytes": 0,
            "l3": {name: {"packets": 0, "bytes": 0} for name in layout.L3},
            "l4": {name: {"packets": 0, "bytes": 0} for name in layout.L4}}


def expected_counters(runs):
    """The counters a fresh object must show after `runs`: (frame, l3, l4 or None, times) tuples."""
    want = zero_counters()
    for frame, l3, l4, times in runs:
        for slot in [want, want["l3"][l3]] + ([want["l4"][l4]] if l4 else []):
            slot["packets"] += times
            slot["bytes"] += times * len(frame)
    return want


def assert_counters(obj, runs, direction="rx"):
    """The object's counters are exactly what `runs` produce in `direction`, zero in the other, and consistent
    across l3 and l4."""
    counted = read_counters(obj, direction)
    assert counted == expected_counters(runs)
    for other in layout.DIRECTIONS:
        if other != direction:
            assert read_counters(obj, other) == zero_counters()
    assert counted["packets"] == sum(c["packets"] for c in counted["l3"].values())
    assert counted["bytes"] == sum(c["bytes"] for c in counted["l3"].values())
    ip = counted["l3"]["ipv4"]["packets"] + counted["l3"]["ipv6"]["packets"]
    assert sum(c["packets"] for c in counted["l4"].values()) == ip


def refused_as_skb(hook, frame):
    """Whether BPF_PROG_TEST_RUN refuses to run a TC program on the frame: untagged IPv4 or IPv6 shorter than its
    base header (EINVAL from net/bpf/test_run.c, which reads the addresses). The TC programs see such frames on
    real skbs (test_tc_programs_count_real_skbs_exactly)."""
    base = {ETH_IP: 20, ETH_IPV6: 40}.get(struct.unpack_from("!H", frame, 12)[0])
    return hook != "xdp" and base is not None and len(frame) < 14 + base


def run(obj, hook, frame, repeat=1):
    """Run a hook's program on one frame `repeat` times; it must always hand the frame on."""
    name, _, verdict = HOOKS[hook]
    retval, _ = obj.program(name).test_run(frame, repeat=repeat)
    assert retval == verdict


class SkBuff(ctypes.Structure):
    """struct __sk_buff (linux/bpf.h) up to gso_size, as BPF_PROG_TEST_RUN's ctx_in for sched_cls: of its
    fields the kernel takes mark, priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs, gso_size
    and hwtstamp (net/bpf/test_run.c, convert___skb_to_skb); these tests set two, the rest stays zero."""
    _fields_ = [("_len_to_wire_len", ctypes.c_uint8 * 164), ("gso_segs", ctypes.c_uint32), ("_sk", ctypes.c_uint64),
                ("gso_size", ctypes.c_uint32)]


def run_gso(obj, hook, frame, gso_segs, gso_size):
    """Run a TC program once on an skb of `frame` that the kernel says stands for gso_segs segments."""
    name, _, verdict = HOOKS[hook]
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = SkBuff(gso_segs=gso_segs, gso_size=gso_size)
    attr = syscall.TestRunAttr(prog_fd=obj.program(name).fd, data_size_in=len(frame), data_in=ctypes.addressof(data),
                               ctx_size_in=ctypes.sizeof(ctx), ctx_in=ctypes.addressof(ctx), repeat=1)
    syscall.bpf(BPF_PROG_TEST_RUN, attr)
    assert attr.retval == verdict


@pytest.fixture(scope="module", params=["libbpf", "native"])
def engine(request):
    """Each engine in turn: both load the object's XDP and TC programs."""
    return open_engine(request.param)


@pytest.fixture(params=sorted(HOOKS))
def hook(request):
    return request.param


@pytest.fixture(params=["tc-ingress", "tc-egress"])
def tc_hook(request):
    return request.param


def load(engine):
    """A freshly loaded object, every counter at zero, with the keys of the test runs' interface."""
    loaded = engine.load_bytes(embedded_object())
    try:
        check_stats_map(loaded)  # before any read: the counters must be in the layout this test decodes
        slots_of(loaded).add(LOOPBACK)
    except BaseException:
        loaded.close()
        raise
    return loaded


@pytest.fixture
def obj(engine):
    """A freshly loaded object, so every counter starts at zero."""
    loaded = load(engine)
    try:
        yield loaded
    finally:
        loaded.close()


# ------------------------------------------------------------------------------------ classification (root)

@pytest.mark.parametrize("frame, l3, l4", [pytest.param(f, l3, l4, id=name) for name, f, l3, l4 in CASES])
def test_frame_lands_in_exactly_its_classes(obj, hook, frame, l3, l4):
    """One frame adds 1 packet and its full length to its l3 class (and l4 class if IP) of its hook's direction,
    nothing elsewhere."""
    if refused_as_skb(hook, frame):
        with pytest.raises(ProbeError) as refused:
            run(obj, hook, frame)
        assert refused.value.errno == errno.EINVAL
        assert_counters(obj, [])
        return
    run(obj, hook, frame)
    assert_counters(obj, [(frame, l3, l4, 1)], HOOKS[hook][1])


def test_fresh_object_counts_nothing(obj):
    """A freshly loaded object reads all zero before any frame."""
    assert_counters(obj, [])


@pytest.mark.parametrize("length", [0, 1, 13])
def test_frame_shorter_than_ethernet_header(obj, hook, length):
    """Under 14 bytes: the kernel refuses the run (EINVAL, nothing counted) or the program counts it as l3 other."""
    # Kernels checked so far (6.x) refuse, for XDP and skbs alike: the programs' own "no Ethernet header"
    # branch is unreachable this way.
    frame = bytes(length)
    try:
        run(obj, hook, frame)
    except ProbeError as e:
        assert e.errno == errno.EINVAL
        assert_counters(obj, [])
    else:
        assert_counters(obj, [(frame, "other", None, 1)], HOOKS[hook][1])


def test_counts_accumulate_over_a_mix_of_frames(obj, hook):
    """Every case fed 1-3 times in shuffled order: every counter is the exact sum."""
    runs = [(frame, l3, l4, 1 + i % 3) for i, (_, frame, l3, l4) in enumerate(CASES)
            if not refused_as_skb(hook, frame)]
    schedule = [frame for frame, _, _, times in runs for _ in range(times)]
    random.Random(0).shuffle(schedule)
    for frame in schedule:
        run(obj, hook, frame)
    assert_counters(obj, runs, HOOKS[hook][1])


def test_hooks_share_the_map_by_direction(obj):
    """XDP and TC ingress add up in rx, TC egress alone in tx: one map, a key per direction of an interface."""
    frame = ether(ETH_IP, ipv4(UDP, udp(DNS)))
    for hook in HOOKS:
        run(obj, hook, frame)
    assert read_counters(obj, "rx") == expected_counters([(frame, "ipv4", "udp", 2)])
    assert read_counters(obj, "tx") == expected_counters([(frame, "ipv4", "udp", 1)])


def test_repeat_counts_every_run(obj, hook):
    """test_run with repeat=1000 runs the program 1000 times: 1000 packets, 1000 * len bytes."""
    frame = ether(ETH_IPV6, ipv6(UDP, udp(DNS)))
    run(obj, hook, frame, repeat=1000)
    assert_counters(obj, [(frame, "ipv6", "udp", 1000)], HOOKS[hook][1])


def test_separate_objects_count_separately(engine, obj):
    """Each loaded object has its own stats map: frames run on one never show on another."""
    with load(engine) as other:
        frame = ether(ETH_IP, ipv4(TCP, tcp()))
        run(other, "xdp", frame, repeat=3)
        assert_counters(other, [(frame, "ipv4", "tcp", 3)])
    assert_counters(obj, [])


def test_interface_without_a_slot_counts_nowhere(engine, hook):
    """The programs only look slots up: on an interface the probe does not follow (no slot) a frame is handed on
    and the stats map stays at zero."""
    with engine.load_bytes(embedded_object()) as bare:
        run(bare, hook, ether(ETH_IP, ipv4(TCP, tcp())), repeat=5)
        zero = bytes(layout.STATS.size)
        assert all(v == [zero] * len(v) for _, v in bare.map(layout.STATS_MAP).items())


def test_counts_land_under_their_interface_alone(obj, hook):
    """Another interface's keys in the same map stay at zero."""
    other = LOOPBACK + 1000
    slots_of(obj).add(other)
    frame = ether(ETH_IPV6, ipv6(TCP, tcp()))
    run(obj, hook, frame, repeat=2)
    assert_counters(obj, [(frame, "ipv6", "tcp", 2)], HOOKS[hook][1])
    for direction in layout.DIRECTIONS:
        assert read_counters(obj, direction, other) == zero_counters()


# ------------------------------------------------------------------------------------------ GSO packets (root)

GSO_SIZE = 700
PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: 5 segments of 700 bytes or fewer; the skb must fit in a page

# (id, frame of a payload, l3, l4): the super-packet is the frame of the whole payload; the wire frames its GSO
# segments become are the frames of each gso_size piece, every one with the headers again.
GSO_CASES = [
    ("tcp-ipv4-with-options", lambda p: ether(ETH_IP, ipv4(TCP, tcp(p, options=bytes(12)))), "ipv4", "tcp"),
    ("tcp-ipv6", lambda p: ether(ETH_IPV6, ipv6(TCP, tcp(p))), "ipv6", "tcp"),
    ("udp-ipv4-gso-udp-l4", lambda p: ether(ETH_IP, ipv4(UDP, udp(p))), "ipv4", "udp"),
    ("udp-ipv6-gso-udp-l4", lambda p: ether(ETH_IPV6, ipv6(UDP, udp(p))), "ipv6", "udp"),
    ("tcp-ipv6-hop-by-hop", lambda p: ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 1)], TCP, tcp(p))), "ipv6", "tcp"),
    ("tcp-ipv4-ip-options-qinq", lambda p: ether(ETH_IP, ipv4(TCP, tcp(p), ihl=9), tags=[VLAN_AD, VLAN_Q]),
     "ipv4", "tcp"),
    # Another L4 protocol (here GRE, as GSO_GRE would be): only L2 and L3 repeat, as the kernel counts it.
    ("gre-ipv4", lambda p: ether(ETH_IP, ipv4(GRE, p)), "ipv4", "other"),
]


def segments(build, payload, size):
    """The wire frames of a GSO packet: build(piece) of each `size`-byte piece of the payload, the last shorter."""
    return [build(payload[at:at + size]) for at in range(0, len(payload), size)]


@pytest.mark.parametrize("payload", [PAYLOAD, PAYLOAD[:4 * GSO_SIZE]], ids=["last-segment-short", "whole-segments"])
@pytest.mark.parametrize("build, l3, l4", [pytest.param(b, l3, l4, id=name) for name, b, l3, l4 in GSO_CASES])
def test_gso_packet_counts_its_wire_frames(obj, tc_hook, build, l3, l4, payload):
    """A super-packet of gso_segs N counts N packets and the bytes of the N frames its segments become."""
    wire = segments(build, payload, GSO_SIZE)
    run_gso(obj, tc_hook, build(payload), len(wire), GSO_SIZE)
    assert_counters(obj, [(frame, l3, l4, 1) for frame in wire], HOOKS[tc_hook][1])


@pytest.mark.parametrize("gso_segs", [0, 1])
def test_skb_of_no_more_than_one_segment_counts_once(obj, tc_hook, gso_segs):
    """gso_segs 0 (no GSO) and 1 count the skb once, as it is."""
    frame = ether(ETH_IP, ipv4(TCP, tcp(PAYLOAD)))
    run_gso(obj, tc_hook, frame, gso_segs, 0)
    assert_counters(obj, [(frame, "ipv4", "tcp", 1)], HOOKS[tc_hook][1])


# ------------------------------------------------------------------------ the TC programs on real skbs (root)

CLONE_NEWNET = 0x40000000
# Frames the kernel drops on receive before any TC program sees them: the VLAN tag it takes off into
# skb->vlan_tci (skb_vlan_untag) needs 6 bytes after the Ethernet header. XDP, which runs first, counts them.
DROPPED_BEFORE_TC_INGRESS = {"8021q-tag-cut-to-2-bytes", "8021q-tag-missing-14-byte-frame"}
# Sends frames out of an interface with a virtio_net_hdr saying that only the Ethernet header is linear: a frame
# of a page or more becomes an skb with the rest in page fragments (packet_snd). argv: interface, frames (hex).
SEND_PAGED = """
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(struct.pack("<BBHHHH", 0, 0, 14, 0, 0, 0) + bytes.fromhex(frame))  # struct virtio_net_hdr, hdr_len 14
"""


def _setns(fd):
    if syscall.libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


@pytest.fixture
def probe_side(pair):
    """The pair, with this thread in the probe's namespace: interface names and sockets are that namespace's; its
    `index` is the probe's interface's, under which the probe's programs count there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    inside = os.open("/run/netns/" + pair.probe_ns, os.O_RDONLY)
    try:
        _setns(inside)
        pair.index = interfaces.ifindex(pair.probe_if)
        yield pair
    finally:
        _setns(home)
        os.close(inside)
        os.close(home)


def attach(obj, interface, programs, owner=layout.OWNER):
    """TCX links of an object's programs, {hook: name}, on an interface (with its keys, for the probe's); close them
    after use."""
    if layout.STATS_MAP in obj.maps:
        slots_of(obj).add(interfaces.ifindex(interface))
    return [tc.attach_tc(obj.program(name).fd, interface, hook, owner, method="link")
            for hook, name in programs.items()]


@pytest.fixture
def counting(probe_side, obj):
    """The probe's TC programs on both hooks of the probe's interface, counting into `obj`."""
    links = attach(obj, probe_side.probe_if, {"ingress": layout.PROGRAMS["rx", "tc"],
                                              "egress": layout.PROGRAMS["tx", "tc"]})
    try:
        yield probe_side
    finally:
        for link in links:
            link.close()


def send_out(interface, frames):
    """Send raw frames out of an interface of this thread's namespace."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((interface, 0))
        for frame in frames:
            s.send(frame)


def test_tc_programs_count_real_skbs_exactly(counting, obj):
    """Every case sent through the probe's interface each way: egress counts every frame as a test run would;
    ingress too, where the kernel has moved the outer VLAN tag into skb->vlan_tci, and dropped the frames too
    short for that. IP frames shorter than their header, which test runs refuse, count here."""
    pair = counting
    send_out(pair.probe_if, [frame for _, frame, _, _ in CASES])
    pair.send_frames([frame for _, frame, _, _ in CASES])
    settle()
    assert read_counters(obj, "tx", pair.index) == expected_counters([(frame, l3, l4, 1)
                                                                      for _, frame, l3, l4 in CASES])
    assert read_counters(obj, "rx", pair.index) == expected_counters([(frame, l3, l4, 1)
                                                                      for name, frame, l3, l4 in CASES
                                                                      if name not in DROPPED_BEFORE_TC_INGRESS])


def totals(counters):
    return counters["packets"], counters["bytes"]


@pytest.fixture
def skbs_counted(probe_side, engine, tmp_path):
    """{hook: the counts map of a program that counts skbs, not frames (tests/bpf/count.bpf.c)} on both hooks of
    the probe's interface."""
    path = str(compile_bpf(tmp_path, bpf_source("count.bpf.c")))
    counters, links = {}, []
    try:
        for hook in ("ingress", "egress"):
            counters[hook] = engine.load_file(path)
            links += attach(counters[hook], probe_side.probe_if, {hook: "knptest_count"}, "knptest")
        yield {hook: counter.map("counts") for hook, counter in counters.items()}
    finally:
        for link in links:
            link.close()
        for counter in counters.values():
            counter.close()


def test_gso_and_gro_count_the_frames_on_the_wire(counting, obj, skbs_counted):
    """TCP both ways through the probe's interface, segmented by GSO after TC egress and merged by GRO before TC
    ingress: each direction counts what the kernel counted on the wire, frame by frame, packets and bytes."""
    pair = counting
    pair.run(pair.probe_ns, "ethtool", "-K", pair.probe_if, "tso", "off", "gso", "on", "gro", "on")
    before = link_stats(pair, pair.peer_ns, pair.peer_if)
    sent_by_peer = sniff_sent(pair.peer_ns, pair.peer_if)
    sent_by_probe = sniff_sent(pair.probe_ns, pair.probe_if)
    pair.send_tcp(3000000)  # into the probe's interface, in MSS-sized frames the peer segmented
    server = subprocess.Popen(["ip", "netns", "exec", pair.peer_ns, sys.executable, "-c", TCP_SERVER, pair.peer_ip,
                               "5002"], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        with socket.create_connection((pair.peer_ip, 5002)) as client:  # out of the probe's interface
            client.sendall(bytes(3000000))
            client.shutdown(socket.SHUT_WR)
            assert server.stdout.readline().strip() == "3000000"
    finally:
        server.kill()
        server.wait()
    rx, tx = read_counters(obj, "rx", pair.index), read_counters(obj, "tx", pair.index)
    # With GRO on, the veth drops frames when its NAPI ring is full (the peer's tx dropped counts them; TCP
    # sends them again): the sniffer saw them leave, the probe never got them, and their sizes are unknown.
    dropped = delta(link_stats(pair, pair.peer_ns, pair.peer_if), before)["tx"]["dropped"]
    peer_packets, peer_bytes = sent_by_peer()
    assert rx["packets"] == peer_packets - dropped and totals(rx["l4"]["tcp"]) == totals(rx)
    if not dropped:
        assert rx["bytes"] == peer_bytes
    assert totals(tx) == sent_by_probe() and totals(tx["l4"]["tcp"]) == totals(tx)
    # Fewer skbs than frames passed each hook: the counts above are of GRO and GSO packets.
    for hook, frames in (("ingress", rx["packets"]), ("egress", tx["packets"])):
        skbs = COUNTER.unpack(skbs_counted[hook].lookup(bytes(4)))[0]
        assert skbs < frames / 2, "%s: %d skbs for %d frames" % (hook, skbs, frames)


@pytest.mark.parametrize("tags, l3, l4", [(1, "ipv4", "udp"), (2, "ipv4", "udp"), (3, "other", None)])
def test_vlan_tag_held_apart_counts_as_on_the_wire(probe_side, engine, obj, tmp_path, tags, l3, l4):
    """Datagrams leaving the probe's interface with `tags` VLAN tags, the outer one held apart in skb->vlan_tci
    (pushed by a program before the probe's): two tags in all are IP, three are "other", each with its 4 bytes."""
    pair = probe_side
    source = "#define TAGS %d\n%s" % (tags, bpf_source("tc_gso_vlan_push.bpf.c"))
    with engine.load_file(str(compile_bpf(tmp_path, source))) as tagger:
        links = attach(tagger, pair.probe_if, {"egress": "knptest_vlan_push"}, "knptest")
        links += attach(obj, pair.probe_if, {"egress": layout.PROGRAMS["tx", "tc"]})
        try:
            before = pair.counters(pair.probe_ns, pair.probe_if)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(5):
                    s.sendto(bytes(100), (pair.peer_ip, 9))
            settle()
            after = pair.counters(pair.probe_ns, pair.probe_if)
        finally:
            for link in links:
                link.close()
    frame = ether(ETH_IP, ipv4(UDP, udp(bytes(100))), tags=[VLAN_AD] + [VLAN_Q] * (tags - 1))
    tx = read_counters(obj, "tx", pair.index)
    assert tx == expected_counters([(frame, l3, l4, 5)])
    # The outer tag was held apart: the lengths the kernel counted (skb->len) lack its 4 bytes.
    assert (after["tx_packets"] - before["tx_packets"], after["tx_bytes"] - before["tx_bytes"]) == \
        (5, 5 * (len(frame) - 4))


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tag-held-apart"])
def test_udp_gso_counts_the_frames_on_the_wire(probe_side, engine, obj, skbs_counted, tmp_path, tagged):
    """UDP datagrams sent with UDP_SEGMENT leave the probe's interface as GSO packets (GSO_UDP_L4), segmented after
    TC egress: the counts are the segments', each with its headers, and with the VLAN tag a program before the
    probe's pushed (held apart in skb->vlan_tci, so the sniffer's lengths lack its 4 bytes)."""
    pair = probe_side
    pair.run(pair.probe_ns, "ethtool", "-K", pair.probe_if, "tx-udp-segmentation", "off")
    links = []
    with engine.load_file(str(compile_bpf(tmp_path, bpf_source("tc_gso_vlan_push.bpf.c")))) as tagger:
        try:
            if tagged:
                links += attach(tagger, pair.probe_if, {"egress": "knptest_vlan_push"}, "knptest")
            links += attach(obj, pair.probe_if, {"egress": layout.PROGRAMS["tx", "tc"]})
            sent = sniff_sent(pair.probe_ns, pair.probe_if)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT: 1000-byte segments
                for _ in range(10):
                    s.sendto(bytes(7500), (pair.peer_ip, 9))
            packets, size = sent()
        finally:
            for link in links:
                link.close()
    tx = read_counters(obj, "tx", pair.index)
    assert packets == 10 * 8
    assert totals(tx) == totals(tx["l4"]["udp"]) == (packets, size + (4 * packets if tagged else 0))
    skbs = COUNTER.unpack(skbs_counted["egress"].lookup(bytes(4)))[0]
    assert skbs == 10, "%d skbs for %d frames" % (skbs, packets)


def test_headers_outside_the_linear_data_are_pulled_in(probe_side, engine, obj, tmp_path):
    """Frames of a page or more whose skbs hold only the Ethernet header in their linear data, each way: the probe
    pulls the headers in and counts each in its classes. The same programs built not to pull, before the probe's,
    see no L3 header there: the skbs were paged."""
    pair = probe_side
    for ns, interface in ((pair.probe_ns, pair.probe_if), (pair.peer_ns, pair.peer_if)):
        pair.run(ns, "ip", "link", "set", "dev", interface, "mtu", "9000")
    with open(os.path.join(ROOT, "bpf", "kubenetprobe.bpf.c")) as f:
        unpulled = str(compile_bpf(tmp_path, "#define KNP_TC_PULL_LEN 0\n" + f.read()))
    programs = {"ingress": layout.PROGRAMS["rx", "tc"], "egress": layout.PROGRAMS["tx", "tc"]}
    cases = [(ether(ETH_IP, ipv4(TCP, tcp(bytes(6000)))), "ipv4", "tcp"),
             (ether(ETH_IP, ipv4(ICMP, icmp() + bytes(5000))), "ipv4", "icmp"),
             (ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 0)], UDP, udp(bytes(7000)))), "ipv6", "udp"),
             (ether(ETH_IPV6, ipv6(ICMPV6, icmp(128) + bytes(4100))), "ipv6", "icmpv6")]
    with engine.load_file(unpulled) as without_pull:
        links = attach(without_pull, pair.probe_if, programs) + attach(obj, pair.probe_if, programs)
        try:
            for ns, interface in ((pair.probe_ns, pair.probe_if), (pair.peer_ns, pair.peer_if)):
                pair.run(ns, sys.executable, "-c", SEND_PAGED, interface, *[frame.hex() for frame, _, _ in cases])
            settle()
        finally:
            for link in links:
                link.close()
        for direction in layout.DIRECTIONS:
            assert read_counters(obj, direction, pair.index) == expected_counters([(f, l3, l4, 1)
                                                                                  for f, l3, l4 in cases])
            assert read_counters(without_pull, direction, pair.index) == expected_counters([(f, l3, "other", 1)
                                                                                           for f, l3, _ in cases])
