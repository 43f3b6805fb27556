/* Counts the packets and bytes that pass a TC hook, then hands each packet on to the next program.
 *
 * TC_ACT_UNSPEC (TCX_NEXT) is what lets the programs after this one run: TC_ACT_OK would end the hook there,
 * for the TCX programs after it and for every cls_bpf filter (TCX runs first). Tests compile variants by
 * defining PROGRAM (the program's name) and VERDICT ahead of this text.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifndef PROGRAM
#define PROGRAM knptest_count
#endif
#ifndef VERDICT
#define VERDICT TC_ACT_UNSPEC
#endif

struct counter {
    __u64 packets;
    __u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct counter);
} counts SEC(".maps");

SEC("tc")
int PROGRAM(struct __sk_buff *skb)
{
    __u32 key = 0;
    struct counter *c = bpf_map_lookup_elem(&counts, &key);

    if (c) {
        __sync_fetch_and_add(&c->packets, 1);
        __sync_fetch_and_add(&c->bytes, skb->len);
    }
    return VERDICT;
}

char LICENSE[] SEC("license") = "GPL";
