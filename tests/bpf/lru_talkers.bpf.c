// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* What `make bench` measures the probe's top talkers against: the counter of cilium/ebpf's examples/xdp, an LRU
 * hash of IPv4 source address -> packet count (__u32 each), increased atomically. Sized here to 4096 entries (the
 * example keeps 16), so that 4096 peers fit and the measure is of counting, not of eviction. It counts no bytes,
 * no IPv6, nor what an LRU evicts. One program per hook: TC ingress keyed by source, TC egress by destination, as
 * the probe's rx and tx. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} xdp_stats_map SEC(".maps");

/* The IPv4 source (or destination) address of a frame, 0 if it is not IPv4: the example's parse_ip_src_addr. */
static __always_inline __u32 ip_addr(void *data, void *data_end, int destination)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if ((void *)(ip + 1) > data_end)
		return 0;
	return destination ? ip->daddr : ip->saddr;
}

/* The example's counting: look up, add atomically, or insert 1. */
static __always_inline void count_addr(__u32 addr)
{
	__u32 *pkt_count = bpf_map_lookup_elem(&xdp_stats_map, &addr);

	if (!pkt_count) {
		__u32 init_pkt_count = 1;

		bpf_map_update_elem(&xdp_stats_map, &addr, &init_pkt_count, BPF_ANY);
	} else {
		__sync_fetch_and_add(pkt_count, 1);
	}
}

SEC("xdp")
int lru_xdp(struct xdp_md *ctx)
{
	__u32 addr = ip_addr((void *)(long)ctx->data, (void *)(long)ctx->data_end, 0);

	if (addr)
		count_addr(addr);
	return XDP_PASS;
}

static __always_inline int count_skb(struct __sk_buff *skb, int destination)
{
	__u32 addr = ip_addr((void *)(long)skb->data, (void *)(long)skb->data_end, destination);

	if (addr)
		count_addr(addr);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int lru_in(struct __sk_buff *skb)
{
	return count_skb(skb, 0);
}

SEC("classifier")
int lru_tx(struct __sk_buff *skb)
{
	return count_skb(skb, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
