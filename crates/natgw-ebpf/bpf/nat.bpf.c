// SPDX-License-Identifier: MIT OR Apache-2.0
//
// natgw's own translator: on the public interface `natgw_egress` translates what
// private hosts send and `natgw_ingress` what comes back; on the private interfaces
// `natgw_private` hairpins. It implements the reference model (crates/natgw-nat) as
// listed in crates/natgw-ebpf/src/lib.rs, with the
// same rules, the same order of checksum updates and the same port search, so the
// differential tests can demand identical bytes.
//
// Keys hold addresses and ports in network byte order, as they are on the wire.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_POOL 16
#define MAX_PRIVATE 8
#define MAX_ENTRIES 262144
#define CLOCK_MONOTONIC 1
#define AF_INET 2

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

enum filtering { EIF = 0, ADF = 1, APDF = 2 };

enum tcp_state {
	NONE = 0,
	SYN_OUT,
	SYN_IN,
	ESTABLISHED,
	FIN_OUT,
	FIN_IN,
	CLOSING,
	RESET,
};

// Indexes of the per-CPU counters (COUNTERS in crates/natgw-ebpf/src/maps.rs names them).
enum counter {
	C_OUT_TRANSLATED = 0,
	C_IN_TRANSLATED,
	C_PASSED,
	C_DROP_MALFORMED,
	C_DROP_UNSUPPORTED,
	C_DROP_NO_MAPPING,
	C_DROP_FILTERED,
	C_DROP_NO_PORT,
	C_BINDINGS_CREATED,
	C_BINDINGS_EXPIRED,
	C_SESSIONS_CREATED,
	C_PULLED,
	C_HAIRPINNED,
	C_DROP_NO_ROUTE,
	C_EVENTS_LOST,
	C_ICMP_SUPPRESSED,
	C_FAST_OUT,
	C_FAST_IN,
	C_MAX,
};

// Mirrors `Config` in crates/natgw-ebpf/src/maps.rs (no implicit padding).
struct config {
	__u32 pool[MAX_POOL];
	__u32 pool_len;
	__u32 private_addr[MAX_PRIVATE];
	__u32 private_mask[MAX_PRIVATE];
	__u32 private_len;
	__u16 port_lo; // host order
	__u16 port_hi;
	__u32 filtering;
	__u32 mark;      // the bits natgw's filter matches on admitted inbound packets
	__u32 mark_mask; // which bits of skb->mark are natgw's (the others are kept)
	__u32 icmp_source; // source of the ICMP errors sent to private hosts
	// natgw_private marks a private host's packet that the kernel will route out of
	// interface public_ifindex with outbound_mark (natgw's bits; 0: never).
	__u32 outbound_mark;
	__u32 public_ifindex;
	// The private interfaces (0: unused slot): where the fast path may send inbound packets.
	__u32 private_ifindex[MAX_PRIVATE];
	// The smallest MTU a route through the gateway's interfaces sets (0: none): the
	// kernel's forwarding honours it, its FIB lookup for programs does not.
	__u32 fast_mtu;
	__u32 _pad;
	__u64 udp_ns;
	__u64 tcp_established_ns;
	__u64 tcp_transitory_ns;
	__u64 icmp_ns;
	__u64 fragment_ns;
	// Nonzero: the clock, set by the differential tests; zero: bpf_ktime_get_ns().
	__u64 now_ns;
	// How often the sweeper frees idle state.
	__u64 sweep_ns;
	// The fast path (0: off): how long a flow stays on it without traffic.
	__u64 fast_ns;
};

// A private or public endpoint.
struct endpoint {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 _pad;
};

struct binding {
	struct endpoint external;
	__u64 expires;
};

// A private endpoint and one remote endpoint (port 0 for ICMP) or, for the
// address-dependent filter, one remote address (port 0).
struct session_key {
	__u32 iaddr;
	__u32 raddr;
	__u16 iport;
	__u16 rport;
	__u8 proto;
	__u8 by_address;
	__u16 _pad;
};

struct session {
	__u64 expires;
	__u32 state;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} natgw_config SEC(".maps");

// Private endpoint -> binding.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct endpoint);
	__type(value, struct binding);
} natgw_bindings SEC(".maps");

// Per public address and protocol: how many of its ports natgw_ports holds, and,
// after a search found every port taken by a live binding, the earliest expiry it saw.
// While the range is still full and that moment has not come, a new binding is
// refused at once instead of by a walk of the whole range (which would find nothing:
// expiries only grow). Any insertion clears the hint.
struct range {
	__u64 used;
	__u64 all_live_until;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_POOL * 3);
	__type(key, __u32);
	__type(value, struct range);
} natgw_ranges SEC(".maps");

// Public endpoint -> private endpoint, as an array indexed by public address (its
// place in the pool), protocol and port (sized by the loader to the pool). One owner
// per public port, taken and given back with compare-and-swap, so a public port is
// never given to two private endpoints (RFC 4787 REQ-3). An array, not a hash map:
// taking a port is one atomic instruction instead of a hash insertion, and the port
// search reads consecutive entries.
#define PORTS_PER_RANGE 65536

struct port {
	// The private endpoint (struct endpoint, 8 bytes) that holds the port; 0: free
	// (private addresses are never 0).
	__u64 owner;
	// A lower bound of the owner's binding's expiry: the port search skips a port
	// whose bound lies ahead without looking the binding up (two hash lookups with
	// cache misses, about 1 us). Expiries only grow and a binding is deleted only once
	// expired, so it stays a bound: set when a binding is made, raised when the
	// search meets a live one.
	__u64 live;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_POOL * 3 * PORTS_PER_RANGE);
	__type(key, __u32);
	__type(value, struct port);
} natgw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct session_key);
	__type(value, struct session);
} natgw_sessions SEC(".maps");

// A datagram's later fragments carry no ports: they take its first fragment's
// translation, remembered here (LRU: a lost datagram's entry is simply evicted).
struct frag_key {
	__u32 src;
	__u32 dst;
	__u16 id;
	__u8 proto;
	__u8 out;
};

struct frag {
	__u32 new_addr; // network order
	__u32 _pad;
	__u64 expires;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frag_key);
	__type(value, struct frag);
} natgw_fragments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} natgw_counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&natgw_counters, &which);
	if (c)
		*c += 1;
}

// --- binding events, for the mapping log (`natgw run --log-mappings`): one record
// when a binding is made and one when it ends, read by natgw from the pinned ring
// buffer. Never the destination (RFC 6888 REQ-12). A full ring never holds up or
// changes a packet's translation: the record is dropped and counted (events_lost).

enum event_kind { EV_CREATED = 1, EV_ENDED = 2 };

// Mirrors `BindingEvent` in crates/natgw-ebpf/src/events.rs.
struct binding_event {
	// Created: when it was made; ended: its expiry, the moment it stopped translating
	// (it is freed up to a sweep later). The programs' clock (kernel monotonic).
	__u64 time_ns;
	__u32 private_addr; // network order
	__u32 public_addr;
	__u16 private_port; // network order; ICMP: the identifier
	__u16 public_port;
	__u8 proto;
	__u8 kind;
	__u16 _pad;
};

// 4 MiB: 131,072 records (32 bytes with the ring's header), a few seconds of new flows
// at full speed while the reader is busy.
#define EVENTS_BYTES (1 << 22)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} natgw_events SEC(".maps");

// Nonzero while a reader follows natgw_events (natgw run --log-mappings sets it):
// without one, records would only fill the ring and count as lost.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} natgw_logging SEC(".maps");

static __always_inline void report_binding(__u8 kind, const struct endpoint *internal,
					  const struct endpoint *external, __u64 time)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&natgw_logging, &zero);
	if (!on || !*on)
		return;
	struct binding_event e = {
		.time_ns = time,
		.private_addr = internal->addr,
		.public_addr = external->addr,
		.private_port = internal->port,
		.public_port = external->port,
		.proto = internal->proto,
		.kind = kind,
	};
	if (bpf_ringbuf_output(&natgw_events, &e, sizeof(e), 0))
		count(C_EVENTS_LOST);
}

static __always_inline struct config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&natgw_config, &zero);
}

static __always_inline __u64 now_ns(const struct config *c)
{
	return c->now_ns ? c->now_ns : bpf_ktime_get_ns();
}

static __always_inline int is_private(const struct config *c, __u32 addr)
{
	for (int i = 0; i < MAX_PRIVATE; i++) {
		if (i >= c->private_len)
			break;
		if ((addr & c->private_mask[i]) == c->private_addr[i])
			return 1;
	}
	return 0;
}

// Config::is_spoofed_from_public: a private prefix, 0.0.0.0/8, loopback, multicast or
// reserved (natgw's public_spoofs4 set).
static __always_inline int spoofed_from_public(const struct config *c, __u32 addr)
{
	__u8 first = bpf_ntohl(addr) >> 24;
	return is_private(c, addr) || first == 0 || first == 127 || first >= 224;
}

