package main

// The load: kube-apiserver-shaped requests through the etcd client's Kubernetes interface
// (go.etcd.io/etcd/client/v3/kubernetes, the calls kube-apiserver's storage layer makes), from
// several clients spread over all three members, every call recorded with its invocation and
// return time for the checks.

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
)

const (
	prefix      = "/registry/"
	podPrefix   = "/registry/pods/"
	batchPrefix = "/registry/batch/"
	// Return time of an operation whose outcome the client never learned (porcupine's
	// convention: it may take effect at any point after its call).
	pending = int64(1<<62 - 1)
)

type opKind int

const (
	opGet    opKind = iota
	opPut           // OptimisticPut: If(mod_revision == expected) Then(put) Else(get)
	opDelete        // OptimisticDelete: If(mod_revision == expected) Then(delete) Else(get)
)

func (k opKind) String() string {
	return [...]string{"get", "put", "delete"}[k]
}

// kvOp is one single-key operation as a client saw it.
type kvOp struct {
	client   int
	member   int // the member the request went to
	kind     opKind
	key      string
	value    string // put
	expected int64  // put/delete: the compared mod revision (0 = create)
	call     int64
	ret      int64 // pending if the outcome is unknown
	err      string
	resolved bool // outcome unknown to the client, found in the store's history

	// Outcome (ret != pending).
	succeeded bool  // put/delete
	revision  int64 // response header revision: the write's revision if it succeeded
	found     bool  // get, or the Else(get) of a failed put/delete
	curValue  string
	curMod    int64
}

// listOp is one paginated list at a pinned revision, as kube-apiserver lists: the first page
// is a linearizable read, the rest read at the first page's revision.
type listOp struct {
	call, ret int64
	revision  int64
	count     int64
	pages     int
	kvs       []kvSnap
}

// staleGet is a Get at an explicit past revision.
type staleGet struct {
	key      string
	revision int64
	found    bool
	value    string
	mod      int64
}

// batchOp puts several keys in one txn (so a revision holds several events, for the watch
// atomicity check).
type batchOp struct {
	call, ret int64
	keys      []string
	values    []string
	revision  int64
}

type kvSnap struct {
	key, value           string
	mod, create, version int64
}

func snapOf(kv *mvccpb.KeyValue) kvSnap {
	return kvSnap{key: string(kv.Key), value: string(kv.Value), mod: kv.ModRevision, create: kv.CreateRevision, version: kv.Version}
}

type history struct {
	mu      sync.Mutex
	ops     []kvOp
	lists   []listOp
	stale   []staleGet
	batches []batchOp
	failed  map[string]int // errors by operation kind, for the summary

	acked atomic.Int64
}

func (h *history) addFailure(what string) {
	h.mu.Lock()
	h.failed[what]++
	h.mu.Unlock()
}

// loadConfig shapes the traffic.
type loadConfig struct {
	kvClients int
	keys      int
	timeout   time.Duration
	pause     time.Duration
}

type loader struct {
	cfg  loadConfig
	t0   time.Time
	h    *history
	eps  []string
	cl   []*clientv3.Client // one per endpoint, shared by the load workers
	kube []kubernetes.Interface
}

func (l *loader) now() int64 { return time.Since(l.t0).Nanoseconds() }

// pick chooses the member for the next request: any of them, at random.
func (l *loader) pick(r *rand.Rand, op *kvOp) kubernetes.Interface {
	i := r.Intn(len(l.kube))
	if op != nil {
		op.member = i
	}
	return l.kube[i]
}

func podKey(i int) string { return fmt.Sprintf("%sns%d/pod-%02d", podPrefix, i%2, i) }

// kvWorker runs GuaranteedUpdate-shaped cycles: a linearizable Get, then create if absent,
// else update (or sometimes delete) with the read mod revision as the precondition.
func (l *loader) kvWorker(ctx context.Context, id int, seed int64) {
	r := rand.New(rand.NewSource(seed))
	seq := 0
	for ctx.Err() == nil {
		key := podKey(r.Intn(l.cfg.keys))
		g := l.get(ctx, id, r, key)
		if g == nil {
			l.sleep(ctx, 50*time.Millisecond)
			continue
		}
		seq++
		value := fmt.Sprintf("c%d-%d", id, seq)
		switch {
		case !g.found:
			l.put(ctx, id, r, key, value, 0)
		case r.Intn(8) == 0:
			l.del(ctx, id, r, key, g.curMod)
		case r.Intn(10) == 0:
			// A stale precondition (as a client with an old cache sends): must fail.
			l.put(ctx, id, r, key, value, g.curMod-1)
		default:
			l.put(ctx, id, r, key, value, g.curMod)
		}
		l.sleep(ctx, l.cfg.pause)
	}
}

func (l *loader) sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (l *loader) record(op kvOp) {
	l.h.mu.Lock()
	l.h.ops = append(l.h.ops, op)
	l.h.mu.Unlock()
}

// get records a linearizable Get; a failed read has no effect and is not recorded.
func (l *loader) get(ctx context.Context, id int, r *rand.Rand, key string) *kvOp {
	cctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	defer cancel()
	op := kvOp{client: id, kind: opGet, key: key, call: l.now()}
	resp, err := l.pick(r, &op).Get(cctx, key, kubernetes.GetOptions{})
	op.ret = l.now()
	if err != nil {
		if ctx.Err() == nil {
			l.h.addFailure("get")
		}
		return nil
	}
	op.revision = resp.Revision
	if resp.KV != nil {
		op.found, op.curValue, op.curMod = true, string(resp.KV.Value), resp.KV.ModRevision
	}
	l.record(op)
	return &op
}

