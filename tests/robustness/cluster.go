package main

// The cluster under test: three `k8sd datastore` processes, each in its own network namespace
// (created by run.sh), talking https to each other (peer mutual TLS) and to the clients. This
// file owns the processes, the certificates and the faults (kill -9, iptables partitions).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

type node struct {
	name   string
	netns  string // /run/netns/<netns>
	ip     string
	dir    string // data dir
	starts int
	cmd    *exec.Cmd
	exited chan struct{}
	log    string // current log file
}

func (n *node) clientURL() string { return "https://" + net.JoinHostPort(n.ip, "2379") }
func (n *node) peerURL() string   { return "https://" + net.JoinHostPort(n.ip, "2380") }

type cluster struct {
	bin   string
	dir   string
	flags []string
	nodes []*node
	tls   *tls.Config // for clients

	mu sync.Mutex
}

// newCluster prepares data dirs and certificates; start() launches the members.
func newCluster(bin, dir string, netns []string, ips []string, flags []string) (*cluster, error) {
	c := &cluster{bin: bin, dir: dir, flags: flags}
	for i := range netns {
		c.nodes = append(c.nodes, &node{
			name:  fmt.Sprintf("n%d", i+1),
			netns: netns[i],
			ip:    ips[i],
			dir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
		})
	}
	if err := c.makePKI(); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	return c, nil
}

// makePKI writes a CA and one certificate per member (IP SAN, server and client usage: the
// same certificate serves clients and authenticates the member to its peers).
func (c *cluster) makePKI() error {
	pki := filepath.Join(c.dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "k8sd-robustness-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(pki, "ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, n := range c.nodes {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: n.name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses:  []net.IP{net.ParseIP(n.ip)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(pki, n.name+".crt"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(pki, n.name+".key"), "PRIVATE KEY", kder); err != nil {
			return err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	c.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func (c *cluster) args(n *node) []string {
	pki := filepath.Join(c.dir, "pki")
	var ic []string
	for _, m := range c.nodes {
		ic = append(ic, m.name+"="+m.peerURL())
	}
	a := []string{
		"--net=/run/netns/" + n.netns, "--", c.bin, "datastore",
		"--name=" + n.name,
		"--data-dir=" + n.dir,
		"--listen-client-urls=" + n.clientURL(),
		"--cert-file=" + filepath.Join(pki, n.name+".crt"),
		"--key-file=" + filepath.Join(pki, n.name+".key"),
		"--listen-peer-urls=" + n.peerURL(),
		"--initial-cluster=" + strings.Join(ic, ","),
		"--peer-cert-file=" + filepath.Join(pki, n.name+".crt"),
		"--peer-key-file=" + filepath.Join(pki, n.name+".key"),
		"--peer-trusted-ca-file=" + filepath.Join(pki, "ca.crt"),
	}
	return append(a, c.flags...)
}

// spawn starts member i (fresh or after a kill) on its data dir; nsenter execs k8sd, so the
// process we hold is k8sd itself and kill -9 reaches it.
func (c *cluster) spawn(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.cmd != nil {
		return fmt.Errorf("%s is already running", n.name)
	}
	n.starts++
	n.log = filepath.Join(c.dir, "logs", fmt.Sprintf("%s-%03d.log", n.name, n.starts))
	if err := os.MkdirAll(filepath.Dir(n.log), 0o755); err != nil {
		return err
	}
	f, err := os.Create(n.log)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("nsenter", c.args(n)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	go func(ch chan struct{}) { _ = cmd.Wait(); close(ch) }(n.exited)
	return nil
}

// waitReady waits for the member's "ready to serve client requests" line.
func (c *cluster) waitReady(i int, timeout time.Duration) error {
	n := c.nodes[i]
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(n.log)
		if strings.Contains(string(b), "ready to serve client requests") {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("%s exited before it was ready; log %s:\n%s", n.name, n.log, tail(string(b), 2000))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready within %v (log %s)", n.name, timeout, n.log)
}

// kill9 sends SIGKILL to member i and reaps it; its data dir stays.
func (c *cluster) kill9(i int) {
	c.mu.Lock()
	n := c.nodes[i]
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// running reports whether member i is alive; an unexpected exit is a failure of the run.
func (c *cluster) unexpectedExit() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		select {
		case <-n.exited:
			b, _ := os.ReadFile(n.log)
			return fmt.Errorf("%s exited by itself (%v); log %s:\n%s", n.name, n.cmd.ProcessState, n.log, tail(string(b), 3000))
		default:
		}
	}
	return nil
}

func (c *cluster) stopAll() {
	for i := range c.nodes {
		c.kill9(i)
	}
}

// iptables runs iptables in member i's network namespace.
func (c *cluster) iptables(i int, args ...string) error {
	a := append([]string{"--net=/run/netns/" + c.nodes[i].netns, "--", "iptables", "-w", "5"}, args...)
	out, err := exec.Command("nsenter", a...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %v in %s: %v: %s", args, c.nodes[i].netns, err, out)
	}
	return nil
}

// isolate drops all traffic between member i and the other members, both ways, in i's own
// namespace. Clients (on the bridge address) still reach it: a minority member must refuse
// what it cannot serve.
func (c *cluster) isolate(i int) error {
	for j, m := range c.nodes {
		if j == i {
			continue
		}
		if err := c.iptables(i, "-A", "INPUT", "-s", m.ip, "-j", "DROP"); err != nil {
			return err
		}
		if err := c.iptables(i, "-A", "OUTPUT", "-d", m.ip, "-j", "DROP"); err != nil {
			return err
		}
	}
	return nil
}

func (c *cluster) heal(i int) error {
	if err := c.iptables(i, "-F", "INPUT"); err != nil {
		return err
	}
	return c.iptables(i, "-F", "OUTPUT")
}

func (c *cluster) endpoints() []string {
	var e []string
	for _, n := range c.nodes {
		e = append(e, n.clientURL())
	}
	return e
}

// client is an etcd client for the given endpoints.
func (c *cluster) client(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  c.tls,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
		// Reconnect quickly to a restarted member (gRPC's default backoff grows to minutes).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	})
}

type memberStatus struct {
	id, leader, term, raftIndex, applied uint64
	revision                             int64
}

// statuses asks every member for its status; a member that does not answer gets ok=false.
func (c *cluster) statuses(ctx context.Context, cls []*clientv3.Client) ([]memberStatus, []bool) {
	st := make([]memberStatus, len(c.nodes))
	ok := make([]bool, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			r, err := cls[i].Status(cctx, n.clientURL())
			if err != nil {
				return
			}
			st[i] = memberStatus{id: r.Header.MemberId, leader: r.Leader, term: r.RaftTerm, raftIndex: r.RaftIndex, applied: r.RaftAppliedIndex, revision: r.Header.Revision}
			ok[i] = true
		}()
	}
	wg.Wait()
	return st, ok
}

// healthy returns the index of the leader once every member answers and all agree on it.
func (c *cluster) healthy(ctx context.Context, cls []*clientv3.Client, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		st, ok := c.statuses(ctx, cls)
		last = fmt.Sprintf("%+v %v", st, ok)
		agreed := true
		for i := range st {
			if !ok[i] || st[i].leader == 0 || st[i].leader != st[0].leader {
				agreed = false
			}
		}
		if agreed {
			for i := range st {
				if st[i].id == st[0].leader {
					return i, nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1, fmt.Errorf("cluster not healthy within %v: %s", timeout, last)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// starts is how many times member i has been started (a restart changes it).
func (c *cluster) starts(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].starts
}

func (c *cluster) isRunning(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].cmd != nil
}