static __always_inline int is_pool(const struct config *c, __u32 addr)
{
	for (int i = 0; i < MAX_POOL; i++) {
		if (i >= c->pool_len)
			break;
		if (c->pool[i] == addr)
			return 1;
	}
	return 0;
}

// The index of a public address and protocol (natgw_ranges), or -1.
static __always_inline int range_index(const struct endpoint *ext)
{
	struct config *c = config();
	if (!c)
		return -1;
	int proto = ext->proto == IPPROTO_UDP ? 0 : ext->proto == IPPROTO_TCP ? 1 : 2;
	for (int i = 0; i < MAX_POOL; i++) {
		if (i >= c->pool_len)
			break;
		if (c->pool[i] == ext->addr)
			return i * 3 + proto;
	}
	return -1;
}

static __always_inline struct range *range_of(const struct endpoint *ext)
{
	int k = range_index(ext);
	return k < 0 ? NULL : bpf_map_lookup_elem(&natgw_ranges, &k);
}

// natgw_ports' entry of a public endpoint, or NULL (not a pool address).
static __always_inline struct port *port_of(const struct endpoint *ext)
{
	int k = range_index(ext);
	if (k < 0)
		return NULL;
	__u32 i = (__u32)k * PORTS_PER_RANGE + bpf_ntohs(ext->port);
	return bpf_map_lookup_elem(&natgw_ports, &i);
}

static __always_inline __u64 pack(const struct endpoint *e)
{
	__u64 v;
	__builtin_memcpy(&v, e, sizeof(v));
	return v;
}

// The private endpoint that holds a public one: 0, or -1 if none does.
static __always_inline int ext_owner(const struct endpoint *ext, struct endpoint *owner)
{
	struct port *p = port_of(ext);
	__u64 o = p ? p->owner : 0;
	if (!o)
		return -1;
	__builtin_memcpy(owner, &o, sizeof(o));
	return 0;
}

// Every change of an owner goes through these two, which keep `used` exact.
static __always_inline int ext_take(struct port *p, __u32 range, struct endpoint *internal)
{
	if (__sync_val_compare_and_swap(&p->owner, 0, pack(internal)) != 0)
		return -1;
	struct range *r = bpf_map_lookup_elem(&natgw_ranges, &range);
	if (r) {
		__sync_fetch_and_add(&r->used, 1);
		r->all_live_until = 0;
	}
	return 0;
}

// Gives a public endpoint back, if `internal` still holds it.
static __always_inline void ext_release(const struct endpoint *ext, const struct endpoint *internal)
{
	struct port *p = port_of(ext);
	__u64 o = pack(internal);
	if (!p || __sync_val_compare_and_swap(&p->owner, o, 0) != o)
		return;
	struct range *r = range_of(ext);
	if (r)
		__sync_fetch_and_add(&r->used, -1);
}

// Same function as Config::paired_address in the model.
static __always_inline __u32 paired_address(const struct config *c, __u32 private)
{
	__u32 h = bpf_ntohl(private) * 0x9e3779b1u;
	__u32 n = c->pool_len;
	if (n == 0 || n > MAX_POOL)
		return 0;
	__u32 i = h % n;
	// i < n <= MAX_POOL already, but the verifier does not follow the modulo: hide i
	// from the compiler so that the check it would drop stays.
	asm volatile("" : "+r"(i));
	if (i >= MAX_POOL)
		return 0;
	return c->pool[i];
}

// --- expiry: exactly, on every lookup (an expired entry counts as absent and is
// deleted), and by a sweeper, one bpf_timer that walks the maps every sweep_ns and
// frees idle state. One timer instead of one per entry: arming a timer per new binding
// (allocation, hrtimer insertion) cost about a third of a new flow's program time.

struct sweeper {
	struct bpf_timer timer;
	__u32 started;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sweeper);
} natgw_sweeper SEC(".maps");

struct sweep {
	__u64 now;
};

static long sweep_binding(void *map, struct endpoint *key, struct binding *b, struct sweep *w)
{
	if (b->expires > w->now)
		return 0;
	struct endpoint ext = b->external;
	__u64 expired = b->expires;
	ext_release(&ext, key);
	// Only the one that deletes it reports the end (a packet may race the sweeper).
	if (bpf_map_delete_elem(map, key) == 0)
		report_binding(EV_ENDED, key, &ext, expired);
	count(C_BINDINGS_EXPIRED);
	return 0;
}

static long sweep_session(void *map, struct session_key *key, struct session *s, struct sweep *w)
{
	if (s->expires <= w->now)
		bpf_map_delete_elem(map, key);
	return 0;
}

static int sweep(void *map, __u32 *key, struct sweeper *t)
{
	struct config *c = config();
	if (!c)
		return 0;
	struct sweep w = {.now = now_ns(c)};
	bpf_for_each_map_elem(&natgw_bindings, sweep_binding, &w, 0);
	bpf_for_each_map_elem(&natgw_sessions, sweep_session, &w, 0);
	bpf_timer_start(&t->timer, c->sweep_ns, 0);
	return 0;
}

// Starts the sweeper once (programs cannot be asked to at load time): the first new
// binding does.
static __always_inline void start_sweeper(const struct config *c)
{
	__u32 zero = 0;
	struct sweeper *t = bpf_map_lookup_elem(&natgw_sweeper, &zero);
	if (!t || t->started || __sync_val_compare_and_swap(&t->started, 0, 1) != 0)
		return;
	bpf_timer_init(&t->timer, &natgw_sweeper, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&t->timer, sweep);
	bpf_timer_start(&t->timer, c->sweep_ns, 0);
}

static __always_inline void drop_binding(struct endpoint *internal, struct binding *b)
{
	struct endpoint ext = b->external;
	__u64 expired = b->expires;
	ext_release(&ext, internal);
	if (bpf_map_delete_elem(&natgw_bindings, internal) == 0)
		report_binding(EV_ENDED, internal, &ext, expired);
	count(C_BINDINGS_EXPIRED);
}

static __always_inline struct binding *live_binding(struct endpoint *internal, __u64 now)
{
	struct binding *b = bpf_map_lookup_elem(&natgw_bindings, internal);
	if (b && b->expires <= now) {
		drop_binding(internal, b);
		return NULL;
	}
	return b;
}

static __always_inline struct session *live_session(struct session_key *k, __u64 now)
{
	struct session *s = bpf_map_lookup_elem(&natgw_sessions, k);
	if (s && s->expires <= now) {
		bpf_map_delete_elem(&natgw_sessions, k);
		return NULL;
	}
	return s;
}

// --- the port search (bpf_loop bounds it): one try per call.

struct search {
	struct endpoint internal;
	struct endpoint external; // port filled in per try
	__u32 lo;
	__u32 size;
	__u32 first;
	__u32 found;
	__u32 range;     // index in natgw_ranges
	__u32 base;      // this range's first entry in natgw_ports
	__u64 now;
	__u64 earliest; // the earliest expiry of the live bindings met
};

static long try_port(__u32 i, void *ctx)
{
	struct search *s = ctx;
	if (s->size == 0)
		return 1;
	__u32 port = s->lo + (s->first + i) % s->size;
	s->external.port = bpf_htons((__u16)port);
	__u32 k = s->base + port;
	struct port *p = bpf_map_lookup_elem(&natgw_ports, &k);
	if (!p)
		return 1;
	if (ext_take(p, s->range, &s->internal) == 0) {
		s->found = 1;
		return 1;
	}
	if (p->live > s->now) {
		if (p->live < s->earliest)
			s->earliest = p->live;
		return 0;
	}
	// Taken: by a binding that expired but was not collected yet, it is free.
	struct endpoint o;
	__u64 owner = p->owner;
	__builtin_memcpy(&o, &owner, sizeof(o));
	if (!owner)
		return 0; // given back meanwhile (another CPU); the next port
	struct binding *ob = bpf_map_lookup_elem(&natgw_bindings, &o);
	if (ob && ob->expires > s->now) {
		if (ob->expires < s->earliest)
			s->earliest = ob->expires;
		p->live = ob->expires;
		return 0;
	}
	if (ob) {
		struct endpoint oext = ob->external;
		__u64 expired = ob->expires;
		if (bpf_map_delete_elem(&natgw_bindings, &o) == 0)
			report_binding(EV_ENDED, &o, &oext, expired);
		count(C_BINDINGS_EXPIRED);
	}
	ext_release(&s->external, &o);
	if (ext_take(p, s->range, &s->internal) == 0) {
		s->found = 1;
		return 1;
	}
	return 0;
}

