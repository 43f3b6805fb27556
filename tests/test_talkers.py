"""Top talkers (issue 11): per-peer counts exact for every peer the tables hold, peers + other equal to the l3
IPv4 + IPv6 counters exactly in both directions, with 1, 4,096 and 100,000 distinct sources (IPv4 and IPv6)
replayed from a namespace as raw frames; memory fixed at the capacity; a new talker seen within two intervals of
a flood's end; retirement under traffic losing nothing; reload and --pin keeping the tables. Both loaders."""
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import frames
from conftest import PYZ
from exposition import PEER_FAMILIES, Listening
from peers import address, peer_frame
from netns import ProbeRun, settle
from probe import layout, stats, talkers
from probe.bpf import syscall
from probe.bpf.engine import open_engine
from probe.bytecode import embedded_object
from probe.monitor import NetworkMonitor
from probe.reports import Reporter

pytestmark = pytest.mark.integration

LOADERS = ("libbpf", "native")
TESTS = os.path.dirname(os.path.abspath(__file__))
ALL = 1 << 20  # a k larger than any peer count: top() then lists every peer
LOOPBACK_IFINDEX = 1  # the device of BPF_PROG_TEST_RUN's context when it names none

# Runs in a namespace: sends `repeat` rounds of one frame per peer i in [first, first + count) out of IFNAME, the
# peer the frame's source (rx) or destination (tx) address; sizes vary with i. Until SIGTERM with "loop".
SEND_PEERS = """
import signal, socket, sys
sys.path.insert(0, %r)
import peers
ifname, args = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
loop = args[-1] == "loop"
sent = 0
while True:
    for frame in peers.peer_frames(*args[:7]):
        s.send(frame)
        sent += 1
    if not loop or stop:
        break
print(sent, flush=True)
""" % TESTS


def ends(pair, direction):
    """(namespace, interface, destination MAC, source MAC) of frames through the probe's `direction`."""
    if direction == "rx":
        return pair.peer_ns, pair.peer_if, pair.probe_mac, pair.peer_mac
    return pair.probe_ns, pair.probe_if, pair.peer_mac, pair.probe_mac


def send_peers(pair, family, direction, first, count, repeat=1):
    """Send `repeat` rounds of one frame per peer; returns {address: (packets, bytes)} sent."""
    ns, ifname, dst, src = ends(pair, direction)
    pair.run(ns, sys.executable, "-c", SEND_PEERS, ifname, family, direction, str(first), str(count), str(repeat),
             dst, src, "once")
    return {address(family, i): (repeat, repeat * len(peer_frame(family, direction, i, dst, src)))
            for i in range(first, first + count)}


def start_sending(pair, family, direction, first, count):
    """Send the frames of `count` peers round after round until the result is called; it returns frames sent."""
    ns, ifname, dst, src = ends(pair, direction)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SEND_PEERS, ifname, family,
                             direction, str(first), str(count), "1", dst, src, "loop"],
                            stdout=subprocess.PIPE, universal_newlines=True)

    def stop():
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        return int(out)
    return stop


def quiet(pair):
    """The probe's end sends nothing by itself, even raw frames out of it cross unchanged."""
    pair.run(pair.probe_ns, "ethtool", "-K", pair.probe_if, "tso", "off", "gso", "off")


def peers_of(listed):
    """{address: (packets, bytes)} of a top() list, `other` apart: (peers, other)."""
    peers = {p["address"]: (p["packets"], p["bytes"]) for p in listed if p["address"] != "other"}
    other = [(p["packets"], p["bytes"]) for p in listed if p["address"] == "other"]
    assert len(other) == 1 and listed[-1]["address"] == "other"
    return peers, other[0]


def ip_totals(counts):
    """(packets, bytes) of a direction's l3 ipv4 + ipv6 counters."""
    return tuple(counts["l3"]["ipv4"][k] + counts["l3"]["ipv6"][k] for k in ("packets", "bytes"))


