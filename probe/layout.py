"""The stats map's layout, mirrored once from bpf/kubenetprobe.h."""
import struct

from probe.bpf.constants import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_PERCPU_HASH

OWNER = "kubenetprobe"  # every program's name starts with it, so bpftool says whose it is
PROGRAM = OWNER + "_rx"  # XDP, counting rx
# (direction, hook) -> the program counting it; names stay distinct within the kernel's 15 characters.
PROGRAMS = {("rx", "xdp"): PROGRAM, ("rx", "tc"): OWNER + "_in", ("tx", "tc"): OWNER + "_tx"}
STATS_MAP = "knp_stats"

DIRECTIONS = ("rx", "tx")  # enum knp_direction
L3 = ("ipv4", "ipv6", "arp", "other")  # enum knp_l3
L4 = ("tcp", "udp", "icmp", "icmpv6", "other")  # enum knp_l4

# The stats map: a per-CPU hash, not preallocated, with a key per followed interface and direction; room for
# MAX_INTERFACES interfaces (KNP_MAX_INTERFACES), 8192 x 2 directions = 16384 keys.
STATS_MAP_TYPE = BPF_MAP_TYPE_PERCPU_HASH
STATS_MAP_FLAGS = BPF_F_NO_PREALLOC
MAX_INTERFACES = 8192
MAX_ENTRIES = MAX_INTERFACES * len(DIRECTIONS)

KEY = struct.Struct("=II")  # struct knp_key: ifindex, direction
# struct knp_stats: a (packets, bytes) pair of __u64 for each l3 class, then each l4 class.
STATS = struct.Struct("=" + "QQ" * (len(L3) + len(L4)))


def key(ifindex, direction):
    """The stats map's key of an interface's direction ("rx" or "tx")."""
    return KEY.pack(ifindex, DIRECTIONS.index(direction))


def decode_stats(values):
    """Sum a per-CPU knp_stats value (a list of one bytes value per CPU) into
    {"packets", "bytes", "l3": {...}, "l4": {...}}."""
    sums = [0] * (2 * (len(L3) + len(L4)))
    for raw in values:
        if len(raw) != STATS.size:
            raise ValueError("knp_stats value is %d bytes, expected %d" % (len(raw), STATS.size))
        for i, v in enumerate(STATS.unpack(raw)):
            sums[i] += v
    l3 = {name: {"packets": sums[2 * i], "bytes": sums[2 * i + 1]} for i, name in enumerate(L3)}
    base = 2 * len(L3)
    l4 = {name: {"packets": sums[base + 2 * i], "bytes": sums[base + 2 * i + 1]} for i, name in enumerate(L4)}
    return {
        "packets": sum(c["packets"] for c in l3.values()),
        "bytes": sum(c["bytes"] for c in l3.values()),
        "l3": l3,
        "l4": l4,
    }
