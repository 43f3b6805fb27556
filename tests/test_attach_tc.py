"""The TC attach layer on a veth pair: exact counts on both hooks through a TCX link and a cls_bpf filter, beside
other programs, swaps under traffic, and nothing left behind (or, after a SIGKILL, only what detach removes).

The test's thread enters the probe's namespace (`probe_side`): interface names, netlink and ifindexes are
that namespace's for the attach layer, as they would be for a probe running there.
"""
import contextlib
import errno
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT, bpf_source, compile_bpf, tool
from frames import ETH_LLDP, ether
from netns import settle, sh
from probe.attach import tc
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_GET_FD_BY_ID, BPF_TCX_EGRESS, BPF_TCX_INGRESS
from probe.bpf.engine import open_engine
from probe.bpf.objects import Map
from probe.errors import KernelError, ProbeError
from probe.net import rtnetlink
from probe.net import tc as tc_requests
from traffic import COUNTER

OWNER = "knptest"
PROGRAM = OWNER + "_count"
OTHER = "other_count"
TCX = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
METHODS = ("link", "netlink")
DIRECTIONS = ("ingress", "egress")
OPPOSITE = {"ingress": "egress", "egress": "ingress"}

# Attaches the probe's program on both hooks with the method in argv, says its program id, and waits to be killed.
HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from probe.attach import tc
from probe.bpf.libbpf import LibbpfEngine
obj = LibbpfEngine().load_file(sys.argv[2])
held = [tc.attach_tc(obj.program(sys.argv[3]).fd, sys.argv[4], d, sys.argv[5], method=sys.argv[6])
        for d in ("ingress", "egress")]
print(held[0].program_id, flush=True)
time.sleep(600)
"""
# Sends `count` copies of one frame out of an interface, saying when it starts.
SEND_MANY = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame, count = bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s.send(frame)
print("sending", flush=True)
send = s.send
for _ in range(count - 1):
    send(frame)
"""


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Compiled count.bpf.c: "ours" (named PROGRAM), "other" (named OTHER), "final" (PROGRAM, ends the hook)."""
    folder = tmp_path_factory.mktemp("tc")
    source = bpf_source("count.bpf.c")
    return {"ours": str(compile_bpf(folder, source)),
            "other": str(compile_bpf(folder, "#define PROGRAM %s\n%s" % (OTHER, source))),
            "final": str(compile_bpf(folder, "#define VERDICT TC_ACT_OK\n%s" % source))}


@pytest.fixture(params=["libbpf", "native"])
def loader(request):
    return open_engine(request.param)


@pytest.fixture
def probe_side(pair):
    """The pair, with this thread in the probe's namespace for the length of the test."""
    with pair.inside():
        yield pair


@contextlib.contextmanager
def loaded(engine, path, reuse=None):
    """An object loaded for the `with`; `reuse` another loaded object whose counts map it shares."""
    obj = engine.load_file(path, reuse_maps={"counts": reuse.map("counts").fd} if reuse else None)
    try:
        yield obj
    finally:
        obj.close()


def counted(counts_map):
    """(packets, bytes) a count.bpf.c program counted into its map."""
    return COUNTER.unpack(counts_map.lookup(bytes(4)))


def frame(pair, direction, size=100):
    """An LLDP frame that crosses the probe's `direction` hook: from the peer (ingress), or to it (egress)."""
    if direction == "ingress":
        return pair.frame(ETH_LLDP, bytes(size - 14))
    return ether(ETH_LLDP, bytes(size - 14), dst=pair.peer_mac, src=pair.probe_mac)


def sender(pair, direction):
    """(namespace, interface) of the end that sends through the probe's `direction` hook: the peer for ingress,
    the probe's own end for egress."""
    return (pair.peer_ns, pair.peer_if) if direction == "ingress" else (pair.probe_ns, pair.probe_if)


def send(pair, direction, frames):
    """Send frames through the probe's `direction` hook."""
    ns, ifname = sender(pair, direction)
    pair.send_from(ns, ifname, frames)
    settle()