def assert_adds_up(monitor, attachment, direction):
    """peers + other = the l3 IPv4 + IPv6 counters, packets and bytes, exactly; returns (peers, other)."""
    listed = monitor.talker_stats(attachment)[direction]
    peers, other = peers_of(listed)
    summed = (sum(p for p, _ in peers.values()) + other[0], sum(b for _, b in peers.values()) + other[1])
    assert summed == ip_totals(attachment.counters(direction)), direction
    return peers, other


def memlock(map_):
    """The kernel's memlock figure for a map (/proc/self/fdinfo), in bytes."""
    with open("/proc/self/fdinfo/%d" % map_.fd) as f:
        return int(re.search(r"memlock:\s*(\d+)", f.read()).group(1))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("count", [1, 4096])
def test_every_peer_exact_and_peers_plus_other_equal_the_ip_totals(pair, loader, count):
    """`count` IPv4 and `count` IPv6 peers each way, three rounds, in tables with room for all: each peer's
    packets and bytes are what it sent; `other` holds only the IP frame cut short; LLDP counts in l3 but
    under no peer."""
    quiet(pair)
    capacity = 4 * count + 8
    with pair.inside(), NetworkMonitor(loader=loader, talkers=ALL, talkers_capacity=capacity) as monitor:
        a = monitor.attach(pair.probe_if)
        sent = {}
        for direction in layout.DIRECTIONS:
            ns, ifname, dst, src = ends(pair, direction)
            sent[direction] = {}
            for family in "46":
                sent[direction].update(send_peers(pair, family, direction, 0, count, repeat=3))
            short = frames.ether(frames.ETH_IP, frames.ipv4(frames.UDP, frames.udp())[:12], dst=dst, src=src)
            pair.send_from(ns, ifname, [short, frames.ether(frames.ETH_LLDP, bytes(46), dst=dst, src=src)])
        settle()
        monitor.count_talkers()
        for direction in layout.DIRECTIONS:
            peers, other = assert_adds_up(monitor, a, direction)
            assert peers == sent[direction]
            assert other == (1, len(short))
            assert a.counters(direction)["l3"]["other"]["packets"] == 1


def held_peers(monitor, attachment, direction):
    """{address: (packets, bytes)} of every peer of a direction the tables hold."""
    peer_id = layout.peer_id(attachment.ifindex, direction)
    keys = ((layout.PEER_KEY.unpack(k), p) for k, p in monitor.talkers.held.items())
    return {talkers.address_text(addr): (p.packets, p.bytes) for (pid, addr), p in keys if pid == peer_id}


def flood(pair, monitor, attachment, direction):
    """50,000 IPv4 and 50,000 IPv6 peers one frame each, then a swap: each peer held counts exactly its frame,
    the others count in `other`, peers + other = the IP totals; the tables hold no more than their capacity."""
    sent = {}
    for family in "46":
        sent.update(send_peers(pair, family, direction, 0, 50000))
    settle()
    monitor.count_talkers()
    assert len(monitor.talkers.held) <= layout.PEERS_DEFAULT
    held = held_peers(monitor, attachment, direction)
    assert held and all(sent[addr] == counts for addr, counts in held.items())
    assert_adds_up(monitor, attachment, direction)
    # The rest: in the kernel's `other` (no room in a table), or retired by user space (no room among those held).
    overflow = monitor.talkers.other(monitor.slots.given[attachment.ifindex], direction)
    retired = monitor.talkers.retired.get(layout.peer_id(attachment.ifindex, direction), (0, 0))
    assert overflow[0] + retired[0] == 100000 - len(held)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_100000_source_flood_stays_in_its_memory_adds_up_and_leaves_room_for_a_new_talker(pair, loader):
    """100,000 sources (half IPv4, half IPv6) into tables of 4,096 peers, then 100,000 destinations: exact
    (flood()), and the kernel's memory for the tables does not move. Once the flood of sources stops, a new
    talker is in the top list by the second interval after the one the flood ended in."""
    quiet(pair)
    with pair.inside(), NetworkMonitor(loader=loader, talkers=5) as monitor:
        a = monitor.attach(pair.probe_if)
        memory = [memlock(t) for t in monitor.talkers.tables]
        flood(pair, monitor, a, "rx")
        newcomer = address("4", 99999)
        seen = []
        for _ in range(2):
            send_peers(pair, "4", "rx", 99999, 1, repeat=20)
            settle()
            monitor.count_talkers()
            seen.append([p["address"] for p in monitor.talker_stats(a)["rx"]])
        assert newcomer in seen[-1], seen
        flood(pair, monitor, a, "tx")
        assert [memlock(t) for t in monitor.talkers.tables] == memory
        for direction in layout.DIRECTIONS:
            assert_adds_up(monitor, a, direction)


