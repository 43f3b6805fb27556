/* Maps libbpf creates its own way: a ring buffer of a size that is no power-of-2 number of pages (libbpf rounds
 * it up), a perf event array with no max_entries (one per possible CPU), a devmap and a program array declared
 * with BTF types (created without: the kernel takes none), the devmap pinned by name (the kernel makes devmaps
 * read-only to programs: its pin carries a flag the declaration does not), an LRU hash with no common LRU. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 5000);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} jumps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, __u32);
	__type(value, __u64);
} recent SEC(".maps");

SEC("xdp")
int use_maps(struct xdp_md *ctx)
{
	__u32 key = ctx->ingress_ifindex;
	__u64 one = 1;

	bpf_ringbuf_output(&events, &key, sizeof(key), 0);
	bpf_perf_event_output(ctx, &samples, BPF_F_CURRENT_CPU, &key, sizeof(key));
	bpf_map_update_elem(&recent, &key, &one, BPF_ANY);
	bpf_tail_call(ctx, &jumps, 0);
	return bpf_redirect_map(&ports, 0, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