def send_known_traffic(pair, direction):
    """7 frames of 100 bytes and 3 of 300 through one hook; returns (packets, bytes) sent."""
    send(pair, direction, [frame(pair, direction)] * 7 + [frame(pair, direction, 300)] * 3)
    return 10, 7 * 100 + 3 * 300


def pair_index(pair):
    """The ifindex of the probe's interface, as its namespace numbers it."""
    return int(pair.run(pair.probe_ns, "cat", "/sys/class/net/%s/ifindex" % pair.probe_if).stdout)


def hooks(pair):
    """What the tools see on the probe's interface: qdisc kinds, the filters of each hook (tc), bpftool's tc
    entries; and the TCX programs, which no tool here lists (bpftool 7.1 predates TCX), from the kernel."""
    def tool_json(*cmd):
        return json.loads(pair.run(pair.probe_ns, *cmd).stdout)
    index = pair_index(pair)
    return {
        "qdiscs": sorted(q["kind"] for q in tool_json(tool("tc"), "-j", "qdisc", "show", "dev", pair.probe_if)),
        "filters": {d: tool_json(tool("tc"), "-j", "filter", "show", "dev", pair.probe_if, d) for d in DIRECTIONS},
        "bpftool": tool_json(tool("bpftool"), "-j", "net", "show", "dev", pair.probe_if)[0]["tc"],
        "tcx": {d: syscall.tcx_programs(index, TCX[d]) for d in DIRECTIONS},
    }


@contextlib.contextmanager
def map_of_program(prog_id):
    """The (first) map of a program the test did not load itself, by the program's id, for the `with`."""
    map_id = json.loads(sh(tool("bpftool"), "-j", "prog", "show", "id", str(prog_id)).stdout)["map_ids"][0]
    fd = syscall.bpf(BPF_MAP_GET_FD_BY_ID, syscall.GetIdAttr(id=map_id))
    try:
        yield Map(fd)
    finally:
        os.close(fd)


