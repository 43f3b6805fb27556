"""Top talkers: per-peer counts taken exactly from the kernel's two peer tables, swapped every interval, and idle
peers retired into `other` so that new talkers find room (bpf/kubenetprobe.h, bpf/talkers.h).

Exactness: the programs count only in the live table and never delete. A swap fills the idle table with a zeroed
entry for every peer held (so a held peer never lacks room), names it live, waits out the programs that may still
count in the other table (a map-in-map update), then reads that table, now touched by nothing, and empties it.
Every count therefore lands in exactly one read. A retired peer's counts move to its interface direction's
retired sum, reported in `other`: peers + other = the l3 ipv4 + ipv6 counters at all times the traffic is still.
"""
import _socket  # not socket: its import (and selectors') would be paid at every start
import errno
import os
import time

from probe import layout
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_NOEXIST
from probe.errors import KernelError

# Swaps a held peer may go without a packet before it gives its entry back; one, when the live table was full.
RETIRE_AFTER = 3
# Bytes of kernel memory per entry of a peer table beyond its per-CPU values: the hash element (struct
# htab_elem with the key) and its bucket share, as /proc/PID/fdinfo's memlock shows on 6.x kernels.
ENTRY_BYTES = 104
MAX_CAPACITY = 1 << 24  # peers a table may hold: 16 M, gigabytes of kernel memory already
ZERO_KEY = layout.SLOT.pack(0)
ZERO_COUNTER = layout.COUNTER.pack(0, 0)


def memory_bytes(capacity, ncpus):
    """Kernel memory the two peer tables of `capacity` peers take on `ncpus` CPUs (preallocated at load)."""
    return 2 * capacity * (ENTRY_BYTES + layout.COUNTER.size * ncpus)


def max_entries(capacity):
    """{map: max_entries} of the peer maps for `capacity` peers per table; 0: talkers off, each map one entry."""
    if not capacity:
        return {name: 1 for name in layout.PEER_TABLES + (layout.PEER_OTHER_MAP, layout.PEER_BASE_MAP)}
    sizes = {name: capacity for name in layout.PEER_TABLES}
    sizes[layout.PEER_OTHER_MAP] = layout.MAX_ENTRIES
    sizes[layout.PEER_BASE_MAP] = capacity + layout.MAX_ENTRIES
    return sizes


def address_text(addr):
    """The text of a peer's 16-byte address: IPv4 for a mapped one."""
    if addr[:12] == layout.IPV4_MAPPED:
        return _socket.inet_ntop(_socket.AF_INET, addr[12:])
    return _socket.inet_ntop(_socket.AF_INET6, addr)


def _sum(values):
    """(packets, bytes) of a per-CPU knp_counter value."""
    packets = nbytes = 0
    for raw in values:
        p, b = layout.COUNTER.unpack(raw)
        packets += p
        nbytes += b
    return packets, nbytes


class Peer(object):
    """A peer held: its counts since it was first counted, those of the last interval, and swaps without a packet."""

    __slots__ = ("packets", "bytes", "last_packets", "last_bytes", "idle")

    def __init__(self, packets=0, nbytes=0):
        self.packets, self.bytes = packets, nbytes
        self.last_packets = self.last_bytes = 0
        self.idle = 0


