/* TC programs in the sections libbpf 1.3 added: tcx/ingress, tcx/egress and their aliases tc/ingress, tc/egress
 * (sched_cls with BPF_TCX_INGRESS or BPF_TCX_EGRESS). libbpf before 1.3 refuses these names. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tcx/ingress")
int tcx_in(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tcx/egress")
int tcx_out(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tc/ingress")
int tc_in(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tc/egress")
int tc_out(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
