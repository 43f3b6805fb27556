"""Network namespace ids (RTM_GETNSID): the number by which this namespace knows another, the one a link's
IFLA_LINK_NETNSID gives for the namespace of its peer."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import struct

from probe.errors import ProbeError
from probe.net import rtnetlink
from probe.net.rtnetlink import attr

# rtm types and enum NETNSA_* (linux/rtnetlink.h, linux/net_namespace.h)
RTM_GETNSID = 90
NETNSA_NSID = 1
NETNSA_FD = 3

RTGENMSG = struct.Struct("=Bxxx")  # struct rtgenmsg, padded to the attributes' alignment


def nsid(fd):
    """The id this namespace has for the network namespace of a file descriptor (a /run/netns file,
    /proc/PID/ns/net), or None when it has given that namespace none (no link of ours has a peer there)."""
    answer = rtnetlink.exchange(RTM_GETNSID, 0, RTGENMSG.pack(_socket.AF_UNSPEC) + attr(NETNSA_FD, rtnetlink.S32.pack(fd)))
    value = rtnetlink.parse_attrs(answer[0][RTGENMSG.size:]).get(NETNSA_NSID) if answer else None
    if value is None or len(value) != rtnetlink.S32.size:
        raise ProbeError("malformed namespace id message from the kernel")
    found = rtnetlink.S32.unpack(value)[0]
    return found if found >= 0 else None  # NETNSA_NSID_NOT_ASSIGNED is -1
