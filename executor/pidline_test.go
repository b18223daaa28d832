package executor

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// FuzzPidLine: whatever a server writes on standard error, and however it
// is split into writes, the script's stderr is exactly what it wrote
// without the first "orchestra-pid <run> N" line (N > 0, within the first
// 4 KiB), and the pid reported is N.
func FuzzPidLine(f *testing.F) {
	const run = "0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e0f.2"
	f.Add([]byte("orchestra-pid "+run+" 4242\nerr 1\n"), 3)
	f.Add([]byte("stty: not a tty\norchestra-pid "+run+" 7\nout"), 20)
	f.Add([]byte("orchestra-pid "+run+" 42"), 5)
	f.Add([]byte("orchestra-pid other.1 42\nno report\n"), 0)
	f.Add([]byte("orchestra-pid "+run+" x\nrest"), 20)
	f.Add(append(bytes.Repeat([]byte("y"), 4090), []byte("\norchestra-pid "+run+" 9\n")...), 4095)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		var out bytes.Buffer
		reported := 0
		p := &pidLine{out: &out, marker: pidPrefix + run + " ", started: func(pid int) { reported = pid }}
		split = max(0, min(split, len(in)))
		for _, part := range [][]byte{in[:split], in[split:]} {
			if n, err := p.Write(part); n != len(part) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", part, n, err)
			}
		}
		p.flush()
		want, pid := in, 0
		for start := 0; ; {
			i := bytes.IndexByte(in[start:], '\n')
			if i < 0 || start+i >= pidReportMax {
				break
			}
			if v, ok := strings.CutPrefix(string(in[start:start+i]), pidPrefix+run+" "); ok {
				if n, err := strconv.Atoi(v); err == nil && n > 0 {
					want, pid = append(append([]byte{}, in[:start]...), in[start+i+1:]...), n
					break
				}
			}
			start += i + 1
		}
		if !bytes.Equal(out.Bytes(), want) || p.get() != pid || reported != pid {
			t.Fatalf("%q split at %d: passed on %q and pid %d (reported %d), want %q and %d", in, split, out.Bytes(), p.get(), reported, want, pid)
		}
	})
}
