package main

// The checks, all against the store's own history: every event from revision 1, read from
// each member by a watch from revision 1 after the run, required identical on all three and
// cross-checked against Range at sampled revisions (a different read path).

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// report collects pass/fail lines; the run ends with "N passed, N failed".
type report struct {
	passed, failed int
	results        []result
}

type result struct {
	name, detail string
	violations   int
}

func (r *report) check(name string, violations []string, detail string) {
	r.results = append(r.results, result{name, detail, len(violations)})
	if len(violations) == 0 {
		r.passed++
		fmt.Printf("PASS: %s (%s)\n", name, detail)
		return
	}
	r.failed++
	fmt.Printf("FAIL: %s: %d violation(s) (%s)\n", name, len(violations), detail)
	for i, v := range violations {
		if i == 15 {
			fmt.Printf("      ... and %d more\n", len(violations)-i)
			break
		}
		fmt.Printf("      - %s\n", v)
	}
}

// readHistory reads every event under prefix from revision 1 to final from one member.
func readHistory(ctx context.Context, c *cluster, ep string, final int64) ([]wEvent, error) {
	cli, err := c.client(ep)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	ch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithPrevKV())
	var out []wEvent
	last := int64(0)
	for last < final {
		resp, ok := <-ch
		if !ok {
			return nil, fmt.Errorf("history from %s: stream ended at revision %d of %d: %v", ep, last, final, wctx.Err())
		}
		if err := resp.Err(); err != nil {
			return nil, fmt.Errorf("history from %s: %w", ep, err)
		}
		for _, ev := range resp.Events {
			e := wEvent{put: ev.Type == clientv3.EventTypePut, kv: snapOf(ev.Kv)}
			if ev.PrevKv != nil {
				p := snapOf(ev.PrevKv)
				e.prev = &p
			}
			out = append(out, e)
			last = ev.Kv.ModRevision
		}
	}
	return out, nil
}

func descEvent(e wEvent) string {
	typ := "DELETE"
	if e.put {
		typ = "PUT"
	}
	s := fmt.Sprintf("%s %s@%d", typ, e.kv.key, e.kv.mod)
	if e.put {
		s += fmt.Sprintf("=%s(create %d, version %d)", e.kv.value, e.kv.create, e.kv.version)
	}
	if e.prev != nil {
		s += fmt.Sprintf(" prev %s@%d", e.prev.value, e.prev.mod)
	}
	return s
}

func eventsEqual(a, b wEvent) bool {
	if a.put != b.put || a.kv != b.kv {
		return false
	}
	if (a.prev == nil) != (b.prev == nil) {
		return false
	}
	return a.prev == nil || *a.prev == *b.prev
}

// checkHistory checks the history is what an etcd store produces: revisions start at 2,
// have no gaps, and every event's version, create revision and prevKV follow from the
// previous state of its key.
func checkHistory(events []wEvent) []string {
	var v []string
	state := map[string]kvSnap{}
	last := int64(1)
	seenAt := map[string]bool{}
	for _, e := range events {
		rev := e.kv.mod
		switch {
		case rev < last:
			v = append(v, fmt.Sprintf("revision goes back: %s after %d", descEvent(e), last))
		case rev > last+1:
			v = append(v, fmt.Sprintf("revisions %d..%d have no event (next: %s)", last+1, rev-1, descEvent(e)))
		}
		if rev != last {
			seenAt = map[string]bool{}
		}
		if seenAt[e.kv.key] {
			v = append(v, fmt.Sprintf("key twice in one revision: %s", descEvent(e)))
		}
		seenAt[e.kv.key] = true
		last = rev
		prev, exists := state[e.kv.key]
		if exists != (e.prev != nil) || (exists && *e.prev != prev) {
			v = append(v, fmt.Sprintf("prevKV of %s does not match the key's previous state (%v %+v)", descEvent(e), exists, prev))
		}
		if e.put {
			wantCreate, wantVersion := rev, int64(1)
			if exists {
				wantCreate, wantVersion = prev.create, prev.version+1
			}
			if e.kv.create != wantCreate || e.kv.version != wantVersion {
				v = append(v, fmt.Sprintf("%s: want create %d, version %d", descEvent(e), wantCreate, wantVersion))
			}
			state[e.kv.key] = e.kv
		} else {
			if !exists {
				v = append(v, fmt.Sprintf("delete of an absent key: %s", descEvent(e)))
			}
			delete(state, e.kv.key)
		}
	}
	return v
}

