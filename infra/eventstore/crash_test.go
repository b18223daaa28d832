package eventstore_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/services"
)

const crashDirEnv = "ORCHESTRA_CRASH_CHILD_DIR"

func natsConfig(dir string) natsserver.Config { return natsserver.Config{DataDir: dir} }

// TestCrashChild is the process the crash test kills: it runs its own
// embedded server on the given data directory and appends units without
// end, alternating three-aggregate batches and one-event CAS publishes,
// printing "ACK <unit> <events>" after each acknowledgement.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("runs only as the child of TestCrashKillMidStream")
	}
	s := newStore(t, natstest.StartAt(t, natsConfig(dir)))
	counter := events.Aggregate{Type: events.AggServer, ID: "counter"}
	var version uint64
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		u, err := services.NewUnit(events.Meta{Actor: "crash"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			for _, part := range []string{"a", "b", "c"} {
				agg := events.Aggregate{Type: events.AggServer, ID: fmt.Sprintf("unit%d-%s", i, part)}
				u.Expect(agg, 0)
				_ = u.Add(agg, &events.ServerDeleted{Name: agg.ID})
			}
		} else {
			u.Expect(counter, version)
			_ = u.Add(counter, &events.ServerDeleted{Name: "counter"})
		}
		a, err := s.Append(context.Background(), u)
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		if i%2 == 1 {
			version = a.Last
		}
		fmt.Printf("ACK %s %d\n", u.ID, u.Len())
	}
}

func TestCrashKillMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[uuid.UUID]int{}
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		var id string
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "ACK %s %d", &id, &n); err != nil {
			continue // the test framework's own lines
		}
		acked[uuid.MustParse(id)] = n
		if len(acked) == 300 && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed || err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child was not killed mid-stream (killed=%v, %d acks): %v", killed, len(acked), err)
	}

	s := newStore(t, natstest.StartAt(t, natsConfig(dir)))
	seen := map[uuid.UUID][]events.Envelope{}
	for e, err := range s.Read(context.Background(), 1) {
		if err != nil {
			t.Fatalf("replay after crash: %v", err)
		}
		seen[e.Unit] = append(seen[e.Unit], e)
	}
	for id, n := range acked {
		if len(seen[id]) != n {
			t.Fatalf("acknowledged unit %s: %d of %d events present after the crash", id, len(seen[id]), n)
		}
	}
	for id, es := range seen {
		size := es[0].UnitSize
		if len(es) != size {
			t.Fatalf("unit %s is partly present: %d of %d events", id, len(es), size)
		}
		for i, e := range es {
			if e.UnitIndex != i || (i > 0 && e.Sequence != es[i-1].Sequence+1) {
				t.Fatalf("unit %s: event %d has index %d at sequence %d", id, i, e.UnitIndex, e.Sequence)
			}
		}
	}
	t.Logf("%d acknowledged units, %d units in the log after SIGKILL", len(acked), len(seen))
}
