/* Global data of every kind libbpf maps: .data, .rodata, .bss, custom .data.* and .rodata.* sections, a static
 * variable (reached through its section's symbol) and a string literal (.rodata.str1.1). The program passes a
 * frame only while every value is still the one compiled in, and counts its runs in .bss. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

__u32 data_var = 7;
const volatile __u32 rodata_var = 3;
__u32 bss_var;
char picked;
__u32 custom_data SEC(".data.custom") = 11;
const volatile __u32 custom_rodata SEC(".rodata.custom") = 13;
static volatile __u32 static_var = 5;
__attribute__((visibility("hidden"))) __u32 hidden_var = 17;

SEC("xdp")
int globals(struct xdp_md *ctx)
{
	const char *word = "probe";
	__u32 runs = bss_var++;

	if (data_var != 7 || rodata_var != 3 || custom_data != 11 || custom_rodata != 13 || static_var != 5 ||
	    hidden_var != 17)
		return XDP_ABORTED;
	/* A byte of the string chosen at run time, so the string stays in memory. */
	picked = word[ctx->ingress_ifindex & 3];
	return runs ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
