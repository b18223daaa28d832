package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/infra/files"
	"github.com/orchestra-fleet/orchestra/infra/fleetdir"
	"github.com/orchestra-fleet/orchestra/services"
)

// Files of a fleet folder's .orchestra besides those of `orchestra up`.
const (
	upFile    = "up.json"    // the background orchestra up: pid and HTTP address
	upLog     = "up.log"     // its log
	scaleFile = "scale.json" // scales set with `orchestra scale`
	dataDir   = ".orchestra"
)

// inFleet reports whether the working directory is a fleet folder: it
// has an orchestra.yml (orchestra init writes one).
func inFleet() bool {
	_, err := os.Stat(fleetdir.ConfigFile)
	return err == nil
}

// upState is what up.json records of the folder's background Orchestra.
type upState struct {
	PID  int    `json:"pid"`
	HTTP string `json:"http"`
}

// runningUp returns the folder's background Orchestra when it answers.
func runningUp() (upState, bool) {
	var st upState
	b, err := os.ReadFile(filepath.Join(dataDir, upFile))
	if err != nil || json.Unmarshal(b, &st) != nil || st.PID <= 0 || syscall.Kill(st.PID, 0) != nil {
		return upState{}, false
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(st.HTTP + "/readyz")
	if err != nil {
		return upState{}, false
	}
	resp.Body.Close()
	return st, resp.StatusCode == http.StatusOK
}

// ensureUp returns a client of the folder's Orchestra, starting it in the
// background first when it does not run.
func ensureUp(ctx context.Context, w io.Writer) (*client, error) {
	if st, ok := runningUp(); ok {
		return fleetClient(st)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	// One command at a time starts it: another that waited finds it up.
	lock, err := os.OpenFile(filepath.Join(dataDir, "up.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if st, ok := runningUp(); ok {
		return fleetClient(st)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dataDir, upLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(self, "up", "--data", dataDir, "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--log-format", "json")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // it outlives this command
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start orchestra up: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(w, "started Orchestra for this folder in the background (pid %d, log %s)\n", cmd.Process.Pid, filepath.Join(dataDir, upLog))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("orchestra up exited (%v); see %s", err, filepath.Join(dataDir, upLog))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		addr := upAddress(filepath.Join(dataDir, upLog), start)
		if addr == "" {
			continue
		}
		st := upState{PID: cmd.Process.Pid, HTTP: addr}
		b, _ := json.Marshal(st)
		if err := files.WriteAtomic(filepath.Join(dataDir, upFile), b, 0o600); err != nil {
			return nil, err
		}
		for time.Now().Before(deadline) {
			if _, ok := runningUp(); ok {
				return fleetClient(st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil, fmt.Errorf("orchestra up did not become ready in 60 s; see %s", filepath.Join(dataDir, upLog))
}

// upAddress is the HTTP address the "orchestra up" line logged after
// offset says, "" before it is there.
func upAddress(log string, offset int64) string {
	f, err := os.Open(log)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct{ Msg, HTTP string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "orchestra up" {
			return rec.HTTP
		}
	}
	return ""
}

func fleetClient(st upState) (*client, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, adminTokenFile))
	if err != nil {
		return nil, err
	}
	return &client{base: st.HTTP, token: strings.TrimSpace(string(b)), http: &http.Client{Timeout: 60 * time.Second}}, nil
}

// loadFleet reads the folder's services and the scales set on it.
func loadFleet() (*fleetdir.Fleet, map[string]int, error) {
	f, err := fleetdir.Load(".")
	if err != nil {
		return nil, nil, err
	}
	scale := map[string]int{}
	if b, err := os.ReadFile(filepath.Join(dataDir, scaleFile)); err == nil {
		if err := json.Unmarshal(b, &scale); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dataDir, scaleFile), err)
		}
	}
	return f, scale, nil
}

// loadChosen reads the folder's services, the scales set on it, and those
// of its services that names name (all of them for none).
func loadChosen(names []string) (*fleetdir.Fleet, map[string]int, []fleetdir.Service, error) {
	f, scale, err := loadFleet()
	if err != nil {
		return nil, nil, nil, err
	}
	svcs, err := chosen(f, names)
	return f, scale, svcs, err
}

// chosen checks names are services of f; none means all.
func chosen(f *fleetdir.Fleet, names []string) ([]fleetdir.Service, error) {
	if len(names) == 0 {
		return f.Services, nil
	}
	var out []fleetdir.Service
	for _, n := range names {
		i := -1
		for j, s := range f.Services {
			if s.Name == n {
				i = j
			}
		}
		if i < 0 {
			return nil, usageError{fmt.Errorf("%q is not a service of this folder", n)}
		}
		out = append(out, f.Services[i])
	}
	return out, nil
}

// apply saves the local server and the fleet's site.
func applyFleet(ctx context.Context, c *client, f *fleetdir.Fleet, scale map[string]int) error {
	site, err := json.Marshal(f.Site(scale))
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(site, &doc); err != nil {
		return err
	}
	doc["kind"] = services.KindSite
	server := map[string]any{"kind": services.KindServer, "name": fleetdir.Server, "address": "127.0.0.1", "method": services.MethodLocal}
	return c.do(ctx, "POST", "/v1/apply?wait=0s", map[string]any{"objects": []any{server, doc}}, nil)
}

// build runs the build commands of svcs in their folders, output
// prefixed; the first failure stops it.
func build(ctx context.Context, w io.Writer, svcs []fleetdir.Service) error {
	for _, s := range svcs {
		if s.Build == "" {
			continue
		}
		fmt.Fprintf(w, "%s: building: %s\n", s.Name, s.Build)
		if err := shell(ctx, w, s, s.Build); err != nil {
			return fmt.Errorf("%s: build failed (%v); nothing was started or restarted", s.Name, err)
		}
	}
	return nil
}

// shell runs text by /bin/sh in s's folder, each output line prefixed
// with the service's name.
func shell(ctx context.Context, w io.Writer, s fleetdir.Service, text string) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", text)
	cmd.Dir = s.Dir
	pw := &prefixWriter{w: w, prefix: s.Name + " | "}
	cmd.Stdout, cmd.Stderr = pw, pw
	err := cmd.Run()
	pw.flush()
	return err
}

// prefixWriter prefixes each line written through it.
type prefixWriter struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}