static __always_inline struct binding *create_binding(const struct config *c,
						      struct endpoint *internal, __u64 now)
{
	struct search s = {};
	s.internal = *internal;
	s.external.addr = paired_address(c, internal->addr);
	s.external.proto = internal->proto;
	s.lo = c->port_lo;
	s.size = (__u32)c->port_hi - c->port_lo + 1;
	s.now = now;
	s.earliest = ~0ULL;
	int ri = range_index(&s.external);
	if (ri < 0)
		return NULL;
	s.range = ri;
	s.base = (__u32)ri * PORTS_PER_RANGE;
	// Every port taken by a live binding (the model's full search would fail too).
	struct range *r = bpf_map_lookup_elem(&natgw_ranges, &ri);
	if (r && r->used >= s.size && now < r->all_live_until)
		return NULL;
	// Port preservation first; then a walk through the whole range from a hash of
	// the private endpoint (table::probe_start in the model).
	__u32 wanted = bpf_ntohs(internal->port);
	if (wanted >= c->port_lo && wanted <= c->port_hi) {
		s.first = wanted - c->port_lo;
		try_port(0, &s);
	}
	if (!s.found) {
		__u32 h = (bpf_ntohl(internal->addr) * 0x9e3779b1u ^ wanted) * 0x85ebca6bu;
		s.first = h % s.size;
		bpf_loop(s.size, try_port, &s, 0);
		// The whole range walked, every port live: remember until when.
		if (!s.found && r)
			r->all_live_until = s.earliest;
	}
	if (!s.found)
		return NULL;
	struct binding nb = {};
	nb.external = s.external;
	nb.expires = now;
	if (bpf_map_update_elem(&natgw_bindings, internal, &nb, BPF_NOEXIST)) {
		ext_release(&s.external, internal);
		// Another CPU made this endpoint's binding meanwhile: that one serves (a
		// refusal here would send the host a false ICMP 3/13).
		return bpf_map_lookup_elem(&natgw_bindings, internal);
	}
	struct binding *b = bpf_map_lookup_elem(&natgw_bindings, internal);
	if (!b)
		return NULL;
	count(C_BINDINGS_CREATED);
	report_binding(EV_CREATED, internal, &s.external, now);
	return b;
}

static __always_inline struct session *create_session(struct session_key *k, __u32 state,
						      __u64 now)
{
	struct session ns = {};
	ns.expires = now;
	ns.state = state;
	if (bpf_map_update_elem(&natgw_sessions, k, &ns, BPF_NOEXIST))
		return NULL;
	struct session *s = bpf_map_lookup_elem(&natgw_sessions, k);
	if (s)
		count(C_SESSIONS_CREATED);
	return s;
}

// RFC 6146 section 3.5.2, as TcpState::tcp_step in the model.
static __always_inline __u32 tcp_next(__u32 st, int out, __u8 flags)
{
	if (flags & TCP_RST)
		return RESET;
	int syn = flags & TCP_SYN, fin = flags & TCP_FIN;
	switch (st) {
	case SYN_OUT:
		return (!out && syn) ? ESTABLISHED : SYN_OUT;
	case SYN_IN:
		return (out && syn) ? ESTABLISHED : SYN_IN;
	case RESET:
		return ESTABLISHED;
	case ESTABLISHED:
		if (fin)
			return out ? FIN_OUT : FIN_IN;
		return ESTABLISHED;
	case FIN_OUT:
		return (!out && fin) ? CLOSING : FIN_OUT;
	case FIN_IN:
		return (out && fin) ? CLOSING : FIN_IN;
	default:
		return st;
	}
}

static __always_inline __u64 tcp_timeout(const struct config *c, __u32 st)
{
	return (st == ESTABLISHED || st == FIN_OUT || st == FIN_IN) ? c->tcp_established_ns
								      : c->tcp_transitory_ns;
}

static __always_inline int bare_syn(__u8 flags)
{
	return (flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
}

// Which state a flow keeps besides its binding. The model keeps a session per remote
// endpoint and a filter entry per remote address for every binding; the programs keep
// only what can change a verdict: sessions for TCP (its states) and for port-dependent
// filtering, address entries for address-dependent filtering. Without them a UDP or
// ICMP binding's expiry is still the latest session expiry the model computes (every
// outbound packet sets it to now + timeout), so the verdicts are the same, and a new
// flow costs a third of the map operations and one timer instead of three.
static __always_inline int keeps_sessions(const struct config *c, __u8 proto)
{
	return proto == IPPROTO_TCP || c->filtering == APDF;
}

// Extends the binding, and the address filter if there is one, to `until` (a
// session's expiry).
static __always_inline void cover(const struct config *c, struct binding *b,
				  struct session_key *k, __u64 until, __u64 now)
{
	// No timer restart here (it costs more than the rest of the packet): the timer
	// fires at the old expiry, sees the new one and waits for the rest.
	if (until > b->expires)
		b->expires = until;
	if (c->filtering != ADF)
		return;
	// The address-dependent filter: the longest expiry of any session to this address.
	struct session_key ak = *k;
	ak.rport = 0;
	ak.by_address = 1;
	struct session *a = bpf_map_lookup_elem(&natgw_sessions, &ak);
	if (a && a->expires < until) {
		a->expires = until;
		return;
	}
	if (a)
		return;
	a = create_session(&ak, NONE, now);
	if (a)
		a->expires = until;
}

// A session's expiry after one more packet (and its TCP state).
static __always_inline __u64 session_step(const struct config *c, __u8 proto, __u32 *state,
					  int out, __u8 flags, __u64 now)
{
	switch (proto) {
	case IPPROTO_UDP:
		return now + c->udp_ns;
	case IPPROTO_ICMP:
		return now + c->icmp_ns;
	default:
		*state = tcp_next(*state, out, flags);
		return now + tcp_timeout(c, *state);
	}
}

// Moves a session on by one packet, and the binding and the address filter with it.
static __always_inline void touch(const struct config *c, struct binding *b,
				  struct session_key *k, struct session *s, int out, __u8 flags,
				  __u64 now)
{
	s->expires = session_step(c, k->proto, &s->state, out, flags, now);
	cover(c, b, k, s->expires, now);
}

// --- packets

struct packet {
	__u32 ip; // offset of the IPv4 header
	__u32 l4; // offset of the transport header
	__u32 src;
	__u32 dst;
	__u8 proto;
	__u8 flags; // TCP
	__u8 icmp_type;
	__u8 later_fragment;
	__u8 more_fragments;
	__u8 bad_l4;
	__u16 sport; // network order; ICMP: the identifier
	__u16 dport;
};

// 0: not IPv4 (leave it); 1: parsed; -1: malformed IPv4.
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	// Headers outside the linear part are pulled in, not dropped.
	__u32 want = ETH_HLEN + 60 + 20;
	if (want > skb->len)
		want = skb->len;
	if ((long)skb->data + want > (long)skb->data_end) {
		bpf_skb_pull_data(skb, want);
		count(C_PULLED);
	}
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return -1;
	__u32 hl = ip->ihl * 4;
	__u32 total = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || hl < 20 || total < hl || total > skb->len - ETH_HLEN)
		return -1;
	p->ip = ETH_HLEN;
	p->l4 = ETH_HLEN + hl;
	p->src = ip->saddr;
	p->dst = ip->daddr;
	p->proto = ip->protocol;
	__u16 frag = bpf_ntohs(ip->frag_off);
	p->later_fragment = (frag & 0x1fff) != 0;
	p->more_fragments = (frag & 0x2000) != 0;
	p->flags = 0;
	p->bad_l4 = 0;
	p->icmp_type = 0;
	p->sport = 0;
	p->dport = 0;
	if (p->later_fragment)
		return 1;
	__u32 l4len = total - hl;
	__u8 *l4 = (void *)ip + (hl & 0x3c);
	__u32 need = p->proto == IPPROTO_TCP ? 20 : 8;
	if (p->proto != IPPROTO_UDP && p->proto != IPPROTO_TCP && p->proto != IPPROTO_ICMP)
		return 1;
	// The model's Malformed: the transport header is cut short.
	if (l4len < need || (void *)(l4 + 8) > end) {
		p->bad_l4 = 1;
		return 1;
	}
	p->sport = *(__u16 *)l4;
	p->dport = *(__u16 *)(l4 + 2);
	if (p->proto == IPPROTO_ICMP) {
		p->icmp_type = l4[0];
		p->sport = *(__u16 *)(l4 + 4);
		p->dport = p->sport;
	} else if (p->proto == IPPROTO_TCP) {
		if ((void *)(l4 + 14) > end) {
			p->bad_l4 = 1;
			return 1;
		}
		p->flags = l4[13];
	}
	return 1;
}

