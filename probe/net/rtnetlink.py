"""The rtnetlink message codec: headers, attributes, and one request and its answer on a socket of its own."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import os
import struct

from probe.errors import KernelError, ProbeError

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_SETLINK = 19
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLA_F_NESTED = 1 << 15

NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr
IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg
NLATTR = struct.Struct("=HH")  # struct nlattr


def attr(kind, payload):
    """One netlink attribute, padded."""
    data = NLATTR.pack(NLATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def parse_attrs(data):
    """{type: payload} of a run of netlink attributes."""
    out = {}
    off = 0
    while off + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, off)
        if length < NLATTR.size or off + length > len(data):
            raise ProbeError("malformed netlink attribute in the kernel's answer")
        out[kind & ~NLA_F_NESTED] = data[off + NLATTR.size:off + length]
        off += (length + 3) & ~3
    return out


def request(msg_type, flags, ifindex, payload=b""):
    """Send one rtnetlink request about an interface; return the payload of the kernel's answer."""
    body = IFINFOMSG.pack(_socket.AF_UNSPEC, 0, ifindex, 0, 0) + payload
    seq = 1
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = sock.recv(65536)
            off = 0
            while off + NLMSGHDR.size <= len(data):
                length, kind, _, rseq, _ = NLMSGHDR.unpack_from(data, off)
                if length < NLMSGHDR.size:
                    raise ProbeError("malformed netlink message from the kernel")
                msg = data[off + NLMSGHDR.size:off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", msg)[0]
                    if err:
                        raise KernelError(os.strerror(err), errno=err)
                    return b""
                return msg
    finally:
        sock.close()
