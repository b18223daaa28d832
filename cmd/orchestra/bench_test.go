package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchlogs"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// The benchmarks of this file run the real `orchestra up` and reach it as
// operators do: changes over HTTP, results read from its NATS server.

// benchRig is an `orchestra up` with servers local-method servers box0 …,
// each with a backend job<i> (resources of type job<i>, whose save
// action echoes the name) routed to it.
type benchRig struct {
	p      *process
	js     jetstream.JetStream
	token  string
	client *http.Client
}

func newBenchRig(b *testing.B, servers int, args ...string) *benchRig {
	b.Helper()
	dir := b.TempDir()
	p := startUp(b, append([]string{"--data", dir, "--nats-listen", "127.0.0.1:0"}, args...)...)
	p.waitReady(b)
	r := &benchRig{p: p, token: adminToken(b, dir),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	_, r.js = connect(b, p)
	var fixtures []map[string]any
	for i := range servers {
		box, job := fmt.Sprint("box", i), fmt.Sprint("job", i)
		fixtures = append(fixtures,
			map[string]any{"kind": "Server", "name": box, "method": "local", "address": "127.0.0.1"},
			map[string]any{"kind": "Backend", "name": job, "type": job, "actions": map[string]string{"save": "echo {{ .name }}"}},
			map[string]any{"kind": "Route", "backend": job, "server": box})
	}
	if len(fixtures) > 0 {
		r.apply(b, fixtures...)
	}
	return r
}

// apply posts objects to /v1/apply and returns the answer at once, not
// waiting for the scripts (?wait=0s): the benchmarks follow those on
// RESULTS.
func (r *benchRig) apply(b testing.TB, objects ...map[string]any) services.ApplyResult {
	b.Helper()
	res, err := r.send(objects...)
	if err != nil {
		b.Fatal(err)
	}
	return res
}

// send is apply for other goroutines than the benchmark's: it returns
// what went wrong.
func (r *benchRig) send(objects ...map[string]any) (services.ApplyResult, error) {
	var res services.ApplyResult
	body, err := json.Marshal(map[string]any{"objects": objects})
	if err != nil {
		return res, err
	}
	req, err := http.NewRequest("POST", r.p.http+"/v1/apply?wait=0s", bytes.NewReader(body))
	if err != nil {
		return res, err
	}
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(answer, &res) != nil {
		return res, fmt.Errorf("apply: %s %s", resp.Status, answer)
	}
	return res, nil
}

func jobResource(i int, name string) map[string]any {
	return map[string]any{"kind": "Resource", "type": fmt.Sprint("job", i), "name": name, "attrs": map[string]any{}}
}

// seen is a result of a script read from RESULTS: its type and its unit.
type seen struct {
	kind string
	unit string
}

// followResults sends every ScriptStarted and ScriptFinished stored on
// RESULTS from now on.
func (r *benchRig) followResults(b *testing.B) <-chan seen {
	b.Helper()
	ctx := context.Background()
	st, err := r.js.Stream(ctx, events.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"orchestra.res.*.*.ScriptStarted", "orchestra.res.*.*.ScriptFinished"},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		b.Fatal(err)
	}
	out := make(chan seen, 1<<14)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		var res struct {
			Unit string `json:"unit"`
		}
		_ = json.Unmarshal(msg.Data(), &res)
		out <- seen{kind: msg.Subject()[strings.LastIndexByte(msg.Subject(), '.')+1:], unit: res.Unit}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cc.Stop)
	return out
}

// rawStream makes a stream of its own on the rig's server, for the raw
// publishes the benchmarks compare with.
func (r *benchRig) rawStream(b *testing.B) jetstream.Stream {
	b.Helper()
	st, err := r.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// rawMessages makes the raw stream and returns its new messages.
func (r *benchRig) rawMessages(b *testing.B) jetstream.MessagesContext {
	b.Helper()
	ctx := context.Background()
	st := r.rawStream(b)
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(msgs.Stop)
	return msgs
}

// waitFor reads results until want of the given kind for unit arrived.
func waitFor(b *testing.B, results <-chan seen, kind, unit string) {
	b.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case s := <-results:
			if s.kind == kind && s.unit == unit {
				return
			}
		case <-timeout:
			b.Fatalf("no %s for unit %s within a minute", kind, unit)
		}
	}
}

