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
package testserver

import (
	"bufio"
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
)

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

	var err error
	for attempt := 1; ; attempt++ {
		err = startK8sd(t, cfg)
		if err == nil {
			break
		}
		// Only an auto-picked port can be re-picked; a caller's explicit config is theirs.
		if !autoPick || attempt == startAttempts {
			t.Fatal(err)
		}
		t.Logf("k8sd datastore did not start (attempt %d, retrying on a new port): %v", attempt, err)
		cfg = NewTestConfig(t)
	}

	tlsConfig, err := cfg.ClientTLSInfo.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}

	endpoints := make([]string, 0, len(cfg.AdvertiseClientUrls))
	for _, u := range cfg.AdvertiseClientUrls {
		endpoints = append(endpoints, u.String())
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

func joinURLs(urls []url.URL) string {
	s := make([]string, 0, len(urls))
	for _, u := range urls {
		s = append(s, u.String())
	}
	return strings.Join(s, ",")
}

var serverSeq atomic.Int64

// logPath names the file that keeps one server's stderr.
func logPath(t testing.TB, cfg *embed.Config) string {
	name := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_")
	if len(name) > 120 {
		name = name[:120]
	}
	file := fmt.Sprintf("%s-%d.log", name, serverSeq.Add(1))
	if dir := os.Getenv("K8SD_SUITE_LOG_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return filepath.Join(dir, file)
		}
	}
	return filepath.Join(cfg.Dir, file)
}

// startK8sd starts `k8sd datastore` for cfg, waits until it is ready, and registers its cleanup.
func startK8sd(t testing.TB, cfg *embed.Config) error {
	bin := os.Getenv("K8SD_BIN")
	if bin == "" {
		return fmt.Errorf("K8SD_BIN is not set: point it at a k8sd binary (cargo build --release --bin k8sd)")
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("K8SD_BIN=%s: %v", bin, err)
	}

	dataDir := filepath.Join(cfg.Dir, "k8sd")
	args := []string{
		"datastore",
		"--name", cfg.Name,
		"--data-dir", dataDir,
		"--listen-client-urls", joinURLs(cfg.ListenClientUrls),
		"--advertise-client-urls", joinURLs(cfg.AdvertiseClientUrls),
		"--watch-progress-notify-interval", progressInterval(cfg),
		"--log-level", "warn",
	}
	// K8SD_TEST_RAFT=1: the server is a Raft member (a cluster of one) rather than standalone.
	if os.Getenv("K8SD_TEST_RAFT") == "1" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("cannot pick a peer port: %v", err)
		}
		peer := l.Addr().String()
		l.Close()
		args = append(args, "--listen-peer-urls", "http://"+peer)
	}
	if tls := cfg.ClientTLSInfo; !tls.Empty() {
		args = append(args, "--cert-file", tls.CertFile, "--key-file", tls.KeyFile)
		if tls.TrustedCAFile != "" {
			args = append(args, "--trusted-ca-file", tls.TrustedCAFile)
		}
		if tls.ClientCertAuth {
			args = append(args, "--client-cert-auth")
		}
	}

	logFile := logPath(t, cfg)
	log, err := os.Create(logFile)
	if err != nil {
		return fmt.Errorf("cannot create the server log %s: %v", logFile, err)
	}

	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	stderr, err := cmd.StderrPipe()
	if err != nil {
		log.Close()
		return err
	}
	// The server must not outlive a test binary that crashes or is killed by `go test -timeout`.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("cannot start %s: %v", bin, err)
	}

	// Copy stderr into the log, and report the ready line once.
	ready := make(chan struct{})
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
					close(ready)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-copied
		exited <- cmd.Wait()
		log.Close()
	}()

	select {
	case <-ready:
	case err := <-exited:
		return fmt.Errorf("k8sd datastore exited before it was ready (%v); its log:\n%s", err, tail(logFile))
	case <-time.After(startTimeout):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("k8sd datastore took longer than %s to start; its log:\n%s", startTimeout, tail(logFile))
	}

	t.Cleanup(func() {
		select {
		case err := <-exited:
			// It died during the test: that is a failure of the server, not of the test code.
			t.Errorf("k8sd datastore exited during the test (%v); its log:\n%s", err, tail(logFile))
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() && os.Getenv("K8SD_SUITE_LOG_DIR") == "" {
			t.Logf("k8sd datastore log (%s):\n%s", logFile, tail(logFile))
		}
	})
	return nil
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