// stateAt replays events and calls fn at each of the ascending revisions with the state
// (key -> kv) as of that revision. fn must not keep the map.
func stateAt(events []wEvent, revs []int64, fn func(i int, state map[string]kvSnap)) {
	order := make([]int, len(revs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return revs[order[a]] < revs[order[b]] })
	state := map[string]kvSnap{}
	j := 0
	for _, qi := range order {
		for j < len(events) && events[j].kv.mod <= revs[qi] {
			e := events[j]
			if e.put {
				state[e.kv.key] = e.kv
			} else {
				delete(state, e.kv.key)
			}
			j++
		}
		fn(qi, state)
	}
}

func subset(state map[string]kvSnap, p string) []kvSnap {
	var out []kvSnap
	for k, kv := range state {
		if strings.HasPrefix(k, p) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].key < out[b].key })
	return out
}

// checkRanges compares Range at sampled revisions (and at the final one) on every member
// with the replayed history.
func checkRanges(ctx context.Context, c *cluster, events []wEvent, final int64, samples int, r *rand.Rand) []string {
	revs := []int64{final, final, final}
	for i := 0; i < samples; i++ {
		revs = append(revs, 1+r.Int63n(final))
	}
	var v []string
	clis := make([]*clientv3.Client, len(c.nodes))
	for i, n := range c.nodes {
		cli, err := c.client(n.clientURL())
		if err != nil {
			return []string{err.Error()}
		}
		defer cli.Close()
		clis[i] = cli
	}
	stateAt(events, revs, func(i int, state map[string]kvSnap) {
		want := subset(state, prefix)
		ni := i % len(clis)
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if i >= 3 {
			opts = append(opts, clientv3.WithRev(revs[i]))
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := clis[ni].Get(cctx, prefix, opts...)
		cancel()
		if err != nil {
			v = append(v, fmt.Sprintf("range at %d on %s: %v", revs[i], c.nodes[ni].name, err))
			return
		}
		var got []kvSnap
		for _, kv := range resp.Kvs {
			got = append(got, snapOf(kv))
		}
		if !reflect.DeepEqual(got, want) {
			v = append(v, fmt.Sprintf("range at %d on %s: %d keys, history says %d: %s", revs[i], c.nodes[ni].name, len(got), len(want), firstDiff(got, want)))
		}
	})
	return v
}

func firstDiff(got, want []kvSnap) string {
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w kvSnap
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			return fmt.Sprintf("first difference at %d: got %+v, want %+v", i, g, w)
		}
	}
	return "equal"
}

// checkLists compares every paginated list and every past Get with the history.
func checkLists(h *history, events []wEvent) []string {
	var v []string
	revs := make([]int64, len(h.lists))
	for i, l := range h.lists {
		revs[i] = l.revision
	}
	stateAt(events, revs, func(i int, state map[string]kvSnap) {
		l := h.lists[i]
		want := subset(state, podPrefix)
		if !reflect.DeepEqual(l.kvs, want) && !(len(l.kvs) == 0 && len(want) == 0) {
			v = append(v, fmt.Sprintf("list at %d (%d pages): %d keys, history says %d: %s", l.revision, l.pages, len(l.kvs), len(want), firstDiff(l.kvs, want)))
		}
		if l.count != int64(len(want)) {
			v = append(v, fmt.Sprintf("list at %d: count %d, history says %d", l.revision, l.count, len(want)))
		}
	})
	revs = make([]int64, len(h.stale))
	for i, g := range h.stale {
		revs[i] = g.revision
	}
	stateAt(events, revs, func(i int, state map[string]kvSnap) {
		g := h.stale[i]
		kv, ok := state[g.key]
		if ok != g.found || (ok && (kv.value != g.value || kv.mod != g.mod)) {
			v = append(v, fmt.Sprintf("get %s at %d: found=%v %s@%d, history says found=%v %s@%d", g.key, g.revision, g.found, g.value, g.mod, ok, kv.value, kv.mod))
		}
	})
	return v
}

type resolution struct {
	putsTookEffect, putsDropped, delsTookEffect, delsDropped, delsOpen int
	batchesTookEffect, batchesDropped                                  int
}

