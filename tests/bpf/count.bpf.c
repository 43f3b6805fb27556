/* Another tool's counting program, which the probe must leave in place and counting: it counts the packets and
 * bytes that pass its hook and hands each on.
 *
 * At TC (the default) it returns TC_ACT_UNSPEC (TCX_NEXT), which lets the programs after it run: TC_ACT_OK would
 * end the hook there, for the TCX programs after it and for every cls_bpf filter (TCX runs first). Tests compile
 * variants by defining PROGRAM (the program's name) and VERDICT ahead of this text; with HOOK_XDP defined it is
 * the XDP program xdptest_count, which passes every frame.
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

static __always_inline void count(__u64 bytes)
{
    __u32 key = 0;
    struct counter *c = bpf_map_lookup_elem(&counts, &key);

    if (c) {
        __sync_fetch_and_add(&c->packets, 1);
        __sync_fetch_and_add(&c->bytes, bytes);
    }
}

#ifdef HOOK_XDP
SEC("xdp")
int xdptest_count(struct xdp_md *ctx)
{
    count(ctx->data_end - ctx->data);
    return XDP_PASS;
}
#else
SEC("tc")
int PROGRAM(struct __sk_buff *skb)
{
    count(skb->len);
    return VERDICT;
}
#endif

char LICENSE[] SEC("license") = "GPL";
