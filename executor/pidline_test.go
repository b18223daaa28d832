package executor

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// FuzzPidLine: whatever a server writes on standard error, and however it
// is split into writes, the script's stderr is exactly what it wrote
// without the wrapper's leading "orchestra-pid N" line, and the pid is N.
func FuzzPidLine(f *testing.F) {
	f.Add([]byte("orchestra-pid 4242\nerr 1\n"), 3)
	f.Add([]byte("orchestra-pid 42"), 5)
	f.Add([]byte("no report\n"), 0)
	f.Add([]byte("orchestra-pid x\nrest"), 20)
	f.Add(bytes.Repeat([]byte("y"), 100), 70)
	f.Add([]byte("orchestra-pid 0000000000000000000000000000000000000000000000000000000042\nx"), 70)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		var out bytes.Buffer
		p := &pidLine{out: &out}
		split = max(0, min(split, len(in)))
		for _, part := range [][]byte{in[:split], in[split:]} {
			if n, err := p.Write(part); n != len(part) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", part, n, err)
			}
		}
		p.flush()
		want, pid := in, 0
		if i := bytes.IndexByte(in, '\n'); i >= 0 && i < pidLineMax {
			if v, ok := strings.CutPrefix(string(in[:i]), pidPrefix); ok {
				if n, err := strconv.Atoi(v); err == nil {
					want, pid = in[i+1:], n
				}
			}
		}
		if !bytes.Equal(out.Bytes(), want) || p.get() != pid {
			t.Fatalf("%q split at %d: passed on %q and pid %d, want %q and %d", in, split, out.Bytes(), p.get(), want, pid)
		}
	})
}
