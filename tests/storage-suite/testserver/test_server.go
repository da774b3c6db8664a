// Package testserver replaces k8s.io/apiserver/pkg/storage/etcd3/testserver when Kubernetes'
// storage tests run against k8sd (tests/storage-suite/run.sh copies this file over upstream's
// test_server.go in a scratch copy of k8s.io/apiserver).
//
// It keeps upstream's exported API at v0.36.3 exactly, so no upstream test needs a change:
//
//	NewTestConfig(t testing.TB) *embed.Config
//	RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client
//
// The *embed.Config is still etcd's type, because tests edit its fields (for example
// WatchProgressNotifyInterval, or ClientTLSInfo in the factory tests), but instead of starting an
// embedded etcd, RunEtcd starts `$K8SD_BIN datastore` as a child process on the config's data dir
// and loopback URL, waits for `ready to serve client requests` on its stderr, and kills it when
// the test ends. The returned client is built exactly as upstream builds it, including the KV
// recorder wrappers that some tests inspect.
//
// Environment:
//
//	K8SD_BIN                 the k8sd binary (required; the test fails loudly without it)
//	K8SD_SUITE_LOG_DIR       if set, each server's stderr is kept there as <test>-<n>.log;
//	                         otherwise it is kept in the test's temp dir and printed on failure
//	K8SD_TEST_RAFT=1         run the single server as a Raft member (a cluster of one)
//	K8SD_TEST_CLUSTER=3      run a 3-node Raft cluster per RunEtcd instead: n1 on the config's
//	                         client URL, n2 and n3 on free loopback ports, each with its own data
//	                         dir under cfg.Dir and the config's progress interval and TLS files.
//	                         RunEtcd returns once all three serve clients, MemberList reports three
//	                         voters and every node's Status names a leader; the client has all
//	                         three endpoints, so unary requests are spread round-robin over the
//	                         nodes as kube-apiserver's are (a watch stays on the node it opened on).
package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

const (
	// readyLine is what `k8sd datastore` (like etcd) prints once it serves clients.
	readyLine = "ready to serve client requests"
	// startTimeout matches upstream's wait for ReadyNotify.
	startTimeout = 60 * time.Second
	// stopTimeout bounds the SIGTERM grace period before SIGKILL.
	stopTimeout = 10 * time.Second
	// etcdDefaultProgressInterval is etcd's built-in interval when the config leaves it at 0
	// (progressReportInterval in go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc/watch.go).
	etcdDefaultProgressInterval = 10 * time.Minute
	// startAttempts retries a start that lost its auto-picked port to another process.
	startAttempts = 3
	// clusterSize is the only cluster size K8SD_TEST_CLUSTER accepts besides 1.
	clusterSize = 3
	// votersTimeout bounds the wait for a started cluster to report three voters and a leader.
	votersTimeout = 60 * time.Second
)

// clusterMode reports how many members RunEtcd starts: 1 (the default) or 3.
func clusterMode() (int, error) {
	switch v := os.Getenv("K8SD_TEST_CLUSTER"); v {
	case "", "1":
		return 1, nil
	case "3":
		return clusterSize, nil
	default:
		return 0, fmt.Errorf("K8SD_TEST_CLUSTER=%q: use 1 or 3", v)
	}
}

