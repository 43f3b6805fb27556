// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* The probe's programs: XDP on receive, TC on ingress and on egress. One object serves every interface: each
 * program classifies every frame by L3 and L4 (classify.h), counts it in its interface's slot for its direction
 * in the stats map and hands it on unchanged. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "classify.h"
#include "kubenetprobe.h"

/* Bytes a TC program pulls into an skb's linear data when its headers lie beyond it: enough for two VLAN tags,
 * IPv6 with a few extension headers, TCP with options. */
#ifndef KNP_TC_PULL_LEN
#define KNP_TC_PULL_LEN 256
#endif

/* ifindex -> slot (0: not followed). An array: the verifier inlines its lookups, where a hash lookup is a call. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KNP_MAX_IFINDEX);
	__type(key, __u32);
	__type(value, __u32);
} knp_slots SEC(".maps");

/* KNP_STATS_KEY(slot, direction) -> counters. Per-CPU so that CPUs counting at once never lose each other's
 * increments; an array (preallocated: KNP_STATS_ENTRIES values per CPU), its lookups inlined too. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KNP_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, struct knp_stats);
} knp_stats SEC(".maps");

#include "talkers.h" /* after knp_slots, which it reads */

/* The counters of an interface's direction, or NULL where the probe does not follow the interface. */
static __always_inline struct knp_stats *stats_of(__u32 ifindex, __u32 direction)
{
	__u32 *slot = bpf_map_lookup_elem(&knp_slots, &ifindex);
	__u32 key;

	if (!slot || !*slot)
		return NULL;
	key = KNP_STATS_KEY(*slot, direction);
	return bpf_map_lookup_elem(&knp_stats, &key);
}

/* Add `packets` wire frames of `bytes` in all to the frame's l3 counters and, if it is IP, to its l4 counters. */
static __always_inline void count_class(const struct knp_class *cls, __u64 packets, __u64 bytes)
{
	count(cls->l3, packets, bytes);
	if (cls->l4)
		count(cls->l4, packets, bytes);
}

/* Count a frame at XDP; with `talkers` (a constant: the plain program keeps none of that code), under its peer
 * too. */
static __always_inline int count_xdp(struct xdp_md *ctx, int talkers)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	__u64 bytes = c.end - c.pos;
	struct knp_stats *stats;
	struct knp_class cls;

	stats = stats_of(ctx->ingress_ifindex, KNP_DIR_RX);
	if (!stats)
		return XDP_PASS;
	knp_classify(&c, 0, stats, &cls);
	count_class(&cls, 1, bytes);
	if (talkers)
		count_peer(ctx->ingress_ifindex, KNP_DIR_RX, &cls, c.end, 1, bytes);
	return XDP_PASS;
}

SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	return count_xdp(ctx, 0);
}

/* The linear data an skb of this ethertype has with the headers classification reads in it: Ethernet, then IPv4
 * or IPv6 and the 8 bytes of L4 ICMP needs; for another ethertype (a tag in the data, ARP), as much as Ethernet
 * and IPv4. The stack's own skbs have that much (egress, forwarded); one from a driver that builds skbs from page
 * fragments may hold the Ethernet header alone (GRO off), or no L4 header (GRO on, and a protocol GRO does not
 * parse, such as ICMP). */
static __always_inline __u32 headers_len(__be16 protocol)
{
	if (protocol == bpf_htons(ETH_P_IP))
		return ETH_HLEN + sizeof(struct iphdr) + ICMP_HDR_LEN;
	if (protocol == bpf_htons(ETH_P_IPV6))
		return ETH_HLEN + sizeof(struct ipv6hdr) + ICMPV6_HDR_LEN;
	return ETH_HLEN + sizeof(struct iphdr);
}

/* Count one skb at a TC hook under its interface's key for `direction`, as the wire frames it stands for, and hand
 * it on: TC_ACT_UNSPEC, never TC_ACT_OK. On a TCX hook (TCX_NEXT) and among cls_bpf filters alike it lets whatever
 * comes after decide, where TC_ACT_OK would end the hook here and skip them (a CNI's policy programs among them). */
static __always_inline int count_skb(struct __sk_buff *skb, __u32 direction, int talkers)
{
	__u64 linear = (void *)(long)skb->data_end - (void *)(long)skb->data;
	struct knp_stats *stats;
	struct knp_class cls;
	struct cursor c;
	__u64 bytes, segs, tags; /* 64-bit from the start: no zero-extensions before the multiplications */

	stats = stats_of(skb->ifindex, direction);
	if (!stats)
		return TC_ACT_UNSPEC;
	/* Headers outside the linear data would read as a frame cut short: pull them in, as the stack does next on
	 * ingress. The threshold keeps the pull from the stack's own skbs, whose head it would copy if cloned (TCP's). */
	if (linear < skb->len && linear < headers_len(skb->protocol))
		bpf_skb_pull_data(skb, skb->len < KNP_TC_PULL_LEN ? skb->len : KNP_TC_PULL_LEN);
	/* A tag the NIC or the stack took off into skb->vlan_tci was on the wire: one of the tags allowed. */
	tags = skb->vlan_present & 1; /* 0 or 1 already: the mask tells the verifier, which then need not fork */
	/* The data pointers read after the pull, which moves them, whether it happened or not: one path on. */
	c = (struct cursor){ .pos = (void *)(long)skb->data, .end = (void *)(long)skb->data_end };
	knp_classify(&c, tags, stats, &cls);

	/* A GSO or GRO skb stands for gso_segs wire frames, each carrying the headers again: skb->len (from the
	 * Ethernet header on) counts them once, as the kernel's qdisc_pkt_len_init adds the rest. */
	segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	bytes = skb->len + (segs - 1) * cls.hdr_len + segs * tags * sizeof(struct vlan_hdr);
	count_class(&cls, segs, bytes);
	if (talkers)
		count_peer(skb->ifindex, direction, &cls, c.end, segs, bytes);
	return TC_ACT_UNSPEC;
}

/* SEC("classifier"), the section name of sched_cls programs that libbpf 0.3 (Debian 11) knows besides 1.x; SEC("tc")
 * came later. Both hooks take the same programs: through a TCX link or as a cls_bpf filter. */
SEC("classifier")
int kubenetprobe_in(struct __sk_buff *skb)
{
	return count_skb(skb, KNP_DIR_RX, 0);
}

SEC("classifier")
int kubenetprobe_tx(struct __sk_buff *skb)
{
	return count_skb(skb, KNP_DIR_TX, 0);
}

/* The same programs counting peers too (talkers.h), attached instead of the plain ones with --talkers. Separate
 * programs, so that without talkers the per-packet cost is the plain programs', unchanged. */
SEC("xdp")
int kubenetprobe_xp(struct xdp_md *ctx)
{
	return count_xdp(ctx, 1);
}

SEC("classifier")
int kubenetprobe_ip(struct __sk_buff *skb)
{
	return count_skb(skb, KNP_DIR_RX, 1);
}

SEC("classifier")
int kubenetprobe_tp(struct __sk_buff *skb)
{
	return count_skb(skb, KNP_DIR_TX, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
