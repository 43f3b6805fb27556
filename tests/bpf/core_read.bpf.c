/* A CO-RE relocation: struct xdp_md declared here, without vmlinux.h, with preserve_access_index, so reading
 * ctx->ingress_ifindex leaves a field-offset relocation that libbpf resolves against the kernel's BTF. */
#include <linux/types.h>

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
} __attribute__((preserve_access_index));

#include <bpf/bpf_helpers.h>

SEC("xdp")
int core_reader(struct xdp_md *ctx)
{
	return ctx->ingress_ifindex == 1 ? 1 : 2; /* XDP_DROP on the loopback, else XDP_PASS */
}

char LICENSE[] SEC("license") = "GPL";