// checkAcked verifies every acknowledged write is in the history exactly as acknowledged,
// that no value was written twice (a retried request applied twice) or by a write that
// reported failure, and resolves writes of unknown outcome from the history.
func checkAcked(h *history, events []wEvent) (violations []string, kv []kvOp, res resolution, acked int) {
	byValue := map[string]wEvent{}
	type keyMod struct {
		key string
		mod int64
	}
	deletes := map[keyMod]wEvent{}
	for _, e := range events {
		if e.put {
			if old, dup := byValue[e.kv.value]; dup {
				violations = append(violations, fmt.Sprintf("value %q written twice: %s and %s", e.kv.value, descEvent(old), descEvent(e)))
			}
			byValue[e.kv.value] = e
		} else if e.prev != nil {
			deletes[keyMod{e.kv.key, e.prev.mod}] = e
		}
	}
	// Deletes per (key, precondition): at most one of them can succeed.
	delOps := map[keyMod][]int{}
	for i, op := range h.ops {
		if op.kind == opDelete && (op.ret == pending || op.succeeded) {
			km := keyMod{op.key, op.expected}
			delOps[km] = append(delOps[km], i)
		}
	}
	for i := range h.ops {
		op := h.ops[i]
		switch {
		case op.kind == opPut && op.ret != pending:
			e, ok := byValue[op.value]
			if op.succeeded {
				acked++
				if !ok {
					violations = append(violations, fmt.Sprintf("acknowledged write lost: %s", describe(&op)))
				} else if e.kv.key != op.key || e.kv.mod != op.revision {
					violations = append(violations, fmt.Sprintf("acknowledged write %s is in the history as %s", describe(&op), descEvent(e)))
				}
			} else if ok {
				violations = append(violations, fmt.Sprintf("write reported as failed took effect: %s is in the history as %s", describe(&op), descEvent(e)))
			}
		case op.kind == opPut: // unknown outcome
			if e, ok := byValue[op.value]; ok {
				if e.kv.key != op.key {
					violations = append(violations, fmt.Sprintf("%s is in the history under another key: %s", describe(&op), descEvent(e)))
				}
				op.resolved, op.succeeded, op.revision = true, true, e.kv.mod
				res.putsTookEffect++
			} else {
				res.putsDropped++
				continue
			}
		case op.kind == opDelete && op.ret != pending && op.succeeded:
			acked++
			e, ok := deletes[keyMod{op.key, op.expected}]
			if !ok || e.kv.mod != op.revision {
				violations = append(violations, fmt.Sprintf("acknowledged delete lost: %s", describe(&op)))
			}
		case op.kind == opDelete && op.ret == pending:
			km := keyMod{op.key, op.expected}
			e, ok := deletes[km]
			if !ok {
				res.delsDropped++
				continue // no delete with this precondition happened
			}
			ackedOne, open := false, 0
			for _, j := range delOps[km] {
				if h.ops[j].ret != pending {
					ackedOne = true
				} else {
					open++
				}
			}
			switch {
			case ackedOne:
				res.delsDropped++
				continue // the acknowledged one did it
			case open == 1:
				op.resolved, op.succeeded, op.revision = true, true, e.kv.mod
				res.delsTookEffect++
			default:
				res.delsOpen++
			}
		}
		kv = append(kv, op)
	}
	for _, b := range h.batches {
		present := 0
		var revs []int64
		for j, val := range b.values {
			if e, ok := byValue[val]; ok && e.kv.key == b.keys[j] {
				present++
				revs = append(revs, e.kv.mod)
			}
		}
		if b.ret != pending {
			acked++
		}
		switch {
		case b.ret != pending && (present != len(b.values) || revs[0] != b.revision || revs[len(revs)-1] != b.revision):
			violations = append(violations, fmt.Sprintf("acknowledged txn at %d (%v) lost or split: %d of %d puts in the history at %v", b.revision, b.keys, present, len(b.values), revs))
		case present != 0 && present != len(b.values):
			violations = append(violations, fmt.Sprintf("txn %v half applied: %d of %d puts, at %v", b.keys, present, len(b.values), revs))
		case present != 0 && revs[0] != revs[len(revs)-1]:
			violations = append(violations, fmt.Sprintf("txn %v applied over several revisions %v", b.keys, revs))
		case b.ret == pending && present != 0:
			res.batchesTookEffect++
		case b.ret == pending:
			res.batchesDropped++
		}
	}
	return violations, kv, res, acked
}

// checkLinearizable runs porcupine over the resolved single-key history.
func checkLinearizable(kv []kvOp, dir string, timeout time.Duration) (porcupine.CheckResult, string, time.Duration) {
	start := time.Now()
	model := kvModel()
	res, info := porcupine.CheckOperationsVerbose(model, porcupineOps(kv), timeout)
	took := time.Since(start)
	if res == porcupine.Ok {
		return res, "", took
	}
	path := filepath.Join(dir, "linearizability.html")
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		path = "(visualization failed: " + err.Error() + ")"
	}
	return res, path, took
}

type rtOp struct {
	call, ret, rev int64
	write          bool
	desc           string
}

