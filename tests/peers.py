"""Frames of many peers for the top-talkers tests: peer i's address and frame, built alike by the test and by the
sender it runs in a namespace (which imports this module alone, with frames.py)."""
import ipaddress

import frames

FIRST4 = int(ipaddress.ip_address("198.18.1.0"))  # peers from 198.18.0.0/15, clear of the pair's own addresses
FIRST6 = int(ipaddress.ip_address("2001:2::1:0"))  # and from 2001:2::/48


def address(family, i):
    """The text of peer i's address."""
    return str(ipaddress.ip_address((FIRST4 if family == "4" else FIRST6) + int(i)))


def peer_frame(family, direction, i, dst_mac, src_mac):
    """The frame of peer i: UDP over IPv4 or IPv6, the peer the source (rx) or destination (tx) address, its size
    varying with i; VLAN-tagged (two tags) for every seventh peer, which the probe sees through."""
    i = int(i)
    peer = ipaddress.ip_address((FIRST4 if family == "4" else FIRST6) + i).packed
    body = frames.udp(bytes(i % 53))
    ends = dict(src=peer) if direction == "rx" else dict(dst=peer)
    if family == "4":
        ethertype, packet = frames.ETH_IP, frames.ipv4(frames.UDP, body, **ends)
    else:
        ethertype, packet = frames.ETH_IPV6, frames.ipv6(frames.UDP, body, **ends)
    tags = (frames.VLAN_AD, frames.VLAN_Q) if i % 7 == 3 else ()
    frame = frames.ether(ethertype, packet, tags, dst=dst_mac, src=src_mac)
    return frame + bytes(max(0, 60 - len(frame)))  # padded as a NIC would: a runt never crosses


def peer_frames(family, direction, first, count, repeat, dst_mac, src_mac):
    """Every frame test_talkers.SEND_PEERS sends, in order: `repeat` rounds of one per peer."""
    made = [peer_frame(family, direction, i, dst_mac, src_mac) for i in range(int(first), int(first) + int(count))]
    return made * int(repeat)