// getAvailablePort returns a loopback TCP port that is free at the time of the call.
func getAvailablePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("could not bind to a port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewTestConfig returns a configuration for one k8sd datastore, in etcd's config type.
// Like upstream's, it is based on embed.NewConfig(), uses a free loopback port for the client
// listener and a fresh temp dir for data, and silences logs other than errors. Only the fields
// RunEtcd reads matter: Dir, ListenClientUrls, AdvertiseClientUrls, ClientTLSInfo and the watch
// progress notify interval.
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	cfg.UnsafeNoFsync = true

	port, err := getAvailablePort()
	if err != nil {
		t.Fatal(err)
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	// k8sd has no peer listener in standalone mode; keep the fields loopback-only anyway.
	cfg.ListenPeerUrls = nil
	cfg.AdvertisePeerUrls = nil
	cfg.InitialCluster = ""

	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-server"))
	cfg.Dir = t.TempDir()
	os.Chmod(cfg.Dir, 0700)
	return cfg
}

var autoPortLock sync.Mutex

// RunEtcd starts a k8sd datastore with the provided config (or NewTestConfig(t) if nil), and
// returns a client connected to it. The server is killed when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()

	autoPick := cfg == nil
	if autoPick {
		// As upstream: while we auto-pick free ports, hold the lock until the server has bound them.
		autoPortLock.Lock()
		defer autoPortLock.Unlock()
		cfg = NewTestConfig(t)
	}

	members, err := clusterMode()
	if err != nil {
		t.Fatal(err)
	}
	var endpoints []string
	for attempt := 1; ; attempt++ {
		if members == 1 {
			err = startK8sd(t, cfg)
			endpoints = urlStrings(cfg.AdvertiseClientUrls)
		} else {
			// n2 and n3's ports and every peer port are picked afresh on each attempt; n1 keeps
			// the config's client URL, which only an auto-picked config may change.
			endpoints, err = startCluster(t, cfg)
		}
		if err == nil {
			break
		}
		if attempt == startAttempts || (!autoPick && members == 1) {
			t.Fatal(err)
		}
		t.Logf("k8sd datastore did not start (attempt %d, retrying on new ports): %v", attempt, err)
		if autoPick {
			cfg = NewTestConfig(t)
		}
	}

	tlsConfig, err := cfg.ClientTLSInfo.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}

	client, err := kubernetes.New(clientv3.Config{
		TLS:         tlsConfig,
		Endpoints:   endpoints,
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	client.KV = storagetesting.NewKVRecorder(client.KV)
	client.Kubernetes = storagetesting.NewKubernetesRecorder(client.Kubernetes)
	return client
}

// progressInterval is the interval etcd would use for cfg, as a k8sd flag value.
func progressInterval(cfg *embed.Config) string {
	d := cfg.WatchProgressNotifyInterval
	if d <= 0 {
		d = cfg.ExperimentalWatchProgressNotifyInterval
	}
	if d <= 0 {
		d = etcdDefaultProgressInterval
	}
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return fmt.Sprintf("%dms", ms)
}

func urlStrings(urls []url.URL) []string {
	s := make([]string, 0, len(urls))
	for _, u := range urls {
		s = append(s, u.String())
	}
	return s
}

func joinURLs(urls []url.URL) string { return strings.Join(urlStrings(urls), ",") }

var serverSeq atomic.Int64

// logPath names the file that keeps one server's stderr (suffix names a cluster member).
func logPath(t testing.TB, cfg *embed.Config, suffix string) string {
	name := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_")
	if len(name) > 120 {
		name = name[:120]
	}
	file := fmt.Sprintf("%s-%d%s.log", name, serverSeq.Add(1), suffix)
	if dir := os.Getenv("K8SD_SUITE_LOG_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return filepath.Join(dir, file)
		}
	}
	return filepath.Join(cfg.Dir, file)
}

// k8sdBin is $K8SD_BIN, checked.
func k8sdBin() (string, error) {
	bin := os.Getenv("K8SD_BIN")
	if bin == "" {
		return "", fmt.Errorf("K8SD_BIN is not set: point it at a k8sd binary (cargo build --release --bin k8sd)")
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("K8SD_BIN=%s: %v", bin, err)
	}
	return bin, nil
}

// tlsArgs passes the config's client TLS files on to k8sd.
func tlsArgs(cfg *embed.Config) []string {
	tls := cfg.ClientTLSInfo
	if tls.Empty() {
		return nil
	}
	args := []string{"--cert-file", tls.CertFile, "--key-file", tls.KeyFile}
	if tls.TrustedCAFile != "" {
		args = append(args, "--trusted-ca-file", tls.TrustedCAFile)
	}
	if tls.ClientCertAuth {
		args = append(args, "--client-cert-auth")
	}
	return args
}