// checkRevisionOrder checks revisions respect real time across keys: an operation that
// starts after another returned sees at least its revision, and a write gets a revision
// above everything that returned before it started.
func checkRevisionOrder(kv []kvOp, h *history, events []wEvent) []string {
	var ops []rtOp
	for i := range kv {
		o := &kv[i]
		if o.ret == pending && !o.resolved {
			continue
		}
		ops = append(ops, rtOp{call: o.call, ret: o.ret, rev: o.revision, write: o.succeeded && o.kind != opGet, desc: describe(o)})
	}
	for _, l := range h.lists {
		ops = append(ops, rtOp{call: l.call, ret: l.ret, rev: l.revision, desc: fmt.Sprintf("list at %d", l.revision)})
	}
	byValue := map[string]int64{}
	for _, e := range events {
		if e.put {
			byValue[e.kv.value] = e.kv.mod
		}
	}
	for _, b := range h.batches {
		rev := b.revision
		if b.ret == pending {
			var ok bool
			if rev, ok = byValue[b.values[0]]; !ok {
				continue
			}
		}
		ops = append(ops, rtOp{call: b.call, ret: b.ret, rev: rev, write: true, desc: fmt.Sprintf("txn %v at %d", b.keys, rev)})
	}
	byRet := append([]rtOp(nil), ops...)
	sort.Slice(byRet, func(a, b int) bool { return byRet[a].ret < byRet[b].ret })
	sort.Slice(ops, func(a, b int) bool { return ops[a].call < ops[b].call })
	var v []string
	j := 0
	var maxRev int64
	var maxDesc string
	for _, o := range ops {
		for j < len(byRet) && byRet[j].ret < o.call {
			if byRet[j].rev > maxRev {
				maxRev, maxDesc = byRet[j].rev, byRet[j].desc
			}
			j++
		}
		if o.write && o.rev <= maxRev || !o.write && o.rev < maxRev {
			v = append(v, fmt.Sprintf("%s (revision %d) started after %s (revision %d) returned", o.desc, o.rev, maxDesc, maxRev))
		}
	}
	return v
}

type watchStats struct {
	events, responses, progress int
}

// checkWatcher compares one watcher's stream with the history and checks the guarantees.
// Returns violations by guarantee.
func checkWatcher(w *watcher, events []wEvent, final int64) (map[string][]string, watchStats) {
	v := map[string][]string{}
	add := func(k, s string) {
		v[k] = append(v[k], fmt.Sprintf("watcher %d (%s from %d): %s", w.id, w.prefix, w.start, s))
	}
	var want []wEvent
	perRev := map[int64]int{}
	for _, e := range events {
		if strings.HasPrefix(e.kv.key, w.prefix) && e.kv.mod >= w.start && e.kv.mod <= final {
			want = append(want, e)
			perRev[e.kv.mod]++
		}
	}
	// upTo(R): how many wanted events have revision <= R.
	upTo := func(r int64) int {
		return sort.Search(len(want), func(i int) bool { return want[i].kv.mod > r })
	}
	for _, s := range w.live {
		add("no compaction error", s)
	}
	var st watchStats
	var got []wEvent
	lastRev := int64(0)
	seen := map[string]bool{}
	for _, r := range w.resps {
		st.responses++
		if r.progress {
			st.progress++
			if n := upTo(r.header); len(got) < n {
				add("progress never ahead", fmt.Sprintf("progress notify at revision %d after only %d of the %d events up to it (conn %d)", r.header, len(got), n, r.conn))
			}
			continue
		}
		inResp := map[int64]int{}
		for i, e := range r.events {
			if i == 0 && e.kv.mod <= lastRev || i > 0 && e.kv.mod < r.events[i-1].kv.mod {
				add("ordered", fmt.Sprintf("%s delivered after revision %d (conn %d)", descEvent(e), lastRev, r.conn))
			}
			id := fmt.Sprintf("%s@%d", e.kv.key, e.kv.mod)
			if seen[id] {
				add("unique", fmt.Sprintf("%s delivered twice (conn %d)", descEvent(e), r.conn))
			}
			seen[id] = true
			inResp[e.kv.mod]++
		}
		for rev, n := range inResp {
			if n != perRev[rev] {
				add("atomic", fmt.Sprintf("revision %d: %d of its %d events in one response (conn %d)", rev, n, perRev[rev], r.conn))
			}
		}
		if n := len(r.events); n > 0 {
			lastRev = r.events[n-1].kv.mod
		}
		got = append(got, r.events...)
		st.events += len(r.events)
	}
	// Complete and resumable: the stream, across every reconnection, is the history.
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			add("complete across resumes", fmt.Sprintf("stream ends after %d events; missing from %s (%d more)", len(got), descEvent(want[i]), len(want)-i))
		case i >= len(want):
			add("complete across resumes", fmt.Sprintf("%d extra events from %s", len(got)-i, descEvent(got[i])))
		case !eventsEqual(got[i], want[i]):
			add("complete across resumes", fmt.Sprintf("event %d: got %s, history has %s", i, descEvent(got[i]), descEvent(want[i])))
		default:
			continue
		}
		break
	}
	return v, st
}

func writeFile(path string, lines []string) {
	_ = os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}
