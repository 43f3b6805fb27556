// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* XDP program: classify every received frame by L3 and L4 protocol, count it, pass it on. */
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

#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT_HEADERS 8

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

/* Per-CPU so that CPUs receiving at once never lose each other's increments. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KNP_DIR_MAX);
	__type(key, __u32);
	__type(value, struct knp_stats);
} knp_stats SEC(".maps");

struct cursor {
	void *pos;
	void *end;
};

/* Return a pointer to the next `len` bytes and step over them, or NULL when the frame is shorter. */
static __always_inline void *take(struct cursor *c, __u32 len)
{
	void *start = c->pos;

	if (start + len > c->end)
		return NULL;
	c->pos = start + len;
	return start;
}

/* L4 class of an upper-layer protocol whose base header must be present in full. */
static __always_inline int classify_l4(struct cursor *c, __u8 proto, int ipv6)
{
	switch (proto) {
	case IPPROTO_TCP:
		return take(c, sizeof(struct tcphdr)) ? KNP_L4_TCP : KNP_L4_OTHER;
	case IPPROTO_UDP:
		return take(c, sizeof(struct udphdr)) ? KNP_L4_UDP : KNP_L4_OTHER;
	case IPPROTO_ICMP:
		if (ipv6)
			return KNP_L4_OTHER;
		return take(c, ICMP_HDR_LEN) ? KNP_L4_ICMP : KNP_L4_OTHER;
	case IPPROTO_ICMPV6:
		if (!ipv6)
			return KNP_L4_OTHER;
		return take(c, ICMPV6_HDR_LEN) ? KNP_L4_ICMPV6 : KNP_L4_OTHER;
	}
	return KNP_L4_OTHER;
}

static __always_inline int classify_ipv4(struct cursor *c)
{
	struct iphdr *ip = take(c, sizeof(*ip));

	if (!ip || ip->ihl < 5)
		return KNP_L4_OTHER;
	/* Step over IP options: the protocol field alone decides, wherever the L4 header starts. */
	if (!take(c, ip->ihl * 4 - sizeof(*ip)))
		return KNP_L4_OTHER;
	return classify_l4(c, ip->protocol, 0);
}

static __always_inline int classify_ipv6(struct cursor *c)
{
	struct ipv6hdr *ip6 = take(c, sizeof(*ip6));
	struct ipv6_ext_hdr *ext;
	__u8 next;
	int i;

	if (!ip6)
		return KNP_L4_OTHER;
	next = ip6->nexthdr;

#pragma unroll
	for (i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		__u32 len;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_FRAGMENT:
		case IPPROTO_AH:
			break;
		default:
			return classify_l4(c, next, 1);
		}
		ext = c->pos;
		if ((void *)(ext + 1) > c->end)
			return KNP_L4_OTHER;
		if (next == IPPROTO_FRAGMENT)
			len = 8;
		else if (next == IPPROTO_AH)
			len = (ext->hdrlen + 2) * 4;
		else
			len = (ext->hdrlen + 1) * 8;
		next = ext->nexthdr;
		if (!take(c, len))
			return KNP_L4_OTHER;
	}
	/* More extension headers than we walk: unknown upper layer. */
	return classify_l4(c, next, 1);
}

static __always_inline void count(struct knp_counter *counter, __u64 bytes)
{
	counter->packets++;
	counter->bytes += bytes;
}

SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__u64 bytes = c.end - c.pos;
	__u32 key = KNP_DIR_RX;
	struct knp_stats *stats;
	struct ethhdr *eth;
	__be16 proto;
	int l4, i;

	stats = bpf_map_lookup_elem(&knp_stats, &key);
	if (!stats)
		return XDP_PASS;

	eth = take(&c, sizeof(*eth));
	if (!eth) {
		count(&stats->l3[KNP_L3_OTHER], bytes);
		return XDP_PASS;
	}
	proto = eth->h_proto;

#pragma unroll
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vlan;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vlan = take(&c, sizeof(*vlan));
		if (!vlan) {
			count(&stats->l3[KNP_L3_OTHER], bytes);
			return XDP_PASS;
		}
		proto = vlan->encapsulated_proto;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		count(&stats->l3[KNP_L3_IPV4], bytes);
		l4 = classify_ipv4(&c);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		count(&stats->l3[KNP_L3_IPV6], bytes);
		l4 = classify_ipv6(&c);
	} else {
		count(&stats->l3[proto == bpf_htons(ETH_P_ARP) ? KNP_L3_ARP : KNP_L3_OTHER], bytes);
		return XDP_PASS;
	}
	if (l4 >= 0 && l4 < KNP_L4_MAX)
		count(&stats->l4[l4], bytes);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