// Rewrites one address (IPv4 header offset `addr_off`) and one port or identifier
// (transport offset `port_off`), in the model's order: the address with both
// checksums, then the port with the transport checksum.
static __always_inline int rewrite(struct __sk_buff *skb, const struct packet *p, __u32 addr_off,
				   __u32 new_addr, __u32 port_off, __u16 new_port)
{
	__u32 old_addr = addr_off == 12 ? p->src : p->dst;
	__u16 old_port;
	__u32 csum_off;
	__u64 l4flags;
	if (bpf_skb_load_bytes(skb, p->l4 + port_off, &old_port, 2))
		return -1;
	switch (p->proto) {
	case IPPROTO_UDP:
		csum_off = 6;
		l4flags = BPF_F_MARK_MANGLED_0;
		break;
	case IPPROTO_TCP:
		csum_off = 16;
		l4flags = 0;
		break;
	default:
		csum_off = 2;
		l4flags = 0;
	}
	if (p->proto != IPPROTO_ICMP &&
	    bpf_l4_csum_replace(skb, p->l4 + csum_off, old_addr, new_addr,
				l4flags | BPF_F_PSEUDO_HDR | 4))
		return -1;
	if (bpf_l3_csum_replace(skb, p->ip + 10, old_addr, new_addr, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, p->ip + addr_off, &new_addr, 4, 0))
		return -1;
	if (bpf_l4_csum_replace(skb, p->l4 + csum_off, old_port, new_port, l4flags | 2))
		return -1;
	if (bpf_skb_store_bytes(skb, p->l4 + port_off, &new_port, 2, 0))
		return -1;
	return 0;
}

static __always_inline int drop(__u32 why)
{
	count(why);
	return TC_ACT_SHOT;
}

static __always_inline int pass(void)
{
	count(C_PASSED);
	return TC_ACT_OK;
}

// Sets natgw's bits of the mark and keeps the others (other software's marks).
static __always_inline void set_mark(struct __sk_buff *skb, const struct config *c)
{
	skb->mark = (skb->mark & ~c->mark_mask) | (c->mark & c->mark_mask);
}


// --- ICMP errors (RFC 5508): the embedded packet is rewritten, with its own checksums
// and the outer ICMP checksum brought up to date. The arithmetic is the model's
// (wire::csum_replace, on host-order numbers) so the bytes agree exactly; the fields
// are read and written with bpf_skb_load_bytes/store_bytes, so quoted headers outside
// the linear buffer are fine.

#define CSUM_PLAIN 0
#define CSUM_UDP 1

static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
	__u32 s = a + b;
	return s + (s < b);
}

static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u16 csum_replace(__u16 check, __u32 from, __u32 to)
{
	__u32 unfolded = (__u16)~check;
	return csum_fold32(csum_add32(csum_add32(unfolded, ~from), to));
}

static __always_inline int load16(struct __sk_buff *skb, __u32 off, __u16 *v)
{
	__u16 raw;
	if (bpf_skb_load_bytes(skb, off, &raw, 2))
		return -1;
	*v = bpf_ntohs(raw);
	return 0;
}

static __always_inline int store16(struct __sk_buff *skb, __u32 off, __u16 v)
{
	__u16 raw = bpf_htons(v);
	return bpf_skb_store_bytes(skb, off, &raw, 2, 0);
}

// wire::update_csum: the checksum at `off` for a covered field going from -> to.
static __always_inline int update_csum(struct __sk_buff *skb, __u32 off, int kind, __u32 from,
				       __u32 to)
{
	__u16 old;
	if (load16(skb, off, &old))
		return -1;
	if (kind == CSUM_UDP && old == 0)
		return 0;
	__u16 new = csum_replace(old, from, to);
	if (kind == CSUM_UDP && new == 0)
		new = 0xffff;
	return store16(skb, off, new);
}

// Writes an address (host order) at `off` with the IPv4 header checksum of the header
// at `ip`, and the transport checksum at `l4csum` (if nonzero) of kind `kind`.
static __always_inline int set_addr(struct __sk_buff *skb, __u32 ip, __u32 off, __u32 new,
				    __u32 l4csum, int kind)
{
	__u32 raw;
	if (bpf_skb_load_bytes(skb, ip + off, &raw, 4))
		return -1;
	__u32 old = bpf_ntohl(raw);
	if (l4csum && update_csum(skb, l4csum, kind, old, new))
		return -1;
	if (update_csum(skb, ip + 10, CSUM_PLAIN, old, new))
		return -1;
	raw = bpf_htonl(new);
	return bpf_skb_store_bytes(skb, ip + off, &raw, 4, 0);
}

// The words of an ICMP error that a translation can change, in increasing order:
// embedded header checksum, source and destination, and the first 18 bytes of the
// embedded transport header.
#define WORDS 14

struct quoted {
	__u32 ip;     // offset of the embedded IPv4 header
	__u32 l4;     // offset of its transport header
	__u32 l4_len; // quoted bytes from l4 on
	__u8 proto;
	__u8 echo_type;
	__u32 src;    // network order
	__u32 dst;
	__u16 words[WORDS];
};

static __always_inline __u32 word_off(const struct quoted *q, int i)
{
	// 10, 12, 14, 16, 18 of the header, then 0..16 of the transport header.
	return i < 5 ? q->ip + 10 + 2 * i : q->l4 + 2 * (i - 5);
}

static __always_inline int word_present(const struct quoted *q, int i)
{
	return i < 5 || 2 * (i - 5) + 2 <= q->l4_len;
}

static __always_inline void snapshot(struct __sk_buff *skb, struct quoted *q)
{
	for (int i = 0; i < WORDS; i++) {
		q->words[i] = 0;
		if (word_present(q, i))
			load16(skb, word_off(q, i), &q->words[i]);
	}
}

// Embedded::parse: the quoted header, or -1 (the model's None).
static __always_inline int parse_quoted(struct __sk_buff *skb, const struct packet *p,
					__u32 total, struct quoted *q)
{
	__u32 start = p->l4 + 8;
	__u32 end = p->ip + total;
	if (end < start + 20)
		return -1;
	__u8 vihl;
	if (bpf_skb_load_bytes(skb, start, &vihl, 1))
		return -1;
	__u32 hl = (vihl & 0x0f) * 4;
	if (vihl >> 4 != 4 || hl < 20 || end - start < hl + 8)
		return -1;
	__u16 frag;
	if (load16(skb, start + 6, &frag) || (frag & 0x1fff))
		return -1;
	q->ip = start;
	q->l4 = start + hl;
	q->l4_len = end - q->l4;
	if (bpf_skb_load_bytes(skb, start + 9, &q->proto, 1) ||
	    bpf_skb_load_bytes(skb, start + 12, &q->src, 4) ||
	    bpf_skb_load_bytes(skb, start + 16, &q->dst, 4) ||
	    bpf_skb_load_bytes(skb, q->l4, &q->echo_type, 1))
		return -1;
	return 0;
}

// Embedded::rewrite: our side of the embedded packet (address at `addr_off` of its
// header, port or identifier at `port_off` of its transport header).
static __always_inline int rewrite_quoted(struct __sk_buff *skb, const struct quoted *q,
					  __u32 addr_off, __u32 port_off, __u32 addr, __u16 port)
{
	__u32 c = q->proto == IPPROTO_UDP ? 6 : q->proto == IPPROTO_TCP ? 16 : 2;
	int kind = q->proto == IPPROTO_UDP ? CSUM_UDP : CSUM_PLAIN;
	__u32 l4csum = q->l4_len >= c + 2 ? q->l4 + c : 0;
	if (set_addr(skb, q->ip, addr_off, addr, q->proto == IPPROTO_ICMP ? 0 : l4csum, kind))
		return -1;
	__u16 old;
	if (load16(skb, q->l4 + port_off, &old))
		return -1;
	if (l4csum && update_csum(skb, l4csum, kind, old, port))
		return -1;
	return store16(skb, q->l4 + port_off, port);
}

// fix_icmp_checksum: one replace per changed word, in order.
static __always_inline int fix_icmp(struct __sk_buff *skb, const struct packet *p,
				    struct quoted *q)
{
	for (int i = 0; i < WORDS; i++) {
		if (!word_present(q, i))
			continue;
		__u16 now;
		if (load16(skb, word_off(q, i), &now))
			return -1;
		if (now != q->words[i] &&
		    update_csum(skb, p->l4 + 2, CSUM_PLAIN, q->words[i], now))
			return -1;
	}
	return 0;
}

static __always_inline __u32 ip_total(struct __sk_buff *skb, const struct packet *p)
{
	__u16 total = 0;
	load16(skb, p->ip + 2, &total);
	return total;
}

