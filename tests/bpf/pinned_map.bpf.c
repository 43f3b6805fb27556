/* An XDP program counting into `pinned_counts`, a map pinned by name (LIBBPF_PIN_BY_NAME), beside `plain`, a map
 * that is not pinned. A test may #define PINNED_MAX_ENTRIES before this source for a variant whose pinned map
 * is declared differently. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef PINNED_MAX_ENTRIES
#define PINNED_MAX_ENTRIES 4
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PINNED_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pinned_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} plain SEC(".maps");

static __always_inline void bump(void *map)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(map, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("xdp")
int count(struct xdp_md *ctx)
{
	bump(&pinned_counts);
	bump(&plain);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
