// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* An XDP program that does nothing: the floor `make bench` measures kubenetprobe_rx against. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
