"""Top talkers: per-peer counts taken exactly from the kernel's two peer tables, swapped every interval, and idle
peers retired into `other` so that new talkers find room (bpf/kubenetprobe.h, bpf/talkers.h).

Exactness: the programs count only in the live table and never free an entry. A swap gives the idle table (empty)
an entry for every peer held, in every CPU's copy (so that a held peer never lacks room), names it live, waits out
the programs that may still count in the other table (a map-in-map update), then reads that table, now touched by
nothing, and empties it. Every count therefore lands in exactly one read. A retired peer's counts move to its
interface direction's retired sum, reported in `other`: peers + other = the l3 ipv4 + ipv6 counters at all times
the traffic is still. User space never writes the live table: a program on another CPU may be counting there.
"""
import _socket  # not socket: its import (and selectors') would be paid at every start
import errno
import os
import time

from probe import layout
from probe.bpf import syscall
from probe.bpf.constants import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS
from probe.errors import KernelError

# Swaps a held peer may go without a packet before it gives its entry back; one, when as many are held as kept.
RETIRE_AFTER = 3
# Bytes of kernel memory per entry of a peer table beyond its per-CPU values: a per-CPU array's pointer to them;
# and per table, for the map itself (its struct bpf_array: 312 bytes on 6.x).
ENTRY_BYTES = 8
MAP_BYTES = 1024
MAX_CAPACITY = 1 << 20  # peers kept at most: tables of 2 M entries, 80 MB per CPU each already
ZERO_KEY = layout.SLOT.pack(0)
FREE = layout.PEER.pack(bytes(16), 0, 0, 0, 0)


def table_size(capacity):
    """Entries of each peer table that keeps `capacity` peers: twice as many, rounded up to a power of two."""
    return 1 << (2 * capacity - 1).bit_length()


def memory_bytes(capacity, ncpus):
    """Kernel memory the two peer tables for `capacity` peers take on `ncpus` CPUs (preallocated at load)."""
    return 2 * (MAP_BYTES + table_size(capacity) * (ENTRY_BYTES + layout.PEER.size * ncpus))


def max_entries(capacity):
    """{map: max_entries} of the peer maps for `capacity` peers; 0: talkers off, each map one entry."""
    if not capacity:
        return {name: 1 for name in layout.PEER_TABLES + (layout.PEER_OTHER_MAP, layout.PEER_BASE_MAP)}
    sizes = {name: table_size(capacity) for name in layout.PEER_TABLES}
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
    """A peer held: where its entries start in the tables (layout.peer_hash), its counts since it was first
    counted, those of the last interval, and swaps without a packet."""

    __slots__ = ("home", "packets", "bytes", "last_packets", "last_bytes", "idle")

    def __init__(self, home, packets=0, nbytes=0):
        self.home = home
        self.packets, self.bytes = packets, nbytes
        self.last_packets = self.last_bytes = 0
        self.idle = 0

    def add(self, packets, nbytes):
        """Count what a table held of this peer."""
        self.packets += packets
        self.bytes += nbytes
        self.last_packets += packets
        self.last_bytes += nbytes
        if packets:
            self.idle = 0


