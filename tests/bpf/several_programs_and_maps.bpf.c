/* Three programs in two sections over two maps, one declared with BTF key and value types, one by sizes. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} first SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__uint(key_size, 4);
	__uint(value_size, 8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} second SEC(".maps");

static __always_inline int bump(void *map)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(map, &key);

	if (value)
		(*value)++;
	return XDP_PASS;
}

SEC("xdp") int prog_a(struct xdp_md *ctx) { return bump(&first); }
SEC("xdp") int prog_b(struct xdp_md *ctx) { bump(&second); return bump(&first); }
SEC("xdp/other") int prog_c(struct xdp_md *ctx) { return bump(&second); }

char LICENSE[] SEC("license") = "GPL";
