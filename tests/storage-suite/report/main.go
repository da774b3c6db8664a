// Command report reads the `go test -json` stream of Kubernetes' storage tests run against k8sd
// and summarises it. run.sh uses it in two modes:
//
//	report stream  -json FILE               copy stdin to FILE, print package results and failures live
//	report summary -json FILE [-md OUT ...]  count results, write the Markdown report, print the totals
//
// Counting: a "test" is a top-level Test function of a package; its subtests are counted apart.
// A package that fails without a failing test (a build error, a panic outside a test, a timeout)
// counts as one failed test named after the package, so that it can never pass silently.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type result struct {
	pkg, name string
	action    string // pass, fail, skip, or "" when the run never finished
	elapsed   float64
	output    []string
}

func (r *result) top() bool { return !strings.Contains(r.name, "/") }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: report stream|summary [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "stream":
		err = stream(os.Args[2:])
	case "summary":
		err = summary(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: use stream or summary", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// stream copies the JSON stream to a file and prints a short live view of it.
func stream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	out := fs.String("json", "", "file to write the raw go test -json stream to")
	fs.Parse(args)
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		f.Write(line)
		f.Write([]byte("\n"))
		var e event
		if json.Unmarshal(line, &e) != nil {
			// Not JSON: go test's own errors (for example a build failure) pass through.
			fmt.Println(string(line))
			continue
		}
		switch {
		case e.Test == "" && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
			fmt.Printf("%-4s %s (%.1fs)\n", strings.ToUpper(e.Action), e.Package, e.Elapsed)
		case e.Test != "" && e.Action == "fail":
			fmt.Printf("     --- FAIL %s %s (%.1fs)\n", short(e.Package), e.Test, e.Elapsed)
		case e.Test == "" && e.Action == "output" && strings.Contains(e.Output, "build failed"):
			fmt.Print(e.Output)
		}
	}
	return sc.Err()
}

func short(pkg string) string { return strings.TrimPrefix(pkg, "k8s.io/apiserver/") }

type pkgResult struct {
	name    string
	action  string
	elapsed float64
	output  []string
}

type run struct {
	tests map[string]*result // key: pkg + " " + test
	order []string
	pkgs  map[string]*pkgResult
	pkgOr []string
}

