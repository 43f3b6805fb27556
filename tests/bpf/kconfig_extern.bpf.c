/* Uses a __kconfig extern no kernel config sets, declared strong (not __weak): loading must fail naming it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern int CONFIG_DOES_NOT_EXIST __kconfig;

SEC("xdp")
int kconfig_user(struct xdp_md *ctx)
{
	return CONFIG_DOES_NOT_EXIST ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
