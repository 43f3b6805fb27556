"""The rtnetlink message codec: headers, attributes, and one request and its answer on a socket of its own."""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import os
import struct

from probe.errors import KernelError, ProbeError

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
# enum rtm types (linux/rtnetlink.h)
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46
# nlmsghdr flags (linux/netlink.h)
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an error message: the request it quotes is cut to its header
NLM_F_ACK_TLVS = 0x200  # in an error message: extended-ack attributes follow the quoted request
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 1 << 15

NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr
IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg
TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg
NLATTR = struct.Struct("=HH")  # struct nlattr
_ERRNO = struct.Struct("=i")  # the error of a struct nlmsgerr
U32 = struct.Struct("=I")  # an attribute's __u32 payload
S32 = struct.Struct("=i")  # an attribute's __s32 payload (an fd, a namespace id)
RECV_SIZE = 65536  # per recv: more than a dump part (the kernel caps them at 32 KB) or a notification takes


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


def messages(data):
    """(type, flags, seq, payload) of each netlink message in one datagram; ProbeError if one is damaged."""
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            raise ProbeError("malformed netlink message from the kernel")
        yield kind, flags, seq, data[off + NLMSGHDR.size:off + length]
        off += (length + 3) & ~3


def parse_ifinfo(msg):
    """(family, ifindex, flags, {type: payload}) of an ifinfomsg and its attributes; ProbeError if damaged."""
    if len(msg) < IFINFOMSG.size:
        raise ProbeError("malformed link message from the kernel")
    family, _, ifindex, flags, _ = IFINFOMSG.unpack_from(msg)
    return family, ifindex, flags, parse_attrs(msg[IFINFOMSG.size:])


def number(form, attrs, kind, default=None):
    """The number (U32, S32) an attribute holds, or `default` where there is none."""
    return form.unpack(attrs[kind])[0] if kind in attrs else default


def string(payload):
    """The text of a NUL-terminated string attribute."""
    return payload.rstrip(b"\0").decode("utf-8", "replace")


def request(msg_type, flags, ifindex, payload=b""):
    """Send one rtnetlink request about an interface; return the payload of the kernel's answer."""
    answer = exchange(msg_type, flags, IFINFOMSG.pack(_socket.AF_UNSPEC, 0, ifindex, 0, 0) + payload)
    return answer[0] if answer else b""


def exchange(msg_type, flags, body):
    """Send one rtnetlink message (header added); return the payloads of the kernel's answer: none for an
    acknowledgement, one message, or every part of a dump (NLM_F_DUMP) up to its NLMSG_DONE."""
    seq = 1
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # the kernel's reason with an error (4.12+)
        except OSError:
            pass
        sock.bind((0, 0))
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        answer = []
        while True:
            for kind, msg_flags, rseq, msg in messages(sock.recv(RECV_SIZE)):
                if rseq != seq:
                    continue
                if kind in (NLMSG_ERROR, NLMSG_DONE):
                    err = -_ERRNO.unpack_from(msg)[0] if len(msg) >= _ERRNO.size else 0
                    if err > 0:  # a dump's NLMSG_DONE quotes no request: its flags say nothing of one
                        raise _error(err, msg, msg_flags if kind == NLMSG_ERROR else 0)
                    return answer
                answer.append(msg)
                if not msg_flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return answer
    finally:
        sock.close()


def _error(err, msg, msg_flags):
    """The KernelError of an NLMSG_ERROR, with the kernel's extended-ack message when it gave one."""
    reason = None
    if msg_flags & NLM_F_ACK_TLVS and len(msg) >= _ERRNO.size + NLMSGHDR.size:
        quoted = NLMSGHDR.size if msg_flags & NLM_F_CAPPED else NLMSGHDR.unpack_from(msg, _ERRNO.size)[0]
        try:
            reason = parse_attrs(msg[_ERRNO.size + ((quoted + 3) & ~3):]).get(NLMSGERR_ATTR_MSG)
        except ProbeError:
            pass  # a damaged reason: the errno alone still says what failed
    if reason:
        return KernelError("%s (%s)" % (os.strerror(err), string(reason)), errno=err)
    return KernelError(os.strerror(err), errno=err)
