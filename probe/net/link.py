"""Link requests: every interface of the namespace as a Link (a dump), what kind of link an interface is
(IFLA_LINKINFO), and its XDP program: which, setting it, removing it (IFLA_XDP)."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import struct

from probe.errors import ProbeError
from probe.net import rtnetlink
from probe.net.rtnetlink import attr

# enum IFLA_* (linux/if_link.h)
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_LINK_NETNSID = 37
IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_EXPECTED_FD = 8
# net_device_flags (linux/if.h)
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

# enum xdp_attach_mode, in iproute2's words
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}



class Link(object):
    """An interface as the kernel describes it: `link` is IFLA_LINK (a veth's peer, a vlan's lower device), an
    ifindex in the namespace of `link_netnsid` when that is set (a peer elsewhere); `master` its bridge or bond."""

    __slots__ = ("ifindex", "name", "kind", "flags", "link", "link_netnsid", "master")

    def __init__(self, ifindex, name, kind=None, flags=0, link=None, link_netnsid=None, master=None):
        self.ifindex = ifindex
        self.name = name
        self.kind = kind
        self.flags = flags
        self.link = link
        self.link_netnsid = link_netnsid
        self.master = master

    @property
    def up(self):
        """Set up by its owner (IFF_UP)."""
        return bool(self.flags & IFF_UP)

    @property
    def lower_up(self):
        """Carrier: the wire, or a veth's peer, is up too (IFF_LOWER_UP)."""
        return bool(self.flags & IFF_LOWER_UP)

    def __repr__(self):
        return "Link(ifindex=%d, name=%r, kind=%r, up=%s, lower_up=%s, link=%r, link_netnsid=%r, master=%r)" % (
            self.ifindex, self.name, self.kind, self.up, self.lower_up, self.link, self.link_netnsid, self.master)


def parse_link(msg):
    """The Link of an RTM_NEWLINK/RTM_DELLINK message, or None for another family's (a bridge port's
    AF_BRIDGE messages say nothing of the interface itself); ProbeError if the message is damaged."""
    family, ifindex, flags, attrs = rtnetlink.parse_ifinfo(msg)
    if family != _socket.AF_UNSPEC:
        return None
    try:
        return Link(ifindex, rtnetlink.string(attrs.get(IFLA_IFNAME, b"")), _kind(attrs), flags,
                    rtnetlink.number(rtnetlink.U32, attrs, IFLA_LINK),
                    rtnetlink.number(rtnetlink.S32, attrs, IFLA_LINK_NETNSID),
                    rtnetlink.number(rtnetlink.U32, attrs, IFLA_MASTER))
    except struct.error:
        raise ProbeError("malformed link message from the kernel")


def _kind(attrs):
    info = attrs.get(IFLA_LINKINFO)
    kind = rtnetlink.parse_attrs(info).get(IFLA_INFO_KIND) if info is not None else None
    return rtnetlink.string(kind) if kind else None


def links():
    """The Link of every interface in this thread's network namespace (an RTM_GETLINK dump)."""
    parts = rtnetlink.exchange(rtnetlink.RTM_GETLINK, rtnetlink.NLM_F_DUMP,
                               rtnetlink.IFINFOMSG.pack(_socket.AF_UNSPEC, 0, 0, 0, 0))
    return [record for record in map(parse_link, parts) if record is not None]


def link(ifindex):
    """The Link of one interface, by index; KernelError (ENODEV) if it is gone."""
    return parse_link(rtnetlink.request(rtnetlink.RTM_GETLINK, 0, ifindex))


def _link_attrs(ifindex):
    return rtnetlink.parse_ifinfo(rtnetlink.request(rtnetlink.RTM_GETLINK, 0, ifindex))[3]


def link_kind(ifindex):
    """The kind of a virtual link ("veth", "bridge", "netkit"...), or None for a device with a driver of its own."""
    return _kind(_link_attrs(ifindex))


def xdp_program(ifindex):
    """(program id, mode) of the XDP program on an interface, or None."""
    xdp = _link_attrs(ifindex).get(IFLA_XDP)
    if xdp is None:
        return None
    xdp = rtnetlink.parse_attrs(xdp)
    attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
    prog_id = rtnetlink.number(rtnetlink.U32, xdp, IFLA_XDP_PROG_ID, 0)
    if not attached or not prog_id:
        return None
    return prog_id, XDP_ATTACHED_MODES.get(attached, "unknown")


def xdp_attach(ifindex, prog_fd, flags, expected_fd=None):
    """Attach a program through netlink with XDP_FLAGS_* (a mode, UPDATE_IF_NOEXIST, REPLACE with the
    expected_fd of the program to replace); fd -1 detaches."""
    xdp = attr(IFLA_XDP_FD, rtnetlink.S32.pack(prog_fd)) + attr(IFLA_XDP_FLAGS, rtnetlink.U32.pack(flags))
    if expected_fd is not None:
        xdp += attr(IFLA_XDP_EXPECTED_FD, rtnetlink.S32.pack(expected_fd))
    rtnetlink.request(rtnetlink.RTM_SETLINK, rtnetlink.NLM_F_ACK, ifindex,
                      attr(IFLA_XDP | rtnetlink.NLA_F_NESTED, xdp))


def xdp_detach(ifindex, mode_flags):
    """Remove the program attached through netlink in the given mode (XDP_FLAGS_*_MODE)."""
    xdp_attach(ifindex, -1, mode_flags)