func parse(path string) (*run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &run{tests: map[string]*result{}, pkgs: map[string]*pkgResult{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Package == "" {
			continue
		}
		p := r.pkgs[e.Package]
		if p == nil {
			p = &pkgResult{name: e.Package}
			r.pkgs[e.Package] = p
			r.pkgOr = append(r.pkgOr, e.Package)
		}
		if e.Test == "" {
			switch e.Action {
			case "pass", "fail", "skip":
				p.action, p.elapsed = e.Action, e.Elapsed
			case "output":
				p.output = append(p.output, e.Output)
			}
			continue
		}
		key := e.Package + " " + e.Test
		t := r.tests[key]
		if t == nil {
			t = &result{pkg: e.Package, name: e.Test}
			r.tests[key] = t
			r.order = append(r.order, key)
		}
		switch e.Action {
		case "pass", "fail", "skip":
			t.action, t.elapsed = e.Action, e.Elapsed
		case "output":
			t.output = append(t.output, e.Output)
		}
	}
	return r, sc.Err()
}

// message is the test's own output without go test's framing lines.
// test2json splits long lines into several events, so the chunks are joined before splitting.
func message(chunks []string, max int) []string {
	var msg []string
	for _, l := range strings.Split(strings.Join(chunks, ""), "\n") {
		trimmed := strings.TrimSpace(l)
		if trimmed == "" || strings.HasPrefix(trimmed, "=== ") || strings.HasPrefix(trimmed, "--- ") {
			continue
		}
		msg = append(msg, strings.TrimRight(l, "\n"))
		if len(msg) == max {
			break
		}
	}
	return msg
}

var fileLine = regexp.MustCompile(`^([A-Za-z0-9_]+\.go):([0-9]+):\s*(.*)$`)

// skipReason is the t.Skip message: the output line that carries a file:line prefix. A bare
// t.Skip() has no message, so the reason is the condition guarding it in the upstream source.
func skipReason(lines []string, src string) string {
	msg := message(lines, 1000)
	for i := len(msg) - 1; i >= 0; i-- {
		s := strings.TrimSpace(msg[i])
		m := fileLine.FindStringSubmatch(s)
		if m == nil {
			continue
		}
		if m[3] != "" {
			return "`" + s + "`"
		}
		n, _ := strconv.Atoi(m[2])
		if cond := guardOf(src, m[1], n); cond != "" {
			return fmt.Sprintf("bare `t.Skip()` at %s:%s under `%s`", m[1], m[2], cond)
		}
		return fmt.Sprintf("bare `t.Skip()` at %s:%s", m[1], m[2])
	}
	if len(msg) > 0 {
		return strings.TrimSpace(msg[len(msg)-1])
	}
	return "(no reason given)"
}

// errorLines keeps the lines a failure is about: t.Error/t.Fatal lines (with a file:line prefix)
// and what follows them, skipping the apiserver's klog noise.
func errorLines(lines []string, max int) []string {
	var out []string
	for _, l := range message(lines, 100000) {
		s := strings.TrimSpace(l)
		if len(s) > 0 && (s[0] == 'I' || s[0] == 'W' || s[0] == 'E') && len(s) > 5 && s[1] >= '0' && s[1] <= '9' {
			continue // klog line (I0102 15:04:05...)
		}
		if strings.HasPrefix(s, "logger.go:") {
			continue // zaptest client logs
		}
		if len(s) > 600 {
			s = s[:600] + " …"
		}
		out = append(out, s)
		if len(out) == max {
			break
		}
	}
	return out
}

// guardOf returns the nearest `if` line above line n of the upstream file named base.
func guardOf(src, base string, n int) string {
	if src == "" {
		return ""
	}
	var path string
	filepath.WalkDir(filepath.Join(src, "pkg", "storage"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && path == "" && !d.IsDir() && d.Name() == base {
			path = p
		}
		return nil
	})
	b, err := os.ReadFile(path)
	if path == "" || err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	for i := n - 2; i >= 0 && i >= n-6 && i < len(lines); i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, "if ") {
			return strings.TrimSuffix(strings.TrimSpace(strings.TrimPrefix(l, "if ")), " {")
		}
	}
	return ""
}

type counts struct{ run, pass, fail, skip int }

func (c *counts) add(action string) {
	c.run++
	switch action {
	case "pass":
		c.pass++
	case "skip":
		c.skip++
	default:
		c.fail++
	}
}

