// Command report runs every benchmark and prints one table: each
// Orchestra figure beside the raw operation measured in the same run, and
// the cost ratio. It also writes the table and every metric as JSON (and
// go test's output beside it) into bench/out, to compare commits:
//
//	go run ./bench/report [-benchtime 2s] [-bench REGEXP] [-compare bench/out/OLD.json]
//	go run ./bench/report -from saved-go-test-output.txt
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench report:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	benchtime := fs.String("benchtime", "2s", "go test -benchtime")
	pattern := fs.String("bench", ".", "go test -bench: which benchmarks to run")
	from := fs.String("from", "", "read go test -bench output from this file instead of running the benchmarks")
	out := fs.String("out", filepath.Join("bench", "out"), "where to write the JSON report and go test's output")
	compare := fs.String("compare", "", "an earlier JSON report: show its cost ratios beside this run's")
	label := fs.String("commit", "", "the commit the figures are of (default: the checkout's, or from:FILE with -from)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var before *report
	if *compare != "" {
		b, err := os.ReadFile(*compare)
		if err != nil {
			return fmt.Errorf("-compare: %w", err)
		}
		before = &report{}
		if err := json.Unmarshal(b, before); err != nil {
			return fmt.Errorf("-compare: %s is not a report: %w", *compare, err)
		}
	}

	var output []byte
	var runErr error
	rep := report{Time: time.Now().UTC().Round(time.Second), Commit: *label, Machine: machine(), Benchtime: *benchtime}
	if *from != "" {
		b, err := os.ReadFile(*from)
		if err != nil {
			return fmt.Errorf("-from: %w", err)
		}
		output, rep.Benchtime = b, ""
		if rep.Commit == "" {
			rep.Commit = "from:" + filepath.Base(*from)
		}
	} else {
		if rep.Commit == "" {
			rep.Commit = commit()
		}
		output, runErr = runBenchmarks(*pattern, *benchtime, stderr)
	}
	var err error
	if rep.Benchmarks, err = parse(output); err != nil {
		return errors.Join(runErr, err)
	}
	rep.Rows = rows(rep.Benchmarks)
	if len(rep.Benchmarks) == 0 {
		return errors.Join(runErr, errors.New("no benchmark results"))
	}
	printTable(stdout, rep, before)

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	base := filepath.Join(*out, rep.Time.Format("20060102-150405")+"-"+rep.Commit)
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	if *from == "" {
		if err := os.WriteFile(base+".txt", output, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\nwritten: %s.json\n", base)
	return runErr
}

// report is what a run writes as JSON.
type report struct {
	Time       time.Time                 `json:"time"`
	Commit     string                    `json:"commit"`
	Machine    map[string]string         `json:"machine"`
	Benchtime  string                    `json:"benchtime,omitempty"`
	Rows       []row                     `json:"rows"`
	Benchmarks map[string]map[string]any `json:"benchmarks"` // name → metric → value; "package" and "iterations" too
}

// row is a figure as measured.
type row struct {
	Key       string  `json:"key"`
	Operation string  `json:"operation"`
	Raw       string  `json:"compared_with"`
	Kind      string  `json:"kind"` // time (s), rate (per s) or memory (MiB)
	Ours      float64 `json:"orchestra"`
	RawValue  float64 `json:"raw"`
	// Cost is Orchestra's cost as a multiple of the raw operation's: time
	// or memory divided by raw, or raw's rate divided by Orchestra's.
	Cost   float64 `json:"cost_ratio"`
	Target string  `json:"target,omitempty"`
	Met    *bool   `json:"target_met,omitempty"`
	Missed string  `json:"not_measured,omitempty"`
}

// runBenchmarks runs go test -bench over every package, showing its
// output as it comes.
func runBenchmarks(pattern, benchtime string, progress io.Writer) ([]byte, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", pattern, "-benchtime", benchtime, "-timeout", "90m", "./...")
	var buf bytes.Buffer
	w := io.MultiWriter(&buf, progress)
	cmd.Stdout, cmd.Stderr = w, w // one writer: os/exec copies both into it from one goroutine
	fmt.Fprintln(progress, "$", strings.Join(cmd.Args, " "))
	if err := cmd.Run(); err != nil {
		return buf.Bytes(), fmt.Errorf("go test: %w (the table shows what was measured)", err)
	}
	return buf.Bytes(), nil
}

// parse reads go test -bench output: per benchmark (named without its
// -GOMAXPROCS suffix) its package, iterations and metrics.
func parse(output []byte) (map[string]map[string]any, error) {
	out := map[string]map[string]any{}
	pkg := ""
	rd := bufio.NewReader(bytes.NewReader(output))
	for {
		line, err := rd.ReadString('\n')
		if err == io.EOF && line == "" {
			return out, nil
		}
		if err != nil && err != io.EOF {
			return out, err
		}
		line = strings.TrimRight(line, "\n")
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || len(fields)%2 != 0 {
			continue
		}
		n, err := strconv.Atoi(fields[1])
		if err != nil {
			continue
		}
		name := fields[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		m := map[string]any{"package": pkg, "iterations": n}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				continue // JSON has no NaN
			}
			m[fields[i+1]] = v
		}
		out[name] = m
	}
}

// rows measures every figure in benchmarks.
func rows(benchmarks map[string]map[string]any) []row {
	var out []row
	for _, f := range figures {
		kind, scale := unitOf(f.Ours)
		_, rawScale := unitOf(f.RawMetric)
		r := row{Key: f.Key, Operation: f.Operation, Raw: f.Raw, Kind: kind, Target: f.Target.String(kind)}
		m := benchmarks[f.Bench]
		ours, ok1 := m[f.Ours].(float64)
		raw, ok2 := m[f.RawMetric].(float64)
		switch {
		case m == nil:
			r.Missed = f.Bench + " did not run"
		case !ok1:
			r.Missed = fmt.Sprintf("%s reported no %s", f.Bench, f.Ours)
		case !ok2:
			r.Missed = fmt.Sprintf("%s reported no %s", f.Bench, f.RawMetric)
		case ours == 0 || raw == 0:
			r.Missed = fmt.Sprintf("%s reported zero", f.Bench)
		default:
			r.Ours, r.RawValue = ours*scale, raw*rawScale
			if kind == "rate" {
				r.Cost = r.RawValue / r.Ours
			} else {
				r.Cost = r.Ours / r.RawValue
			}
		}
		r.Met = f.Target.met(r)
		out = append(out, r)
	}
	return out
}

// unitOf tells what a metric measures from its name, and the factor to
// seconds (time), per second (rate) or MiB (memory).
func unitOf(metric string) (kind string, scale float64) {
	switch {
	case strings.HasSuffix(metric, "/s"):
		return "rate", 1
	case strings.HasSuffix(metric, "MiB"):
		return "memory", 1
	case strings.HasSuffix(metric, "ns/op"):
		return "time", 1e-9
	case strings.HasSuffix(metric, "-ms"):
		return "time", 1e-3
	}
	return "unknown", 1
}

func format(kind string, v float64) string {
	switch kind {
	case "time":
		switch {
		case v < 1e-3:
			return fmt.Sprintf("%.0f µs", v*1e6)
		case v < 1:
			return fmt.Sprintf("%.3g ms", v*1e3)
		}
		return fmt.Sprintf("%.3g s", v)
	case "rate":
		if v >= 1000 {
			return fmt.Sprintf("%.3gk/s", v/1000)
		}
		return fmt.Sprintf("%.3g/s", v)
	case "memory":
		return fmt.Sprintf("%.0f MiB", v)
	}
	return fmt.Sprint(v)
}

// costString writes a cost ratio with three significant digits, whole
// above 1,000.
func costString(c float64) string {
	if c >= 1000 {
		return fmt.Sprintf("%.0f×", c)
	}
	return fmt.Sprintf("%.3g×", c)
}

// printTable prints the report as a Markdown table, with the cost ratios
// of an earlier report when there is one.
func printTable(w io.Writer, rep report, before *report) {
	fmt.Fprintf(w, "Benchmarks of %s on %s (%s CPUs, %s), %s\n\n", rep.Commit, rep.Machine["cpu"], rep.Machine["cpus"], rep.Machine["memory"], rep.Time.Format(time.RFC3339))
	head := "| operation | compared with | Orchestra | raw | cost × raw | target |"
	sep := "|---|---|---|---|---|---|"
	prev := map[string]row{}
	if before != nil {
		head += fmt.Sprintf(" %s |", before.Commit)
		sep += "---|"
		for _, r := range before.Rows {
			prev[r.Key] = r
		}
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	for _, r := range rep.Rows {
		ours, raw, cost := "—", "—", "not measured: "+r.Missed
		if r.Missed == "" {
			ours, raw, cost = format(r.Kind, r.Ours), format(r.Kind, r.RawValue), costString(r.Cost)
		}
		goal := r.Target
		if r.Met != nil {
			goal += map[bool]string{true: " ✓", false: " ✗ missed"}[*r.Met]
		}
		line := fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", r.Operation, r.Raw, ours, raw, cost, goal)
		if before != nil {
			was := "—"
			if p, ok := prev[r.Key]; ok && p.Missed == "" {
				was = costString(p.Cost)
			}
			line += " " + was + " |"
		}
		fmt.Fprintln(w, line)
	}
}

// commit names the checkout: its short commit, "+dirty" with changes.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		c += "+dirty"
	}
	return c
}

// machine describes where the benchmarks ran.
func machine() map[string]string {
	m := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "go": runtime.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64); err == nil {
					m["memory"] = fmt.Sprintf("%.1f GB RAM", kb/1024/1024)
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	return m
}
