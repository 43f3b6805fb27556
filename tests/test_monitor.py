"""One NetworkMonitor, many interfaces: the object loaded once, its programs shared by every interface, counters
under each interface's keys in one stats map; detach, a reused ifindex, reload and pinned state with several
interfaces (the monitor in this process, this thread in the probe's namespace); the stats map's room and keys."""
import errno
import os
import time

import pytest

from frames import ETH_LLDP, ether
from netns import settle, sh
from probe import cli, layout, stats
from probe.bpf import syscall
from probe.bpf.engine import open_engine
from probe.bpf.objects import Map
from probe.bytecode import embedded_object
from probe.errors import KernelError
from probe.monitor import NetworkMonitor
from probe.reports import Reporter

pytestmark = pytest.mark.integration

SECOND_IF, SECOND_PEER = "knp2", "knp3"
LOAD_MS = 36  # a load of the object, measured here: what one object per interface cost at every attach


def frame(size=60):
    return ether(ETH_LLDP, bytes(size - 14))


def add_veth(pair, name, peer, index=None):
    """Another silent veth between the pair's namespaces: `name` at the probe's end (of ifindex `index`, if
    given), `peer` at the other, up, without addresses (IPv6 is off in both namespaces)."""
    sh("ip", "link", "add", name, *(["index", str(index)] if index else []), "netns", pair.probe_ns, "type", "veth",
       "peer", "name", peer, "netns", pair.peer_ns)
    sh("ip", "-n", pair.probe_ns, "link", "set", name, "up")
    sh("ip", "-n", pair.peer_ns, "link", "set", peer, "up")


def send(pair, frames, interface, outgoing=False):
    """Frames into the probe's `interface` from its peer (`interface` the peer's end), or with `outgoing` out of
    the probe's `interface`."""
    pair.send_from(pair.probe_ns if outgoing else pair.peer_ns, interface, frames)


@pytest.fixture
def two(pair):
    """The pair with a second veth (knp2 at the probe's end, knp3 at the peer's), this thread in the probe's
    namespace."""
    add_veth(pair, SECOND_IF, SECOND_PEER)
    with pair.inside():
        yield pair


def followed(slots_map):
    """{ifindex: slot} of every interface the slots map gives a slot (one walk of it)."""
    zero = layout.SLOT.pack(0)
    return {layout.SLOT.unpack(k)[0]: layout.SLOT.unpack(v)[0] for k, v in slots_map.items() if v != zero}


def keys(monitor):
    """(ifindex, direction) of each direction of every interface with a slot, the slots all distinct and the
    ones the monitor gave."""
    given = followed(monitor.slots_map)
    assert given == monitor.slots.given
    assert len(set(given.values())) == len(given)
    return sorted((ifindex, d) for ifindex in given for d in layout.DIRECTIONS)


def both_keys(*attachments):
    return sorted((a.ifindex, d) for a in attachments for d in layout.DIRECTIONS)


def program_ids(attachment):
    return {d: h.program_id for d, h in attachment.hooks.items()}


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_interfaces_share_the_programs_and_count_apart(two, loader):
    """Two interfaces run the same program at each hook (one load) and each counts exactly what crossed it."""
    pair = two
    with NetworkMonitor(loader=loader) as monitor:
        first, second = monitor.attach(pair.probe_if), monitor.attach(SECOND_IF)
        assert program_ids(first) == program_ids(second)
        for ifname in (pair.probe_if, SECOND_IF):  # as the kernel lists them, hook by hook
            assert {p.hook: p.prog_id for p in pair.probe_programs(ifname)} == {
                "ingress": first.hooks["rx"].program_id, "egress": first.hooks["tx"].program_id}
        reported = Reporter(monitor).reports()
        assert [r["program_ids"] for r in reported] == [program_ids(first)] * 2
        send(pair, [frame()] * 3, pair.peer_if)
        send(pair, [frame(100)] * 5, SECOND_PEER)
        send(pair, [frame()] * 2, pair.probe_if, outgoing=True)
        send(pair, [frame(80)] * 4, SECOND_IF, outgoing=True)
        settle()
        counted = monitor.packet_stats()
        assert keys(monitor) == both_keys(first, second)
    for ifname, (rx, tx) in ((pair.probe_if, ((3, 60), (2, 60))), (SECOND_IF, ((5, 100), (4, 80)))):
        for direction, (packets, size) in (("rx", rx), ("tx", tx)):
            c = counted[ifname][direction]
            assert (c["packets"], c["bytes"], c["l3"]["other"]["packets"]) == (packets, packets * size, packets)
    assert pair.probe_programs() == [] and pair.probe_programs(SECOND_IF) == []


