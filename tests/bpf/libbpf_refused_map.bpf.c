/* An array map keyed by 8 bytes: the kernel refuses to create it (an array's key is a 4-byte index). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} refused SEC(".maps");

SEC("xdp")
int uses_refused(struct xdp_md *ctx)
{
	__u64 key = 0;

	return bpf_map_lookup_elem(&refused, &key) ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
