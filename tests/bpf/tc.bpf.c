/* TC classifiers in the sections every libbpf 1.x knows: "tc" and "classifier" (sched_cls, no attach type). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("tc")
int tc_judge(struct __sk_buff *skb)
{
	return skb->len > 60 ? TC_ACT_OK : TC_ACT_SHOT;
}

SEC("classifier")
int classifier_judge(struct __sk_buff *skb)
{
	return skb->protocol == bpf_htons(0x0800) ? TC_ACT_OK : TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
