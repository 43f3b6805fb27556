/* Verifies fine, but its stats map holds one __u64 instead of struct knp_stats. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kubenetprobe.h"
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, KNP_MAX_INTERFACES * KNP_DIR_MAX);
         __uint(map_flags, BPF_F_NO_PREALLOC); __type(key, struct knp_key); __type(value, __u64);
} knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