// Nat::inbound_error.
static __always_inline int icmp_error_in(struct __sk_buff *skb, const struct config *c,
					 const struct packet *p)
{
	struct quoted q = {};
	if (parse_quoted(skb, p, ip_total(skb, p), &q) || q.src != p->dst)
		return pass();
	__u32 port_off;
	if (q.proto == IPPROTO_UDP || q.proto == IPPROTO_TCP)
		port_off = 0;
	else if (q.proto == IPPROTO_ICMP && q.echo_type == 8)
		port_off = 4;
	else
		return pass();
	__u16 port;
	if (bpf_skb_load_bytes(skb, q.l4 + port_off, &port, 2))
		return pass();
	__u64 now = now_ns(c);
	struct endpoint external = {.addr = q.src, .port = port, .proto = q.proto};
	struct endpoint internal;
	if (ext_owner(&external, &internal))
		return pass();
	if (!live_binding(&internal, now))
		return pass();
	__u16 rport = 0;
	if (q.proto != IPPROTO_ICMP && bpf_skb_load_bytes(skb, q.l4 + 2, &rport, 2))
		return pass();
	struct session_key k = {.iaddr = internal.addr,
				.raddr = q.dst,
				.iport = internal.port,
				.rport = rport,
				.proto = q.proto};
	if (c->filtering == APDF && !live_session(&k, now))
		return drop(C_DROP_FILTERED);
	if (c->filtering == ADF) {
		k.rport = 0;
		k.by_address = 1;
		if (!live_session(&k, now))
			return drop(C_DROP_FILTERED);
	}
	snapshot(skb, &q);
	if (rewrite_quoted(skb, &q, 12, port_off, bpf_ntohl(internal.addr),
			   bpf_ntohs(internal.port)) ||
	    set_addr(skb, p->ip, 16, bpf_ntohl(internal.addr), 0, CSUM_PLAIN) ||
	    fix_icmp(skb, p, &q))
		return drop(C_DROP_MALFORMED);
	set_mark(skb, c);
	count(C_IN_TRANSLATED);
	return TC_ACT_OK;
}

// Nat::error_about_inbound: from the private host (`from_host`: the outer source is
// translated too) or from the gateway itself.
static __always_inline int error_about_inbound(struct __sk_buff *skb, const struct config *c,
					       const struct packet *p, int from_host)
{
	if (is_pool(c, p->dst))
		return drop(C_DROP_UNSUPPORTED);
	struct quoted q = {};
	if (parse_quoted(skb, p, ip_total(skb, p), &q))
		return drop(C_DROP_MALFORMED);
	__u32 port_off;
	if (q.proto == IPPROTO_UDP || q.proto == IPPROTO_TCP)
		port_off = 2;
	else if (q.proto == IPPROTO_ICMP && q.echo_type == 0)
		port_off = 4;
	else
		return drop(C_DROP_UNSUPPORTED);
	__u16 port;
	if (bpf_skb_load_bytes(skb, q.l4 + port_off, &port, 2))
		return drop(C_DROP_MALFORMED);
	struct endpoint internal = {.addr = q.dst, .port = port, .proto = q.proto};
	struct binding *b = live_binding(&internal, now_ns(c));
	if (!b)
		return drop(C_DROP_NO_MAPPING);
	struct endpoint ext = b->external;
	snapshot(skb, &q);
	if (rewrite_quoted(skb, &q, 16, port_off, bpf_ntohl(ext.addr), bpf_ntohs(ext.port)) ||
	    (from_host && set_addr(skb, p->ip, 12, bpf_ntohl(ext.addr), 0, CSUM_PLAIN)) ||
	    fix_icmp(skb, p, &q))
		return drop(C_DROP_MALFORMED);
	count(C_OUT_TRANSLATED);
	return TC_ACT_OK;
}

// Ipv4::has_options: no query with IP options is translated, either way (Record Route
// and Timestamp would carry private addresses out).
static __always_inline int has_options(const struct packet *p)
{
	return p->l4 - p->ip > 20;
}

static __always_inline int is_icmp_error(const struct packet *p)
{
	return p->proto == IPPROTO_ICMP &&
	       (p->icmp_type == 3 || p->icmp_type == 11 || p->icmp_type == 12);
}

// Nat::own_packet: the gateway's own traffic is left alone, except an ICMP error it
// makes about a packet it received translated, which quotes the private endpoint:
// translated back to the public one, or dropped (a redirect always).
static __always_inline int own_packet(struct __sk_buff *skb, const struct config *c,
				      const struct packet *p)
{
	int redirect = p->proto == IPPROTO_ICMP && p->icmp_type == 5;
	if (p->later_fragment || p->bad_l4 || !(is_icmp_error(p) || redirect))
		return pass();
	__u32 quote = p->l4 + 8;
	__u32 quoted_dst;
	if (p->ip + ip_total(skb, p) < quote + 20 ||
	    bpf_skb_load_bytes(skb, quote + 16, &quoted_dst, 4) || !is_private(c, quoted_dst))
		return pass();
	// A redirect about a translated packet the kernel routed back out: dropped.
	if (redirect)
		return drop(C_DROP_UNSUPPORTED);
	if (p->more_fragments)
		return drop(C_DROP_UNSUPPORTED);
	return error_about_inbound(skb, c, p, 0);
}


// --- fragments

static __always_inline void frag_key_of(struct __sk_buff *skb, const struct packet *p, int out,
					struct frag_key *k)
{
	__u16 id = 0;
	bpf_skb_load_bytes(skb, p->ip + 4, &id, 2);
	k->src = p->src;
	k->dst = p->dst;
	k->id = id;
	k->proto = p->proto;
	k->out = out;
}

// Nat::remember_fragment: after a first fragment was translated.
static __always_inline void remember_fragment(struct __sk_buff *skb, const struct config *c,
					      const struct packet *p, int out, __u32 new_addr,
					      __u64 now)
{
	struct frag_key k = {};
	frag_key_of(skb, p, out, &k);
	struct frag v = {.new_addr = new_addr, .expires = now + c->fragment_ns};
	bpf_map_update_elem(&natgw_fragments, &k, &v, BPF_ANY);
}

// Nat::later_fragment: 1 translated, 0 nothing known (the caller decides), -1 error.
static __always_inline int later_fragment(struct __sk_buff *skb, const struct config *c,
					  const struct packet *p, int out)
{
	struct frag_key k = {};
	frag_key_of(skb, p, out, &k);
	struct frag *f = bpf_map_lookup_elem(&natgw_fragments, &k);
	if (!f)
		return 0;
	if (f->expires <= now_ns(c)) {
		bpf_map_delete_elem(&natgw_fragments, &k);
		return 0;
	}
	__u32 addr = f->new_addr;
	if (set_addr(skb, p->ip, out ? 12 : 16, bpf_ntohl(addr), 0, CSUM_PLAIN))
		return -1;
	return 1;
}

// Nat::open: the sender's binding and its session with the destination, made or
// moved on by this outbound packet; NULL with *why set (a counter) when there is none.
// *made: whether this packet made the binding.
static __always_inline struct binding *open_flow(const struct config *c, const struct packet *p,
						 __u64 now, __u32 *why, int *made)
{
	__u16 rport = p->proto == IPPROTO_ICMP ? 0 : p->dport;
	struct endpoint internal = {.addr = p->src, .port = p->sport, .proto = p->proto};
	int new_tcp = p->proto == IPPROTO_TCP && bare_syn(p->flags);
	int new_binding = 0;
	*why = C_DROP_NO_MAPPING;
	struct binding *b = live_binding(&internal, now);
	if (!b) {
		if (p->proto == IPPROTO_TCP && !new_tcp)
			return NULL;
		b = create_binding(c, &internal, now);
		if (!b) {
			*why = C_DROP_NO_PORT;
			return NULL;
		}
		new_binding = 1;
	}
	struct session_key k = {.iaddr = p->src,
				.raddr = p->dst,
				.iport = p->sport,
				.rport = rport,
				.proto = p->proto};
	if (!keeps_sessions(c, p->proto)) {
		__u32 none = NONE;
		cover(c, b, &k, session_step(c, p->proto, &none, 1, p->flags, now), now);
	} else {
		struct session *s = live_session(&k, now);
		if (!s) {
			if (p->proto == IPPROTO_TCP && !new_tcp)
				return NULL;
			s = create_session(&k, p->proto == IPPROTO_TCP ? SYN_OUT : NONE, now);
			if (!s)
				return NULL;
			touch(c, b, &k, s, 1, p->flags, now);
		} else {
			touch(c, b, &k, s, 1, p->flags, now);
		}
	}
	*made = new_binding;
	if (new_binding) {
		struct port *pp = port_of(&b->external);
		if (pp)
			pp->live = b->expires;
		start_sweeper(c);
	}
	return b;
}

