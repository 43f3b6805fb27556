"""Link events: the kernel's word (rtnetlink group RTNLGRP_LINK) of interfaces appearing, changing and going away.

Open LinkEvents first, then take link.links(), then apply what read() gives: a change made during the dump
still arrives as an event after it. An event may name an interface already gone again; its "del" follows.
"""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import errno
import os

from probe.errors import KernelError
from probe.net import rtnetlink
from probe.net.link import parse_link

RTMGRP_LINK = 1  # 1 << (RTNLGRP_LINK - 1): the group's bit in bind()'s mask
SO_RCVBUFFORCE = 33  # SO_RCVBUF beyond net.core.rmem_max, for CAP_NET_ADMIN
# An event takes ~2.3 KB of the buffer (measured): 8 MiB, which the kernel doubles, holds ~7000 events, enough for
# thousands of veths made at once.
RCVBUF = 8 << 20
RESYNC = ("resync", None)
_KINDS = {rtnetlink.RTM_NEWLINK: "new", rtnetlink.RTM_DELLINK: "del"}


class LinkEvents(object):
    """A non-blocking NETLINK_ROUTE socket subscribed to link events in this thread's network namespace."""

    def __init__(self):
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, rtnetlink.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(_socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:  # without CAP_NET_ADMIN: as much as net.core.rmem_max allows
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise KernelError("cannot subscribe to link events: %s" % os.strerror(e.errno), errno=e.errno)
        self._sock = sock

    def fileno(self):
        """The socket's fd, readable when events wait (for select)."""
        return self._sock.fileno()

    def read(self):
        """The events that wait, in order: ("new", Link) for an interface created or changed (flags, name: follow
        it by ifindex), ("del", Link) for one deleted or moved to another namespace; or [RESYNC] alone when the
        socket overran and events were lost: take link.links() again and go on reading."""
        events, lost = [], False
        while True:
            try:
                data = self._sock.recv(rtnetlink.RECV_SIZE)
            except BlockingIOError:
                return [RESYNC] if lost else events
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise KernelError("cannot read link events: %s" % os.strerror(e.errno), errno=e.errno)
                # What waits is older than the dump the caller takes next and would undo its news: drop it all.
                lost = True
            if lost:
                continue
            for kind, _, _, msg in rtnetlink.messages(data):
                record = parse_link(msg) if kind in _KINDS else None
                if record is not None:
                    events.append((_KINDS[kind], record))

    def close(self):
        """Unsubscribe: close the socket."""
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
