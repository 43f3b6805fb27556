/* The probe's own map layout, but a packet read without a bounds check: only the verifier can refuse it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kubenetprobe.h"
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, KNP_MAX_INTERFACES * KNP_DIR_MAX);
         __uint(map_flags, BPF_F_NO_PREALLOC); __type(key, struct knp_key); __type(value, struct knp_stats);
} knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	struct knp_key key = { .ifindex = ctx->ingress_ifindex, .direction = KNP_DIR_RX };
	struct knp_stats *stats = bpf_map_lookup_elem(&knp_stats, &key);

	if (stats)
		stats->l3[KNP_L3_OTHER].packets++;
	return data[100] == 1 ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
