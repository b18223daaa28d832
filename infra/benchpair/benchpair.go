// Package benchpair measures an Orchestra operation and the raw operation it
// stands on in the same benchmark run, interleaved in blocks so both see the
// same machine, and reports:
//
//	orchestra-ns/op  the Orchestra operation
//	raw-ns/op        the raw operation
//	%raw             Orchestra's throughput as a percentage of raw
//
// (the benchmark's own ns/op counts both halves and means nothing alone).
package benchpair

import (
	"slices"
	"testing"
	"time"
)

// Pair accumulates the time of both halves.
type Pair struct{ Raw, Ours time.Duration }

// Block runs raw n times, then ours n times.
func (p *Pair) Block(n int, raw, ours func()) {
	t0 := time.Now()
	for range n {
		raw()
	}
	t1 := time.Now()
	for range n {
		ours()
	}
	p.Raw += t1.Sub(t0)
	p.Ours += time.Since(t1)
}

// Run runs b.N operations of each half in blocks of block.
func (p *Pair) Run(b *testing.B, block int, raw, ours func()) {
	for done := 0; done < b.N; done += block {
		p.Block(min(block, b.N-done), raw, ours)
	}
}

// Report reports the per-operation times over ops operations and the ratio.
func (p *Pair) Report(b *testing.B, ops int) {
	b.ReportMetric(float64(p.Ours.Nanoseconds())/float64(ops), "orchestra-ns/op")
	b.ReportMetric(float64(p.Raw.Nanoseconds())/float64(ops), "raw-ns/op")
	b.ReportMetric(100*float64(p.Raw)/float64(p.Ours), "%raw")
}

// Quantile is the q-quantile (0.5 for the median) of ds, which it leaves
// in order.
func Quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// Millis is the q-quantile of ds in milliseconds.
func Millis(ds []time.Duration, q float64) float64 {
	return float64(Quantile(ds, q).Nanoseconds()) / 1e6
}

// ReportQuantiles reports the median and the 99th percentile of ds, in
// milliseconds, as the metrics name-p50-ms and name-p99-ms.
func ReportQuantiles(b *testing.B, name string, ds []time.Duration) {
	b.ReportMetric(Millis(ds, .5), name+"-p50-ms")
	b.ReportMetric(Millis(ds, .99), name+"-p99-ms")
}
