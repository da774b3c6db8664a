// Command robustness checks a 3-member `k8sd datastore` cluster for linearizability and
// etcd's watch guarantees while faults (kill -9, network partitions) are injected.
//
// It runs inside the client network namespace that run.sh creates (the bridge to the three
// member namespaces is there), starts the members with nsenter, drives a kube-apiserver-shaped
// load through the etcd client from several clients over all members, and meanwhile kills
// members with SIGKILL and cuts them off from their peers with iptables, one fault at a time.
// Afterwards it reads the store's history and checks:
//
//   - porcupine: the single-key history (Get, OptimisticPut, OptimisticDelete) is linearizable;
//   - revisions respect real time across keys; no acknowledged write is lost, none is applied
//     twice, none that reported failure took effect, and multi-key txns are all-or-nothing;
//   - paginated lists at a pinned revision and Gets at past revisions match the history;
//   - every watcher's stream, across all its reconnections, is exactly the history (ordered,
//     unique, atomic per revision, complete when resumed, also after a member restart), and
//     no progress notification runs ahead of the events delivered.
//
// Use run.sh; see docs/testing.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"google.golang.org/grpc/grpclog"
)

type faultKind int

const (
	killMember faultKind = iota
	killLeader
	partitionMember
	partitionLeader
	restartLeader // kill -9 the leader and start it again at once
	nFaultKinds
)

func (k faultKind) String() string {
	return [...]string{"kill -9 a member", "kill -9 the leader", "partition a member", "partition the leader", "kill -9 the leader and restart it at once"}[k]
}

type options struct {
	bin          string
	dir          string
	netns        []string
	ips          []string
	faults       int
	minFaults    int
	faultTime    time.Duration
	seed         int64
	heartbeat    int
	election     int
	clients      int
	keys         int
	rangeSamples int
	hold         time.Duration
	kinds        []faultKind
	downtime     time.Duration
	gap          time.Duration
	report       string
	commit       string
}

var kindNames = map[string]faultKind{"kill": killMember, "kill-leader": killLeader, "partition": partitionMember, "partition-leader": partitionLeader, "restart-leader": restartLeader}