class Talkers(object):
    """The peer maps of a loaded object, swapped and read by cycle(); top() is what a report shows."""

    def __init__(self, obj, capacity=None, keep=False):
        """capacity: the peers held at most (default: half the tables' entries); keep: write into the base map
        what a next run needs (with pinned maps: else nothing reads it)."""
        self.keep = keep
        self.held = {}  # key (layout.PEER_KEY: id, address) -> Peer
        self._groups = None  # held by interface direction (peer id): [(key, Peer)], made by top() once a cycle
        self.retired = {}  # peer id -> [packets, bytes] of the peers retired
        self.interval = 0.0  # seconds the last interval's counts span
        self._swapped = None  # monotonic time of the last swap
        self._other = {}  # (slot, direction) -> (packets, bytes, last interval's packets, bytes) of `other`
        self._gone = []  # keys retired since the base map was last written
        self._overflow = {}  # peer id -> [packets, bytes] of the last interval's peers retired at once, for want of room
        self.bind(obj)
        self.capacity = capacity or self.mask // 2 + 1
        self._barrier = self._make_barrier()
        live, mask, self.seed = layout.PEER_CONF.unpack(self.conf_map.lookup(ZERO_KEY))
        self.live = live & 1
        if mask != self.mask or not self.seed:  # tables just made: empty, so any seed will do
            self.seed = int.from_bytes(os.urandom(4), "little") | 1
            self._write_conf()
        self._load_base()

    def bind(self, obj):
        """Use the maps of `obj` (the same maps after a reload)."""
        self.tables = [obj.map(name) for name in layout.PEER_TABLES]
        self.mask = self.tables[0].max_entries - 1
        self.conf_map = obj.map(layout.PEER_CONF_MAP)
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

    def _write_conf(self):
        self.conf_map.update(ZERO_KEY, layout.PEER_CONF.pack(self.live, self.mask, self.seed))

    def _load_base(self):
        """Hold what a previous run with --pin left in the base map; then take what its tables still hold."""
        for key, value in self.base_map.items():
            packets, nbytes = layout.COUNTER.unpack(value)
            peer_id = layout.PEER_KEY.unpack(key)[0]
            if peer_id & layout.PEER_RETIRED:
                self.retired[peer_id & ~layout.PEER_RETIRED] = [packets, nbytes]
            else:
                self._hold(key, packets, nbytes)
        for table in (self.tables[1 - self.live], self.tables[self.live]):
            if table is self.tables[self.live]:
                self._swap_only()
            self._drain(table)

    def close(self):
        """Close the barrier's fds (the maps are the object's)."""
        for fd in self._barrier:
            os.close(fd)
        self._barrier = ()

    def _hold(self, key, packets=0, nbytes=0):
        """Hold a peer (its key, layout.PEER_KEY): the Peer."""
        peer = self.held[key] = Peer(layout.peer_hash(self.seed, *layout.PEER_KEY.unpack(key)), packets, nbytes)
        return peer

    def _swap_only(self):
        """Name the idle table live, an entry made first in it for every held peer, where its programs look for
        it; and wait for the programs that may still count in the other one. A held peer for which there is no
        room within the probes (one in some 200,000 when as many are held as kept) is retired."""
        idle = self.tables[1 - self.live]
        taken = set()
        homeless = []
        for key, peer in self.held.items():
            for i in range(layout.PEER_PROBES):
                index = (peer.home + i) & self.mask
                if index not in taken:
                    taken.add(index)
                    peer_id, addr = layout.PEER_KEY.unpack(key)
                    idle.update(layout.SLOT.pack(index), [layout.PEER.pack(addr, peer_id, 0, 0, 0)] * idle.ncpus)
                    break
            else:
                homeless.append(key)
        for key in homeless:
            self._retire(key)
        self.live = 1 - self.live
        self._write_conf()
        syscall.wait_for_programs(*self._barrier)

    def _drain(self, table, drop=()):
        """Take every count of a table no program counts in, and empty it; those of the peer ids in `drop` are
        let go. Peers first found there are held while there is room, else retired at once; True if as many are
        held as kept."""
        counts = {}
        used = table.nonzero_items()
        for _, values in used:
            for raw in values:
                addr, peer_id, _, packets, nbytes = layout.PEER.unpack(raw)
                if peer_id and peer_id not in drop:
                    key = layout.PEER_KEY.pack(peer_id, addr)
                    total = counts.setdefault(key, [0, 0])
                    total[0] += packets
                    total[1] += nbytes
        free = [FREE] * table.ncpus
        for index, _ in used:
            table.update(index, free)
        found = []
        for key, (packets, nbytes) in counts.items():
            peer = self.held.get(key)
            if peer is not None:
                peer.add(packets, nbytes)
            elif packets:  # else made for a peer retired since, and never counted in: gone with it
                found.append((-nbytes, key, packets))
        # The biggest first, then in the keys' order; not in the table's, by hash: those held would crowd there.
        for minus_bytes, key, packets in sorted(found):
            nbytes = -minus_bytes
            if len(self.held) < self.capacity:
                self._hold(key).add(packets, nbytes)
            else:  # no room: its counts go to `other` at once
                self._add_retired(key, packets, nbytes)
                last = self._overflow.setdefault(layout.PEER_KEY.unpack(key)[0], [0, 0])
                last[0] += packets
                last[1] += nbytes
        return len(self.held) >= self.capacity

    def cycle(self, slots=()):
        """Swap the tables and take the last interval's counts; retire idle peers, swapping again if any was so
        that their room is free at once; read the `other` counters of `slots`, [(slot, direction)]. Returns the
        number retired."""
        self._groups = None
        self._overflow = {}
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
        peer = self.held.pop(key)
        self._add_retired(key, peer.packets, peer.bytes)

    def _add_retired(self, key, packets, nbytes):
        self._gone.append(key)
        total = self.retired.setdefault(layout.PEER_KEY.unpack(key)[0], [0, 0])
        total[0] += packets
        total[1] += nbytes

    def _save_base(self):
        """Write what the base map must hold for a next run: the held peers that counted, the retired sums."""
        gone, self._gone = self._gone, []
        if not self.keep:
            return
        for key in gone:
            self._delete_base(key)
        for key, peer in self.held.items():
            if peer.last_packets:
                self.base_map.update(key, layout.COUNTER.pack(peer.packets, peer.bytes))
        for peer_id in {layout.PEER_KEY.unpack(key)[0] for key in gone}:
            self.base_map.update(layout.PEER_KEY.pack(peer_id | layout.PEER_RETIRED, bytes(16)),
                                 layout.COUNTER.pack(*self.retired[peer_id]))

    def forget(self, ifindex, slot):
        """Drop an interface's peers: called once no program looks its slot up (taken back). After the programs
        that still may count there, a swap takes its entries from the live table (user space may not write there)."""
        syscall.wait_for_programs(*self._barrier)
        self._groups = None
        ids = {layout.peer_id(ifindex, d) for d in layout.DIRECTIONS}
        for key in [k for k in self.held if layout.PEER_KEY.unpack(k)[0] in ids]:
            del self.held[key]
            self._delete_base(key)
        self._swap_only()
        self._drain(self.tables[1 - self.live], drop=ids)
        for direction in layout.DIRECTIONS:
            self._other.pop((slot, direction), None)
        for peer_id in ids:
            if self.retired.pop(peer_id, None) is not None:
                self._delete_base(layout.PEER_KEY.pack(peer_id | layout.PEER_RETIRED, bytes(16)))

    def _delete_base(self, key):
        if not self.keep:
            return
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
        retired = self.retired.get(peer_id, (0, 0))
        overflow = self._overflow.get(peer_id, (0, 0))
        other = [packets + retired[0], nbytes + retired[1], last_packets + overflow[0], last_bytes + overflow[1]]
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

