/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Parsing and classification shared by every hook, after xdp-tools' parsing_helpers.h: a cursor over the frame,
 * one parse function per header, every read checked against the end of the data the hook hands over.
 *
 * A hook builds a cursor over its frame (XDP: data..data_end; TC: the skb's linear data) and calls knp_classify()
 * for the frame's counters in a knp_stats value; how many packets and bytes it adds there is up to the hook.
 * Nothing here writes to the frame.
 */
#ifndef KNP_CLASSIFY_H
#define KNP_CLASSIFY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kubenetprobe.h"

/* VLAN tags a frame may carry (802.1ad outer, 802.1Q inner) and still be IP or ARP; one more makes it "other". */
#ifndef KNP_VLAN_MAX_DEPTH
#define KNP_VLAN_MAX_DEPTH 2
#endif

/* IPv6 extension headers walked before the upper layer is given up as unknown (l4 "other"). */
#ifndef KNP_IPV6_EXT_MAX
#define KNP_IPV6_EXT_MAX 8
#endif

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Base header sizes of ICMP and ICMPv6 (type, code, checksum, 4 bytes of rest); linux/icmp.h drags in libc. */
#define ICMP_HDR_LEN 8
#define ICMPV6_HDR_LEN 8

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* The first two bytes of every IPv6 extension header. */
struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct cursor {
	void *pos;
	void *end;
};

/* What knp_classify() found out about one frame. */
struct knp_class {
	struct knp_counter *l3; /* the frame's l3 counters in a knp_stats value */
	struct knp_counter *l4; /* its l4 counters there; NULL when it is not IP */
	__u32 hdr_len; /* bytes from the frame's start to the end of its L4 header: what each GSO segment repeats */
	void *ip; /* where its IPv4 or IPv6 header starts (maybe cut short), NULL when it is neither; for talkers.h */
	int ipv6; /* whether that header is IPv6 */
};

/* Add `packets` frames of `bytes` in all to a counter. */
static __always_inline void count(struct knp_counter *counter, __u64 packets, __u64 bytes)
{
	counter->packets += packets;
	counter->bytes += bytes;
}

/* Step over the next `len` bytes; 0 when the data is shorter. A flag, not a pointer that may be NULL: the
 * compiler then has no NULL to test for, nor to fold into a pointer difference the verifier refuses. */
static __always_inline int take(struct cursor *c, __u32 len)
{
	if (c->pos + len > c->end)
		return 0;
	c->pos += len;
	return 1;
}

/* The 16-bit field at p in one load. struct ethhdr is packed, so its fields (and those of headers found from it)
 * would be read a byte at a time: three instructions more per ethertype. The CPUs the probe runs on load unaligned
 * words, and the verifier lets them. */
static __always_inline __be16 be16_at(const void *p)
{
	return *(const __be16 *)p;
}

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* Step over the Ethernet header and the VLAN tags after it: the ethertype they carry (network order), or -1 when
 * the data ends first. `stripped` tags were already taken off the frame: with them, a frame of more than
 * KNP_VLAN_MAX_DEPTH tags gives 0, which no L3 class matches. */
static __always_inline int parse_ethhdr(struct cursor *c, int stripped)
{
	struct ethhdr *eth = c->pos;
	__be16 proto;
	int i;

	if (!take(c, sizeof(*eth)))
		return -1;
	proto = be16_at(&eth->h_proto);

#pragma unroll
	for (i = 0; i < KNP_VLAN_MAX_DEPTH; i++) {
		struct vlan_hdr *vlan = c->pos;

		if (!proto_is_vlan(proto))
			break;
		if (!take(c, sizeof(*vlan)))
			return -1;
		proto = be16_at(&vlan->encapsulated_proto);
	}
	if (i + stripped > KNP_VLAN_MAX_DEPTH)
		return 0;
	return proto;
}

/* Step over the IPv4 header and its options: the protocol field (the L4 header follows), or -1. */
static __always_inline int parse_iphdr(struct cursor *c)
{
	struct iphdr *ip = c->pos;
	__u32 len;

	if ((void *)(ip + 1) > c->end)
		return -1;
	len = ip->ihl * 4;
	/* The protocol field alone decides, wherever the options make the L4 header start. */
	if (len < sizeof(*ip) || !take(c, len))
		return -1;
	return ip->protocol;
}

/* Step over the IPv6 header and up to KNP_IPV6_EXT_MAX extension headers: the next header after them, or -1.
 * A longer chain returns the extension header where the walk stopped, which no L4 class matches. */
static __always_inline int parse_ip6hdr(struct cursor *c)
{
	struct ipv6hdr *ip6 = c->pos;
	__u8 next;
	int i;

	if (!take(c, sizeof(*ip6)))
		return -1;
	next = ip6->nexthdr;

#pragma unroll
	for (i = 0; i < KNP_IPV6_EXT_MAX; i++) {
		struct ipv6_ext_hdr *ext = c->pos;
		__u32 len;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_FRAGMENT:
		case IPPROTO_AH:
			break;
		default:
			return next;
		}
		if ((void *)(ext + 1) > c->end)
			return -1;
		/* The fragment header has no length field (its second byte is reserved); AH counts 4-byte words. */
		if (next == IPPROTO_FRAGMENT)
			len = 8;
		else if (next == IPPROTO_AH)
			len = (ext->hdrlen + 2) * 4;
		else
			len = (ext->hdrlen + 1) * 8;
		next = ext->nexthdr;
		if (!take(c, len))
			return -1;
	}
	return next;
}