def test_detach_deletes_the_keys_and_leaves_the_others_counting(two):
    pair = two
    with NetworkMonitor() as monitor:
        first, second = monitor.attach(pair.probe_if), monitor.attach(SECOND_IF)
        send(pair, [frame()] * 2, SECOND_PEER)
        monitor.detach(first)
        assert monitor.attachments == [second]
        assert keys(monitor) == both_keys(second)
        assert pair.probe_programs() == []
        send(pair, [frame()] * 3, pair.peer_if)  # no longer counted anywhere
        send(pair, [frame()] * 4, SECOND_PEER)
        settle()
        assert monitor.packet_stats() == {SECOND_IF: {"rx": second.counters("rx"), "tx": second.counters("tx")}}
        assert second.counters("rx")["packets"] == 6 and second.counters("tx")["packets"] == 0
        assert keys(monitor) == both_keys(second)


def test_attach_again_starts_at_zero(two):
    """Attach, count, detach, attach the same interface again: its counters restart at zero."""
    pair = two
    with NetworkMonitor() as monitor:
        before = monitor.attach(pair.probe_if)
        send(pair, [frame()] * 5, pair.peer_if)
        settle()
        assert before.counters("rx")["packets"] == 5
        monitor.detach(before)
        again = monitor.attach(pair.probe_if)
        assert again.ifindex == before.ifindex
        assert again.counters("rx")["packets"] == again.counters("tx")["packets"] == 0
        send(pair, [frame()] * 2, pair.peer_if)
        settle()
        assert again.counters("rx")["packets"] == 2


def test_a_reused_ifindex_starts_at_zero(two):
    """A veth deleted under the probe, released (as a follower releases a vanished interface), then a new one
    made with the same ifindex: the new one's counters start at zero."""
    pair = two
    with NetworkMonitor() as monitor:
        gone = monitor.attach(SECOND_IF)
        send(pair, [frame()] * 7, SECOND_PEER)
        settle()
        assert gone.counters("rx")["packets"] == 7
        sh("ip", "-n", pair.probe_ns, "link", "del", SECOND_IF)
        monitor.detach(gone)
        assert keys(monitor) == []
        add_veth(pair, "knp4", "knp5", index=gone.ifindex)
        reused = monitor.attach("knp4")
        assert reused.ifindex == gone.ifindex
        assert reused.counters("rx")["packets"] == reused.counters("tx")["packets"] == 0
        send(pair, [frame()], "knp5")
        settle()
        assert reused.counters("rx")["packets"] == 1


@pytest.mark.parametrize("method", ["netlink", "link"])
def test_fifty_interfaces_one_load(pair, monkeypatch, method):
    """50 interfaces in one monitor: one load (one program per hook for all) and exactly both keys of each in
    the map. Through netlink, all 50 attach in a tenth of what 50 loads took. Not through TCX links: the kernel
    waits for an RCU grace period (~12 ms here) under RTNL at each link it makes, twice per veth (tcx_entry_sync),
    which takes longer than the load each veth saves."""
    names = ["knpm%d" % i for i in range(50)]
    batch = "".join("link add %s type veth peer name knpn%d\nlink set %s up\nlink set knpn%d up\n" % (n, i, n, i)
                    for i, n in enumerate(names))
    sh("ip", "-n", pair.probe_ns, "-batch", "-", input=batch)
    with pair.inside(), NetworkMonitor() as monitor:
        loads = []
        load_bytes = monitor.engine.load_bytes
        monkeypatch.setattr(monitor.engine, "load_bytes", lambda *a, **k: loads.append(a) or load_bytes(*a, **k))
        started = time.monotonic()
        attached = [monitor.attach(name, method=method) for name in names]
        seconds = time.monotonic() - started
        assert len(loads) == 1
        assert len({tuple(sorted(program_ids(a).items())) for a in attached}) == 1
        assert keys(monitor) == both_keys(*attached)
        assert len(monitor.packet_stats()) == 50
    if method == "netlink":
        assert seconds < 50 * LOAD_MS / 1000.0 / 10, "%.0f ms to attach 50 interfaces" % (seconds * 1000)