// BenchmarkPipelineLatency: one change over HTTP (PUT of a new resource
// through /v1/apply) until its script has started on its server, and until
// its result is stored — through the gateway, the event log, the planner,
// the server's queue and the local executor of `orchestra up` — against a
// raw JetStream publish → consume on the same server, over loopback TCP
// like the HTTP request.
func BenchmarkPipelineLatency(b *testing.B) {
	r := newBenchRig(b, 1)
	results := r.followResults(b)
	rawMsgs := r.rawMessages(b)
	ctx := context.Background()
	// Warm: the executor's consumer made, bash run once.
	waitFor(b, results, "ScriptFinished", r.apply(b, jobResource(0, "warm")).Unit)
	b.ResetTimer()
	var raw, started, finished []time.Duration
	for i := range b.N {
		t0 := time.Now()
		if _, err := r.js.Publish(ctx, "bench.latency", []byte(`{"kind":"Resource","type":"job0"}`)); err != nil {
			b.Fatal(err)
		}
		if _, err := rawMsgs.Next(); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(t0))

		t0 = time.Now()
		res := r.apply(b, jobResource(0, fmt.Sprint("lat", i)))
		waitFor(b, results, "ScriptStarted", res.Unit)
		started = append(started, time.Since(t0))
		waitFor(b, results, "ScriptFinished", res.Unit)
		finished = append(finished, time.Since(t0))
	}
	b.StopTimer()
	r.p.stop(b)
	benchpair.ReportQuantiles(b, "started", started)
	benchpair.ReportQuantiles(b, "finished", finished)
	benchpair.ReportQuantiles(b, "raw", raw)
}