@pytest.mark.parametrize("loader", LOADERS)
def test_retirement_under_traffic_loses_nothing(pair, loader):
    """Both ways, 300 peers sent round after round into tables of 64, while the tables are swapped, read and
    peers retired as fast as user space can: once the senders stop, peers + other = the IP totals exactly, and
    the counts equal what the senders sent."""
    quiet(pair)
    with pair.inside(), NetworkMonitor(loader=loader, talkers=ALL, talkers_capacity=64) as monitor:
        a = monitor.attach(pair.probe_if)
        stops = [start_sending(pair, "4", "rx", 0, 150), start_sending(pair, "6", "rx", 0, 150),
                 start_sending(pair, "4", "tx", 0, 300)]
        retired = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            retired += monitor.count_talkers()
        sent = [stop() for stop in stops]
        settle()
        for _ in range(talkers.RETIRE_AFTER + 2):  # everything idle now: retired to the last one
            retired += monitor.count_talkers()
        assert retired > 0
        rx, tx = (assert_adds_up(monitor, a, d) for d in layout.DIRECTIONS)
        assert rx[1][0] + sum(p for p, _ in rx[0].values()) == sent[0] + sent[1] == ip_totals(a.counters("rx"))[0]
        assert tx[1][0] + sum(p for p, _ in tx[0].values()) == sent[2]
        assert list(monitor.talkers.base_map.keys()) == []  # no --pin: no next run to write for


def assert_report_adds_up(report, k):
    for direction in layout.DIRECTIONS:
        listed = report["talkers"][direction]
        assert len(listed) <= k + 1 and listed[-1]["address"] == "other"
        assert set(listed[0]) == {"address", "packets", "bytes", "pps", "bps"}
        assert (sum(p["packets"] for p in listed), sum(p["bytes"] for p in listed)) == ip_totals(report[direction])


@pytest.mark.parametrize("loader", LOADERS)
def test_cli_reports_top_talkers_through_a_reload_and_a_pinned_restart(pair, bpffs, loader):
    """--talkers 3 --json: a report lists at most 3 peers and `other` per direction, adding up to the IP totals;
    the top one is the peer that sent most; a SIGHUP reload and a pinned restart (with traffic sent while no probe
    ran) keep every count. (Long intervals: nothing idles long enough to be retired meanwhile.)"""
    quiet(pair)
    root = os.path.join(bpffs, "knp")
    args = ["-i", pair.probe_if, "--talkers", "3", "--interval", "30", "--loader", loader, "--pin", root]
    with ProbeRun(pair, *args) as run:
        run.wait_attached()
        send_peers(pair, "4", "rx", 0, 10)
        send_peers(pair, "6", "rx", 5, 1, repeat=40)  # the top talker
        tx = send_peers(pair, "4", "tx", 0, 3, repeat=2)
        ids = [i for hooks in run.wait_attached().programs.values() for i in hooks.values()]
        run.proc.send_signal(signal.SIGHUP)
        run.wait_attached(replacing=ids)
        send_peers(pair, "6", "rx", 5, 1, repeat=10)
        settle()
        report = run.stop()[pair.probe_if]
        assert report["reloads"] == 1
        assert_report_adds_up(report, 3)
        top = report["talkers"]["rx"][0]
        assert (top["address"], top["packets"]) == (address("6", 5), 50)
        assert {p["address"]: (p["packets"], p["bytes"]) for p in report["talkers"]["tx"][:-1]} == tx
    send_peers(pair, "6", "rx", 5, 1, repeat=5)  # counted while no probe runs
    left = [p.prog_id for p in pair.probe_programs()]
    with ProbeRun(pair, *args) as run:
        run.wait_attached(replacing=left)  # taken over: this run's programs swapped in
        report = run.stop()[pair.probe_if]
        assert_report_adds_up(report, 3)
        top = report["talkers"]["rx"][0]
        assert (top["address"], top["packets"], report["rx"]["packets"]) == (address("6", 5), 55, 65)
    pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--pin", root)
    assert os.listdir(root) == []


