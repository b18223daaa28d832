package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/orchestra-fleet/orchestra/infra/fleetdir"
	"github.com/orchestra-fleet/orchestra/services"
)

// debounce is how long a service's folder must be quiet after a change
// before it is rebuilt.
const debounce = 300 * time.Millisecond

// defaultWatch is what a service without watch globs is rebuilt for.
var defaultWatch = []string{"**/*.go"}

// watch rebuilds, tests and restarts a service when a file its watch
// globs match changes, until ctx ends. A build or test that fails leaves
// the running instances alone and says why.
func watch(ctx context.Context, w io.Writer, c *client, f *fleetdir.Fleet, svcs []fleetdir.Service) error {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer watcher.Close()
	// last is what each service's watched files looked like after its
	// last build: a build that writes watched files (generated code)
	// does not set off another.
	last := map[string]string{}
	for _, s := range svcs {
		if err := addTree(watcher, s.Dir); err != nil {
			return fmt.Errorf("watch %s: %w", s.Dir, err)
		}
		last[s.Name] = snapshot(s)
	}
	fmt.Fprintf(w, "watching %d service(s) for changes; Ctrl-C stops watching (the services keep running)\n", len(svcs))
	dirty := map[string]bool{}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watcher.Errors:
			fmt.Fprintf(w, "watch: %v\n", err)
		case ev := <-watcher.Events:
			s, ok := owner(svcs, ev.Name)
			if !ok {
				continue
			}
			if ev.Has(fsnotify.Create) {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
					_ = addTree(watcher, ev.Name) // mkdir -p, a checkout: every level
				}
			}
			if watched(s, ev.Name) {
				dirty[s.Name] = true
				timer.Reset(debounce)
			}
		case <-timer.C:
			for _, s := range svcs {
				if !dirty[s.Name] {
					continue
				}
				delete(dirty, s.Name)
				if now := snapshot(s); now != last[s.Name] {
					rebuild(ctx, w, c, f, s)
					last[s.Name] = snapshot(s)
				}
			}
		}
	}
}

// rebuild builds and tests s and restarts it; a failure keeps the old
// process running.
func rebuild(ctx context.Context, w io.Writer, c *client, f *fleetdir.Fleet, s fleetdir.Service) {
	fmt.Fprintf(w, "%s: changed\n", s.Name)
	if err := build(ctx, w, []fleetdir.Service{s}); err != nil {
		fmt.Fprintf(w, "%s: the running instances stay: %v\n", s.Name, err)
		return
	}
	if s.Test != "" {
		if err := shell(ctx, w, s, s.Test); err != nil {
			fmt.Fprintf(w, "%s: tests failed (%v); the running instances stay\n", s.Name, err)
			return
		}
	}
	if err := runOnSite(ctx, c, w, f.Config.Site, services.RunRequest{Command: "restart", Services: []string{s.Name}}, "table"); err != nil {
		fmt.Fprintf(w, "%s: restart: %v\n", s.Name, err)
	}
}

// owner is the service whose folder holds path.
func owner(svcs []fleetdir.Service, path string) (fleetdir.Service, bool) {
	for _, s := range svcs {
		if strings.HasPrefix(path, s.Dir+string(filepath.Separator)) {
			return s, true
		}
	}
	return fleetdir.Service{}, false
}

// watched reports whether path matches one of s's watch globs, relative
// to its folder; "**/" matches any folders.
func watched(s fleetdir.Service, path string) bool {
	rel, err := filepath.Rel(s.Dir, path)
	if err != nil {
		return false
	}
	globs := s.Watch
	if len(globs) == 0 {
		globs = defaultWatch
	}
	return slices.ContainsFunc(globs, func(g string) bool {
		if rest, ok := strings.CutPrefix(g, "**/"); ok {
			if m, _ := filepath.Match(rest, filepath.Base(rel)); m {
				return true
			}
		}
		m, _ := filepath.Match(g, rel)
		return m
	})
}

// addTree watches dir and every folder under it but hidden ones.
func addTree(watcher *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if path != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		return watcher.Add(path)
	})
}

// snapshot sums up the files of s its watch globs match: names, sizes and
// modification times.
func snapshot(s fleetdir.Service) string {
	h := fnv.New64a()
	_ = filepath.WalkDir(s.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if path != s.Dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !watched(s, path) {
			return nil
		}
		if info, err := d.Info(); err == nil {
			fmt.Fprintf(h, "%s\x00%d\x00%d\n", path, info.Size(), info.ModTime().UnixNano())
		}
		return nil
	})
	return strconv.FormatUint(h.Sum64(), 16)
}