// BenchmarkSustainedChanges: writers send changes over HTTP as fast as
// they are answered, one new resource per change, over four local
// servers, until every change's script has run and its result is stored;
// against the same writers publishing as many messages to JetStream, each
// waiting for its acknowledgement. One operation is a batch of changes.
func BenchmarkSustainedChanges(b *testing.B) {
	const servers, writers, batch = 4, 8, 2000
	r := newBenchRig(b, servers)
	results := r.followResults(b)
	r.rawStream(b)
	ctx := context.Background()
	b.ResetTimer()
	var ours, accepted, raw time.Duration
	for op := range b.N {
		// Raw: the writers publish batch messages with acknowledgements.
		var next atomic.Int64
		t0 := time.Now()
		err := parallel(writers, func() error {
			for next.Add(1) <= batch {
				if _, err := r.js.Publish(ctx, "bench.sustained", []byte(`{"kind":"Resource","type":"job0","name":"x"}`)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		raw += time.Since(t0)

		// Orchestra: batch changes, until all their scripts finished.
		var mu sync.Mutex
		units := map[string]bool{}
		next.Store(0)
		t0 = time.Now()
		err = parallel(writers, func() error {
			for i := next.Add(1); i <= batch; i = next.Add(1) {
				res, err := r.send(jobResource(int(i)%servers, fmt.Sprintf("s%d-%d", op, i)))
				if err != nil {
					return err
				}
				mu.Lock()
				units[res.Unit] = false
				mu.Unlock()
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		accepted += time.Since(t0)
		timeout := time.After(5 * time.Minute)
		for done := 0; done < batch; {
			select {
			case s := <-results:
				// A unit's script counts once, whatever its attempts.
				if finished, ours := units[s.unit]; s.kind == "ScriptFinished" && ours && !finished {
					units[s.unit] = true
					done++
				}
			case <-timeout:
				b.Fatalf("%d of %d changes' scripts finished in 5 minutes", done, batch)
			}
		}
		ours += time.Since(t0)
	}
	b.StopTimer()
	r.p.stop(b)
	changes := float64(b.N * batch)
	b.ReportMetric(changes/ours.Seconds(), "changes/s")
	b.ReportMetric(changes/accepted.Seconds(), "accepted-changes/s")
	b.ReportMetric(changes/raw.Seconds(), "raw-publishes/s")
}

// parallel runs n copies of fn, waits for them and returns the first
// error; the benchmark fails on its own goroutine.
func parallel(n int, fn func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- fn()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// memQueries are the GET /v1/scripts queries the memory benchmark asks
// at 1M script logs, each ten times.
var memQueries = []projections.ScriptFilter{
	{Server: "web7"},
	{State: events.StateFailure},
	{Server: "web40", State: events.StateFailure},
	{Backend: "mail", State: events.StateTimeout},
	{Since: benchlogs.Start.Add(100 * time.Hour), Until: benchlogs.Start.Add(101 * time.Hour)},
}

// BenchmarkMemory: the resident memory (RSS, and its peak) of `orchestra
// up` idle, holding 100k resources, and answering queries over 1M script
// logs; against a bare process holding the same in the same engines: an
// embedded JetStream server idle, then with as many messages of the same
// size as Orchestra's streams hold, then with SQLite answering the same
// queries on the same file.
func BenchmarkMemory(b *testing.B) {
	b.Run("idle", func(b *testing.B) {
		for range b.N {
			r := newBenchRig(b, 0)
			reportMemory(b, r, rawSpec{})
		}
	})
	b.Run("resources=100k", func(b *testing.B) {
		const total, perApply = 100_000, 1000
		for range b.N {
			r := newBenchRig(b, 0)
			r.apply(b,
				map[string]any{"kind": "Server", "name": "far", "method": "agent", "address": "127.0.0.1"},
				map[string]any{"kind": "Backend", "name": "site", "type": "website", "actions": map[string]string{"save": "echo {{ .name }}"}},
				map[string]any{"kind": "Route", "backend": "site", "server": "far"})
			for n := 0; n < total; n += perApply {
				objects := make([]map[string]any, perApply)
				for i := range objects {
					objects[i] = map[string]any{"kind": "Resource", "type": "website", "name": fmt.Sprint("site", n+i),
						"attrs": map[string]any{"domain": fmt.Sprintf("site%d.example.com", n+i), "php": "8.3"}}
				}
				r.apply(b, objects...)
			}
			r.waitPlanned(b, total/perApply)
			msgs, bytes := r.stored(b)
			reportMemory(b, r, rawSpec{msgs: msgs, size: bytes / max(msgs, 1)})
		}
	})
	b.Run("logs=1M", func(b *testing.B) {
		n := benchlogs.Count(b)
		db, cached := benchlogs.Open(b, n)
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		for range b.N {
			// A copy: orchestra up writes to its read model.
			dir := b.TempDir()
			file := filepath.Join(dir, "read", projections.ResultsName+".db")
			if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
				b.Fatal(err)
			}
			copyFile(b, cached, file)
			// The logs date from 2026; a long retention keeps them.
			p := startUp(b, "--data", dir, "--nats-listen", "127.0.0.1:0", "--log-retention", "876000h")
			p.waitReady(b)
			p.token = adminToken(b, dir)
			for range 10 {
				for _, q := range memQueries {
					code, body := p.get(b, "/v1/scripts?"+scriptQuery(q))
					var page struct{ Items []json.RawMessage }
					if code != http.StatusOK || json.Unmarshal([]byte(body), &page) != nil || len(page.Items) == 0 {
						b.Fatalf("GET /v1/scripts?%s: %d, no script logs: %.300s", scriptQuery(q), code, body)
					}
				}
			}
			reportMemory(b, &benchRig{p: p}, rawSpec{sqlite: file})
		}
	})
}

// scriptQuery is f as GET /v1/scripts's query string, a page of 100.
func scriptQuery(f projections.ScriptFilter) string {
	q := url.Values{"limit": {"100"}}
	for k, v := range map[string]string{"server": f.Server, "backend": f.Backend, "state": f.State} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339))
		q.Set("until", f.Until.Format(time.RFC3339))
	}
	return q.Encode()
}

func copyFile(b *testing.B, from, to string) {
	b.Helper()
	src, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		b.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		b.Fatal(err)
	}
}

// waitPlanned waits until the planner has recorded units units.
func (r *benchRig) waitPlanned(b *testing.B, units int) {
	b.Helper()
	ctx := context.Background()
	st, err := r.js.Stream(ctx, events.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectUnits))
		if err != nil {
			b.Fatal(err)
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		if n >= uint64(units) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d units planned in 5 minutes", n, units)
		}
	}
}

// stored is how many messages, and bytes, the rig's streams hold.
func (r *benchRig) stored(b *testing.B) (msgs, bytes uint64) {
	b.Helper()
	names := r.js.StreamNames(context.Background())
	for name := range names.Name() {
		st, err := r.js.Stream(context.Background(), name)
		if err != nil {
			b.Fatal(err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		msgs += info.State.Msgs
		bytes += info.State.Bytes
	}
	if err := names.Err(); err != nil {
		b.Fatal(err)
	}
	return msgs, bytes
}

// rawSpec is what the raw process holds: msgs messages of size bytes in
// a stream, and SQLite answering memQueries on the file sqlite.
type rawSpec struct {
	msgs, size uint64
	sqlite     string
}

// settle is how long both processes sit before their memory is read.
const settle = 2 * time.Second

// reportMemory reports the resident memory of r's `orchestra up`, which
// it then stops, and of a raw process holding spec.
func reportMemory(b *testing.B, r *benchRig, spec rawSpec) {
	b.Helper()
	time.Sleep(settle)
	rss, peak := memoryOf(b, r.p.cmd.Process.Pid)
	r.p.stop(b)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), rawEnv+"="+b.TempDir(),
		rawEnv+"_MSGS="+strconv.FormatUint(spec.msgs, 10), rawEnv+"_SIZE="+strconv.FormatUint(spec.size, 10), rawEnv+"_SQLITE="+spec.sqlite)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("the raw process: %q %v", line, err)
	}
	time.Sleep(settle)
	rawRSS, rawPeak := memoryOf(b, cmd.Process.Pid)
	b.ReportMetric(rss, "orchestra-MiB")
	b.ReportMetric(peak, "orchestra-peak-MiB")
	b.ReportMetric(rawRSS, "raw-MiB")
	b.ReportMetric(rawPeak, "raw-peak-MiB")
}

