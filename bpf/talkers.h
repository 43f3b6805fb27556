/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Top talkers: count a classified frame under its peer, in the live one of two tables, or in its interface's
 * `other` bucket where the live table has no room for it. The maps and the swap are described in kubenetprobe.h. */
#ifndef KNP_TALKERS_H
#define KNP_TALKERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "classify.h"
#include "kubenetprobe.h"

struct knp_peer_table {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KNP_PEER_TABLE_DEFAULT);
	__type(key, __u32);
	__type(value, struct knp_peer);
};

struct knp_peer_table knp_peers_a SEC(".maps");
struct knp_peer_table knp_peers_b SEC(".maps");

/* Which table is live, their mask and the hash's seed. An array: its lookup is inlined. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct knp_peer_conf);
} knp_peer_conf SEC(".maps");

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

static __always_inline __u32 mix(__u32 h, __u32 word)
{
	return (h ^ word) * 0x9E3779B1u;
}

/* A peer's hash: its id and the four 32-bit words of its address (as this CPU loads them) mixed in one by one
 * with a multiply, then murmur3's finalizer, so that the low bits, the index, depend on every bit. probe/talkers.py
 * computes the same, to give the peers it keeps their entries. */
static __always_inline __u32 knp_peer_hash(__u32 seed, __u32 id, __u64 a0, __u64 a1)
{
	__u32 h = mix(mix(mix(mix(mix(seed, id), a0), a0 >> 32), a1), a1 >> 32);

	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	h ^= h >> 13;
	h *= 0xC2B2AE35u;
	return h ^ (h >> 16);
}

/* Add to the peer's entry in this CPU's copy of `table`, taking a free one on the way where it has none yet: 0
 * where there is neither within KNP_PEER_PROBES. */
static __always_inline int count_in(void *table, const struct knp_peer_conf *conf, __u32 id, __u64 a0, __u64 a1,
				    __u64 packets, __u64 bytes)
{
	__u32 h = knp_peer_hash(conf->seed, id, a0, a1);
	int i;

#pragma unroll
	for (i = 0; i < KNP_PEER_PROBES; i++) {
		__u32 index = (h + i) & conf->mask;
		struct knp_peer *peer = bpf_map_lookup_elem(table, &index);

		if (!peer)
			return 0;
		if (peer->id == id && *(__u64 *)peer->addr == a0 && *(__u64 *)&peer->addr[8] == a1) {
			count(&peer->counter, packets, bytes);
			return 1;
		}
		if (!peer->id) {
			*(__u64 *)peer->addr = a0;
			*(__u64 *)&peer->addr[8] = a1;
			peer->id = id;
			peer->counter.packets = packets;
			peer->counter.bytes = bytes;
			return 1;
		}
	}
	return 0;
}

/* Count `packets` frames of `bytes` under the peer of a classified IP frame on (ifindex, direction): rx its
 * source address, tx its destination. A frame whose IP header is cut short counts in `other`, as does a peer
 * the live table has no room for. Not IP: nothing, as the peers add up to the l3 ipv4 and ipv6 counters. */
static __always_inline void count_peer(__u32 ifindex, __u32 direction, const struct knp_class *cls, void *end,
				       __u64 packets, __u64 bytes)
{
	__u32 id = KNP_PEER_ID(ifindex, direction);
	struct knp_peer_conf *conf;
	struct knp_counter *other;
	__u32 zero = 0, *slot;
	__u64 a0, a1; /* the address's two halves, as loaded */
	int counted;

	if (!cls->ip)
		return;
	if (cls->ipv6) {
		struct ipv6hdr *ip6 = cls->ip;
		__u64 *addr;

		if ((void *)(ip6 + 1) > end)
			goto other;
		addr = direction == KNP_DIR_RX ? (__u64 *)&ip6->saddr : (__u64 *)&ip6->daddr;
		a0 = addr[0];
		a1 = addr[1];
	} else {
		struct iphdr *ip = cls->ip;

		if ((void *)(ip + 1) > end)
			goto other;
		/* ::ffff:a.b.c.d in memory order: ten zero bytes, two 0xff, the address. */
		a0 = 0;
		a1 = (__u64)(direction == KNP_DIR_RX ? ip->saddr : ip->daddr) << 32 | bpf_htonl(0xffff);
	}
	conf = bpf_map_lookup_elem(&knp_peer_conf, &zero);
	if (!conf)
		return;
	/* Two call sites, each with its own map: the verifier then keeps each lookup's inlined form. */
	if (conf->live)
		counted = count_in(&knp_peers_b, conf, id, a0, a1, packets, bytes);
	else
		counted = count_in(&knp_peers_a, conf, id, a0, a1, packets, bytes);
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
