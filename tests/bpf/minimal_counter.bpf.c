// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* The least a packet counter can do, for `make bench` to measure the probe's programs against: one map lookup,
 * an Ethernet and an IPv4 header checked, two increments. One program per hook; the TC one hands packets on
 * (TC_ACT_UNSPEC) as the probe's do. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter);
} counts SEC(".maps");

/* Count an IPv4 frame of `bytes` between data and data_end. */
static __always_inline void count_ipv4(void *data, void *data_end, __u64 bytes)
{
	struct ethhdr *eth = data;
	__u32 key = 0;
	struct counter *c = bpf_map_lookup_elem(&counts, &key);

	if (!c)
		return;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	if ((void *)((struct iphdr *)(eth + 1) + 1) > data_end)
		return;
	c->packets++;
	c->bytes += bytes;
}

SEC("xdp")
int minimal_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	count_ipv4(data, data_end, data_end - data);
	return XDP_PASS;
}

SEC("tc")
int minimal_tc(struct __sk_buff *skb)
{
	count_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