def test_memory_of_the_tables_is_what_help_says(pair):
    """The kernel's memlock of each table is within the per-table half of talkers.memory_bytes, and more than
    the per-CPU entries alone: the figure --help gives is an honest upper bound."""
    with pair.inside(), NetworkMonitor(talkers=5, talkers_capacity=3000) as monitor:
        monitor.attach(pair.probe_if)
        for table in monitor.talkers.tables:
            used = memlock(table)
            assert 8192 * layout.PEER.size * table.ncpus < used <= talkers.memory_bytes(3000, table.ncpus) / 2
        assert syscall.map_info(monitor.talkers.tables[0].fd).max_entries == talkers.table_size(3000) == 8192


@pytest.mark.usefixtures("built_pyz")
def test_scrape_has_the_top_peers_and_other_adding_up_to_the_ip_totals(pair):
    """--listen with --talkers 2: per interface and direction, at most 2 peers and `other`; the 2 are the peers
    that sent most; summed over peer, the families equal the l3 ipv4 + ipv6 ones, packets and bytes."""
    quiet(pair)
    with Listening(pair, "-i", pair.probe_if, "--talkers", "2", "--interval", "0.5") as probe:
        probe.wait_ready()
        for i, repeat in enumerate((1, 9, 4, 2)):
            send_peers(pair, "4", "rx", i, 1, repeat=repeat)
        send_peers(pair, "6", "tx", 0, 5)
        settle()
        # Two reports (each a swap of the tables) after the traffic: the scrape sees its peers, none idle long
        # enough (talkers.RETIRE_AFTER intervals) to be retired yet.
        seen = len(probe.reports)
        while len(probe.reports) < seen + 2:
            time.sleep(0.05)
        samples = probe.scrape()
        probe.stop()
    for direction in layout.DIRECTIONS:
        ip = [sum(v for n, l, v in samples if n == "kubenetprobe_l3_%s_total" % kind and l["direction"] == direction
                  and l["protocol"] in ("ipv4", "ipv6")) for kind in ("packets", "bytes")]
        for name, total in zip(PEER_FAMILIES, ip):
            peers = {l["peer"]: v for n, l, v in samples if n == name and l["direction"] == direction}
            assert len(peers) <= 3 and "other" in peers and sum(peers.values()) == total > 0
    rx = {l["peer"] for n, l, v in samples if n == PEER_FAMILIES[0] and l["direction"] == "rx"}
    assert rx == {address("4", 1), address("4", 2), "other"}


@pytest.mark.parametrize("loader", LOADERS)
def test_talkers_off_loads_the_plain_programs_alone_and_one_entry_tables(pair, loader):
    """Without talkers the probe loads and attaches the plain programs only (the talker code costs nothing)
    and the peer maps hold one entry each; with them, the talker programs alone, in tables of the capacity
    asked for."""
    with pair.inside():
        for top, capacity, programs in ((0, 4096, layout.PROGRAMS), (3, 512, layout.PEER_PROGRAMS)):
            with NetworkMonitor(loader=loader, talkers=top, talkers_capacity=capacity) as monitor:
                a = monitor.attach(pair.probe_if)
                assert sorted(monitor.object.programs) == sorted(programs.values())
                names = {p.name for p in pair.probe_programs()}
                assert names == {programs["rx", "tc"][:15], programs["tx", "tc"][:15]}
                assert a.hooks["rx"].program_id == monitor.object.program(programs["rx", "tc"]).id
                sizes = {n: monitor.object.map(n).max_entries for n in layout.PEER_TABLES}
                assert set(sizes.values()) == {talkers.table_size(capacity) if top else 1}
                assert (monitor.talkers is None) == (not top)


