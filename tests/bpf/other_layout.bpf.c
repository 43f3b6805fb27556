/* Verifies fine, but its stats map holds one __u64 instead of struct knp_stats. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "kubenetprobe.h"
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, KNP_MAX_IFINDEX); __type(key, __u32);
         __type(value, __u32); } knp_slots SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, KNP_STATS_ENTRIES); __type(key, __u32);
         __type(value, __u64); } knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
