package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// output is go test -bench output as a run prints it (lines of a real
// run; SSHFanout without parallel-ssh and ansible installed).
const output = `goos: linux
goarch: amd64
pkg: github.com/orchestra-fleet/orchestra/executor
cpu: Intel(R) Xeon(R) Processor
BenchmarkFIFOLocal-2   	       1	   4150541 ns/op	        85.06 %raw	   2241450 orchestra-ns/op	   1906680 raw-ns/op
BenchmarkSSHFanout-2   	       1	11743068486 ns/op	       736.2 cold-ms	       112.1 raw-session-ms	       154.1 warm-ms	         1.375 warm/raw
    bench_test.go:120: parallel-ssh is not installed
PASS
pkg: github.com/orchestra-fleet/orchestra/gateway
BenchmarkHTTPWrite/baseline=in-process-2         	       1	   1637584 ns/op	        NaN %raw	   1442350 orchestra-ns/op	    193257 raw-ns/op
--- BENCH: BenchmarkHTTPWrite/baseline=in-process-2
    bench_test.go:99: a log line of a benchmark
BenchmarkApply1000-2                             	       1	  90915966 ns/op	        26.97 %raw	  71603816 orchestra-ns/op	  19308628 raw-ns/op
pkg: github.com/orchestra-fleet/orchestra/infra/siterunner
BenchmarkSiteStart-2   	       3	 400000000 ns/op	        93.90 overhead-p50-ms	         0.02000 raw-pubsub-p50-ms	       149.8 run-p50-ms
pkg: github.com/orchestra-fleet/orchestra/cmd/orchestra
BenchmarkSustainedChanges-2   	       1	9502261823 ns/op	       394.6 accepted-changes/s	       214.2 changes/s	     42356 raw-publishes/s
BenchmarkMemory/logs=1M-2         	       1	4208378063 ns/op	        80.5 orchestra-MiB	        96 orchestra-peak-MiB	        40.25 raw-MiB	        48 raw-peak-MiB
ok  	github.com/orchestra-fleet/orchestra/cmd/orchestra	13.886s
`

