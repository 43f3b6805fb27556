"""Network interfaces by name: their index, the one the default route leaves by, and the ones a user chose."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start

from probe.errors import ProbeError

RTF_UP = 0x1


def ifindex(interface):
    """The index of a network interface, by name."""
    try:
        return _socket.if_nametoindex(interface)
    except OSError:
        raise ProbeError("no such interface: %s" % interface, hint="list interfaces with `ip link show`")


def indexes():
    """The indexes of every network interface in this namespace."""
    return set(index for index, _ in _socket.if_nameindex())


def match(name, patterns, excludes=()):
    """Whether a name matches a shell-style pattern (patterns None: --all, every one but lo) and no exclude."""
    import fnmatch  # only a choice by pattern pays for re
    if patterns is None:
        chosen = name != "lo"
    else:
        chosen = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    return chosen and not any(fnmatch.fnmatchcase(name, p) for p in excludes)


def _ipv4_default(path):
    best = None
    with open(path) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000" \
                    and int(fields[3], 16) & RTF_UP:
                metric = int(fields[6])
                if best is None or metric < best[0]:
                    best = (metric, fields[0])
    return best and best[1]


def _ipv6_default(path):
    best = None
    with open(path) as f:
        for line in f:
            fields = line.split()
            # dest prefixlen src srcprefixlen nexthop metric refcnt use flags iface
            if len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
                metric = int(fields[5], 16)
                if best is None or metric < best[0]:
                    best = (metric, fields[9])
    return best and best[1]


def default_interface(ipv4_routes="/proc/net/route", ipv6_routes="/proc/net/ipv6_route"):
    """The interface of the default route (IPv4 first, then IPv6), or ProbeError."""
    for find, path in ((_ipv4_default, ipv4_routes), (_ipv6_default, ipv6_routes)):
        try:
            name = find(path)
        except (IOError, OSError, ValueError):
            name = None
        if name:
            return name
    raise ProbeError("no default route to take an interface from",
                     hint="name one with -i IFACE or $NETWORK_INTERFACE")
