/* XDP programs in each section libbpf 1.x gives an expected attach type or flags: xdp, xdp/devmap, xdp/cpumap,
 * xdp.frags, xdp.frags/devmap, xdp.frags/cpumap. The frags-aware ones judge a frame by its whole length. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int plain(struct xdp_md *ctx)
{
	return ctx->data_end - ctx->data > 60 ? XDP_PASS : XDP_DROP;
}

SEC("xdp/devmap")
int devmap(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp/cpumap")
int cpumap(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp.frags")
int frags(struct xdp_md *ctx)
{
	return bpf_xdp_get_buff_len(ctx) > 4096 ? XDP_PASS : XDP_DROP;
}

SEC("xdp.frags/devmap")
int frags_devmap(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp.frags/cpumap")
int frags_cpumap(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
