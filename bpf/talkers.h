/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Top talkers: count a classified frame under its peer, in the live one of two tables, or in its interface's
 * `other` bucket where the live table is full. The maps and the swap are described in kubenetprobe.h. */
#ifndef KNP_TALKERS_H
#define KNP_TALKERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "classify.h"
#include "kubenetprobe.h"

struct knp_peer_table {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, KNP_PEERS_DEFAULT);
	__type(key, struct knp_peer_key);
	__type(value, struct knp_counter);
};

struct knp_peer_table knp_peers_a SEC(".maps");
struct knp_peer_table knp_peers_b SEC(".maps");

/* Which table the programs count in: 0 a, 1 b. An array: its lookup is inlined. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} knp_peer_live SEC(".maps");

/* KNP_STATS_KEY(slot, direction) -> the packets of peers no table had room for. Only ever added to by the
 * programs; user space zeroes a slot's before it gives the slot out, as with knp_stats. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KNP_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, struct knp_counter);
} knp_peer_other SEC(".maps");

/* User space's alone, no program touches it: the counts of each peer it holds, taken from the tables so far, and
 * of each interface direction's retired peers (key: its id | KNP_PEER_RETIRED, address 0). What a run with --pin
 * leaves to the next, so that the totals stay exact across runs. Allocated as used: at most one entry per peer
 * held and two per interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, KNP_PEERS_DEFAULT + KNP_STATS_ENTRIES);
	__type(key, struct knp_peer_key);
	__type(value, struct knp_counter);
} knp_peer_base SEC(".maps");

/* Add to the peer's counter in `table`, making it where it is not there yet: 0 where the table is full. */
static __always_inline int count_in(void *table, struct knp_peer_key *key, __u64 packets, __u64 bytes)
{
	struct knp_counter *counter = bpf_map_lookup_elem(table, key);
	struct knp_counter first = { .packets = packets, .bytes = bytes };

	if (!counter) {
		if (bpf_map_update_elem(table, key, &first, BPF_NOEXIST) == 0)
			return 1;
		/* EEXIST: another CPU made it in between (its value on this CPU starts at 0); else E2BIG, full. */
		counter = bpf_map_lookup_elem(table, key);
		if (!counter)
			return 0;
	}
	count(counter, packets, bytes);
	return 1;
}

/* Count `packets` frames of `bytes` under the peer of a classified IP frame on (ifindex, direction): rx its
 * source address, tx its destination. A frame whose IP header is cut short counts in `other`, as does a peer
 * the live table has no room for. Not IP: nothing, as the peers add up to the l3 ipv4 and ipv6 counters. */
static __always_inline void count_peer(__u32 ifindex, __u32 direction, const struct knp_class *cls, void *end,
				       __u64 packets, __u64 bytes)
{
	struct knp_peer_key key = { .id = KNP_PEER_ID(ifindex, direction) };
	struct knp_counter *other;
	__u32 zero = 0, *live, *slot;
	int counted;

	if (!cls->ip)
		return;
	if (cls->ipv6) {
		struct ipv6hdr *ip6 = cls->ip;

		if ((void *)(ip6 + 1) > end)
			goto other;
		__builtin_memcpy(key.addr, direction == KNP_DIR_RX ? &ip6->saddr : &ip6->daddr, 16);
	} else {
		struct iphdr *ip = cls->ip;

		if ((void *)(ip + 1) > end)
			goto other;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], direction == KNP_DIR_RX ? &ip->saddr : &ip->daddr, 4);
	}
	live = bpf_map_lookup_elem(&knp_peer_live, &zero);
	if (!live)
		return;
	/* Two call sites, each with its own map: the verifier then keeps each hash call's direct (inlined) form. */
	if (*live)
		counted = count_in(&knp_peers_b, &key, packets, bytes);
	else
		counted = count_in(&knp_peers_a, &key, packets, bytes);
	if (counted)
		return;
other:
	/* The slot is looked up again only here, off the common path. */
	slot = bpf_map_lookup_elem(&knp_slots, &ifindex);
	if (!slot)
		return;
	zero = KNP_STATS_KEY(*slot, direction);
	other = bpf_map_lookup_elem(&knp_peer_other, &zero);
	if (!other)
		return;
	count(other, packets, bytes);
}

#endif
