package main

// Watchers as kube-apiserver's watch cache runs them: a prefix watch from a revision, with
// prevKV, require-leader, periodic and requested progress notifications. When a stream ends
// (member killed, "no leader", stalled) the watcher resumes on the next member from the
// revision after the last one it knows complete, and every response is recorded for the
// checks (see check.go: the concatenated stream must equal the store's history).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type wEvent struct {
	put  bool
	kv   kvSnap
	prev *kvSnap
}

type wResp struct {
	conn     int
	events   []wEvent
	header   int64
	progress bool
}

type watcher struct {
	id     int
	prefix string
	start  int64
	c      *cluster
	stall  time.Duration

	mu      sync.Mutex
	resps   []wResp
	seen    int64 // every event up to here was delivered (last event or progress revision)
	conns   int
	reasons map[string]int
	live    []string // violations seen while running (e.g. a compacted error)
}

func newWatcher(id int, prefix string, start int64, c *cluster) *watcher {
	return &watcher{id: id, prefix: prefix, start: start, c: c, stall: 3 * time.Second, reasons: map[string]int{}, seen: start - 1}
}

func (w *watcher) knownUpTo() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

// run watches until ctx ends, resuming whenever a stream ends: on the next member, or, after
// a member was killed, every other time on that member once it is back (so the restarted
// member replays from its own store).
func (w *watcher) run(ctx context.Context) {
	n := len(w.c.nodes)
	ni := w.id % n
	for ctx.Err() == nil {
		reason := w.stream(ctx, ni)
		if ctx.Err() != nil {
			return
		}
		same := reason == "member killed" && w.conns%2 == 0
		if same {
			reason += " (resumed on it once back)"
		}
		w.mu.Lock()
		w.reasons[reason]++
		w.mu.Unlock()
		if same {
			for ctx.Err() == nil && !w.c.isRunning(ni) {
				time.Sleep(50 * time.Millisecond)
			}
			continue
		}
		ni = (ni + 1) % n
	}
}

// stream runs one watch stream to member ni and returns why it ended.
func (w *watcher) stream(ctx context.Context, ni int) string {
	starts := w.c.starts(ni)
	ep := w.c.nodes[ni].clientURL()
	cli, err := w.c.client(ep)
	if err != nil {
		time.Sleep(200 * time.Millisecond)
		return "dial: " + err.Error()
	}
	defer cli.Close()
	w.mu.Lock()
	w.conns++
	conn := w.conns
	next := w.seen + 1
	w.mu.Unlock()

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return "done"
		case resp, ok := <-ch:
			if !ok {
				return "stream closed"
			}
			if err := resp.Err(); err != nil {
				switch {
				case errors.Is(err, rpctypes.ErrNoLeader):
					return "no leader"
				case resp.CompactRevision != 0 || errors.Is(err, rpctypes.ErrCompacted):
					w.violation(fmt.Sprintf("watch from %d on %s: compacted (revision %d) although nothing was compacted", next, ep, resp.CompactRevision))
					return "compacted"
				default:
					return "error: " + err.Error()
				}
			}
			if resp.Canceled {
				return "canceled"
			}
			last = time.Now()
			w.record(conn, &resp)
		case <-tick.C:
			if w.c.starts(ni) != starts || !w.c.isRunning(ni) {
				return "member killed"
			}
			if time.Since(last) > w.stall {
				return "stalled"
			}
			pctx, pcancel := context.WithTimeout(wctx, 300*time.Millisecond)
			_ = cli.RequestProgress(pctx)
			pcancel()
		}
	}
}

func (w *watcher) violation(s string) {
	w.mu.Lock()
	w.live = append(w.live, s)
	w.mu.Unlock()
}

func (w *watcher) record(conn int, resp *clientv3.WatchResponse) {
	r := wResp{conn: conn, header: resp.Header.Revision, progress: resp.IsProgressNotify()}
	for _, ev := range resp.Events {
		e := wEvent{put: ev.Type == clientv3.EventTypePut, kv: snapOf(ev.Kv)}
		if ev.PrevKv != nil {
			p := snapOf(ev.PrevKv)
			e.prev = &p
		}
		r.events = append(r.events, e)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.resps = append(w.resps, r)
	if n := len(r.events); n > 0 && r.events[n-1].kv.mod > w.seen {
		w.seen = r.events[n-1].kv.mod
	}
	if r.progress && r.header > w.seen {
		w.seen = r.header
	}
}

// waitFor waits until the watcher knows every event up to rev.
func (w *watcher) waitFor(rev int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if w.knownUpTo() >= rev {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("watcher %d (%s) knows events only up to %d, not %d, after %v", w.id, w.prefix, w.knownUpTo(), rev, timeout)
}
