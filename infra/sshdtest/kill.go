package sshdtest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// killTree kills the process root and every process below it, found through
// /proc by parent PID. sshd forks one process per connection, which starts a
// new session of its own, so neither killing sshd alone nor its process
// group would drop the open connections. Each process is stopped (SIGSTOP)
// before its children are listed, so that none can fork a child the walk
// misses; then all of them are killed. Without /proc only root is killed.
func killTree(root int) {
	all := []int{root}
	level := []int{root}
	_ = syscall.Kill(root, syscall.SIGSTOP)
	for len(level) > 0 {
		waitStopped(level)
		parents := make(map[int]bool, len(level))
		for _, pid := range level {
			parents[pid] = true
		}
		level = level[:0:0]
		for _, pid := range childrenOf(parents) {
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				level = append(level, pid)
				all = append(all, pid)
			}
		}
	}
	for _, pid := range all {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// waitStopped waits, up to a second, until every process of pids is
// stopped, a zombie or gone.
func waitStopped(pids []int) {
	deadline := time.Now().Add(time.Second)
	for _, pid := range pids {
		for {
			state, _, ok := procStat(pid)
			if !ok || strings.ContainsAny(state, "TtZX") || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// childrenOf lists the processes whose parent is in parents.
func childrenOf(parents map[int]bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || parents[pid] {
			continue
		}
		if _, ppid, ok := procStat(pid); ok && parents[ppid] {
			kids = append(kids, pid)
		}
	}
	return kids
}

// procStat reads a process's state letter and parent PID from
// /proc/PID/stat; ok is false when the process is gone or unreadable.
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	// "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses,
	// so the fields are counted from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return "", 0, false
	}
	return fields[0], ppid, true
}