def test_pinned_tables_of_another_capacity_are_refused(pair, bpffs):
    """A run taking over pinned peer tables must ask for their capacity: another one is refused, saying which,
    before anything is attached; the pinned state is left as it was."""
    from probe.errors import ProbeError
    root = os.path.join(bpffs, "knp")
    with pair.inside():
        with NetworkMonitor(pin_dir=root, talkers=3, talkers_capacity=512) as monitor:
            monitor.attach(pair.probe_if)
        before = [p.prog_id for p in pair.probe_programs()]
        with NetworkMonitor(pin_dir=root, talkers=3, talkers_capacity=1024) as monitor:
            with pytest.raises(ProbeError) as e:
                monitor.attach(pair.probe_if)
        assert "keep 512 peers, not the 1024 asked for" in str(e.value)
        assert "--talkers-capacity 512" in e.value.hint
        assert [p.prog_id for p in pair.probe_programs()] == before
        with NetworkMonitor(pin_dir=root, talkers=3, talkers_capacity=512) as monitor:
            monitor.detach(monitor.attach(pair.probe_if))
    assert os.listdir(root) == []


@pytest.mark.parametrize("loader", LOADERS)
def test_the_programs_and_user_space_find_a_peer_at_the_same_entries(loader):
    """layout.peer_hash is the programs' knp_peer_hash: 300 peers counted by a talker program on one CPU, into
    a table of 1,024 entries, sit where user space, probing from the same hash, places them in the same order;
    and after a swap, each peer held counts in the entry user space gave it, none made anew."""
    engine = open_engine(loader)
    order = [(family, i) for i in range(150) for family in "46"]
    frames_ = [peer_frame(family, "rx", i, "02:00:00:00:00:02", "02:00:00:00:00:01") for family, i in order]
    affinity = os.sched_getaffinity(0)
    cpu = min(affinity)
    with engine.load_bytes(embedded_object(), max_entries=talkers.max_entries(512),
                           programs={layout.PEER_PROGRAMS["rx", "tc"]}) as obj:
        stats.Slots.of(obj, talkers=True).add(LOOPBACK_IFINDEX)
        peers = talkers.Talkers(obj)
        program = obj.program(layout.PEER_PROGRAMS["rx", "tc"])
        os.sched_setaffinity(0, {cpu})
        try:
            for frame in frames_:
                program.test_run(frame)
            live = peers.tables[peers.live]
            found = {}
            for index, values in live.nonzero_items():
                addr, peer_id, _, packets, _ = layout.PEER.unpack(values[cpu])
                found[layout.PEER_KEY.pack(peer_id, addr)] = (layout.SLOT.unpack(index)[0], packets)
            expected, taken = {}, set()
            for key in (peer_key(family, i) for family, i in order):
                h = layout.peer_hash(peers.seed, *layout.PEER_KEY.unpack(key))
                index = next((h + i) & peers.mask for i in range(layout.PEER_PROBES)
                             if (h + i) & peers.mask not in taken)
                taken.add(index)
                expected[key] = (index, 1)
            assert found == expected
            peers.cycle()
            assert len(peers.held) == 300
            for frame in frames_:
                program.test_run(frame)
            live = peers.tables[peers.live]
            made = [layout.PEER.unpack(values[cpu]) for _, values in live.nonzero_items()]
            assert len(made) == 300 and all(packets == 1 for _, _, _, packets, _ in made)
        finally:
            os.sched_setaffinity(0, affinity)
            peers.close()


def peer_key(family, i):
    """The layout.PEER_KEY of peers.peer_frame's peer i, received on the loopback."""
    packed = ipaddress.ip_address(address(family, i)).packed
    return layout.PEER_KEY.pack(layout.peer_id(LOOPBACK_IFINDEX, "rx"),
                                packed if family == "6" else layout.IPV4_MAPPED + packed)