/* Step over the L4 header of `proto` (-1: the L3 header was cut short) and put the frame's L4 class in cls: the
 * protocol's when its base header is there in full. cls->hdr_len becomes the length of the headers from `frame`
 * on, as each segment of a GSO packet repeats them: L2 and L3, then TCP's data offset or UDP's 8 bytes, as the
 * kernel's qdisc_pkt_len_init counts them. */
static __always_inline void classify_l4(struct cursor *c, void *frame, int proto, int ipv6, struct knp_stats *stats,
					struct knp_class *cls)
{
	struct tcphdr *tcp = c->pos;

	cls->hdr_len = c->pos - frame;
	switch (proto) {
	case IPPROTO_TCP:
		if (!take(c, sizeof(*tcp)))
			break;
		cls->l4 = &stats->l4[KNP_L4_TCP];
		cls->hdr_len += tcp->doff * 4; /* options included; like the kernel, not checked against the data */
		return;
	case IPPROTO_UDP:
		if (!take(c, sizeof(struct udphdr)))
			break;
		cls->l4 = &stats->l4[KNP_L4_UDP];
		cls->hdr_len += sizeof(struct udphdr);
		return;
	case IPPROTO_ICMP:
		if (ipv6 || !take(c, ICMP_HDR_LEN))
			break;
		cls->l4 = &stats->l4[KNP_L4_ICMP];
		return;
	case IPPROTO_ICMPV6:
		if (!ipv6 || !take(c, ICMPV6_HDR_LEN))
			break;
		cls->l4 = &stats->l4[KNP_L4_ICMPV6];
		return;
	}
	cls->l4 = &stats->l4[KNP_L4_OTHER];
}

/* Classify the frame under the cursor by L3 and L4. `stripped` VLAN tags were already taken off the frame (TC:
 * the one in skb->vlan_tci): they count against KNP_VLAN_MAX_DEPTH, so every hook agrees on the same wire frame. */
static __always_inline void knp_classify(struct cursor *c, int stripped, struct knp_stats *stats,
					struct knp_class *cls)
{
	void *frame = c->pos;
	int proto = parse_ethhdr(c, stripped);

	/* Unused by the plain programs, these stores are dropped from them: their code stays the same. */
	cls->ip = c->pos;
	cls->ipv6 = proto == bpf_htons(ETH_P_IPV6);
	if (proto == bpf_htons(ETH_P_IP)) {
		cls->l3 = &stats->l3[KNP_L3_IPV4];
		classify_l4(c, frame, parse_iphdr(c), 0, stats, cls);
		return;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		cls->l3 = &stats->l3[KNP_L3_IPV6];
		classify_l4(c, frame, parse_ip6hdr(c), 1, stats, cls);
		return;
	}
	/* One branch per class, constant slots: the XDP program's shortest paths stay as short as they were. */
	if (proto == bpf_htons(ETH_P_ARP))
		cls->l3 = &stats->l3[KNP_L3_ARP];
	else
		cls->l3 = &stats->l3[KNP_L3_OTHER];
	cls->l4 = NULL;
	cls->ip = NULL;
	cls->hdr_len = c->pos - frame;
}

#endif
