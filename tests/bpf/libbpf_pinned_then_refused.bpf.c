/* A map pinned by name, then a program the verifier refuses (a packet read without a bounds check): libbpf
 * pins the map before it loads the program, and must take the pin away again. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pinned_counts SEC(".maps");

SEC("xdp")
int unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&pinned_counts, &key);

	if (value)
		(*value)++;
	return data[100] == 1 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
