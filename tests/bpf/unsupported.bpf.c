/* One thing the native loader refuses, chosen by what a test #defines before this source: KPROBE (a program
 * type other than xdp and sched_cls), MAP_IN_MAP, PROG_ARRAY_VALUES (a program array with initial values),
 * STRUCT_OPS, KSYM (a __ksym variable), KFUNC, XDP_OTHER (a section name libbpf 1.x does not know). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifdef KPROBE
SEC("kprobe/do_sys_open")
int probe_open(void *ctx)
{
	return 0;
}
#endif

#ifdef MAP_IN_MAP
struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps");
#endif

#ifdef PROG_ARRAY_VALUES
int tail(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, int (void *));
} jumps SEC(".maps") = {
	.values = { [1] = (void *)&tail },
};

SEC("xdp")
int tail(struct xdp_md *ctx)
{
	return XDP_PASS;
}
#endif

#ifdef STRUCT_OPS
struct fake_ops {
	int (*init)(void *arg);
	char name[16];
};

SEC("struct_ops/fake_init")
int fake_init(void *arg)
{
	return 0;
}

SEC(".struct_ops")
struct fake_ops fake = {
	.init = (void *)fake_init,
	.name = "fake",
};
#endif

#ifdef KSYM
extern const void bpf_link_fops __ksym;
#endif

#ifdef KFUNC
extern void bpf_rcu_read_lock(void) __ksym;
#endif

SEC("xdp")
int entry(struct xdp_md *ctx)
{
#ifdef KSYM
	if (((__u64)&bpf_link_fops & 0xff) == 7)
		return XDP_DROP;
#endif
#ifdef KFUNC
	bpf_rcu_read_lock();
#endif
	return XDP_PASS;
}

#ifdef XDP_OTHER
SEC("xdp/other")
int other(struct xdp_md *ctx)
{
	return XDP_PASS;
}
#endif

char LICENSE[] SEC("license") = "GPL";
