/* Counts the frames and bytes that pass an XDP hook and lets every one through: another tool's XDP program, which
 * the probe must leave in place and counting. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

SEC("xdp")
int xdptest_count(struct xdp_md *ctx)
{
    __u32 key = 0;
    struct counter *c = bpf_map_lookup_elem(&counts, &key);

    if (c) {
        __sync_fetch_and_add(&c->packets, 1);
        __sync_fetch_and_add(&c->bytes, ctx->data_end - ctx->data);
    }
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