func main() {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	var o options
	var netns, ips string
	flag.StringVar(&o.bin, "k8sd", os.Getenv("K8SD_BIN"), "k8sd binary (default $K8SD_BIN)")
	flag.StringVar(&o.dir, "dir", "/var/tmp/k8sd-robustness", "scratch dir: data dirs, certificates, member logs (emptied first)")
	flag.StringVar(&netns, "netns", "k8sd-rb-n1,k8sd-rb-n2,k8sd-rb-n3", "the members' network namespaces (under /run/netns)")
	flag.StringVar(&ips, "ips", "10.211.0.11,10.211.0.12,10.211.0.13", "the members' addresses, one per namespace")
	flag.IntVar(&o.faults, "faults", 100, "faults to inject")
	flag.IntVar(&o.minFaults, "min-faults", 100, "fail if fewer faults fit in -fault-time")
	flag.DurationVar(&o.faultTime, "fault-time", 6*time.Minute, "stop injecting faults after this long")
	flag.Int64Var(&o.seed, "seed", 0, "random seed for the fault schedule and the load (0: from the clock); printed")
	flag.IntVar(&o.heartbeat, "heartbeat-interval", 50, "members' Raft heartbeat, ms")
	flag.IntVar(&o.election, "election-timeout", 500, "members' Raft election timeout, ms")
	flag.IntVar(&o.clients, "clients", 6, "concurrent kv clients (plus one lister, one txn writer, five watchers)")
	flag.IntVar(&o.keys, "keys", 16, "keys the kv clients contend on")
	flag.IntVar(&o.rangeSamples, "range-samples", 60, "past revisions at which Range is compared with the history")
	flag.DurationVar(&o.hold, "hold", 0, "on a stuck cluster, keep the members running this long for inspection")
	kinds := flag.String("kinds", "kill,kill-leader,partition,partition-leader,restart-leader", "fault kinds to draw from")
	flag.StringVar(&o.report, "report", "", "write the robustness section of this markdown file (docs/compatibility.md) from the run")
	flag.StringVar(&o.commit, "commit", "unknown", "k8sd commit, for the report")
	flag.DurationVar(&o.gap, "gap", time.Second, "after the cluster is healthy again, the next fault comes after a random pause up to this")
	flag.DurationVar(&o.downtime, "downtime", 800*time.Millisecond, "a killed member is restarted after a random delay up to this")
	flag.Parse()
	for _, k := range strings.Split(*kinds, ",") {
		fk, ok := kindNames[k]
		if !ok {
			fmt.Fprintf(os.Stderr, "robustness: error: unknown fault kind %q (kill, kill-leader, partition, partition-leader, restart-leader)\n", k)
			os.Exit(2)
		}
		o.kinds = append(o.kinds, fk)
	}
	o.netns, o.ips = strings.Split(netns, ","), strings.Split(ips, ",")
	if o.seed == 0 {
		o.seed = time.Now().UnixNano() % 1_000_000_007
	}
	if err := prerequisites(&o); err != nil {
		fmt.Fprintf(os.Stderr, "robustness: error: %v\n", err)
		os.Exit(2)
	}
	ok, err := run(&o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "robustness: error: %v\n", err)
		fmt.Println("0 passed, 1 failed")
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// prerequisites fail loudly; nothing is skipped.
func prerequisites(o *options) error {
	if o.bin == "" {
		return fmt.Errorf("no k8sd binary: set K8SD_BIN or -k8sd")
	}
	if st, err := os.Stat(o.bin); err != nil || st.Mode()&0o111 == 0 {
		return fmt.Errorf("k8sd binary %q is missing or not executable: run 'cargo build --release --bin k8sd'", o.bin)
	}
	for _, tool := range []string{"nsenter", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not on PATH (scripts/setup-host.sh installs it)", tool)
		}
	}
	if len(o.netns) != 3 || len(o.ips) != 3 {
		return fmt.Errorf("need 3 namespaces and 3 addresses, got %v and %v", o.netns, o.ips)
	}
	for _, ns := range o.netns {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			return fmt.Errorf("network namespace %s does not exist: run tests/robustness/run.sh, which creates it", ns)
		}
	}
	// The members must be reachable from here: run.sh runs us in the namespace with the bridge.
	for _, ip := range o.ips {
		conn, err := net.DialTimeout("udp", net.JoinHostPort(ip, "9"), time.Second)
		if err != nil {
			return fmt.Errorf("no route to member address %s from this network namespace: run tests/robustness/run.sh", ip)
		}
		local := conn.LocalAddr().(*net.UDPAddr).IP
		conn.Close()
		if local.IsLoopback() || !sameSubnet(local, net.ParseIP(ip)) {
			return fmt.Errorf("member address %s would be reached from %s, not from the test bridge: run tests/robustness/run.sh", ip, local)
		}
	}
	if o.minFaults > o.faults {
		return fmt.Errorf("-min-faults %d > -faults %d", o.minFaults, o.faults)
	}
	return nil
}

func sameSubnet(a, b net.IP) bool {
	a4, b4 := a.To4(), b.To4()
	return a4 != nil && b4 != nil && a4[0] == b4[0] && a4[1] == b4[1] && a4[2] == b4[2]
}

