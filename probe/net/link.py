"""Link requests: the XDP program of an interface, setting it and removing it (IFLA_XDP)."""
import struct

from probe.net import rtnetlink
from probe.net.rtnetlink import attr

IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_EXPECTED_FD = 8

# enum xdp_attach_mode, in iproute2's words
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}


def xdp_program(ifindex):
    """(program id, mode) of the XDP program on an interface, or None."""
    msg = rtnetlink.request(rtnetlink.RTM_GETLINK, 0, ifindex)
    xdp = rtnetlink.parse_attrs(msg[rtnetlink.IFINFOMSG.size:]).get(IFLA_XDP)
    if xdp is None:
        return None
    xdp = rtnetlink.parse_attrs(xdp)
    attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
    prog_id = struct.unpack("=I", xdp[IFLA_XDP_PROG_ID])[0] if IFLA_XDP_PROG_ID in xdp else 0
    if not attached or not prog_id:
        return None
    return prog_id, XDP_ATTACHED_MODES.get(attached, "unknown")


def xdp_attach(ifindex, prog_fd, flags, expected_fd=None):
    """Attach a program through netlink with XDP_FLAGS_* (a mode, UPDATE_IF_NOEXIST, REPLACE with the
    expected_fd of the program to replace); fd -1 detaches."""
    xdp = attr(IFLA_XDP_FD, struct.pack("=i", prog_fd)) + attr(IFLA_XDP_FLAGS, struct.pack("=I", flags))
    if expected_fd is not None:
        xdp += attr(IFLA_XDP_EXPECTED_FD, struct.pack("=i", expected_fd))
    rtnetlink.request(rtnetlink.RTM_SETLINK, rtnetlink.NLM_F_ACK, ifindex,
                      attr(IFLA_XDP | rtnetlink.NLA_F_NESTED, xdp))


def xdp_detach(ifindex, mode_flags):
    """Remove the program attached through netlink in the given mode (XDP_FLAGS_*_MODE)."""
    xdp_attach(ifindex, -1, mode_flags)
