"""The maps' layout, mirrored once from bpf/kubenetprobe.h."""
import struct

from probe.bpf.constants import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY

OWNER = "kubenetprobe"  # every program's name starts with it, so bpftool says whose it is
PROGRAM = OWNER + "_rx"  # XDP, counting rx
# (direction, hook) -> the program counting it; names stay distinct within the kernel's 15 characters.
PROGRAMS = {("rx", "xdp"): PROGRAM, ("rx", "tc"): OWNER + "_in", ("tx", "tc"): OWNER + "_tx"}
# The same programs counting peers too (bpf/talkers.h), attached instead of PROGRAMS with --talkers.
PEER_PROGRAMS = {("rx", "xdp"): OWNER + "_xp", ("rx", "tc"): OWNER + "_ip", ("tx", "tc"): OWNER + "_tp"}
STATS_MAP = "knp_stats"
SLOTS_MAP = "knp_slots"
PEER_TABLES = ("knp_peers_a", "knp_peers_b")  # knp_peer_conf's live (0, 1) names the one the programs count in
PEER_CONF_MAP = "knp_peer_conf"
PEER_OTHER_MAP = "knp_peer_other"
PEER_BASE_MAP = "knp_peer_base"
MAPS = (STATS_MAP, SLOTS_MAP)  # what every object must have
PEER_MAPS = PEER_TABLES + (PEER_CONF_MAP, PEER_OTHER_MAP, PEER_BASE_MAP)  # and what --talkers needs besides
DIRECTIONS = ("rx", "tx")  # enum knp_direction
L3 = ("ipv4", "ipv6", "arp", "other")  # enum knp_l3
L4 = ("tcp", "udp", "icmp", "icmpv6", "other")  # enum knp_l4

# The slots map: an array, ifindex -> slot (0: not followed), for ifindexes below MAX_IFINDEX (KNP_MAX_IFINDEX).
SLOTS_MAP_TYPE = BPF_MAP_TYPE_ARRAY
MAX_IFINDEX = 1 << 20
SLOT = struct.Struct("=I")  # the slots map's key (an ifindex) and value (a slot); the stats map's key
# The stats map: a per-CPU array, KEY(slot, direction) -> struct knp_stats, slots 1 to MAX_INTERFACES
# (KNP_MAX_INTERFACES) given to the interfaces followed, slot 0 never: (8192 + 1) x 2 directions = 16386 entries.
STATS_MAP_TYPE = BPF_MAP_TYPE_PERCPU_ARRAY
MAX_INTERFACES = 8192
MAX_ENTRIES = (MAX_INTERFACES + 1) * len(DIRECTIONS)
KEY = SLOT  # the stats map's key: __u32, KNP_STATS_KEY(slot, direction)
# struct knp_stats: a (packets, bytes) pair of __u64 for each l3 class, then each l4 class.
STATS = struct.Struct("=" + "QQ" * (len(L3) + len(L4)))


# Top talkers (kubenetprobe.h). The tables: per-CPU arrays of struct knp_peer, twice as many entries as the peers
# kept (PEER_TABLE_DEFAULT by default: a power of two set at load), each CPU's copy open-addressed by peer_hash(); a
# peer's id is KNP_PEER_ID(ifindex, direction), its address IPv6 or IPv4-mapped. knp_peer_conf: an array of one
# struct knp_peer_conf. knp_peer_other: a per-CPU array of counters keyed like the stats map. knp_peer_base: a hash
# (not preallocated), struct knp_peer_key -> struct knp_counter, user space's.
PEER_TABLE_TYPE = BPF_MAP_TYPE_PERCPU_ARRAY
PEER_OTHER_TYPE = BPF_MAP_TYPE_PERCPU_ARRAY
PEER_BASE_TYPE = BPF_MAP_TYPE_HASH
PEER_BASE_FLAGS = BPF_F_NO_PREALLOC
PEERS_DEFAULT = 4096
PEER_TABLE_DEFAULT = 2 * PEERS_DEFAULT  # KNP_PEER_TABLE_DEFAULT
PEER_PROBES = 32  # KNP_PEER_PROBES
PEER_KEY = struct.Struct("=I16s")  # struct knp_peer_key: id, address
PEER = struct.Struct("=16sIIQQ")  # struct knp_peer: address, id (0: free), padding, packets, bytes
PEER_CONF = struct.Struct("=III")  # struct knp_peer_conf: live, mask, seed
COUNTER = struct.Struct("=QQ")  # struct knp_counter
PEER_RETIRED = 0x80000000  # KNP_PEER_RETIRED
IPV4_MAPPED = b"\0" * 10 + b"\xff\xff"


def peer_id(ifindex, direction):
    """KNP_PEER_ID: the id of an interface's direction in the peer tables' keys."""
    return ifindex * len(DIRECTIONS) + DIRECTIONS.index(direction)


def peer_hash(seed, peer_id, addr):
    """knp_peer_hash() (bpf/talkers.h): where a peer's entries start in the tables."""
    a0, a1 = _ADDR_HALVES.unpack(addr)
    h = seed
    for word in (peer_id, a0, a0 >> 32, a1, a1 >> 32):
        h = ((h ^ (word & 0xFFFFFFFF)) * 0x9E3779B1) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


_ADDR_HALVES = struct.Struct("=QQ")  # an address as the programs load it: two 8-byte words in the CPU's order


def key(slot, direction):
    """The stats map's key of a slot's direction ("rx" or "tx"): KNP_STATS_KEY."""
    return KEY.pack(slot * len(DIRECTIONS) + DIRECTIONS.index(direction))


def decode_stats(values):
    """Sum a per-CPU knp_stats value (a list of one bytes value per CPU) into
    {"packets", "bytes", "l3": {...}, "l4": {...}}."""
    for raw in values:
        if len(raw) != STATS.size:
            raise ValueError("knp_stats value is %d bytes, expected %d" % (len(raw), STATS.size))
    sums = [sum(column) for column in zip(*map(STATS.unpack, values))] or [0] * (2 * (len(L3) + len(L4)))
    l3 = {name: {"packets": sums[2 * i], "bytes": sums[2 * i + 1]} for i, name in enumerate(L3)}
    base = 2 * len(L3)
    l4 = {name: {"packets": sums[base + 2 * i], "bytes": sums[base + 2 * i + 1]} for i, name in enumerate(L4)}
    return {
        "packets": sum(c["packets"] for c in l3.values()),
        "bytes": sum(c["bytes"] for c in l3.values()),
        "l3": l3,
        "l4": l4,
    }