def test_one_direction_still_has_both_keys(two):
    """rx alone: the interface has its two keys all the same, and reports rx alone."""
    pair = two
    with NetworkMonitor() as monitor:
        a = monitor.attach(pair.probe_if, directions=("rx",))
        assert keys(monitor) == both_keys(a)
        assert list(monitor.packet_stats()[pair.probe_if]) == ["rx"]


def test_reload_swaps_every_interface_with_one_load(two):
    pair = two
    with NetworkMonitor() as monitor:
        first, second = monitor.attach(pair.probe_if), monitor.attach(SECOND_IF)
        send(pair, [frame()] * 3, pair.peer_if)
        send(pair, [frame()] * 4, SECOND_PEER)
        settle()
        old = program_ids(first)
        monitor.reload()
        assert program_ids(first) == program_ids(second)
        assert all(program_ids(first)[d] != old[d] for d in old)
        assert (first.reloads, second.reloads) == (1, 1)
        send(pair, [frame()] * 2, pair.peer_if)
        settle()
        counted = monitor.packet_stats()
    assert (counted[pair.probe_if]["rx"]["packets"], counted[SECOND_IF]["rx"]["packets"]) == (5, 4)


def pinned_map(root, name=layout.SLOTS_MAP):
    """A map pinned in root, as a Map (its fd closed by the caller)."""
    return Map(syscall.obj_get(os.path.join(root, name)))


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_pinned_interfaces_share_one_map_taken_over_and_detached_one_by_one(two, bpffs, loader):
    """--pin DIR: DIR/knp_stats for all, DIR/IFACE for each one's hooks; a second monitor takes over both, counts
    kept; `kubenetprobe detach -i IF --pin DIR` ends one (pins, hooks, keys), the map's pin going with the last."""
    pair = two
    root = os.path.join(bpffs, "knp")
    with NetworkMonitor(pin_dir=root, loader=loader) as monitor:
        first, second = monitor.attach(pair.probe_if), monitor.attach(SECOND_IF)
        send(pair, [frame()] * 3, pair.peer_if)
        send(pair, [frame()] * 4, SECOND_PEER)
        settle()
        indexes = (first.ifindex, second.ifindex)
    assert sorted(os.listdir(root)) == sorted(list(layout.MAPS) + [pair.probe_if, SECOND_IF])
    send(pair, [frame()] * 5, SECOND_PEER)  # counted while no probe runs
    with NetworkMonitor(pin_dir=root, loader=loader) as monitor:
        first, second = monitor.attach(pair.probe_if), monitor.attach(SECOND_IF)
        assert program_ids(first) == program_ids(second)
        settle()
        counted = monitor.packet_stats()
        assert (counted[pair.probe_if]["rx"]["packets"], counted[SECOND_IF]["rx"]["packets"]) == (3, 9)
    assert cli.main(["detach", "-i", pair.probe_if, "--pin", root]) == cli.EXIT_OK
    assert sorted(os.listdir(root)) == sorted(list(layout.MAPS) + [SECOND_IF])
    assert pair.probe_programs() == [] and pair.probe_programs(SECOND_IF) != []
    slots_map = pinned_map(root)
    try:
        assert list(followed(slots_map)) == [indexes[1]]
    finally:
        os.close(slots_map.fd)
    assert cli.main(["detach", "-i", SECOND_IF, "--pin", root]) == cli.EXIT_OK
    assert os.listdir(root) == []
    assert pair.probe_programs(SECOND_IF) == []