def add_filter_with_tc(pair, direction, path):
    """A filter of another tool: tc's own loader puts the program of `path` at priority 1, handle 1; returns
    its program id."""
    pair.run(pair.probe_ns, tool("tc"), "qdisc", "add", "dev", pair.probe_if, "clsact")
    pair.run(pair.probe_ns, tool("tc"), "filter", "add", "dev", pair.probe_if, direction, "prio", "1", "handle",
             "1", "bpf", "da", "obj", path, "sec", "tc")
    listed = json.loads(pair.run(pair.probe_ns, tool("tc"), "-j", "filter", "show", "dev", pair.probe_if,
                                 direction).stdout)
    return [f["options"]["prog"]["id"] for f in listed if "options" in f][0]


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("method", METHODS)
def test_counts_one_hook_exactly_and_leaves_nothing(probe_side, objects, loader, method, direction):
    """Every frame through the hook counted, packets and bytes, none of the other direction; close() leaves
    the interface as it found it, qdiscs included."""
    pair = probe_side
    before = hooks(pair)
    with loaded(loader, objects["ours"]) as obj:
        program = obj.program(PROGRAM)
        attached = tc.attach_tc(program.fd, pair.probe_if, direction, OWNER, method=method)
        assert (attached.interface, attached.hook, attached.direction, attached.mode, attached.method) == \
            (pair.probe_if, "tc", direction, None, method)
        assert attached.ifindex == pair_index(pair)
        assert attached.program_id == program.id
        assert (attached.fd is not None) == (method == "link")
        assert tc.programs(pair.probe_if) == [(direction, program.id, PROGRAM, method)]
        if method == "netlink":
            [ours] = tc_requests.filters(attached.ifindex, direction)
            assert (ours.prio, ours.handle, ours.kind, ours.prog_id) == (tc.FILTER_PRIO, tc.FILTER_HANDLE, "bpf",
                                                                          program.id)
            assert ours.flags & tc_requests.TCA_BPF_FLAG_ACT_DIRECT
            assert ours.name == "%s:[%d]" % (PROGRAM, program.id)
            assert attached.added_qdisc
        sent = send_known_traffic(pair, direction)
        send(pair, OPPOSITE[direction], [frame(pair, OPPOSITE[direction])] * 5)
        assert counted(obj.map("counts")) == sent
        attached.close()
        attached.close()  # a second close is harmless
    assert hooks(pair) == before
    assert tc.programs(pair.probe_if) == []


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("method", METHODS)
def test_beside_a_filter_of_another_tool(probe_side, objects, engine, method, direction):
    """A clsact qdisc with tc's own filter at priority 1: both count every frame, and after close() the
    filter and the qdisc stay, and the filter still counts."""
    pair = probe_side
    other_id = add_filter_with_tc(pair, direction, objects["other"])
    before = hooks(pair)
    with map_of_program(other_id) as other, loaded(engine, objects["ours"]) as obj:
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method=method)
        assert getattr(attached, "added_qdisc", False) is False
        # TCX runs before every filter; a filter at priority 1 before ours
        order = [OTHER, PROGRAM] if method == "netlink" else [PROGRAM, OTHER]
        assert [p.name for p in tc.programs(pair.probe_if)] == order
        sent = send_known_traffic(pair, direction)
        assert counted(obj.map("counts")) == counted(other) == sent
        attached.close()
        assert hooks(pair) == before
        again = send_known_traffic(pair, direction)
        assert counted(other) == (sent[0] + again[0], sent[1] + again[1])


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("method", METHODS)
def test_beside_another_tcx_program(probe_side, objects, engine, method, direction):
    """Another TCX program, attached first: both count every frame, and after close() it stays and counts."""
    pair = probe_side
    index = pair_index(pair)
    with loaded(engine, objects["other"]) as other:
        link = syscall.link_create_tcx(other.program(OTHER).fd, index, TCX[direction])
        try:
            before = hooks(pair)
            with loaded(engine, objects["ours"]) as obj:
                attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method=method)
                assert tc.programs(pair.probe_if) == [(direction, other.program(OTHER).id, OTHER, "link"),
                                                      (direction, obj.program(PROGRAM).id, PROGRAM, method)]
                sent = send_known_traffic(pair, direction)
                assert counted(obj.map("counts")) == counted(other.map("counts")) == sent
                attached.close()
            assert hooks(pair) == before
            again = send_known_traffic(pair, direction)
            assert counted(other.map("counts")) == (sent[0] + again[0], sent[1] + again[1])
        finally:
            os.close(link)


@pytest.mark.integration
def test_close_keeps_the_qdisc_it_added_while_another_filter_uses_it(probe_side, objects, engine):
    """The qdisc the attachment added goes with it only if no filter is left: here tc added one meanwhile."""
    pair = probe_side
    with loaded(engine, objects["ours"]) as obj:
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method="netlink")
        assert attached.added_qdisc
        pair.run(pair.probe_ns, tool("tc"), "filter", "add", "dev", pair.probe_if, "egress", "prio", "1", "handle",
                 "1", "bpf", "da", "obj", objects["other"], "sec", "tc")
        attached.close()
    after = hooks(pair)
    assert "clsact" in after["qdiscs"] and after["filters"]["ingress"] == []
    assert [p.name for p in tc.programs(pair.probe_if)] == [OTHER]


@pytest.mark.integration
def test_a_program_that_returns_tc_act_ok_ends_the_hook(probe_side, objects, engine):
    """Why a counting program returns TC_ACT_UNSPEC: after one that returns TC_ACT_OK, nothing else runs."""
    pair = probe_side
    with loaded(engine, objects["final"]) as final, loaded(engine, objects["other"]) as other:
        first = tc.attach_tc(final.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method="link")
        second = tc.attach_tc(other.program(OTHER).fd, pair.probe_if, "ingress", "other", method="link")
        try:
            sent = send_known_traffic(pair, "ingress")
            assert counted(final.map("counts")) == sent
            assert counted(other.map("counts")) == (0, 0)
        finally:
            second.close()
            first.close()