func logf(format string, args ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(o *options) (bool, error) {
	started := time.Now()
	if err := os.RemoveAll(o.dir); err != nil {
		return false, err
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return false, err
	}
	flags := []string{
		fmt.Sprintf("--heartbeat-interval=%d", o.heartbeat),
		fmt.Sprintf("--election-timeout=%d", o.election),
		"--watch-progress-notify-interval=1s",
	}
	c, err := newCluster(o.bin, o.dir, o.netns, o.ips, flags)
	if err != nil {
		return false, err
	}
	defer c.stopAll()
	logf("seed %d; %s; members in %v at %v; logs in %s/logs", o.seed, o.bin, o.netns, o.ips, o.dir)
	for i := range c.nodes {
		if err := c.spawn(i); err != nil {
			return false, err
		}
	}
	for i := range c.nodes {
		if err := c.waitReady(i, 60*time.Second); err != nil {
			return false, err
		}
	}
	ctx := context.Background()
	// Status clients, one per member, kept across restarts (gRPC reconnects by itself).
	statusCl := make([]*clientv3.Client, len(c.nodes))
	for i, n := range c.nodes {
		if statusCl[i], err = c.client(n.clientURL()); err != nil {
			return false, err
		}
		defer statusCl[i].Close()
	}
	if err := waitVoters(ctx, statusCl[0], 3, 60*time.Second); err != nil {
		return false, err
	}
	if _, err := c.healthy(ctx, statusCl, 30*time.Second); err != nil {
		return false, err
	}
	logf("cluster formed: 3 voters, https peers and clients, heartbeat %dms, election timeout %dms", o.heartbeat, o.election)

	h := &history{failed: map[string]int{}}
	l := &loader{cfg: loadConfig{kvClients: o.clients, keys: o.keys, timeout: 2 * time.Second, pause: 20 * time.Millisecond}, t0: time.Now(), h: h, eps: c.endpoints()}
	for _, ep := range l.eps {
		cl, err := c.client(ep)
		if err != nil {
			return false, err
		}
		defer cl.Close()
		l.cl = append(l.cl, cl)
		l.kube = append(l.kube, kubernetes.Client{Client: cl})
	}
	first, err := statusCl[0].Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		return false, err
	}
	startRev := first.Header.Revision + 1

	// Watchers from the start (one per member to begin with, then they rotate), and one more
	// opened mid-run from an old revision.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watchers []*watcher
	var wwg sync.WaitGroup
	startWatcher := func(prefix string, from int64) {
		w := newWatcher(len(watchers), prefix, from, c)
		watchers = append(watchers, w)
		wwg.Add(1)
		go func() { defer wwg.Done(); w.run(wctx) }()
	}
	startWatcher(prefix, startRev)
	startWatcher(podPrefix, startRev)
	startWatcher(podPrefix+"ns1/", startRev)
	startWatcher(batchPrefix, startRev)

	lctx, stopLoad := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	for i := 0; i < o.clients; i++ {
		lwg.Add(1)
		go func() { defer lwg.Done(); l.kvWorker(lctx, i, o.seed+int64(i)) }()
	}
	lwg.Add(2)
	go func() { defer lwg.Done(); l.lister(lctx, o.seed+100) }()
	go func() { defer lwg.Done(); l.batcher(lctx, o.seed+101) }()
	time.Sleep(2 * time.Second)
	if h.acked.Load() == 0 {
		stopLoad()
		return false, fmt.Errorf("no write acknowledged in the first 2 s of load; member logs in %s/logs", o.dir)
	}

	// --- faults ----------------------------------------------------------------------------
	r := rand.New(rand.NewSource(o.seed))
	counts := make([]int, nFaultKinds)
	total := 0
	var recoveries []time.Duration
	var runErr error
	faultStart := time.Now()
	for total < o.faults && time.Since(faultStart) < o.faultTime {
		if err := c.unexpectedExit(); err != nil {
			runErr = err
			break
		}
		li, err := c.healthy(ctx, statusCl, 30*time.Second)
		if err != nil {
			runErr = fmt.Errorf("before fault %d: %w", total+1, err)
			break
		}
		if total == o.faults/2 {
			// A watcher that starts in the past while the load and faults go on.
			cur, err := l.cl[r.Intn(3)].Get(ctx, "/", clientv3.WithCountOnly())
			if err == nil {
				startWatcher(prefix, 2+r.Int63n(cur.Header.Revision/2+1))
			}
		}
		kind := o.kinds[r.Intn(len(o.kinds))]
		victim := r.Intn(len(c.nodes))
		if kind == killLeader || kind == partitionLeader || kind == restartLeader {
			victim = li
		}
		switch kind {
		case killMember, killLeader, restartLeader:
			c.kill9(victim)
			if o.downtime > 0 && kind != restartLeader {
				time.Sleep(time.Duration(r.Int63n(int64(o.downtime))))
			}
			if err := c.spawn(victim); err != nil {
				runErr = err
			} else if err := c.waitReady(victim, 30*time.Second); err != nil {
				runErr = err
			}
		case partitionMember, partitionLeader:
			if err := c.isolate(victim); err != nil {
				runErr = err
				break
			}
			time.Sleep(time.Duration(1000+r.Intn(2500)) * time.Millisecond)
			if err := c.heal(victim); err != nil {
				runErr = err
			}
		}
		if runErr != nil {
			break
		}
		counts[kind]++
		total++
		// Recovery: every member answers and agrees on one leader.
		t := time.Now()
		if _, err := c.healthy(ctx, statusCl, 30*time.Second); err != nil {
			runErr = fmt.Errorf("after fault %d (%s of %s): %w", total, kind, c.nodes[victim].name, err)
			break
		}
		recoveries = append(recoveries, time.Since(t))
		if o.gap > 0 {
			time.Sleep(time.Duration(r.Int63n(int64(o.gap))))
		}
		if total%10 == 0 {
			logf("%d faults injected; %d writes acknowledged so far", total, h.acked.Load())
		}
	}
	faultTime := time.Since(faultStart)
	// Settle: every member up and healed, a leader everyone agrees on, some load after it.
	for i := range c.nodes {
		_ = c.heal(i)
		if !c.isRunning(i) {
			_ = c.spawn(i)
			_ = c.waitReady(i, 30*time.Second)
		}
	}
	if runErr == nil {
		if _, err := c.healthy(ctx, statusCl, 30*time.Second); err != nil {
			runErr = fmt.Errorf("after the last fault: %w", err)
		}
	}
	if runErr == nil {
		runErr = c.unexpectedExit()
	}
	time.Sleep(2 * time.Second)
	stopLoad()
	lwg.Wait()
	if runErr != nil {
		stopWatch()
		return false, runErr
	}

	// --- the store's history ---------------------------------------------------------------
	final, err := converge(ctx, c, statusCl, 30*time.Second)
	if err != nil {
		// Tell a member that is stuck from one that diverged: each member's own history must
		// be a prefix of the longest.
		st, _ := c.statuses(ctx, statusCl)
		for i, n := range c.nodes {
			evs, herr := readHistory(ctx, c, n.clientURL(), st[i].revision)
			if herr != nil {
				fmt.Printf("%s: history to its revision %d: %v\n", n.name, st[i].revision, herr)
				continue
			}
			if i > 0 {
				ref, _ := readHistory(ctx, c, c.nodes[0].clientURL(), st[0].revision)
				m := min(len(ref), len(evs))
				if d := diffEvents(ref[:m], evs[:m]); d != "" {
					fmt.Printf("DIVERGED: %s and %s: %s\n", c.nodes[0].name, n.name, d)
				}
			}
			fmt.Printf("%s: revision %d, %d events, status %+v\n", n.name, st[i].revision, len(evs), st[i])
		}
		if o.hold > 0 {
			logf("holding the cluster for %v for inspection", o.hold)
			time.Sleep(o.hold)
		}
		return false, err
	}
	for _, w := range watchers {
		if err := w.waitFor(final, 60*time.Second); err != nil {
			stopWatch()
			return false, err
		}
	}
	stopWatch()
	wwg.Wait()
	var hist [][]wEvent
	for _, ep := range c.endpoints() {
		evs, err := readHistory(ctx, c, ep, final)
		if err != nil {
			return false, err
		}
		hist = append(hist, evs)
	}
	events := hist[0]
	loadTime := time.Since(l.t0)

	// --- checks ----------------------------------------------------------------------------
	fmt.Println()
	var rep report
	var kinds []string
	for k := faultKind(0); k < nFaultKinds; k++ {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, counts[k]))
	}
	rep.check(fmt.Sprintf("at least %d faults injected", o.minFaults), cond(total >= o.minFaults, fmt.Sprintf("only %d faults in %v", total, faultTime.Round(time.Second))),
		fmt.Sprintf("%d in %v: %s; cluster healthy again after each in %s", total, faultTime.Round(time.Second), strings.Join(kinds, ", "), durStats(recoveries)))

	var same []string
	for i := 1; i < len(hist); i++ {
		if d := diffEvents(hist[0], hist[i]); d != "" {
			same = append(same, fmt.Sprintf("%s and %s differ: %s", c.nodes[0].name, c.nodes[i].name, d))
		}
	}
	rep.check("every member has the same history", same, fmt.Sprintf("revision %d, %d events", final, len(events)))
	rep.check("the history is well formed (no revision gap, versions, create revisions and prevKV consistent)", checkHistory(events), fmt.Sprintf("revisions 2..%d", final))
	rep.check("Range at sampled revisions on every member matches the history", checkRanges(ctx, c, events, final, o.rangeSamples, r), fmt.Sprintf("%d revisions and the final state", o.rangeSamples))

	h.mu.Lock()
	defer h.mu.Unlock()
	ackV, kv, res, acked := checkAcked(h, events)
	rep.check("no acknowledged write lost, none applied twice, no failed write applied, txns all-or-nothing", ackV,
		fmt.Sprintf("%d acknowledged writes; of unknown outcome: puts %d took effect / %d did not, deletes %d / %d / %d undecided, txns %d / %d",
			acked, res.putsTookEffect, res.putsDropped, res.delsTookEffect, res.delsDropped, res.delsOpen, res.batchesTookEffect, res.batchesDropped))
	verdict, vis, took := checkLinearizable(kv, o.dir, 5*time.Minute)
	var linV []string
	if verdict != "Ok" {
		linV = []string{fmt.Sprintf("porcupine says %s; visualization: %s", verdict, vis)}
	}
	rep.check("linearizable (porcupine, per key: get, CAS put, CAS delete)", linV, fmt.Sprintf("%d operations on %d keys, checked in %v", len(kv), o.keys, took.Round(time.Millisecond)))
	rep.check("revisions respect real time across keys", checkRevisionOrder(kv, h, events), "every acknowledged write, read, list and txn")
	pages := 0
	for _, li := range h.lists {
		pages += li.pages
	}
	rep.check("paginated lists at a pinned revision and gets at past revisions match the history", checkLists(h, events),
		fmt.Sprintf("%d lists (%d pages), %d past gets", len(h.lists), pages, len(h.stale)))

	guarantees := []string{"ordered", "unique", "atomic", "complete across resumes", "progress never ahead", "no compaction error"}
	byG := map[string][]string{}
	var wst watchStats
	reasons := map[string]int{}
	for _, w := range watchers {
		v, st := checkWatcher(w, events, final)
		for g, s := range v {
			byG[g] = append(byG[g], s...)
		}
		wst.events += st.events
		wst.responses += st.responses
		wst.progress += st.progress
		for k, n := range w.reasons {
			reasons[k] += n
		}
	}
	wdetail := fmt.Sprintf("%d watchers, %d events in %d responses, %d progress notifications; resumed after: %s",
		len(watchers), wst.events, wst.responses, wst.progress, mapString(reasons))
	fmt.Printf("watches: %s\n", wdetail)
	for _, g := range guarantees {
		rep.check("watch: "+g, byG[g], fmt.Sprintf("%d watchers, %d events", len(watchers), wst.events))
	}

	// --- summary ---------------------------------------------------------------------------
	ops := map[string]int{}
	unknown := 0
	for _, op := range h.ops {
		ops[op.kind.String()]++
		if op.ret == pending {
			unknown++
		}
	}
	dumpHistory(o.dir, h, kv)
	fmt.Println()
	facts := runFacts{
		commit: o.commit, goVersion: runtime.Version(), seed: o.seed, o: o,
		faults:    fmt.Sprintf("%d (%s)", total, strings.Join(kinds, ", ")),
		faultTime: faultTime.Round(time.Second).String(),
		load: fmt.Sprintf("%v: %d gets, %d puts, %d deletes (%d of unknown outcome), %d lists, %d past gets, %d txns; %d acknowledged writes; failed requests: %s",
			loadTime.Round(time.Second), ops["get"], ops["put"], ops["delete"], unknown, len(h.lists), len(h.stale), len(h.batches), acked, mapString(h.failed)),
		latency: latencies(h.ops),
		history: fmt.Sprintf("revision %d, %d events; porcupine %s on %d operations", final, len(events), verdict, len(kv)),
		watch:   wdetail,
	}
	fmt.Printf("summary: seed %d; faults: %s in %s\n", o.seed, facts.faults, facts.faultTime)
	fmt.Printf("summary: load for %s\n", facts.load)
	fmt.Printf("summary: latency of answered kv requests: %s\n", facts.latency)
	fmt.Printf("summary: history %s\n", facts.history)
	fmt.Printf("summary: watches: %s\n", facts.watch)
	facts.total = time.Since(started).Round(time.Second).String()
	fmt.Printf("summary: total time %s\n", facts.total)
	if o.report != "" {
		if err := writeMarkdown(o.report, facts, &rep); err != nil {
			fmt.Printf("cannot write %s: %v\n", o.report, err)
			rep.failed++
		} else {
			fmt.Printf("wrote %s\n", o.report)
		}
	}
	fmt.Printf("%d passed, %d failed\n", rep.passed, rep.failed)
	return rep.failed == 0, nil
}