func rowOf(t *testing.T, rs []row, key string) row {
	t.Helper()
	for _, r := range rs {
		if r.Key == key {
			return r
		}
	}
	t.Fatalf("no row %s", key)
	return row{}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

func TestRowsFromOutput(t *testing.T) {
	b, err := parse([]byte(output))
	if err != nil {
		t.Fatal(err)
	}
	if got := b["BenchmarkMemory/logs=1M"]["package"]; got != "github.com/orchestra-fleet/orchestra/cmd/orchestra" {
		t.Errorf("package of BenchmarkMemory/logs=1M: %v", got)
	}
	if got := b["BenchmarkSiteStart"]["iterations"]; got != 3 {
		t.Errorf("iterations of BenchmarkSiteStart: %v", got)
	}
	rs := rows(b)
	if len(rs) != len(figures) {
		t.Fatalf("%d rows for %d figures", len(rs), len(figures))
	}
	for _, c := range []struct {
		key             string
		kind            string
		ours, raw, cost float64
	}{
		{"fifo-local", "time", 2241450e-9, 1906680e-9, 2241450.0 / 1906680},
		// milliseconds beside microseconds
		{"site-overhead", "time", 93.90e-3, 20e-6, 93.90e-3 / 20e-6},
		// a rate: the cost is raw's rate over Orchestra's
		{"sustained-changes", "rate", 214.2, 42356, 42356 / 214.2},
		{"rss-1m-logs", "memory", 80.5, 40.25, 2},
	} {
		r := rowOf(t, rs, c.key)
		if r.Missed != "" || r.Kind != c.kind || !near(r.Ours, c.ours) || !near(r.RawValue, c.raw) || !near(r.Cost, c.cost) {
			t.Errorf("%s: %+v, want %s %g %g cost %g", c.key, r, c.kind, c.ours, c.raw, c.cost)
		}
	}
	// A sub-benchmark's name with dashes loses only its -GOMAXPROCS; a
	// NaN is left out (JSON has none).
	if m := b["BenchmarkHTTPWrite/baseline=in-process"]; m == nil || m["orchestra-ns/op"] != 1442350.0 || m["%raw"] != nil {
		t.Errorf("BenchmarkHTTPWrite/baseline=in-process: %v", m)
	}
	if r := rowOf(t, rs, "site-overhead"); r.Target != "≤ 100 ms" || r.Met == nil || !*r.Met {
		t.Errorf("site overhead of 93.9 ms against ≤ 100 ms: %+v", r)
	}
	if r := rowOf(t, rs, "apply-1000"); r.Target != "≤ 1.25×" || r.Met == nil || *r.Met {
		t.Errorf("apply of 1000 at 3.7× against ≤ 1.25×: %+v", r)
	}
	if r := rowOf(t, rs, "fifo-local"); r.Target != "" || r.Met != nil {
		t.Errorf("a figure without a target: %+v", r)
	}
	if r := rowOf(t, rs, "ssh-cold-pssh"); r.Target != "≤ 0.5×" || r.Met != nil {
		t.Errorf("a target not measured: %+v", r)
	}
	if r := rowOf(t, rs, "ssh-cold-pssh"); r.Missed != "BenchmarkSSHFanout reported no parallel-ssh-ms" {
		t.Errorf("parallel-ssh missing: %q", r.Missed)
	}
	if r := rowOf(t, rs, "append-one"); r.Missed != "BenchmarkAppendOneEvent/fsync=interval did not run" {
		t.Errorf("a benchmark that did not run: %q", r.Missed)
	}
}

// Every figure's metrics say what they measure, the same on both sides,
// and the keys are unique (runs are compared by key).
func TestFigures(t *testing.T) {
	keys := map[string]bool{}
	for _, f := range figures {
		k1, _ := unitOf(f.Ours)
		k2, _ := unitOf(f.RawMetric)
		if k1 == "unknown" || k1 != k2 {
			t.Errorf("%s: %s is %s and %s is %s", f.Key, f.Ours, k1, f.RawMetric, k2)
		}
		if keys[f.Key] {
			t.Errorf("key %s twice", f.Key)
		}
		keys[f.Key] = true
		if !strings.HasPrefix(f.Bench, "Benchmark") {
			t.Errorf("%s: %q is not a benchmark name", f.Key, f.Bench)
		}
	}
}

// A line longer than any buffer does not stop the parsing.
func TestParseLongLines(t *testing.T) {
	long := "    bench_test.go:1: " + strings.Repeat("x", 3<<20) + "\n"
	b, err := parse([]byte(long + output))
	if err != nil {
		t.Fatal(err)
	}
	if b["BenchmarkMemory/logs=1M"] == nil {
		t.Errorf("the last benchmark after a 3 MiB line: %v", b)
	}
}

// A run from saved output writes a JSON report that a later run compares
// with, row by row.
func TestReportAndCompare(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "go-test.txt")
	if err := os.WriteFile(in, []byte(output), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run([]string{"-from", in, "-out", dir}, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(files) != 1 {
		t.Fatalf("reports written: %v", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if r := rowOf(t, rep.Rows, "fifo-local"); !near(r.Cost, 2241450.0/1906680) {
		t.Errorf("fifo-local in the JSON: %+v", r)
	}
	if !strings.Contains(stdout.String(), "| 93.9 ms | 20 µs | 4695× | ≤ 100 ms ✓ |") {
		t.Errorf("a cost of thousands in the table:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "| 71.6 ms | 19.3 ms | 3.71× | ≤ 1.25× ✗ missed |") {
		t.Errorf("a missed target in the table:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "| FIFO dispatch of `true` on a local server: plan on its queue → run → result stored → acked | bare fork/exec of bash with `true` on its stdin | 2.24 ms | 1.91 ms | 1.18× |") {
		t.Errorf("table:\n%s", stdout.String())
	}

	// Compare: the earlier report's cost ratios in a last column.
	for i := range rep.Rows {
		if rep.Rows[i].Key == "fifo-local" {
			rep.Rows[i].Cost = 1.5
		}
	}
	rep.Commit = "abc1234"
	old := filepath.Join(dir, "old.json")
	b, _ = json.Marshal(rep)
	if err := os.WriteFile(old, b, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := run([]string{"-from", in, "-out", t.TempDir(), "-compare", old}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "| target | abc1234 |") || !strings.Contains(stdout.String(), "| 1.18× |  | 1.5× |") {
		t.Errorf("compared table:\n%s", stdout.String())
	}
	if err := run([]string{"-from", in, "-compare", filepath.Join(dir, "none.json")}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "-compare") {
		t.Errorf("a missing -compare file: %v", err)
	}
}