func summary(args []string) error {
	fs := flag.NewFlagSet("summary", flag.ExitOnError)
	in := fs.String("json", "", "go test -json output")
	md := fs.String("md", "", "write the Markdown report here")
	apiserver := fs.String("apiserver", "", "k8s.io/apiserver version")
	kube := fs.String("kube", "", "pinned Kubernetes version")
	commit := fs.String("commit", "", "k8sd commit")
	goVersion := fs.String("go", "", "go version")
	compile := fs.String("compile-time", "", "compile wall time")
	runTime := fs.String("run-time", "", "run wall time")
	patches := fs.String("patches", "", "file listing the patches applied to upstream tests")
	cmdline := fs.String("command", "", "the command that regenerates the report")
	src := fs.String("src", "", "the upstream module copy the tests ran from (to explain bare skips)")
	cluster := fs.Int("cluster", 1, "nodes the tests ran against: 1 writes the report, keeping an existing 3-node section; 3 writes or replaces that section only")
	fs.Parse(args)
	if *cluster != 1 && *cluster != 3 {
		return fmt.Errorf("-cluster %d: use 1 or 3", *cluster)
	}

	r, err := parse(*in)
	if err != nil {
		return err
	}
	if len(r.pkgOr) == 0 {
		return fmt.Errorf("%s has no test events: did go test run at all?", *in)
	}

	var top, sub counts
	perPkg := map[string]*counts{}
	var failed, skipped []*result
	for _, key := range r.order {
		t := r.tests[key]
		if t.top() {
			top.add(t.action)
			if perPkg[t.pkg] == nil {
				perPkg[t.pkg] = &counts{}
			}
			perPkg[t.pkg].add(t.action)
		} else {
			sub.add(t.action)
		}
		if t.action == "skip" {
			skipped = append(skipped, t)
		}
		if t.action != "pass" && t.action != "skip" {
			failed = append(failed, t)
		}
	}
	// A package that failed without any failing test failed outside the tests.
	var brokenPkgs []*pkgResult
	for _, name := range r.pkgOr {
		p := r.pkgs[name]
		anyFailed := perPkg[name] != nil && perPkg[name].fail > 0
		if p.action != "pass" && p.action != "skip" && !anyFailed {
			brokenPkgs = append(brokenPkgs, p)
			top.run++
			top.fail++
		}
	}

	if *md != "" {
		// The single-node report is the file; the 3-node report is a second section at its end,
		// after clusterMarker. Each run rewrites its own part and keeps the other.
		old, err := os.ReadFile(*md)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		single, clusterPart := string(old), ""
		// The robustness section (tests/robustness/run.sh --report) ends the file; keep it.
		robustness := ""
		if i := strings.Index(single, robustnessMarker); i >= 0 {
			single, robustness = single[:i], single[i:]
		}
		if i := strings.Index(single, clusterMarker); i >= 0 {
			single, clusterPart = single[:i], single[i:]
		}
		var b strings.Builder
		writeReport(&b, r, reportInfo{*apiserver, *kube, *commit, *goVersion, *compile, *runTime, *patches, *cmdline, *src, *cluster},
			top, sub, perPkg, failed, skipped, brokenPkgs)
		var out string
		if *cluster == 1 {
			out = b.String()
			if clusterPart != "" {
				out = strings.TrimRight(out, "\n") + "\n\n" + clusterPart
			}
		} else {
			if strings.TrimSpace(single) == "" {
				single = "# Compatibility: Kubernetes storage tests against k8sd\n\n(No single-node report yet: run `tests/storage-suite/run.sh --report`.)\n"
			}
			out = strings.TrimRight(single, "\n") + "\n\n" + b.String()
		}
		if robustness != "" {
			out = strings.TrimRight(out, "\n") + "\n\n" + robustness
		}
		if err := os.WriteFile(*md, []byte(out), 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", *md)
	}

	for _, t := range failed {
		fmt.Printf("FAIL %s %s\n", short(t.pkg), t.name)
	}
	for _, p := range brokenPkgs {
		fmt.Printf("FAIL %s (package: %s)\n", short(p.name), firstOr(errorLines(p.output, 1), "no result"))
	}
	fmt.Printf("%d tests and %d subtests skipped (reasons in docs/compatibility.md)\n", top.skip, sub.skip)
	fmt.Printf("%d passed, %d failed\n", top.pass, top.fail)
	if top.fail > 0 {
		os.Exit(1)
	}
	return nil
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

type reportInfo struct {
	apiserver, kube, commit, goVersion, compile, run, patches, command, src string
	cluster                                                                 int
}

// robustnessMarker starts the section tests/robustness/run.sh --report owns, at the end of
// docs/compatibility.md.
const robustnessMarker = "<!-- robustness section -->"

// clusterMarker starts the 3-node section of docs/compatibility.md.
const clusterMarker = "<!-- 3-node section -->"

func writeReport(w io.Writer, r *run, info reportInfo, top, sub counts, perPkg map[string]*counts,
	failed, skipped []*result, broken []*pkgResult) {
	// Inside the 3-node section every heading is one level deeper than in the single-node report.
	demote := false
	p := func(format string, a ...any) {
		if demote && strings.HasPrefix(format, "#") {
			format = "#" + format
		}
		fmt.Fprintf(w, format, a...)
	}
	if info.cluster == 1 {
		p("# Compatibility: Kubernetes storage tests against k8sd\n\n")
		p("<!-- Generated by `%s`; do not edit by hand. -->\n\n", info.command)
		p("Kubernetes' own etcd3 storage tests (`k8s.io/apiserver@%s`, the version matching the pinned Kubernetes %s)\n", info.apiserver, info.kube)
		p("run against a single-node `k8sd datastore`: `pkg/storage/etcd3/testserver` is replaced by\n")
		p("`tests/storage-suite/testserver/test_server.go`, which starts k8sd on a fresh data dir and a loopback port per test.\n")
		p("Feature gates are Kubernetes' defaults.\n\n")
	} else {
		p("%s\n\n", clusterMarker)
		p("## 3-node cluster\n\n")
		demote = true
		p("<!-- Generated by `%s`; do not edit by hand. -->\n\n", info.command)
		p("The same tests (`k8s.io/apiserver@%s`, Kubernetes %s) against a 3-node Raft cluster of `k8sd datastore`\n", info.apiserver, info.kube)
		p("per test (`K8SD_TEST_CLUSTER=3`): fresh data dirs and loopback ports, every node on the test's watch progress interval;\n")
		p("the test starts once MemberList reports three voters and every node names the leader. The client has all three\n")
		p("endpoints, so unary requests are spread round-robin over the nodes, as kube-apiserver's are, and a watch stays on\n")
		p("the node it opened on. Feature gates are Kubernetes' defaults.\n\n")
	}
	p("- k8sd commit: `%s`\n- Go: `%s`\n", info.commit, info.goVersion)
	p("- Wall clock: compiling the test binaries %s (with the Go build cache as found), running them %s\n", info.compile, info.run)
	p("- Regenerate: `%s`\n\n", info.command)

	p("## Totals\n\n")
	p("| | run | passed | failed | skipped |\n|---|---:|---:|---:|---:|\n")
	p("| top-level tests | %d | %d | %d | %d |\n", top.run, top.pass, top.fail, top.skip)
	p("| subtests | %d | %d | %d | %d |\n\n", sub.run, sub.pass, sub.fail, sub.skip)

	p("| package | result | tests | passed | failed | skipped | time |\n|---|---|---:|---:|---:|---:|---:|\n")
	pkgs := append([]string(nil), r.pkgOr...)
	sort.Strings(pkgs)
	for _, name := range pkgs {
		pr := r.pkgs[name]
		c := perPkg[name]
		if c == nil {
			c = &counts{}
		}
		action := pr.action
		if action == "" {
			action = "no result"
		}
		if c.run == 0 && action == "skip" {
			action = "no tests"
		}
		p("| `%s` | %s | %d | %d | %d | %d | %.1fs |\n", short(name), action, c.run, c.pass, c.fail, c.skip, pr.elapsed)
	}
	p("\n")

	p("## Patches to upstream tests\n\n")
	if b, err := os.ReadFile(info.patches); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		p("%s\n\n", strings.TrimSpace(string(b)))
	} else {
		p("None. Only `pkg/storage/etcd3/testserver/test_server.go` is replaced; no test file is changed.\n\n")
	}

	p("## Failures\n\n")
	if len(failed) == 0 && len(broken) == 0 {
		p("None.\n\n")
	}
	for _, b := range broken {
		p("### package `%s`\n\n```\n%s\n```\n\n", short(b.name), strings.Join(errorLines(b.output, 15), "\n"))
	}
	for _, t := range failed {
		state := "failed"
		if t.action == "" {
			state = "did not finish"
		}
		p("### `%s` %s (%s, %.1fs)\n\n", t.name, state, short(t.pkg), t.elapsed)
		lines := errorLines(t.output, 12)
		if len(lines) > 0 {
			p("```\n%s\n```\n\n", strings.Join(lines, "\n"))
		} else if t.top() {
			p("(see its failing subtests)\n\n")
		}
	}

	sort.Slice(skipped, func(i, j int) bool {
		return skipped[i].pkg+" "+skipped[i].name < skipped[j].pkg+" "+skipped[j].name
	})
	p("## Skipped\n\n")
	if len(skipped) == 0 {
		p("None.\n\n")
	} else {
		p("A bare `t.Skip()` has no message; its reason is the condition that guards it upstream.\n\n")
		p("| package | test | reason |\n|---|---|---|\n")
		for _, t := range skipped {
			p("| `%s` | `%s` | %s |\n", short(t.pkg), t.name, mdCell(skipReason(t.output, info.src)))
		}
		p("\n")
	}

	// Sorted and without timings, so that a rerun only changes the lines whose result changed.
	p("## All top-level tests\n\n")
	p("| package | test | result |\n|---|---|---|\n")
	keys := append([]string(nil), r.order...)
	sort.Strings(keys)
	for _, key := range keys {
		t := r.tests[key]
		if !t.top() {
			continue
		}
		action := t.action
		if action == "" {
			action = "did not finish"
		}
		p("| `%s` | `%s` | %s |\n", short(t.pkg), t.name, action)
	}
}

func mdCell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