class Talkers(object):
    """The peer maps of a loaded object, swapped and read by cycle(); top() is what a report shows."""

    def __init__(self, obj):
        self.held = {}  # the tables' key (id, address) -> Peer
        self._groups = None  # held by interface direction (peer id): [(key, Peer)], made by top() once a cycle
        self.retired = {}  # peer id -> [packets, bytes] of the peers retired
        self.interval = 0.0  # seconds the last interval's counts span
        self._swapped = None  # monotonic time of the last swap
        self._other = {}  # (slot, direction) -> (packets, bytes, last interval's packets, bytes) of `other`
        self._gone = []  # keys retired since the base map was last written
        self.bind(obj)
        self._barrier = self._make_barrier()
        self.live = layout.SLOT.unpack(self.live_map.lookup(ZERO_KEY))[0] & 1
        self._load_base()

    def bind(self, obj):
        """Use the maps of `obj` (the same maps after a reload)."""
        self.tables = [obj.map(name) for name in layout.PEER_TABLES]
        self.live_map = obj.map(layout.PEER_LIVE_MAP)
        self.other_map = obj.map(layout.PEER_OTHER_MAP)
        self.base_map = obj.map(layout.PEER_BASE_MAP)

    @staticmethod
    def _make_barrier():
        """(outer, inner) fds of the map-in-map whose updates wait for running programs."""
        inner = syscall.map_create(syscall.MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=4,
                                                         max_entries=1))
        try:
            outer = syscall.map_create(syscall.MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY_OF_MAPS, key_size=4,
                                                             value_size=4, max_entries=1, inner_map_fd=inner))
        except BaseException:
            os.close(inner)
            raise
        return outer, inner

    def _load_base(self):
        """Hold what a previous run with --pin left in the base map; then take what its tables still hold."""
        for key, value in self.base_map.items():
            packets, nbytes = layout.COUNTER.unpack(value)
            peer_id = layout.PEER_KEY.unpack(key)[0]
            if peer_id & layout.PEER_RETIRED:
                self.retired[peer_id & ~layout.PEER_RETIRED] = [packets, nbytes]
            else:
                self.held[key] = Peer(packets, nbytes)
        for table in (self.tables[1 - self.live], self.tables[self.live]):
            if table is self.tables[self.live]:
                self._swap_only()
            self._drain(table)

    def close(self):
        """Close the barrier's fds (the maps are the object's)."""
        for fd in self._barrier:
            os.close(fd)
        self._barrier = ()

    def _swap_only(self):
        """Name the idle table live, its entries made first for every held peer (no more than it holds), and wait
        for the programs that may still count in the other one."""
        idle = self.tables[1 - self.live]
        zero = [ZERO_COUNTER] * idle.ncpus
        for key in self.held:
            try:
                idle.update(key, zero, BPF_NOEXIST)
            except KernelError as e:
                if e.errno != errno.EEXIST:
                    raise
        self.live = 1 - self.live
        self.live_map.update(ZERO_KEY, layout.SLOT.pack(self.live))
        syscall.wait_for_programs(*self._barrier)

    def _drain(self, table):
        """Take every count of a table no program counts in, and empty it; True if it was full. A peer first
        found there gets its entry in the live table too (or is retired at once where that is full), so that every
        peer held has one: there are never more than the capacity."""
        items = table.items()
        found = []
        for key, values in items:
            packets, nbytes = _sum(values)
            peer = self.held.get(key)
            if peer is None:
                if not packets:
                    continue  # made for a peer retired since, and never counted in: gone with it
                peer = self.held[key] = Peer()
                found.append(key)
            peer.packets += packets
            peer.bytes += nbytes
            peer.last_packets += packets
            peer.last_bytes += nbytes
            if packets:
                peer.idle = 0
        for key, _ in items:
            table.delete(key)
        live = self.tables[self.live]
        zero = [ZERO_COUNTER] * live.ncpus
        for key in found:
            # Made here or by a program, whichever comes first (BPF_NOEXIST): no count is overwritten.
            try:
                live.update(key, zero, BPF_NOEXIST)
            except KernelError as e:
                if e.errno == errno.E2BIG:
                    self._retire(key)
                elif e.errno != errno.EEXIST:
                    raise
        return len(items) >= table.max_entries

    def cycle(self, slots=()):
        """Swap the tables and take the last interval's counts; retire idle peers, swapping again if any was so
        that their room is free at once; read the `other` counters of `slots`, [(slot, direction)]. Returns the
        number retired."""
        self._groups = None
        now = time.monotonic()
        self.interval = now - self._swapped if self._swapped is not None else 0.0
        self._swapped = now
        for peer in self.held.values():
            peer.last_packets = peer.last_bytes = 0
            peer.idle += 1  # _drain resets it for a peer that counted
        self._swap_only()
        full = self._drain(self.tables[1 - self.live])
        after = 1 if full else RETIRE_AFTER
        gone = [key for key, peer in self.held.items() if peer.idle >= after and not peer.last_packets]
        for key in gone:
            self._retire(key)
        if gone:
            self._swap_only()
            self._drain(self.tables[1 - self.live])
        retired = len(self._gone)
        self._save_base()
        keys = {(slot, direction): layout.key(slot, direction) for slot, direction in slots}
        values = self.other_map.lookup_many(keys.values())  # batched, as the counters are
        for (slot, direction), key in keys.items():
            packets, nbytes = _sum(values[key])
            before = self._other.get((slot, direction), (0, 0))
            self._other[slot, direction] = (packets, nbytes, packets - before[0], nbytes - before[1])
        return retired

    def _retire(self, key):
        self._gone.append(key)
        peer = self.held.pop(key)
        total = self.retired.setdefault(layout.PEER_KEY.unpack(key)[0], [0, 0])
        total[0] += peer.packets
        total[1] += peer.bytes

    def _save_base(self):
        """Write what the base map must hold for a next run: the held peers that counted, the retired sums."""
        gone, self._gone = self._gone, []
        for key in gone:
            self._delete_base(key)
        for key, peer in self.held.items():
            if peer.last_packets:
                self.base_map.update(key, layout.COUNTER.pack(peer.packets, peer.bytes))
        for peer_id in {layout.PEER_KEY.unpack(key)[0] for key in gone}:
            self.base_map.update(layout.PEER_KEY.pack(peer_id | layout.PEER_RETIRED, bytes(16)),
                                 layout.COUNTER.pack(*self.retired[peer_id]))

    def forget(self, ifindex, slot):
        """Drop an interface's peers: called once no program counts there (its slot taken back), so that its
        entries in either table, which nothing writes any more, can go."""
        syscall.wait_for_programs(*self._barrier)
        self._groups = None
        ids = {layout.peer_id(ifindex, d) for d in layout.DIRECTIONS}
        for table in self.tables:
            for key in [k for k in table.keys() if layout.PEER_KEY.unpack(k)[0] in ids]:
                table.delete(key)
        for key in [k for k in self.held if layout.PEER_KEY.unpack(k)[0] in ids]:
            del self.held[key]
            self._delete_base(key)
        for direction in layout.DIRECTIONS:
            self._other.pop((slot, direction), None)
        for peer_id in ids:
            if self.retired.pop(peer_id, None) is not None:
                self._delete_base(layout.PEER_KEY.pack(peer_id | layout.PEER_RETIRED, bytes(16)))

    def _delete_base(self, key):
        try:
            self.base_map.delete(key)
        except KernelError as e:
            if e.errno != errno.ENOENT:
                raise

    def other(self, slot, direction):
        """(packets, bytes) of the peers of an interface direction no table had room for, as the last cycle()
        read them."""
        return self._other.get((slot, direction), (0, 0))[:2]

    def top(self, ifindex, slot, direction, k):
        """The k peers of an interface direction with the most bytes in the last interval (then since they were
        first counted), and `other` for every count not among them, as of the last cycle(), as report entries:
        [{"address", "packets", "bytes", "pps", "bps"}, ..., {"address": "other", ...}]."""
        peer_id = layout.peer_id(ifindex, direction)
        if self._groups is None:  # every interface direction asks, each report and scrape: group the peers once
            self._groups = {}
            for key, peer in self.held.items():
                self._groups.setdefault(layout.PEER_KEY.unpack(key)[0], []).append((key, peer))
        mine = sorted(self._groups.get(peer_id, ()), key=lambda kp: (-kp[1].last_bytes, -kp[1].bytes, kp[0]))
        packets, nbytes, last_packets, last_bytes = self._other.get((slot, direction), (0, 0, 0, 0))
        retired = self.retired.get(peer_id, (0, 0))  # idle when retired: no part of the last interval's
        other = [packets + retired[0], nbytes + retired[1], last_packets, last_bytes]
        for _, peer in mine[k:]:
            other[0] += peer.packets
            other[1] += peer.bytes
            other[2] += peer.last_packets
            other[3] += peer.last_bytes
        out = [self._entry(address_text(layout.PEER_KEY.unpack(key)[1]), peer.packets, peer.bytes,
                           peer.last_packets, peer.last_bytes) for key, peer in mine[:k]]
        out.append(self._entry("other", *other))
        return out

    def _entry(self, address, packets, nbytes, last_packets, last_bytes):
        seconds = self.interval
        return {"address": address, "packets": packets, "bytes": nbytes,
                "pps": round(last_packets / seconds, 1) if seconds else 0.0,
                "bps": round(8 * last_bytes / seconds, 1) if seconds else 0.0}