@contextlib.contextmanager
def holder(pair, objects, method):
    """A child process holding the probe's program on both hooks of the probe's interface; yields it and the
    program's id."""
    proc = subprocess.Popen(["ip", "netns", "exec", pair.probe_ns, sys.executable, "-c", HOLDER, ROOT,
                             objects["ours"], PROGRAM, pair.probe_if, OWNER, method],
                            stdout=subprocess.PIPE, universal_newlines=True)
    try:
        line = proc.stdout.readline()
        assert line, "the holder failed to attach"
        yield proc, int(line)
    finally:
        proc.kill()
        proc.wait()


def kill(proc):
    proc.kill()
    proc.wait()


@pytest.mark.integration
def test_sigkill_of_a_tcx_holder_leaves_nothing(probe_side, objects):
    pair = probe_side
    before = hooks(pair)
    with holder(pair, objects, "link") as (proc, prog_id):
        assert tc.programs(pair.probe_if) == [(d, prog_id, PROGRAM, "link") for d in DIRECTIONS]
        kill(proc)
    deadline = time.monotonic() + 5
    while tc.programs(pair.probe_if):
        assert time.monotonic() < deadline, "the TCX links outlived their process"
        time.sleep(0.05)
    assert hooks(pair) == before
    with pytest.raises(KernelError) as e:
        syscall.prog_fd_by_id(prog_id)
    assert e.value.errno == errno.ENOENT  # nothing holds the program any more