// The inbound half of Nat::inbound_parsed once the binding is known: filtering, then
// TCP state. 0, or the counter of why the packet is dropped.
static __always_inline __u32 admit(const struct config *c, const struct packet *p,
				   const struct endpoint *internal, struct binding *b, __u64 now)
{
	__u16 rport = p->proto == IPPROTO_ICMP ? 0 : p->sport;
	struct session_key k = {.iaddr = internal->addr,
				.raddr = p->src,
				.iport = internal->port,
				.rport = rport,
				.proto = p->proto};
	struct session *s = keeps_sessions(c, p->proto) ? live_session(&k, now) : NULL;
	if (c->filtering == APDF && !s)
		return C_DROP_FILTERED;
	if (c->filtering == ADF && !s) {
		struct session_key ak = k;
		ak.rport = 0;
		ak.by_address = 1;
		if (!live_session(&ak, now))
			return C_DROP_FILTERED;
	}
	if (p->proto == IPPROTO_TCP) {
		if (s) {
			touch(c, b, &k, s, 0, p->flags, now);
		} else if (bare_syn(p->flags)) {
			// RFC 6146 section 3.5.2.2: an admitted SYN opens a session.
			s = create_session(&k, SYN_IN, now);
			if (s) {
				s->expires = now + c->tcp_transitory_ns;
				cover(c, b, &k, s->expires, now);
			}
		}
	}
	return 0;
}

// --- packets the programs turn around: hairpins and ICMP errors to private hosts.

// Sends the packet to its (private) destination: the route and neighbour the kernel
// knows (bpf_fib_lookup, as if the packet had arrived on this interface), out of the
// interface they name. Redirected packets skip netfilter and routing, so a source
// that is one of the gateway's own addresses is no martian here.
static __always_inline int deliver(struct __sk_buff *skb)
{
	struct bpf_fib_lookup f = {};
	__u16 total;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 12, &f.ipv4_src, 4) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 16, &f.ipv4_dst, 4) ||
	    load16(skb, ETH_HLEN + 2, &total))
		return drop(C_DROP_MALFORMED);
	f.family = AF_INET;
	f.tot_len = total;
	f.ifindex = skb->ifindex;
	long r = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(f.ifindex, NULL, 0, 0);
	if (r != BPF_FIB_LKUP_RET_SUCCESS)
		return drop(C_DROP_NO_ROUTE);
	if (bpf_skb_store_bytes(skb, 0, f.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, f.smac, ETH_ALEN, 0))
		return drop(C_DROP_MALFORMED);
	return bpf_redirect(f.ifindex, 0);
}

static __always_inline __u16 fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

#define QUOTE_MAX (60 + 8)

// The ICMP 3/13 allowance of each private sender (IcmpLimit in the model): a token
// bucket like the kernel's per-peer ICMP limit (net.ipv4.icmp_ratelimit = 1000 ms,
// XRLIM_BURST_FACTOR = 6): one error per second, six saved up at most, a new sender
// starts full. Beyond it the packet is dropped without an answer (icmp_suppressed), so
// a host that floods a full range costs no route lookups and no rewrites.
#define ICMP_INTERVAL_NS 1000000000ULL
#define ICMP_BURST 6

struct icmp_bucket {
	__u64 saved; // time saved up; an error costs ICMP_INTERVAL_NS
	__u64 last;
};

// LRU: a sender not heard from for long is forgotten (and starts full again).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct icmp_bucket);
} natgw_icmp_rate SEC(".maps");

// Whether `src` may get one more ICMP 3/13 at `now` (and takes the token).
static __always_inline int may_reject(__u32 src, __u64 now)
{
	const __u64 full = ICMP_INTERVAL_NS * ICMP_BURST;
	struct icmp_bucket *b = bpf_map_lookup_elem(&natgw_icmp_rate, &src);
	if (!b) {
		struct icmp_bucket nb = {.saved = full - ICMP_INTERVAL_NS, .last = now};
		bpf_map_update_elem(&natgw_icmp_rate, &src, &nb, BPF_ANY);
		return 1;
	}
	__u64 saved = b->saved + (now > b->last ? now - b->last : 0);
	if (saved > full)
		saved = full;
	b->last = now;
	int allowed = saved >= ICMP_INTERVAL_NS;
	b->saved = allowed ? saved - ICMP_INTERVAL_NS : saved;
	return allowed;
}

// No public port left (the model's Reject): the packet becomes ICMP destination
// unreachable, code 13, from icmp_source to its sender, quoting its IPv4 header and
// first 8 bytes (admin_prohibited in the model), and goes back to the private side.
static __always_inline int reject(struct __sk_buff *skb, const struct config *c,
				  const struct packet *p)
{
	count(C_DROP_NO_PORT);
	if (!may_reject(p->src, now_ns(c)))
		return drop(C_ICMP_SUPPRESSED);
	// parse() made sure the transport header's first 8 bytes are there.
	__u32 qlen = p->l4 - p->ip + 8;
	__u8 buf[28 + QUOTE_MAX] = {};
	if (qlen < 28 || qlen > QUOTE_MAX || (qlen & 3))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->ip, buf + 28, qlen))
		return TC_ACT_SHOT;
	__u16 total = 28 + qlen;
	buf[0] = 0x45;
	*(__u16 *)(buf + 2) = bpf_htons(total);
	buf[8] = 64;
	buf[9] = IPPROTO_ICMP;
	*(__u32 *)(buf + 12) = c->icmp_source;
	*(__u32 *)(buf + 16) = p->src;
	buf[20] = 3;
	buf[21] = 13;
	*(__u16 *)(buf + 10) = fold(bpf_csum_diff(NULL, 0, (void *)buf, 20, 0));
	*(__u16 *)(buf + 22) = fold(bpf_csum_diff(NULL, 0, (void *)(buf + 20), 8 + qlen, 0));
	if (bpf_skb_change_tail(skb, ETH_HLEN + total, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, buf, total, 0))
		return TC_ACT_SHOT;
	return deliver(skb);
}

// --- the fast path (fast_ns != 0, with bypass_conntrack): a flow whose packets have
// gone through the kernel's forward path once, natgw's filter and every other forward
// rule, skips that path from then on, as an nftables flowtable does. natgw_egress
// records it when it translates a private host's packet that natgw_private marked and
// that reached the public interface (only the forward path goes there) for a binding
// made before; from then on natgw_private and natgw_ingress route the flow's packets
// themselves (a FIB lookup, TTL, neighbour) and redirect them to the other side, where
// the translation is the one the slow path makes. A flow not seen for fast_ns leaves
// the fast path; so does every packet the kernel must see (see fast_eligible).

// A flow on the fast path: until when, and the private interface its packets came in
// on (outbound packets from any other are the kernel's: rp_filter and the rules judge
// them).
struct fast_flow {
	__u64 until;
	__u32 ifindex;
	// The largest outbound packet (or GSO segment) the kernel's path has carried: the
	// route's MTU as it was then lets it through, as a flowtable keeps the MTU of the
	// moment it took the flow. Bigger ones take the kernel's path (which records them).
	__u32 max_len;
};

// A private endpoint and one remote endpoint (port 0 for ICMP, as in session_key;
// by_address 0) -> the flow. LRU: a flow pushed out only goes the slow way again.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct session_key);
	__type(value, struct fast_flow);
} natgw_fast SEC(".maps");

#define PACKET_HOST 0

// The key of p's flow: p is outbound (a private source), or inbound and already
// translated (its destination is the private endpoint).
static __always_inline void fast_key(const struct packet *p, int out, struct session_key *k)
{
	k->iaddr = out ? p->src : p->dst;
	k->raddr = out ? p->dst : p->src;
	k->iport = out ? p->sport : p->dport;
	k->rport = p->proto == IPPROTO_ICMP ? 0 : (out ? p->dport : p->sport);
	k->proto = p->proto;
}

// Packets the kernel must see are never fast: not for this host's MAC, fragments,
// IP options, a TCP SYN (natgw's MSS clamp and every foreign rule see each new
// connection), protocols and ICMP types the programs do not translate (a query out,
// its reply in).
static __always_inline int fast_eligible(struct __sk_buff *skb, const struct packet *p, int out)
{
	__u8 echo_type = out ? 8 : 0;
	if (skb->pkt_type != PACKET_HOST || p->later_fragment || p->more_fragments || p->bad_l4 ||
	    has_options(p))
		return 0;
	if (p->proto == IPPROTO_TCP)
		return !(p->flags & TCP_SYN);
	if (p->proto == IPPROTO_UDP)
		return 1;
	return p->proto == IPPROTO_ICMP && p->icmp_type == echo_type;
}

// What must fit the route's MTU: the IP packet, or each segment of a GSO packet.
// 0: unknown (the kernel's path).
static __always_inline __u32 fast_size(struct __sk_buff *skb, const struct packet *p, __u16 total)
{
	if (!skb->gso_size)
		return total;
	__u8 doff = 0;
	if (p->proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, p->l4 + 12, &doff, 1))
		return 0;
	return (p->l4 - p->ip) + (p->proto == IPPROTO_TCP ? (doff >> 4) * 4 : 8) + skb->gso_size;
}

