/* BPF-to-BPF calls: a global function of .text called from two programs, a hidden global one (libbpf makes its
 * BTF static) calling a static __noinline one (a call inside .text, with no relocation), and a bpf_loop
 * callback; subprograms using a map and global data. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

__u32 scale = 3;

static __noinline int twice(int x)
{
	return x * 2;
}

__attribute__((visibility("hidden"))) __noinline int plus_scale(int x)
{
	return twice(x) + scale;
}

__noinline int count_and_judge(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&calls, &key);

	if (value)
		__sync_fetch_and_add(value, 1);
	return ctx->data_end - ctx->data > 60 ? XDP_PASS : XDP_DROP;
}

static long step(__u32 index, void *data)
{
	*(int *)data += 1;
	return 0;
}

SEC("xdp")
int first(struct xdp_md *ctx)
{
	return count_and_judge(ctx);
}

SEC("xdp")
int second(struct xdp_md *ctx)
{
	int steps = 0;

	bpf_loop(4, step, &steps, 0);
	return plus_scale(steps) == 11 ? count_and_judge(ctx) : XDP_ABORTED;
}

char LICENSE[] SEC("license") = "GPL";
