package main

import "fmt"

// figure is one row of the table: an Orchestra figure, the raw operation
// measured beside it in the same run, and where both come from.
type figure struct {
	Key       string // stable, for comparing runs
	Operation string
	Raw       string // what it is compared with
	Bench     string // the benchmark, as go test names it without -GOMAXPROCS
	Ours      string // its metric of Orchestra's figure
	RawMetric string // its metric of the raw figure
	Target    target
}

// target is what a figure should reach: a cost ratio at most, or
// Orchestra's own figure at most (in seconds, per second or MiB).
type target struct{ Cost, Ours float64 }

func (t target) String(kind string) string {
	switch {
	case t.Cost > 0:
		return fmt.Sprintf("≤ %.3g×", t.Cost)
	case t.Ours > 0:
		return "≤ " + format(kind, t.Ours)
	}
	return ""
}

// met tells whether r reaches t; nil when there is no target or no
// figure.
func (t target) met(r row) *bool {
	var ok bool
	switch {
	case r.Missed != "":
		return nil
	case t.Cost > 0:
		ok = r.Cost <= t.Cost
	case t.Ours > 0:
		ok = r.Ours <= t.Ours
	default:
		return nil
	}
	return &ok
}

// figures is the table, in the order of the pipeline: a change written,
// planned, run, read back; then sites and memory.
var figures = []figure{
	{"pipeline-started-p50", "change → script started on its server, p50: HTTP apply of one resource, event log, planner, the server's queue, local executor", "JetStream publish → consume, p50 (loopback TCP)",
		"BenchmarkPipelineLatency", "started-p50-ms", "raw-p50-ms", target{}},
	{"pipeline-started-p99", "the same, p99", "JetStream publish → consume, p99",
		"BenchmarkPipelineLatency", "started-p99-ms", "raw-p99-ms", target{}},
	{"pipeline-finished-p50", "change → script's result stored, p50", "JetStream publish → consume, p50",
		"BenchmarkPipelineLatency", "finished-p50-ms", "raw-p50-ms", target{}},
	{"sustained-changes", "sustained changes/s: 8 HTTP writers, one new resource per change, 4 local servers, until every script's result is stored", "8 writers publishing to JetStream, each waiting for its ack",
		"BenchmarkSustainedChanges", "changes/s", "raw-publishes/s", target{}},
	{"sustained-accepted", "the same, changes accepted/s (answered over HTTP)", "the same publishes",
		"BenchmarkSustainedChanges", "accepted-changes/s", "raw-publishes/s", target{}},
	{"append-one", "append a one-event unit (fsync interval)", "publish with compare-and-set + Msg-Id",
		"BenchmarkAppendOneEvent/fsync=interval", "orchestra-ns/op", "raw-ns/op", target{Cost: 1 / 0.60}},
	{"append-one-always", "the same, fsync always", "the same, fsync always",
		"BenchmarkAppendOneEvent/fsync=always", "orchestra-ns/op", "raw-ns/op", target{}},
	{"append-3", "append a 3-event unit", "atomic batch of 3",
		"BenchmarkAppendUnit/events=3/fsync=interval", "orchestra-ns/op", "raw-ns/op", target{Cost: 1.25}},
	{"append-100", "append a 100-event unit", "atomic batch of 100",
		"BenchmarkAppendUnit/events=100/fsync=interval", "orchestra-ns/op", "raw-ns/op", target{Cost: 1.25}},
	{"replay-events", "replay of the event log, decoded, events/s", "ordered consumer, not decoded",
		"BenchmarkReplay", "orchestra-events/s", "raw-events/s", target{Cost: 1 / 0.70}},
	{"http-write", "HTTP write of one change (PUT over loopback: auth, decode, validate, append, answer)", "publish with CAS + Msg-Id, client over loopback TCP",
		"BenchmarkHTTPWrite/baseline=loopback", "orchestra-ns/op", "raw-ns/op", target{Cost: 4}},
	{"http-write-inprocess", "the same", "publish with CAS + Msg-Id, in-process connection",
		"BenchmarkHTTPWrite/baseline=in-process", "orchestra-ns/op", "raw-ns/op", target{}},
	{"apply-1000", "POST /v1/apply of 1,000 resources", "atomic batch of 1,000",
		"BenchmarkApply1000", "orchestra-ns/op", "raw-ns/op", target{Cost: 1.25}},
	{"planner-10", "planner, time per operation in units of 10 operations (plan, publish, mark, commit)", "async publish of one plan-sized message per operation",
		"BenchmarkPlanner/ops-per-unit=10", "orchestra-ns/op", "raw-ns/op", target{Cost: 4}},
	{"planner-1", "planner, time per operation in units of 1 operation", "the same",
		"BenchmarkPlanner/ops-per-unit=1", "orchestra-ns/op", "raw-ns/op", target{}},
	{"plan-latency-p50", "change → plans on the servers' queues (Apply in-process until published), p50", "publish → consume, p50",
		"BenchmarkPlanLatency", "orchestra-p50-ms", "raw-p50-ms", target{}},
	{"plan-latency-p99", "the same, p99", "publish → consume, p99",
		"BenchmarkPlanLatency", "orchestra-p99-ms", "raw-p99-ms", target{}},
	{"fifo-local", "FIFO dispatch of `true` on a local server: plan on its queue → run → result stored → acked", "bare fork/exec of bash with `true` on its stdin",
		"BenchmarkFIFOLocal", "orchestra-ns/op", "raw-ns/op", target{}},
	{"ssh-cold-pssh", "SSH fan-out of `true` to 50 servers, cold (connect, handshake, run, results stored)", "parallel-ssh -p 50",
		"BenchmarkSSHFanout", "cold-ms", "parallel-ssh-ms", target{Cost: 0.5}},
	{"ssh-cold-ansible", "the same", "ansible all -m raw -f 50",
		"BenchmarkSSHFanout", "cold-ms", "ansible-ms", target{}},
	{"ssh-warm", "SSH fan-out to 50 servers, warm (the executor's open connections)", "raw x/crypto sessions on 50 open connections",
		"BenchmarkSSHFanout", "warm-ms", "raw-session-ms", target{Ours: 0.100}},
	{"results-replay", "replay of the results read models, results/s (decode, fold, commit, indexes)", "bare ordered consumer of the same messages",
		"BenchmarkResultsReplay", "orchestra-results/s", "raw-results/s", target{Cost: 2.5}},
	{"sqlite-commit", "read-model commit of 500 rows, rows/s", "plain INSERT OR REPLACE of 500 rows",
		"BenchmarkCommit", "orchestra-rows/s", "raw-rows/s", target{}},
	{"query-1m-p50", "GET /v1/scripts's query at 1M script logs, a page of 100, six filters in turn, p50", "a page of 100 by the table's key, p50",
		"BenchmarkScriptsQuery", "filtered-p50-ms", "raw-p50-ms", target{}},
	{"query-1m-p99", "the same, p99", "the same, p99",
		"BenchmarkScriptsQuery", "filtered-p99-ms", "raw-p99-ms", target{Ours: 0.020}},
	{"result-visible-p50", "a result published → visible in the read models, p50", "publish → consume, p50",
		"BenchmarkResultVisible", "visible-p50-ms", "raw-p50-ms", target{}},
	{"result-visible-p99", "the same, p99", "publish → consume, p99",
		"BenchmarkResultVisible", "visible-p99-ms", "raw-p99-ms", target{}},
	{"site-overhead", "site start of 100 services, 3 ranks, 20 local servers: orchestration overhead, p50", "one publish → consume",
		"BenchmarkSiteStart", "overhead-p50-ms", "raw-pubsub-p50-ms", target{Ours: 0.100}},
	{"rss-idle", "RSS of orchestra up, idle", "a bare process embedding nats-server with JetStream, idle",
		"BenchmarkMemory/idle", "orchestra-MiB", "raw-MiB", target{}},
	{"rss-100k", "RSS of orchestra up holding 100k resources (planned)", "the bare process holding as many messages of the same size, a subject and a message id each",
		"BenchmarkMemory/resources=100k", "orchestra-MiB", "raw-MiB", target{}},
	{"rss-1m-logs", "RSS of orchestra up answering queries over 1M script logs", "the bare process with SQLite answering the same queries on the same file",
		"BenchmarkMemory/logs=1M", "orchestra-MiB", "raw-MiB", target{}},
	{"rss-100k-peak", "peak RSS while applying and planning 100k resources", "peak RSS of the bare process while it stores them",
		"BenchmarkMemory/resources=100k", "orchestra-peak-MiB", "raw-peak-MiB", target{}},
}