@pytest.mark.integration
def test_a_killed_netlink_holder_leaves_its_filters_and_detach_removes_them(probe_side, objects):
    """The filters stay, and count, after a SIGKILL; detach removes them (and only them: the qdisc stays)."""
    pair = probe_side
    before = hooks(pair)
    with holder(pair, objects, "netlink") as (proc, prog_id):
        kill(proc)
    assert tc.programs(pair.probe_if) == [(d, prog_id, PROGRAM, "netlink") for d in DIRECTIONS]
    with map_of_program(prog_id) as counts:
        assert counted(counts) == (0, 0)
        assert send_known_traffic(pair, "egress") == counted(counts)
    removed = tc.detach(pair.probe_if, OWNER)
    assert removed == [(d, prog_id, PROGRAM, "netlink") for d in DIRECTIONS]
    assert tc.programs(pair.probe_if) == []
    after = hooks(pair)
    assert after["qdiscs"] == sorted(before["qdiscs"] + ["clsact"])  # no proof it was the killed probe's
    assert dict(after, qdiscs=before["qdiscs"]) == before
    assert tc.detach(pair.probe_if, OWNER) == []


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_place_of_another_owner(probe_side, objects, engine, direction):
    """Another owner's filter at the probe's priority and handle: attach refuses with its name, detach refuses
    without force and removes it with force."""
    pair = probe_side
    with loaded(engine, objects["other"]) as other:
        program = other.program(OTHER)
        index = pair_index(pair)
        tc_requests.add_clsact(index)
        tc_requests.attach_bpf(index, direction, tc.FILTER_PRIO, tc.FILTER_HANDLE, program.fd, "other")
        with loaded(engine, objects["ours"]) as obj:
            with pytest.raises(KernelError) as e:
                tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method="netlink")
        assert e.value.errno == errno.EEXIST
        assert "priority 19278, handle 0x4b4e50: program id %d (%s)" % (program.id, OTHER) in str(e.value)
        with pytest.raises(ProbeError) as e:
            tc.detach(pair.probe_if, OWNER)
        assert "is not %s's" % OWNER in str(e.value) and "--force" in str(e.value)
        assert tc.programs(pair.probe_if) == [(direction, program.id, OTHER, "netlink")]
        assert tc.detach(pair.probe_if, OWNER, force=True) == [(direction, program.id, OTHER, "netlink")]
        assert tc.programs(pair.probe_if) == []


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("method", METHODS)
def test_update_under_traffic_loses_no_frame(probe_side, objects, loader, method, direction):
    """Programs swapped back and forth while frames flow: the two, sharing one map, counted every frame."""
    pair = probe_side
    count = 200000
    one = frame(pair, direction)
    ns, ifname = sender(pair, direction)
    crossed = "rx_packets" if direction == "ingress" else "tx_packets"
    before = pair.counters(pair.probe_ns, pair.probe_if)[crossed]
    with loaded(loader, objects["ours"]) as first, loaded(loader, objects["ours"], reuse=first) as second:
        attached = tc.attach_tc(first.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method=method)
        blast = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SEND_MANY, ifname, one.hex(),
                                  str(count)], stdout=subprocess.PIPE, universal_newlines=True)
        try:
            assert blast.stdout.readline().strip() == "sending"
            swaps = 0
            while blast.poll() is None:
                obj = (second, first)[swaps % 2]
                attached.update(obj.program(PROGRAM).fd)
                assert attached.program_id == obj.program(PROGRAM).id
                swaps += 1
                time.sleep(0.005)
        finally:
            blast.kill()
            blast.wait()
        settle()
        assert blast.returncode == 0
        assert swaps >= 10, "too few swaps while frames flowed: %d" % swaps
        assert pair.counters(pair.probe_ns, pair.probe_if)[crossed] - before == count
        assert counted(first.map("counts")) == (count, count * len(one))
        assert tc.programs(pair.probe_if) == [(direction, attached.program_id, PROGRAM, method)]
        attached.close()
    assert tc.programs(pair.probe_if) == []


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_take_over_a_pinned_tcx_link(probe_side, objects, engine, bpffs, direction):
    """A pinned link outlives close(keep=True) and counts on; the next run takes it over and swaps its
    program; detach ends it though its pin is still there."""
    pair = probe_side
    pin = os.path.join(bpffs, "link")
    with loaded(engine, objects["ours"]) as first:
        attached = tc.attach_tc(first.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method="link")
        syscall.obj_pin(attached.fd, pin)
        attached.close(keep=True)
        sent = send_known_traffic(pair, direction)
        assert counted(first.map("counts")) == sent
        with loaded(engine, objects["ours"], reuse=first) as second:
            taken = tc.take_over(pair.probe_if, direction, OWNER, syscall.obj_get(pin))
            assert (taken.method, taken.direction, taken.program_id) == ("link", direction,
                                                                         first.program(PROGRAM).id)
            taken.update(second.program(PROGRAM).fd)
            send_known_traffic(pair, direction)
            assert counted(second.map("counts")) == (2 * sent[0], 2 * sent[1])
            taken.close(keep=True)
            assert tc.programs(pair.probe_if) == [(direction, second.program(PROGRAM).id, PROGRAM, "link")]
            with pytest.raises(ProbeError) as e:
                tc.take_over(pair.probe_if, OPPOSITE[direction], OWNER, syscall.obj_get(pin))
            assert "is stale" in str(e.value)
            assert tc.detach(pair.probe_if, OWNER) == [(direction, second.program(PROGRAM).id, PROGRAM, "link")]
    assert tc.programs(pair.probe_if) == []
    with pytest.raises(ProbeError) as e:
        tc.take_over(pair.probe_if, direction, OWNER, syscall.obj_get(pin))  # the pin of a detached link
    assert "is stale" in str(e.value)
    os.unlink(pin)