func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
		p.buf = nil
	}
}

func names(svcs []fleetdir.Service) []string {
	out := make([]string, len(svcs))
	for i, s := range svcs {
		out[i] = s.Name
	}
	return out
}

func newInitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Make this folder a local fleet: .orchestra/ for data, logs and state, and an orchestra.yml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if err := os.MkdirAll(filepath.Join(dataDir, logsDir), 0o700); err != nil {
				return err
			}
			if _, err := os.Stat(fleetdir.ConfigFile); errors.Is(err, os.ErrNotExist) {
				if err := os.WriteFile(fleetdir.ConfigFile, []byte(configTemplate), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(w, "wrote %s\n", fleetdir.ConfigFile)
			}
			f, err := fleetdir.Load(".")
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "site %s: %d service(s)\n", f.Config.Site, len(f.Services))
			for _, s := range f.Services {
				fmt.Fprintf(w, "  rank %d  %-16s scale %d  %s\n", *s.Rank, s.Name, s.Scale, s.File)
			}
			fmt.Fprintln(w, "next: orchestra start")
			return nil
		},
	}
}

const configTemplate = `# The local fleet of this folder: every */service.yml is a service.
# site: my-fleet          # the site's name (default: the folder's name)
env: {}                   # environment of every service
services: {}              # environment per service: {api: {KEY: value}}
defaults:
  scale: 1
  restart: on-failure     # or always, never
  grace: 10s              # between SIGTERM and SIGKILL
`

