/* The probe's own map layout, but a packet read without a bounds check: only the verifier can refuse it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kubenetprobe.h"
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, KNP_MAX_IFINDEX); __type(key, __u32);
         __type(value, __u32); } knp_slots SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, KNP_STATS_ENTRIES); __type(key, __u32);
         __type(value, struct knp_stats); } knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&knp_slots, &ifindex);
	struct knp_stats *stats;
	__u32 key;

	if (slot && *slot) {
		key = KNP_STATS_KEY(*slot, KNP_DIR_RX);
		stats = bpf_map_lookup_elem(&knp_stats, &key);
		if (stats)
			stats->l3[KNP_L3_OTHER].packets++;
	}
	return data[100] == 1 ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