// freeLoopback returns a loopback host:port that is free at the time of the call.
func freeLoopback() (string, error) {
	port, err := getAvailablePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// server is one running `k8sd datastore` process.
type server struct {
	name    string
	cmd     *exec.Cmd
	logFile string
	ready   chan struct{} // closed once the ready line was printed
	exited  chan error    // receives cmd.Wait()'s result once
}

// spawn starts `k8sd datastore args...`, copying its stderr into logFile.
func spawn(bin, name string, args []string, logFile string) (*server, error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, fmt.Errorf("cannot create the server log %s: %v", logFile, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	stderr, err := cmd.StderrPipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	// The server must not outlive a test binary that crashes or is killed by `go test -timeout`.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("cannot start %s: %v", bin, err)
	}
	s := &server{name: name, cmd: cmd, logFile: logFile, ready: make(chan struct{}), exited: make(chan error, 1)}

	// Copy stderr into the log, and report the ready line once.
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		r := bufio.NewReader(stderr)
		seen := false
		for {
			line, err := r.ReadString('\n')
			if len(line) > 0 {
				io.WriteString(log, line)
				if !seen && strings.Contains(line, readyLine) {
					seen = true
					close(s.ready)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		<-copied
		s.exited <- cmd.Wait()
		log.Close()
	}()
	return s, nil
}

// waitReady waits for the ready line until deadline; a server that is not ready is killed.
func (s *server) waitReady(deadline <-chan time.Time) error {
	select {
	case <-s.ready:
		return nil
	case err := <-s.exited:
		s.exited <- err
		return fmt.Errorf("k8sd datastore %s exited before it was ready (%v); its log:\n%s", s.name, err, tail(s.logFile))
	case <-deadline:
		s.kill()
		return fmt.Errorf("k8sd datastore %s took longer than %s to start; its log:\n%s", s.name, startTimeout, tail(s.logFile))
	}
}

// kill stops the server at once and waits for it.
func (s *server) kill() {
	s.cmd.Process.Kill()
	err := <-s.exited
	s.exited <- err
}

// diedEarly reports whether the server exited on its own before the test's cleanup.
func (s *server) diedEarly() (error, bool) {
	select {
	case err := <-s.exited:
		s.exited <- err
		return err, true
	default:
		return nil, false
	}
}

// stop asks the server to shut down (SIGTERM), and kills it after stopTimeout.
func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		s.exited <- err
	case <-time.After(stopTimeout):
		s.kill()
	}
}

// stopAll stops the servers that are still running, concurrently; it returns a failure message
// for each server that had exited on its own during the test.
func stopAll(servers []*server) []string {
	var died []string
	for _, s := range servers {
		if err, ok := s.diedEarly(); ok {
			died = append(died, fmt.Sprintf("k8sd datastore %s exited during the test (%v); its log:\n%s", s.name, err, tail(s.logFile)))
		}
	}
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() { defer wg.Done(); s.stop() }()
	}
	wg.Wait()
	return died
}

// registerCleanup stops the servers when the test ends, and fails the test if one of them died
// during it: that is a failure of the server, not of the test code.
func registerCleanup(t testing.TB, servers []*server) {
	t.Cleanup(func() {
		for _, msg := range stopAll(servers) {
			t.Error(msg)
		}
		if t.Failed() && os.Getenv("K8SD_SUITE_LOG_DIR") == "" {
			for _, s := range servers {
				t.Logf("k8sd datastore %s log (%s):\n%s", s.name, s.logFile, tail(s.logFile))
			}
		}
	})
}

// baseArgs are the flags every k8sd server of cfg gets.
func baseArgs(cfg *embed.Config, name, dataDir, listenURLs, advertiseURLs string) []string {
	args := []string{
		"datastore",
		"--name", name,
		"--data-dir", dataDir,
		"--listen-client-urls", listenURLs,
		"--advertise-client-urls", advertiseURLs,
		"--watch-progress-notify-interval", progressInterval(cfg),
		"--log-level", "warn",
	}
	return append(args, tlsArgs(cfg)...)
}

// startK8sd starts `k8sd datastore` for cfg, waits until it is ready, and registers its cleanup.
func startK8sd(t testing.TB, cfg *embed.Config) error {
	bin, err := k8sdBin()
	if err != nil {
		return err
	}
	args := baseArgs(cfg, cfg.Name, filepath.Join(cfg.Dir, "k8sd"), joinURLs(cfg.ListenClientUrls), joinURLs(cfg.AdvertiseClientUrls))
	// K8SD_TEST_RAFT=1: the server is a Raft member (a cluster of one) rather than standalone.
	if os.Getenv("K8SD_TEST_RAFT") == "1" {
		peer, err := freeLoopback()
		if err != nil {
			return fmt.Errorf("cannot pick a peer port: %v", err)
		}
		args = append(args, "--listen-peer-urls", "http://"+peer)
	}
	s, err := spawn(bin, cfg.Name, args, logPath(t, cfg, ""))
	if err != nil {
		return err
	}
	if err := s.waitReady(time.After(startTimeout)); err != nil {
		return err
	}
	registerCleanup(t, []*server{s})
	return nil
}

