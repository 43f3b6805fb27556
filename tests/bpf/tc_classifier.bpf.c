/* A program in section "tc": a type the spec reader does not know. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int classify(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "GPL";