// The largest packet p's flow may take on the fast path at `now` (and keeps the flow
// there), 0 when it is not on it; outbound, only from the interface it was recorded
// on (`in`), and no larger than the kernel has carried.
static __always_inline __u32 fast_known(const struct config *c, const struct packet *p, int out,
					__u32 in, __u64 now)
{
	struct session_key k = {};
	fast_key(p, out, &k);
	struct fast_flow *f = bpf_map_lookup_elem(&natgw_fast, &k);
	if (!f || f->until <= now || (out && f->ifindex != in))
		return 0;
	// Pushed forward at most twice per period: a write per flow now and then, not per packet.
	if (f->until - now < c->fast_ns / 2)
		f->until = now + c->fast_ns;
	__u32 limit = out ? f->max_len : 0xffff;
	if (c->fast_mtu && c->fast_mtu < limit)
		limit = c->fast_mtu;
	return limit;
}

static __always_inline void fast_record(struct __sk_buff *skb, const struct config *c,
					const struct packet *p, __u32 in, __u64 now)
{
	__u16 total;
	if (load16(skb, p->ip + 2, &total))
		return;
	__u32 size = fast_size(skb, p, total);
	struct session_key k = {};
	fast_key(p, 1, &k);
	struct fast_flow *known = bpf_map_lookup_elem(&natgw_fast, &k);
	if (known && known->ifindex == in) {
		if (size > known->max_len)
			known->max_len = size;
		known->until = now + c->fast_ns;
		return;
	}
	struct fast_flow f = {.until = now + c->fast_ns, .ifindex = in, .max_len = size};
	bpf_map_update_elem(&natgw_fast, &k, &f, BPF_ANY);
}

static __always_inline int is_private_ifindex(const struct config *c, __u32 ifindex)
{
	for (int i = 0; i < MAX_PRIVATE; i++) {
		if (c->private_ifindex[i] && c->private_ifindex[i] == ifindex)
			return 1;
	}
	return 0;
}

// The route lookup the kernel makes for p arriving on `in` with `tos`.
static __always_inline void fib_query(const struct packet *p, __u32 in, __u8 tos,
				      struct bpf_fib_lookup *f)
{
	f->family = AF_INET;
	f->l4_protocol = p->proto;
	f->sport = p->sport;
	f->dport = p->dport;
	f->ipv4_src = p->src;
	f->ipv4_dst = p->dst;
	f->ifindex = in;
	f->tos = tos;
}

// The kernel's ip_forward for a fast flow's packet that arrived on `in`: the header
// checks of ip_rcv, the route (as the kernel would look it up for it) with its MTU,
// the TTL, the queueing priority of its TOS, and the neighbour (through the kernel's
// neighbour code, which keeps the entry's state up to date). TC_ACT_REDIRECT out of
// the interface the route names, when that is the public interface (`out`) or a
// private one (inbound); -1 when the kernel must take it: a bad header checksum or
// bytes past the IP packet, the TTL runs out (it sends time exceeded), the packet is
// too big for the route (it fragments it or sends fragmentation needed), or the
// route goes anywhere else.
static __always_inline long fast_forward(struct __sk_buff *skb, const struct config *c,
					 const struct packet *p, __u32 in, int out, __u32 limit)
{
	__u8 hdr[20];
	if (bpf_skb_load_bytes(skb, p->ip, hdr, 20) || fold(bpf_csum_diff(NULL, 0, (void *)hdr, 20, 0)))
		return -1;
	__u16 total = ((__u16)hdr[2] << 8) | hdr[3];
	if (hdr[8] <= 1)
		return -1;
	// A short frame's Ethernet padding is cut off, as ip_rcv trims it; other bytes
	// past the IP packet are the kernel's to judge.
	if (skb->len != ETH_HLEN + total) {
		if (skb->len != ETH_ZLEN || ETH_HLEN + total > ETH_ZLEN ||
		    bpf_skb_change_tail(skb, ETH_HLEN + total, 0))
			return -1;
	}
	__u32 size = fast_size(skb, p, total);
	if (!size || size > limit)
		return -1;
	struct bpf_fib_lookup f = {};
	fib_query(p, in, hdr[1], &f);
	f.tot_len = size;
	// An IPv4 route via an IPv6 next hop (RFC 5549) answers in IPv6: the kernel's.
	if (bpf_fib_lookup(skb, &f, sizeof(f), BPF_FIB_LOOKUP_SKIP_NEIGH) != BPF_FIB_LKUP_RET_SUCCESS ||
	    f.family != AF_INET)
		return -1;
	if (out ? f.ifindex != c->public_ifindex : !is_private_ifindex(c, f.ifindex))
		return -1;
	__u16 old = *(__u16 *)(hdr + 8);
	hdr[8] -= 1;
	__u16 new = *(__u16 *)(hdr + 8);
	if (bpf_l3_csum_replace(skb, p->ip + 10, old, new, 2) ||
	    bpf_skb_store_bytes(skb, p->ip + 8, hdr + 8, 1, 0))
		return drop(C_DROP_MALFORMED);
	// rt_tos2priority, as ip_forward sets it (for the egress qdisc): TOS bits 4 and 3
	// 00, 01, 10, 11 give priority 0 (best effort), 2 (bulk), 6 (interactive), 4
	// (interactive bulk).
	__u32 tos_class = (hdr[1] >> 3) & 3;
	skb->priority = (tos_class ^ (tos_class >> 1)) * 2;
	count(out ? C_FAST_OUT : C_FAST_IN);
	struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = f.ipv4_dst};
	return bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0);
}

// The fast path for p, outbound (natgw_private) or inbound after its translation
// (natgw_ingress): the verdict, or -1 when the packet takes the kernel's path.
static __always_inline long fast_path(struct __sk_buff *skb, const struct config *c,
				      const struct packet *p, int out, __u64 now)
{
	if (!c->fast_ns || !fast_eligible(skb, p, out))
		return -1;
	__u32 in = skb->ingress_ifindex;
	__u32 limit = fast_known(c, p, out, in, now);
	return limit ? fast_forward(skb, c, p, in, out, limit) : -1;
}

SEC("classifier")
int natgw_egress(struct __sk_buff *skb)
{
	struct config *c = config();
	// A VLAN-tagged frame belongs to a VLAN interface on top, not to this one.
	if (!c || skb->vlan_present)
		return TC_ACT_OK;
	struct packet p = {};
	int r = parse(skb, &p);
	if (r == 0)
		return TC_ACT_OK;
	if (r < 0) {
		// The model drops malformed IPv4 whatever its source; so does this.
		return drop(C_DROP_MALFORMED);
	}
	if (!is_private(c, p.src))
		return own_packet(skb, c, &p);
	if (p.later_fragment) {
		// One before its first fragment: dropped (it would leak a private address),
		// unless it is for the gateway itself.
		int r = later_fragment(skb, c, &p, 1);
		if (r == 0)
			return is_pool(c, p.dst) ? pass() : drop(C_DROP_NO_MAPPING);
		if (r < 0)
			return drop(C_DROP_MALFORMED);
		count(C_OUT_TRANSLATED);
		return TC_ACT_OK;
	}
	if (p.bad_l4)
		return drop(C_DROP_MALFORMED);
	if (is_icmp_error(&p))
		return p.more_fragments ? drop(C_DROP_UNSUPPORTED) : error_about_inbound(skb, c, &p, 1);
	if (is_pool(c, p.dst))
		return pass(); // hairpins are natgw_private's: they never reach this side
	if (p.proto != IPPROTO_UDP && p.proto != IPPROTO_TCP &&
	    !(p.proto == IPPROTO_ICMP && p.icmp_type == 8))
		return drop(C_DROP_UNSUPPORTED);
	if (has_options(&p))
		return drop(C_DROP_UNSUPPORTED);
	__u64 now = now_ns(c);
	__u32 why;
	int made = 0;
	struct binding *b = open_flow(c, &p, now, &why, &made);
	if (!b)
		return why == C_DROP_NO_PORT ? reject(skb, c, &p) : drop(why);
	// natgw_private marked it and it is here: it came through the forward path.
	if (c->fast_ns && !made && c->outbound_mark &&
	    (skb->mark & c->mark_mask) == c->outbound_mark &&
	    is_private_ifindex(c, skb->ingress_ifindex))
		fast_record(skb, c, &p, skb->ingress_ifindex, now);
	struct endpoint ext = b->external;
	if (rewrite(skb, &p, 12, ext.addr, p.proto == IPPROTO_ICMP ? 4 : 0, ext.port))
		return drop(C_DROP_MALFORMED);
	if (p.more_fragments)
		remember_fragment(skb, c, &p, 1, ext.addr, now);
	count(C_OUT_TRANSLATED);
	return TC_ACT_OK;
}