@pytest.mark.parametrize("method", ["link", "netlink"])
def test_monitor_detach_of_a_pinned_interface_ends_its_pins(two, bpffs, method):
    """Detaching one interface of a pinned run removes its pins and keys, not the others'; a vanished one's too;
    the map's pin goes with the last, and comes back with the next."""
    pair = two
    root = os.path.join(bpffs, "knp")
    with NetworkMonitor(pin_dir=root) as monitor:
        first, second = monitor.attach(pair.probe_if, method=method), monitor.attach(SECOND_IF, method=method)
        monitor.detach(first)
        assert sorted(os.listdir(root)) == sorted(list(layout.MAPS) + [SECOND_IF])
        assert keys(monitor) == both_keys(second)
        assert pair.probe_programs() == []
        sh("ip", "-n", pair.probe_ns, "link", "del", SECOND_IF)
        monitor.detach(second)
        assert os.listdir(root) == [] and keys(monitor) == []
        again = monitor.attach(pair.probe_if)  # the map pinned again for the next one
        assert sorted(os.listdir(root)) == sorted(list(layout.MAPS) + [pair.probe_if])
        monitor.detach(again)
    assert os.listdir(root) == []


def test_stats_map_room_for_max_interfaces():
    """MAX_INTERFACES interfaces get a slot each; one more is refused, saying so; letting one go makes room again,
    its slot given again at zero."""
    with open_engine("libbpf").load_bytes(embedded_object()) as obj:
        slots = stats.Slots.of(obj)
        for ifindex in range(1, layout.MAX_INTERFACES + 1):
            slots.add(ifindex)
        assert sorted(slots.given.values()) == list(range(1, layout.MAX_INTERFACES + 1))
        with pytest.raises(KernelError) as full:
            slots.add(layout.MAX_INTERFACES + 1)
        assert full.value.errno == errno.E2BIG
        assert str(full.value) == ("the stats map is full: it counts 8192 interfaces at most; let some go, or build "
                                   "the object with a larger KNP_MAX_INTERFACES")
        slot = slots.given[1]
        slots.stats_map.update(layout.key(slot, "rx"), [layout.STATS.pack(*range(1, 19))] * slots.stats_map.ncpus)
        slots.remove(1)
        slots.remove(1)  # not followed: nothing to do
        assert stats.slot_of(slots.slots_map, 1) == 0
        assert slots.add(layout.MAX_INTERFACES + 1) == slot
        assert slots.read(layout.MAX_INTERFACES + 1, "rx") == layout.decode_stats([])


def test_an_ifindex_beyond_the_slots_map_is_refused():
    """An ifindex the slots map has no room for: refused in one line saying what to do, nothing given."""
    with open_engine("libbpf").load_bytes(embedded_object()) as obj:
        slots = stats.Slots.of(obj)
        with pytest.raises(KernelError) as beyond:
            slots.add(layout.MAX_IFINDEX)
        assert beyond.value.errno == errno.E2BIG
        assert "\n" not in str(beyond.value)
        assert str(beyond.value).startswith("ifindex 1048576 is beyond the 1048576 the slots map has room for; ")
        assert slots.given == {}
        slots.add(layout.MAX_IFINDEX - 1)


def test_add_zeroes_unless_told_to_keep():
    """A new attach zeroes an interface's slot (a reused ifindex or slot starts at zero); a take-over keeps the
    slot the maps give it, counters and all."""
    with open_engine("libbpf").load_bytes(embedded_object()) as obj:
        first = stats.Slots.of(obj)
        slot = first.add(5)
        counts = [layout.STATS.pack(*range(1, 19))] * first.stats_map.ncpus
        for direction in layout.DIRECTIONS:
            first.stats_map.update(layout.key(slot, direction), counts)
        later = stats.Slots.of(obj)  # a later run, on the same (pinned) maps
        later.rebuild({5})
        assert later.add(5, reset=False) == slot
        assert later.read(5, "tx") == layout.decode_stats(counts)
        assert later.add(5) == slot
        assert later.read(5, "tx") == layout.decode_stats([])


def test_rebuild_holds_the_slots_of_interfaces_still_there():
    """A later run on pinned maps holds every slot given to an interface still there (never giving it again) and
    stops the slots of ifindexes gone."""
    with open_engine("libbpf").load_bytes(embedded_object()) as obj:
        first = stats.Slots.of(obj)
        given = {ifindex: first.add(ifindex) for ifindex in (3, 9, 40)}
        later = stats.Slots.of(obj)
        later.rebuild({3, 40, 41})  # 9 is gone
        assert later.given == {3: given[3], 40: given[40]}
        assert stats.slot_of(later.slots_map, 9) == 0
        assert later.add(41) not in (given[3], given[40])
