/* A program in a section that names no program type libbpf or the spec reader knows. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("knp_unknown") int classify(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "GPL";