func newFleetCommands() []*cobra.Command {
	var scales []string
	var rerun bool
	start := &cobra.Command{
		Use:   "start [SERVICE…]",
		Short: "In a fleet folder: build and start the services in rank order (all without SERVICE)",
		RunE: func(cmd *cobra.Command, args []string) error {
			f, scale, svcs, err := loadChosen(args)
			if err != nil {
				return err
			}
			for _, kv := range scales {
				name, n, ok := strings.Cut(kv, "=")
				v, err := strconv.Atoi(n)
				if _, cerr := chosen(f, []string{name}); !ok || err != nil || v < 1 || cerr != nil {
					return usageError{fmt.Errorf("--scale %q: want SERVICE=N with N ≥ 1 and SERVICE a service of this folder", kv)}
				}
				scale[name] = v
			}
			if err := f.CheckPorts(scale); err != nil {
				return err
			}
			if err := saveScale(scale); err != nil {
				return err
			}
			ctx, w := cmd.Context(), cmd.OutOrStdout()
			if err := build(ctx, w, svcs); err != nil {
				return err
			}
			c, err := ensureUp(ctx, w)
			if err != nil {
				return err
			}
			if err := applyFleet(ctx, c, f, scale); err != nil {
				return err
			}
			req := services.RunRequest{Command: "start", Services: names(svcs)}
			if len(args) == 0 {
				req.Services = nil
			}
			if err := runOnSite(ctx, c, w, f.Config.Site, req, "table"); err != nil {
				return err
			}
			if rerun {
				return watch(ctx, w, c, f, svcs)
			}
			return nil
		},
	}
	start.Flags().StringArrayVar(&scales, "scale", nil, "SERVICE=N instances (repeatable; kept for later starts)")
	start.Flags().BoolVar(&rerun, "rerun", false, "then watch each service's folder: on a change rebuild, test and restart that service")

	lifecycle := func(use, command, short string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " [SERVICE…]",
			Short: short,
			RunE: func(cmd *cobra.Command, args []string) error {
				f, scale, svcs, err := loadChosen(args)
				if err != nil {
					return err
				}
				ctx, w := cmd.Context(), cmd.OutOrStdout()
				if _, ok := runningUp(); !ok && command == "stop" {
					fmt.Fprintln(w, "Orchestra does not run for this folder: nothing to stop")
					return nil
				}
				c, err := ensureUp(ctx, w)
				if err != nil {
					return err
				}
				if command != "stop" {
					if err := build(ctx, w, svcs); err != nil {
						return err
					}
					if err := applyFleet(ctx, c, f, scale); err != nil {
						return err
					}
				}
				req := services.RunRequest{Command: command}
				if len(args) > 0 {
					req.Services = names(svcs)
				}
				return runOnSite(ctx, c, w, f.Config.Site, req, "table")
			},
		}
	}
	scaleCmd := &cobra.Command{
		Use:   "scale SERVICE N",
		Short: "In a fleet folder: run N instances of a service (kept for later starts)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, scale, err := loadFleet()
			if err != nil {
				return err
			}
			if _, err := chosen(f, args[:1]); err != nil {
				return err
			}
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > 100 {
				return usageError{fmt.Errorf("N: %q, want 1 to 100", args[1])}
			}
			scale[args[0]] = n
			if err := f.CheckPorts(scale); err != nil {
				return err
			}
			if err := saveScale(scale); err != nil {
				return err
			}
			ctx, w := cmd.Context(), cmd.OutOrStdout()
			c, err := ensureUp(ctx, w)
			if err != nil {
				return err
			}
			if err := applyFleet(ctx, c, f, scale); err != nil {
				return err
			}
			return runOnSite(ctx, c, w, f.Config.Site, services.RunRequest{Command: "start", Services: args[:1]}, "table")
		},
	}
	test := &cobra.Command{
		Use:   "test [SERVICE…]",
		Short: "In a fleet folder: run each service's tests, then a summary; exit 1 when one fails",
		RunE: func(cmd *cobra.Command, args []string) error {
			_, _, svcs, err := loadChosen(args)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			var failed []string
			type result struct {
				name, outcome string
				took          time.Duration
			}
			var results []result
			for _, s := range svcs {
				if s.Test == "" {
					results = append(results, result{s.Name, "no tests", 0})
					continue
				}
				t0 := time.Now()
				err := shell(cmd.Context(), w, s, s.Test)
				r := result{s.Name, "ok", time.Since(t0).Round(time.Millisecond)}
				if err != nil {
					r.outcome = "FAILED (" + err.Error() + ")"
					failed = append(failed, s.Name)
				}
				results = append(results, r)
			}
			fmt.Fprintln(w, "\nsummary:")
			for _, r := range results {
				fmt.Fprintf(w, "  %-16s %s %s\n", r.name, r.outcome, durationOrEmpty(r.took))
			}
			if len(failed) > 0 {
				return fmt.Errorf("tests failed: %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	down := &cobra.Command{
		Use:   "down",
		Short: "In a fleet folder: stop every service and the folder's background Orchestra",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			st, ok := runningUp()
			if !ok {
				fmt.Fprintln(w, "Orchestra does not run for this folder")
				return nil
			}
			c, err := fleetClient(st)
			if err != nil {
				return err
			}
			if f, _, err := loadFleet(); err == nil {
				if err := runOnSite(cmd.Context(), c, w, f.Config.Site, services.RunRequest{Command: "stop"}, "table"); err != nil {
					fmt.Fprintf(w, "stopping the services: %v; Orchestra stops them as it stops\n", err)
				}
			}
			if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
				return fmt.Errorf("stop orchestra up (pid %d): %w", st.PID, err)
			}
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if syscall.Kill(st.PID, 0) != nil {
					_ = os.Remove(filepath.Join(dataDir, upFile))
					fmt.Fprintf(w, "Orchestra stopped (pid %d)\n", st.PID)
					return nil
				}
			}
			return fmt.Errorf("orchestra up (pid %d) did not stop within 30 s", st.PID)
		},
	}
	return []*cobra.Command{start,
		lifecycle("stop", "stop", "In a fleet folder: stop the services in reverse rank order (all without SERVICE)"),
		lifecycle("restart", "restart", "In a fleet folder: rebuild, then stop and start the services"),
		scaleCmd, test, down, newInitCommand()}
}

