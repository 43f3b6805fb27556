"""The stats map's layout, mirrored once from bpf/kubenetprobe.h."""
import struct

PROGRAM = "kubenetprobe_rx"  # every program's name starts with "kubenetprobe", so bpftool says whose it is
STATS_MAP = "knp_stats"

DIRECTIONS = ("rx", "tx")  # enum knp_direction: the map's keys
L3 = ("ipv4", "ipv6", "arp", "other")  # enum knp_l3
L4 = ("tcp", "udp", "icmp", "icmpv6", "other")  # enum knp_l4

KEY = struct.Struct("=I")
# struct knp_stats: a (packets, bytes) pair of __u64 for each l3 class, then each l4 class.
STATS = struct.Struct("=" + "QQ" * (len(L3) + len(L4)))
# The kernel hands back one value per possible CPU, each padded to 8 bytes.
STATS_STRIDE = (STATS.size + 7) & ~7


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """Number of possible CPUs: how many values a per-CPU map returns per key."""
    with open(path) as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def decode_stats(raw, ncpus):
    """Sum a per-CPU knp_stats value into {"packets", "bytes", "l3": {...}, "l4": {...}}."""
    if len(raw) < STATS_STRIDE * ncpus:
        raise ValueError("per-CPU value is %d bytes, expected %d" % (len(raw), STATS_STRIDE * ncpus))
    sums = [0] * (2 * (len(L3) + len(L4)))
    for cpu in range(ncpus):
        for i, v in enumerate(STATS.unpack_from(raw, cpu * STATS_STRIDE)):
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