// startCluster starts a 3-node k8sd cluster for cfg (n1 on the config's client URL), waits
// until every node serves clients and the cluster reports three voters and a leader, registers
// its cleanup, and returns the client URLs of all three nodes.
func startCluster(t testing.TB, cfg *embed.Config) ([]string, error) {
	bin, err := k8sdBin()
	if err != nil {
		return nil, err
	}
	if len(cfg.ListenClientUrls) == 0 {
		return nil, fmt.Errorf("the config has no client URL")
	}
	first := cfg.ListenClientUrls[0]
	if len(cfg.AdvertiseClientUrls) > 0 {
		first = cfg.AdvertiseClientUrls[0]
	}
	names := make([]string, clusterSize)
	clientURLs := make([]string, clusterSize)
	peers := make([]string, clusterSize)
	initial := make([]string, clusterSize)
	for i := range clusterSize {
		names[i] = fmt.Sprintf("n%d", i+1)
		if i == 0 {
			clientURLs[i] = first.String()
		} else {
			hp, err := freeLoopback()
			if err != nil {
				return nil, err
			}
			clientURLs[i] = (&url.URL{Scheme: first.Scheme, Host: hp}).String()
		}
		hp, err := freeLoopback()
		if err != nil {
			return nil, err
		}
		peers[i] = "http://" + hp
		initial[i] = names[i] + "=" + peers[i]
	}

	var servers []*server
	fail := func(err error) ([]string, error) {
		stopAll(servers)
		return nil, err
	}
	for i := range clusterSize {
		args := baseArgs(cfg, names[i], filepath.Join(cfg.Dir, "k8sd-"+names[i]), clientURLs[i], clientURLs[i])
		args = append(args,
			"--listen-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","),
		)
		s, err := spawn(bin, names[i], args, logPath(t, cfg, "-"+names[i]))
		if err != nil {
			return fail(err)
		}
		servers = append(servers, s)
	}
	deadline := time.After(startTimeout)
	for _, s := range servers {
		if err := s.waitReady(deadline); err != nil {
			return fail(err)
		}
	}
	if err := waitForVoters(cfg, clientURLs, servers); err != nil {
		return fail(err)
	}
	registerCleanup(t, servers)
	return clientURLs, nil
}

// waitForVoters polls the cluster through an etcd client until MemberList (asked of every
// node) reports clusterSize members, none of them a learner, and every node's Status names a
// leader, all the same one.
func waitForVoters(cfg *embed.Config, endpoints []string, servers []*server) error {
	tlsConfig, err := cfg.ClientTLSInfo.ClientConfig()
	if err != nil {
		return err
	}
	c, err := clientv3.New(clientv3.Config{
		TLS:         tlsConfig,
		Endpoints:   endpoints,
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("cannot create a client for the cluster: %v", err)
	}
	defer c.Close()

	check := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var leader uint64
		for _, ep := range endpoints {
			st, err := c.Status(ctx, ep)
			if err != nil {
				return fmt.Sprintf("Status(%s): %v", ep, err)
			}
			if st.Leader == 0 {
				return fmt.Sprintf("Status(%s) reports no leader", ep)
			}
			if leader != 0 && st.Leader != leader {
				return fmt.Sprintf("Status(%s) reports leader %x, another node %x", ep, st.Leader, leader)
			}
			leader = st.Leader
			if st.IsLearner {
				return fmt.Sprintf("Status(%s) reports a learner", ep)
			}
		}
		ml, err := c.MemberList(ctx)
		if err != nil {
			return fmt.Sprintf("MemberList: %v", err)
		}
		voters := 0
		for _, m := range ml.Members {
			if !m.IsLearner {
				voters++
			}
		}
		if len(ml.Members) != clusterSize || voters != clusterSize {
			return fmt.Sprintf("MemberList reports %d members, %d of them voters", len(ml.Members), voters)
		}
		return ""
	}

	deadline := time.Now().Add(votersTimeout)
	for {
		why := check()
		if why == "" {
			return nil
		}
		for _, s := range servers {
			if err, died := s.diedEarly(); died {
				return fmt.Errorf("k8sd datastore %s exited while the cluster formed (%v); its log:\n%s", s.name, err, tail(s.logFile))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster did not report %d voters and a leader within %s: %s", clusterSize, votersTimeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail returns the last lines of a server log for failure messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
