/* Reads a __ksym variable no kernel has, declared strong (not __weak): loading must fail naming it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern const int knp_no_such_variable __ksym;

SEC("xdp")
int ksym_user(struct xdp_md *ctx)
{
	return knp_no_such_variable == 1 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