SEC("classifier")
int natgw_ingress(struct __sk_buff *skb)
{
	struct config *c = config();
	// A VLAN-tagged frame belongs to a VLAN interface on top, not to this one.
	if (!c || skb->vlan_present)
		return TC_ACT_OK;
	struct packet p = {};
	int r = parse(skb, &p);
	if (r == 0)
		return TC_ACT_OK;
	if (r < 0)
		return drop(C_DROP_MALFORMED);
	if (!is_pool(c, p.dst))
		return pass();
	// natgw's filter at the ingress hook drops it, after this program: it must not
	// touch any state first.
	if (spoofed_from_public(c, p.src))
		return pass();
	if (p.later_fragment) {
		// One before its first fragment: the host's (nothing is buffered).
		int r = later_fragment(skb, c, &p, 0);
		if (r == 0)
			return pass();
		if (r < 0)
			return drop(C_DROP_MALFORMED);
		set_mark(skb, c);
		count(C_IN_TRANSLATED);
		return TC_ACT_OK;
	}
	if (p.bad_l4)
		return drop(C_DROP_MALFORMED);
	if (is_icmp_error(&p))
		return p.more_fragments ? pass() : icmp_error_in(skb, c, &p);
	if (p.proto != IPPROTO_UDP && p.proto != IPPROTO_TCP &&
	    !(p.proto == IPPROTO_ICMP && p.icmp_type == 0))
		return pass(); // the host's own protocols and ICMP types: left alone
	__u64 now = now_ns(c);
	struct endpoint external = {.addr = p.dst, .port = p.dport, .proto = p.proto};
	struct endpoint internal;
	if (ext_owner(&external, &internal))
		return pass();
	struct binding *b = live_binding(&internal, now);
	if (!b)
		return pass();
	if (has_options(&p))
		return drop(C_DROP_UNSUPPORTED);
	__u32 why = admit(c, &p, &internal, b, now);
	if (why)
		return drop(why);
	if (rewrite(skb, &p, 16, internal.addr, p.proto == IPPROTO_ICMP ? 4 : 2, internal.port))
		return drop(C_DROP_MALFORMED);
	if (p.more_fragments)
		remember_fragment(skb, c, &p, 0, internal.addr, now);
	// natgw's forward filter accepts what carries this mark, and nothing else unsolicited.
	set_mark(skb, c);
	count(C_IN_TRANSLATED);
	p.dst = internal.addr;
	p.dport = internal.port;
	long fast = fast_path(skb, c, &p, 0, now);
	return fast >= 0 ? fast : TC_ACT_OK;
}

// --- hairpinning (RFC 4787 REQ-9): a private host's packet for a public endpoint of
// the gateway that has a binding. The kernel would deliver it locally, so it never
// reaches the public interface: this program, at the ingress of the private
// interfaces, translates it both ways (Nat::outbound, then Nat::hairpin) and sends it
// to the bound private host with the sender's public endpoint as source.

// A later fragment: both halves of its first fragment's translation.
static __always_inline int hairpin_fragment(struct __sk_buff *skb, const struct config *c,
					    struct packet *p, __u64 now)
{
	struct frag_key k = {};
	frag_key_of(skb, p, 1, &k);
	struct frag *f = bpf_map_lookup_elem(&natgw_fragments, &k);
	if (f && f->expires <= now) {
		bpf_map_delete_elem(&natgw_fragments, &k);
		f = NULL;
	}
	if (!f)
		return pass(); // no hairpin's: a datagram for the gateway itself
	__u32 src = f->new_addr;
	if (set_addr(skb, p->ip, 12, bpf_ntohl(src), 0, CSUM_PLAIN))
		return drop(C_DROP_MALFORMED);
	p->src = src;
	int r = later_fragment(skb, c, p, 0);
	if (r == 0)
		return drop(C_DROP_NO_MAPPING);
	if (r < 0)
		return drop(C_DROP_MALFORMED);
	set_mark(skb, c);
	count(C_HAIRPINNED);
	return deliver(skb);
}

// With bypass_conntrack: a private host's packet that the main routing decision will
// send out of the public interface (a FIB lookup by addresses, ports and TOS, as if
// routed now, without a neighbour; it cannot see marks set later in netfilter) gets
// natgw's outbound mark: natgw's raw chain takes it out of conntrack, and its forward
// chain accepts it on the mark, or drops it when the kernel routed it elsewhere after
// all. Everything else keeps its mark, and so its way through natgw's rules.
static __always_inline void mark_outbound(struct __sk_buff *skb, const struct config *c,
					  const struct packet *p)
{
	if (!c->outbound_mark || !c->public_ifindex)
		return;
	// Multicast, broadcast and "this network" are never routed out: the kernel's
	// input path has rules for them that a FIB lookup does not know.
	__u32 dst = bpf_ntohl(p->dst);
	if ((dst >> 28) == 0xe || dst == 0xffffffff || (dst >> 24) == 0)
		return;
	__u8 tos = 0;
	bpf_skb_load_bytes(skb, p->ip + 1, &tos, 1);
	struct bpf_fib_lookup f = {};
	fib_query(p, skb->ingress_ifindex, tos, &f);
	long r = bpf_fib_lookup(skb, &f, sizeof(f), BPF_FIB_LOOKUP_SKIP_NEIGH);
	// Too big for the public link is still routed there (and fragmented, or
	// answered with fragmentation-needed, by the kernel).
	if ((r == BPF_FIB_LKUP_RET_SUCCESS || r == BPF_FIB_LKUP_RET_FRAG_NEEDED) &&
	    f.ifindex == c->public_ifindex)
		skb->mark = (skb->mark & ~c->mark_mask) | (c->outbound_mark & c->mark_mask);
}

SEC("classifier")
int natgw_private(struct __sk_buff *skb)
{
	struct config *c = config();
	// A VLAN-tagged frame belongs to a VLAN interface on top, not to this one.
	if (!c || skb->vlan_present)
		return TC_ACT_OK;
	struct packet p = {};
	// Not IPv4, or malformed: the kernel's business (it drops what it cannot parse).
	if (parse(skb, &p) <= 0)
		return TC_ACT_OK;
	if (!is_private(c, p.src))
		return TC_ACT_OK;
	// Everything but private hosts' packets for the gateway's public addresses is
	// left alone (marked when it leaves through the public interface), and not counted.
	if (!is_pool(c, p.dst)) {
		long fast = fast_path(skb, c, &p, 1, now_ns(c));
		if (fast >= 0)
			return fast;
		mark_outbound(skb, c, &p);
		return TC_ACT_OK;
	}
	__u64 now = now_ns(c);
	if (p.later_fragment)
		return hairpin_fragment(skb, c, &p, now);
	if (p.bad_l4)
		return drop(C_DROP_MALFORMED);
	if (is_icmp_error(&p)) // errors about hairpinned packets are not translated
		return p.more_fragments ? pass() : drop(C_DROP_UNSUPPORTED);
	// ICMP queries too: no binding has identifier 0, the remote side of one.
	if (p.proto != IPPROTO_UDP && p.proto != IPPROTO_TCP)
		return pass();
	struct endpoint target_ext = {.addr = p.dst, .port = p.dport, .proto = p.proto};
	struct endpoint target;
	if (ext_owner(&target_ext, &target))
		return pass();
	if (!live_binding(&target, now))
		return pass(); // the gateway's own port: delivered locally
	__u32 why;
	int made = 0;
	struct binding *b = open_flow(c, &p, now, &why, &made);
	if (!b)
		return why == C_DROP_NO_PORT ? reject(skb, c, &p) : drop(why);
	struct endpoint ext = b->external;
	if (rewrite(skb, &p, 12, ext.addr, 0, ext.port))
		return drop(C_DROP_MALFORMED);
	if (p.more_fragments)
		remember_fragment(skb, c, &p, 1, ext.addr, now);
	// The second half: the packet, now from the sender's public endpoint, as if it had
	// arrived on the public interface. The target is looked up again: making the
	// sender's binding may have changed the maps.
	struct packet q = p;
	q.src = ext.addr;
	q.sport = ext.port;
	if (ext_owner(&target_ext, &target))
		return drop(C_DROP_NO_MAPPING);
	struct binding *tb = live_binding(&target, now);
	if (!tb)
		return drop(C_DROP_NO_MAPPING);
	why = admit(c, &q, &target, tb, now);
	if (why)
		return drop(why);
	if (rewrite(skb, &q, 16, target.addr, 2, target.port))
		return drop(C_DROP_MALFORMED);
	if (q.more_fragments)
		remember_fragment(skb, c, &q, 0, target.addr, now);
	set_mark(skb, c);
	count(C_HAIRPINNED);
	return deliver(skb);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