func durationOrEmpty(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return "in " + d.String()
}

func saveScale(scale map[string]int) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(scale)
	if err != nil {
		return err
	}
	return files.WriteAtomic(filepath.Join(dataDir, scaleFile), b, 0o600)
}

// fleetLogs prints the output of the chosen services' instances from
// their log files, each line prefixed with service#instance; with follow
// it goes on as lines are written, instances that start later included.
func fleetLogs(ctx context.Context, w io.Writer, args []string, follow, color bool) error {
	_, _, svcs, err := loadChosen(args)
	if err != nil {
		return err
	}
	offsets := map[string]int64{}
	partial := map[string]string{}
	for {
		for _, s := range svcs {
			paths, _ := filepath.Glob(filepath.Join(dataDir, logsDir, s.Name+".*.log"))
			for _, path := range paths {
				inst := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), s.Name+"."), ".log")
				if _, err := strconv.Atoi(inst); err != nil {
					continue // another service whose name starts with this one's
				}
				key := s.Name + "#" + inst
				n, err := tailFile(path, offsets[path], func(chunk string) {
					chunk = partial[key] + chunk
					lines := strings.Split(chunk, "\n")
					partial[key] = lines[len(lines)-1]
					for _, l := range lines[:len(lines)-1] {
						fmt.Fprintf(w, "%s %s\n", colored(color, key, fmt.Sprintf("%-12s|", key)), l)
					}
				})
				if err != nil {
					return err
				}
				if n < offsets[path] {
					partial[key] = "" // the file was cut: what was held is gone
				}
				offsets[path] = n
			}
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tailFile passes what path holds beyond offset to fn and returns the new
// offset.
func tailFile(path string, offset int64, fn func(string)) (int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return offset, nil // gone meanwhile
	}
	defer fh.Close()
	if info, err := fh.Stat(); err == nil && info.Size() < offset {
		offset = 0 // truncated
	}
	if _, err := fh.Seek(offset, io.SeekStart); err != nil {
		return offset, err
	}
	b, err := io.ReadAll(fh)
	if err != nil {
		return offset, err
	}
	if len(b) > 0 {
		fn(string(b))
	}
	return offset + int64(len(b)), nil
}