func cond(ok bool, msg string) []string {
	if ok {
		return nil
	}
	return []string{msg}
}

func mapString(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func durStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	return fmt.Sprintf("median %v, max %v", s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

func diffEvents(a, b []wEvent) string {
	for i := 0; i < len(a) || i < len(b); i++ {
		switch {
		case i >= len(a):
			return fmt.Sprintf("second has %d more events from %s", len(b)-i, descEvent(b[i]))
		case i >= len(b):
			return fmt.Sprintf("first has %d more events from %s", len(a)-i, descEvent(a[i]))
		case !eventsEqual(a[i], b[i]):
			return fmt.Sprintf("event %d: %s vs %s", i, descEvent(a[i]), descEvent(b[i]))
		}
	}
	return ""
}

// waitVoters waits until MemberList shows n voters.
func waitVoters(ctx context.Context, cl *clientv3.Client, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		ml, err := cl.MemberList(cctx)
		cancel()
		if err == nil {
			voters := 0
			for _, m := range ml.Members {
				if !m.IsLearner {
					voters++
				}
			}
			if voters == n {
				return nil
			}
			last = fmt.Sprintf("%d voters of %d members", voters, len(ml.Members))
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("no %d voters within %v: %s", n, timeout, last)
}

// converge waits until every member reports the same revision, and returns it.
func converge(ctx context.Context, c *cluster, cls []*clientv3.Client, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		st, ok := c.statuses(ctx, cls)
		last = fmt.Sprintf("%+v %v", st, ok)
		if ok[0] && ok[1] && ok[2] && st[0].revision == st[1].revision && st[1].revision == st[2].revision {
			// And a linearizable read agrees (the status revision is the local one).
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			g, err := cls[0].Get(cctx, "/", clientv3.WithCountOnly())
			cancel()
			if err == nil && g.Header.Revision == st[0].revision {
				return st[0].revision, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return 0, fmt.Errorf("members did not converge on one revision within %v: %s", timeout, last)
}

// latencies summarises answered kv requests' latency.
func latencies(ops []kvOp) string {
	var ds []time.Duration
	for _, o := range ops {
		if o.ret != pending {
			ds = append(ds, time.Duration(o.ret-o.call))
		}
	}
	if len(ds) == 0 {
		return "-"
	}
	sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v", q(0.5), q(0.9), q(0.99), q(1))
}

// dumpHistory writes every kv operation (after resolution), one a line in call order, to
// history.txt in the scratch dir: what to read when a check fails.
func dumpHistory(dir string, h *history, kv []kvOp) {
	ops := append([]kvOp(nil), kv...)
	sort.Slice(ops, func(a, b int) bool { return ops[a].call < ops[b].call })
	var lines []string
	for _, o := range ops {
		ret := "pending"
		if o.ret != pending {
			ret = fmt.Sprintf("%.3f", float64(o.ret)/1e9)
		}
		lines = append(lines, fmt.Sprintf("%.3f %s client %d via n%d: %s", float64(o.call)/1e9, ret, o.client, o.member+1, describe(&o)))
	}
	writeFile(dir+"/history.txt", lines)
}
