"""Frames built by hand, byte by byte, for the tests and the benchmark: the classes the XDP program tells apart."""
import struct

# Ethertypes
ETH_IP, ETH_IPV6, ETH_ARP, ETH_LLDP = 0x0800, 0x86DD, 0x0806, 0x88CC
VLAN_Q, VLAN_AD = 0x8100, 0x88A8
# IP protocol numbers / IPv6 next headers
HOPOPTS, ICMP, IPIP, TCP, UDP, ROUTING, FRAGMENT, GRE, AH, ICMPV6, NONXT, DSTOPTS = (
    0, 1, 4, 6, 17, 43, 44, 47, 51, 58, 59, 60)
FILLER = 0xFF  # body byte of extension headers: a parser that misjudges a length reads it as next header 255


def ether(ethertype, payload=b"", tags=(), dst="02:00:00:00:00:02", src="02:00:00:00:00:01"):
    """An Ethernet frame: MACs, one 4-byte VLAN tag per TPID in `tags`, the ethertype, the payload."""
    frame = bytes.fromhex(dst.replace(":", "") + src.replace(":", ""))
    for vid, tpid in enumerate(tags, start=100):
        frame += struct.pack("!HH", tpid, vid)
    return frame + struct.pack("!H", ethertype) + payload


# Test addresses come from the benchmarking ranges: 198.18.0.0/15 and 2001:2::/48 (RFC 2544, RFC 5180).
BENCH6 = bytes.fromhex("20010002")


def ipv4(proto, payload=b"", ihl=5, src=bytes([198, 18, 0, 1]), dst=bytes([198, 18, 0, 2])):
    """An IPv4 header of `ihl` 32-bit words (options are NOPs; ihl < 5 still writes 20 bytes), then payload."""
    options = b"\x01" * max(0, ihl * 4 - 20)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, 0, 64, proto, 0,
                         src, dst)
    return header + options + payload


def ipv6(nexthdr, payload=b"", src=BENCH6 + b"\0" * 11 + b"\x01", dst=BENCH6 + b"\0" * 11 + b"\x02"):
    """A 40-byte IPv6 header announcing `nexthdr`, then payload."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64, src, dst) + payload


def ext_header(kind, nexthdr, hdrlen=0):
    """An IPv6 extension header: fragment 8 bytes (hdrlen in its reserved byte), AH (hdrlen+2)*4, else (hdrlen+1)*8."""
    size = {FRAGMENT: 8, AH: (hdrlen + 2) * 4}.get(kind, (hdrlen + 1) * 8)
    return struct.pack("!BB", nexthdr, hdrlen) + bytes([FILLER]) * (size - 2)


def ipv6_chain(exts, upper, payload=b""):
    """IPv6 with the extension headers `exts` ((kind, hdrlen) pairs) in order, the last announcing `upper`."""
    kinds = [kind for kind, _ in exts]
    body = b"".join(ext_header(kind, nexthdr, hdrlen) for (kind, hdrlen), nexthdr in zip(exts, kinds[1:] + [upper]))
    return ipv6(kinds[0] if kinds else upper, body + payload)


def tcp(payload=b"", options=b""):
    """A TCP header (SYN) of 20 bytes plus `options` (a multiple of 4 bytes), then payload."""
    offset = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, offset << 4, 0x02, 65535, 0, 0) + options + payload


def udp(payload=b""):
    """An 8-byte UDP header, then payload."""
    return struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload


def icmp(kind=8):
    """An 8-byte ICMP (type 8) or ICMPv6 (type 128) echo request header."""
    return struct.pack("!BBHHH", kind, 0, 0, 1, 1)


def arp():
    """A 28-byte ARP request for IPv4 over Ethernet."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, 1, bytes.fromhex("020000000001"), bytes([198, 18, 0, 1]),
                       bytes(6), bytes([198, 18, 0, 2]))