func (l *loader) put(ctx context.Context, id int, r *rand.Rand, key, value string, expected int64) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.timeout)
	defer cancel()
	op := kvOp{client: id, kind: opPut, key: key, value: value, expected: expected, call: l.now()}
	resp, err := l.pick(r, &op).OptimisticPut(cctx, key, []byte(value), expected, kubernetes.PutOptions{GetOnFailure: true})
	l.finish(&op, err, resp.Succeeded, resp.Revision, resp.KV)
}

func (l *loader) del(ctx context.Context, id int, r *rand.Rand, key string, expected int64) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.timeout)
	defer cancel()
	op := kvOp{client: id, kind: opDelete, key: key, expected: expected, call: l.now()}
	resp, err := l.pick(r, &op).OptimisticDelete(cctx, key, expected, kubernetes.DeleteOptions{GetOnFailure: true})
	l.finish(&op, err, resp.Succeeded, resp.Revision, resp.KV)
}

func (l *loader) finish(op *kvOp, err error, succeeded bool, rev int64, kv *mvccpb.KeyValue) {
	if err != nil {
		// Timeout, unavailable, leader lost mid-request...: the write may or may not have
		// happened. The checker resolves it from the store's history or leaves it open.
		op.ret = pending
		op.err = err.Error()
		l.h.addFailure(op.kind.String())
		l.record(*op)
		return
	}
	op.ret = l.now()
	op.succeeded, op.revision = succeeded, rev
	if kv != nil {
		op.found, op.curValue, op.curMod = true, string(kv.Value), kv.ModRevision
	}
	if succeeded {
		l.h.acked.Add(1)
	}
	l.record(*op)
}

// lister lists pods page by page at a pinned revision, as kube-apiserver paginates, and now
// and then reads one key at a past revision.
func (l *loader) lister(ctx context.Context, seed int64) {
	r := rand.New(rand.NewSource(seed))
	for ctx.Err() == nil {
		l.listOnce(ctx, r)
		l.sleep(ctx, 10*l.cfg.pause)
	}
}

func (l *loader) listOnce(ctx context.Context, r *rand.Rand) {
	cctx, cancel := context.WithTimeout(ctx, 2*l.cfg.timeout)
	defer cancel()
	k := l.pick(r, nil)
	op := listOp{call: l.now()}
	opts := kubernetes.ListOptions{Limit: 1 + int64(r.Intn(6))}
	for {
		resp, err := k.List(cctx, podPrefix, opts)
		if err != nil {
			if ctx.Err() == nil {
				l.h.addFailure("list")
			}
			return
		}
		if op.pages == 0 {
			op.ret = l.now()
			op.revision, op.count = resp.Revision, resp.Count
			opts.Revision = resp.Revision
		}
		op.pages++
		for _, kv := range resp.Kvs {
			op.kvs = append(op.kvs, snapOf(kv))
		}
		if len(resp.Kvs) == 0 || int64(len(resp.Kvs)) < opts.Limit {
			break
		}
		opts.Continue = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	l.h.mu.Lock()
	l.h.lists = append(l.h.lists, op)
	l.h.mu.Unlock()

	// A point read in the past (kube-apiserver's Get with a resourceVersion).
	if op.revision > 2 {
		rev := 1 + r.Int63n(op.revision-1)
		key := podKey(r.Intn(l.cfg.keys))
		resp, err := k.Get(cctx, key, kubernetes.GetOptions{Revision: rev})
		if err != nil {
			if ctx.Err() == nil {
				l.h.addFailure("get@rev")
			}
			return
		}
		sg := staleGet{key: key, revision: rev}
		if resp.KV != nil {
			sg.found, sg.value, sg.mod = true, string(resp.KV.Value), resp.KV.ModRevision
		}
		l.h.mu.Lock()
		l.h.stale = append(l.h.stale, sg)
		l.h.mu.Unlock()
	}
}

// batcher writes three keys in one txn (unconditionally), unique values each time.
func (l *loader) batcher(ctx context.Context, seed int64) {
	r := rand.New(rand.NewSource(seed))
	seq := 0
	for ctx.Err() == nil {
		seq++
		perm := r.Perm(8)[:3]
		op := batchOp{}
		var puts []clientv3.Op
		for _, p := range perm {
			k := fmt.Sprintf("%sb%d", batchPrefix, p)
			v := fmt.Sprintf("batch-%d-%d", seq, p)
			op.keys, op.values = append(op.keys, k), append(op.values, v)
			puts = append(puts, clientv3.OpPut(k, v))
		}
		cl := l.cl[r.Intn(len(l.cl))]
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.timeout)
		op.call = l.now()
		resp, err := cl.Txn(cctx).Then(puts...).Commit()
		cancel()
		if err != nil {
			op.ret = pending
			l.h.addFailure("batch")
		} else {
			op.ret = l.now()
			op.revision = resp.Header.Revision
			l.h.acked.Add(1)
		}
		l.h.mu.Lock()
		l.h.batches = append(l.h.batches, op)
		l.h.mu.Unlock()
		l.sleep(ctx, 3*l.cfg.pause)
	}
}
