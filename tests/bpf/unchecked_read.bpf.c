/* Reads a packet byte without checking it against data_end: the verifier must refuse it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2); __type(key, __u32);
         __type(value, __u64); } knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	return data[100] == 1 ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