@pytest.mark.integration
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_take_over_a_netlink_filter(probe_side, objects, engine, direction):
    """The filter close(keep=True) left is taken over by its place and owner; its close() then leaves the
    qdisc, which nothing proves the taker added."""
    pair = probe_side
    before = hooks(pair)
    with loaded(engine, objects["ours"]) as first, loaded(engine, objects["ours"], reuse=first) as second:
        attached = tc.attach_tc(first.program(PROGRAM).fd, pair.probe_if, direction, OWNER, method="netlink")
        attached.close(keep=True)
        with pytest.raises(ProbeError) as e:
            tc.take_over(pair.probe_if, OPPOSITE[direction], OWNER)
        assert "is stale: its filter's place holds nothing" in str(e.value)
        with pytest.raises(ProbeError):
            tc.take_over(pair.probe_if, direction, "someone")
        taken = tc.take_over(pair.probe_if, direction, OWNER)
        assert (taken.method, taken.program_id, taken.added_qdisc) == ("netlink", first.program(PROGRAM).id, False)
        taken.update(second.program(PROGRAM).fd)
        sent = send_known_traffic(pair, direction)
        assert counted(second.map("counts")) == sent
        taken.close()
    assert tc.programs(pair.probe_if) == []
    assert hooks(pair) == dict(before, qdiscs=sorted(before["qdiscs"] + ["clsact"]))


@pytest.mark.integration
def test_update_refused_once_the_filter_is_gone(probe_side, objects, engine):
    pair = probe_side
    with loaded(engine, objects["ours"]) as obj:
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method="netlink")
        tc.detach(pair.probe_if, OWNER)
        with pytest.raises(ProbeError) as e:
            attached.update(obj.program(PROGRAM).fd)
        assert "filter is gone or runs another program (no filter)" in str(e.value)
        attached.close()
    assert tc.programs(pair.probe_if) == []


@pytest.mark.integration
def test_refusals_before_any_change(probe_side, objects, engine):
    """A wrong direction, method or program name is refused before anything touches the interface."""
    pair = probe_side
    before = hooks(pair)
    with loaded(engine, objects["other"]) as obj:
        fd = obj.program(OTHER).fd
        for args, words in [((fd, pair.probe_if, "sideways", OWNER), "unknown TC direction 'sideways'"),
                            ((fd, pair.probe_if, "ingress", "other", "carrier pigeon"), "unknown attach method"),
                            ((fd, pair.probe_if, "ingress", OWNER), "program 'other_count' is not knptest's"),
                            ((fd, "knp-none", "ingress", "other"), "no such interface: knp-none")]:
            with pytest.raises(ProbeError) as e:
                tc.attach_tc(*args)
            assert words in str(e.value)
    assert hooks(pair) == before


@pytest.mark.integration
def test_auto_falls_back_to_netlink_without_tcx(probe_side, objects, engine, monkeypatch):
    """Where BPF_LINK_CREATE refuses TCX attach types (kernels before 6.6: EINVAL), "auto" adds the filter."""
    pair = probe_side
    with loaded(engine, objects["ours"]) as obj:
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "egress", OWNER)
        assert attached.method == "link"  # this kernel has TCX
        attached.close()

        def no_tcx(*args):
            raise KernelError("BPF_LINK_CREATE: Invalid argument", errno=errno.EINVAL)
        monkeypatch.setattr(syscall, "link_create_tcx", no_tcx)
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "egress", OWNER)
        assert attached.method == "netlink"
        assert send_known_traffic(pair, "egress") == counted(obj.map("counts"))
        with pytest.raises(KernelError) as e:
            tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method="link")
        assert "TCX needs kernel 6.6 or newer: try --attach netlink" in str(e.value)
        attached.close()
    assert tc.programs(pair.probe_if) == []


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS)
def test_close_after_the_interface_is_gone(probe_side, objects, engine, method):
    pair = probe_side
    with loaded(engine, objects["ours"]) as obj:
        attached = tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method=method)
        pair.run(pair.probe_ns, "ip", "link", "del", pair.probe_if)
        attached.close()


@pytest.mark.integration
def test_an_ingress_qdisc_is_refused_for_netlink(probe_side, objects, engine):
    pair = probe_side
    pair.run(pair.probe_ns, tool("tc"), "qdisc", "add", "dev", pair.probe_if, "ingress")
    before = hooks(pair)
    with loaded(engine, objects["ours"]) as obj:
        with pytest.raises(KernelError) as e:
            tc.attach_tc(obj.program(PROGRAM).fd, pair.probe_if, "ingress", OWNER, method="netlink")
    assert "has an ingress qdisc, and TC filters need clsact in its place" in str(e.value)
    assert hooks(pair) == before


