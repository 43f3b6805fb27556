"""rtnetlink, the little of it XDP needs: which program an interface has, and removing it."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import os
import struct

from probe.errors import ProbeError

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_SETLINK = 19
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLA_F_NESTED = 1 << 15

IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_EXPECTED_FD = 8

# enum xdp_attach_mode, in iproute2's words
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}

_NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr
_IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg
_NLATTR = struct.Struct("=HH")  # struct nlattr


def _attr(kind, payload):
    data = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _attrs(data):
    """{type: payload} of a run of netlink attributes."""
    out = {}
    off = 0
    while off + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            raise ProbeError("malformed netlink attribute in the kernel's answer")
        out[kind & ~NLA_F_NESTED] = data[off + _NLATTR.size:off + length]
        off += (length + 3) & ~3
    return out


def _request(msg_type, flags, ifindex, payload=b""):
    """Send one rtnetlink request about an interface; return the payload of the kernel's answer."""
    body = _IFINFOMSG.pack(_socket.AF_UNSPEC, 0, ifindex, 0, 0) + payload
    seq = 1
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, rseq, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    raise ProbeError("malformed netlink message from the kernel")
                msg = data[off + _NLMSGHDR.size:off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", msg)[0]
                    if err:
                        raise ProbeError(os.strerror(err), errno=err)
                    return b""
                return msg
    finally:
        sock.close()


def xdp_program(ifindex):
    """(program id, mode) of the XDP program on an interface, or None."""
    msg = _request(RTM_GETLINK, 0, ifindex)
    xdp = _attrs(msg[_IFINFOMSG.size:]).get(IFLA_XDP)
    if xdp is None:
        return None
    xdp = _attrs(xdp)
    attached = xdp.get(IFLA_XDP_ATTACHED, b"\0")[0]
    prog_id = struct.unpack("=I", xdp[IFLA_XDP_PROG_ID])[0] if IFLA_XDP_PROG_ID in xdp else 0
    if not attached or not prog_id:
        return None
    return prog_id, XDP_ATTACHED_MODES.get(attached, "unknown")


def xdp_attach(ifindex, prog_fd, flags, expected_fd=None):
    """Attach a program through netlink with XDP_FLAGS_* (a mode, UPDATE_IF_NOEXIST, REPLACE with the
    expected_fd of the program to replace); fd -1 detaches."""
    xdp = _attr(IFLA_XDP_FD, struct.pack("=i", prog_fd)) + _attr(IFLA_XDP_FLAGS, struct.pack("=I", flags))
    if expected_fd is not None:
        xdp += _attr(IFLA_XDP_EXPECTED_FD, struct.pack("=i", expected_fd))
    _request(RTM_SETLINK, NLM_F_ACK, ifindex, _attr(IFLA_XDP | NLA_F_NESTED, xdp))


def xdp_detach(ifindex, mode_flags):
    """Remove the program attached through netlink in the given mode (XDP_FLAGS_*_MODE)."""
    xdp_attach(ifindex, -1, mode_flags)
