/* A map `bad` whose definition gets the members a test #defines as BAD_MAP_MEMBERS before this source. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#ifndef BAD_MAP_MEMBERS
#define BAD_MAP_MEMBERS
#endif
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
         __type(value, __u64); BAD_MAP_MEMBERS } bad SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx)
{ return bpf_map_lookup_elem(&bad, &(__u32){0}) != 0; }
char LICENSE[] SEC("license") = "GPL";