def filter_message(handle=0x4B4E50, kind=b"bpf"):
    """One message of a filter dump as the kernel sends it: a cls_bpf filter at priority 19278 in chain 0."""
    options = (rtnetlink.attr(tc_requests.TCA_BPF_NAME, b"knptest_count:[42]\0") +
               rtnetlink.attr(tc_requests.TCA_BPF_FLAGS, struct.pack("=I", tc_requests.TCA_BPF_FLAG_ACT_DIRECT)) +
               rtnetlink.attr(tc_requests.TCA_BPF_ID, struct.pack("=I", 42)))
    return (rtnetlink.TCMSG.pack(0, 7, handle, tc_requests.HOOKS["egress"], (0x4B4E << 16) | socket.htons(3)) +
            rtnetlink.attr(tc_requests.TCA_KIND, kind + b"\0") +
            rtnetlink.attr(tc_requests.TCA_OPTIONS | rtnetlink.NLA_F_NESTED, options) +
            rtnetlink.attr(tc_requests.TCA_CHAIN, struct.pack("=I", 0)))


def test_a_filter_message():
    f = tc_requests.parse_filter(filter_message())
    assert (f.prio, f.handle, f.kind, f.protocol, f.chain, f.prog_id, f.name, f.flags) == \
        (0x4B4E, 0x4B4E50, "bpf", 3, 0, 42, "knptest_count:[42]", tc_requests.TCA_BPF_FLAG_ACT_DIRECT)
    other = tc_requests.parse_filter(filter_message(kind=b"u32"))
    assert (other.kind, other.prog_id, other.name) == ("u32", 0, "")
    assert tc_requests.parse_filter(filter_message(handle=0)) is None  # a priority's header


def test_damaged_filter_messages_raise_probe_errors_only():
    rng = random.Random(1)
    good = filter_message()
    for _ in range(5000):
        damaged = bytearray(good[:rng.randrange(len(good) + 1)])
        for _ in range(rng.randrange(4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            tc_requests.parse_filter(bytes(damaged))
        except ProbeError:
            pass


@pytest.mark.integration
def test_tc_requests(probe_side, objects, engine):
    """probe/net/tc.py alone: the qdisc added once, refusals with the kernel's reason, nothing left."""
    pair = probe_side
    index = pair_index(pair)
    before = hooks(pair)
    assert tc_requests.qdisc_kind(index) is None
    assert tc_requests.add_clsact(index) is True
    assert tc_requests.add_clsact(index) is False
    assert tc_requests.qdisc_kind(index) == "clsact"
    with loaded(engine, objects["ours"]) as obj:
        with pytest.raises(KernelError) as e:
            tc_requests.attach_bpf(index, "egress", 7, 9, obj.program(PROGRAM).fd, "x", replace=True)
        assert e.value.errno == errno.ENOENT
        assert len(e.value.message) > len(os.strerror(errno.ENOENT))  # the kernel's reason after the errno's
        tc_requests.attach_bpf(index, "egress", 7, 9, obj.program(PROGRAM).fd, "x")
        with pytest.raises(KernelError) as e:
            tc_requests.attach_bpf(index, "egress", 7, 9, obj.program(PROGRAM).fd, "x")
        assert e.value.errno == errno.EEXIST
        [f] = tc_requests.filters(index, "egress")
        assert (f.prio, f.handle, f.kind, f.name, f.prog_id) == (7, 9, "bpf", "x", obj.program(PROGRAM).id)
        assert tc_requests.filters(index, "ingress") == []
        tc_requests.delete_filter(index, "egress", 7, 9)
        with pytest.raises(KernelError) as e:
            tc_requests.delete_filter(index, "egress", 7, 9)
        assert e.value.errno == errno.ENOENT
    tc_requests.delete_clsact(index)
    assert tc_requests.qdisc_kind(index) is None
    assert hooks(pair) == before