// memoryOf reads a process's resident memory and its peak, in MiB.
func memoryOf(b *testing.B, pid int) (rss, peak float64) {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		key, value, _ := strings.Cut(line, ":")
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 64)
		switch {
		case err != nil:
		case key == "VmRSS":
			rss = kb / 1024
		case key == "VmHWM":
			peak = kb / 1024
		}
	}
	if rss == 0 || peak == 0 {
		b.Fatalf("no VmRSS and VmHWM in /proc/%d/status", pid)
	}
	return rss, peak
}

// rawEnv, set to a data directory, makes the test binary the memory
// benchmark's raw process (see rawProcess).
const rawEnv = "ORCHESTRA_BENCH_RAW"

// rawProcess is the raw counterpart of `orchestra up` in BenchmarkMemory:
// an embedded JetStream server in dir, holding $RAW_MSGS messages of
// $RAW_SIZE bytes in one stream, and SQLite answering memQueries on the
// file $RAW_SQLITE. It prints "ready" and runs until its stdin closes.
func rawProcess(dir string) error {
	msgs, _ := strconv.Atoi(os.Getenv(rawEnv + "_MSGS"))
	size, _ := strconv.Atoi(os.Getenv(rawEnv + "_SIZE"))
	// Like orchestra up's: a listener on loopback, which its clients use.
	srv, err := natsserver.Start(natsserver.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if msgs > 0 {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}, Storage: jetstream.FileStorage}); err != nil {
			return err
		}
		// One subject and one message id each, as Orchestra's events
		// have (a subject per aggregate, a Msg-Id per event).
		data := bytes.Repeat([]byte("x"), size)
		for i := range msgs {
			if _, err := js.PublishAsync(fmt.Sprint("raw.", i), data, jetstream.WithMsgID(fmt.Sprint("m", i))); err != nil {
				return err
			}
			if i%10_000 == 0 {
				<-js.PublishAsyncComplete()
			}
		}
		<-js.PublishAsyncComplete()
	}
	if file := os.Getenv(rawEnv + "_SQLITE"); file != "" {
		db, err := sqlite.Open(file)
		if err != nil {
			return err
		}
		defer db.Close()
		for range 10 {
			for _, f := range memQueries {
				f.Limit = 101
				if _, err := db.Scripts(ctx, f); err != nil {
					return err
				}
			}
		}
	}
	fmt.Println("ready")
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}
