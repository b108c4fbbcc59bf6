package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procTimes is what a running process has used so far.
type procTimes struct {
	cpu       time.Duration // user+sys of every thread, exact (the process CPU clock)
	user, sys time.Duration // the same split, in clock ticks (10 ms), with waited-for children
	children  time.Duration // user+sys of children it has waited for, in ticks
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on Linux
// for every architecture Go runs on.
const clockTicks = 100

// readProcTimes reads a process's CPU use: its CPU clock (nanoseconds, all
// threads, living and exited: clock_gettime of MAKE_PROCESS_CPUCLOCK(pid,
// CPUCLOCK_SCHED)) and /proc/<pid>/stat's utime, stime, cutime, cstime.
func readProcTimes(pid int) (procTimes, error) {
	var t procTimes

	var ts unix.Timespec

	clock := int32(^uint32(pid)<<3) | 2
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return t, fmt.Errorf("CPU clock of %d: %w", pid, err)
	}

	t.cpu = time.Duration(ts.Nano())

	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return t, err
	}

	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return t, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}

	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 15 {
		return t, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}

	tick := func(s string) time.Duration {
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.Duration(n) * time.Second / clockTicks
	}

	// Fields 14-17 of proc(5); f[0] is field 3 (state).
	ut, st, cut, cst := tick(f[11]), tick(f[12]), tick(f[13]), tick(f[14])
	t.user, t.sys, t.children = ut+cut, st+cst, cut+cst

	return t, nil
}

func (t procTimes) sub(o procTimes) procTimes {
	return procTimes{cpu: t.cpu - o.cpu, user: t.user - o.user, sys: t.sys - o.sys, children: t.children - o.children}
}

// resetPeakRSS makes /proc/<pid>/status's VmHWM the current RSS (clear_refs
// 5, Linux 4.0), so that the peak read after a request is that request's.
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// peakRSS is VmHWM of a running process, in bytes.
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}

	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}

	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// rusageOf is the CPU of a process that has been waited for: wait4 reports
// it with its own waited-for descendants (Linux fills it as getrusage
// RUSAGE_BOTH), so the times are those of the whole process tree. Its
// ru_maxrss is no use here: exec records the high-water mark of the mm it
// replaces, which for a child of a Go program (clone with CLONE_VM) is the
// parent's; talos-imager reports its tree's peak itself (-rss).
func rusageOf(ps *os.ProcessState) (user, sys time.Duration) {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return ps.UserTime(), ps.SystemTime()
	}

	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// allocated is the bytes of disk blocks a file, or every file under a
// directory, holds (st_blocks × 512): what a build wrote, holes excluded.
func allocated(path string) (int64, error) {
	var total int64

	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed while walked: a build's scratch
			}

			return err
		}

		info, err := d.Info()
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}

			return err
		}

		if st, ok := info.Sys().(*syscall.Stat_t); ok && !d.IsDir() {
			total += st.Blocks * 512
		}

		return nil
	})

	return total, err
}

// settle flushes dirty pages before a contender starts, so that neither
// pays for the other's writeback.
func settle() {
	syscall.Sync()
	time.Sleep(200 * time.Millisecond)
}

// machine describes where the figures were measured.
type machine struct {
	CPU        string  `json:"cpu"`
	Cores      int     `json:"cores"`
	Kernel     string  `json:"kernel"`
	MemoryGiB  float64 `json:"memory_gib"`
	LoadStart  string  `json:"load_start"`
	LoadEnd    string  `json:"load_end,omitempty"`
	Filesystem string  `json:"filesystem"`
	Busiest    string  `json:"busiest_at_start"`
	Started    string  `json:"started"`
}

func describeMachine(dir string) machine {
	m := machine{Cores: runtime.NumCPU(), Started: time.Now().UTC().Format(time.RFC3339)}

	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}

	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}

	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemoryGiB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}

	m.LoadStart = loadavg()
	m.Filesystem = filesystemOf(dir)

	// What else runs: the machine is shared.
	if out, err := exec.Command("ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 5 {
			lines = lines[:5]
		}

		for i, l := range lines {
			f := strings.Fields(l)
			if len(f) >= 2 {
				lines[i] = f[1] + " " + f[0] + "%"
			}
		}

		m.Busiest = strings.Join(lines, ", ")
	}

	return m
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}

	f := strings.Fields(string(data))
	if len(f) < 3 {
		return strings.TrimSpace(string(data))
	}

	return strings.Join(f[:3], " ")
}

// filesystemOf names the file system under dir and its mount options, from
// the longest mount point that contains it.
func filesystemOf(dir string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "?"
	}

	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}

	best, desc := "", "?"

	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}

		mp := f[1]
		if (real == mp || strings.HasPrefix(real, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best, desc = mp, fmt.Sprintf("%s on %s (%s, %s)", f[2], mp, f[0], f[3])
		}
	}

	return desc
}

// toolVersion is the first line a tool prints about its version, the tool
// found on env's PATH (the imager's, with the shims first).
func toolVersion(env []string, name string, args ...string) string {
	path := name

	for _, kv := range env {
		if dirs, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, d := range filepath.SplitList(dirs) {
				if info, err := os.Stat(filepath.Join(d, name)); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
					path = filepath.Join(d, name)
					break
				}
			}
		}
	}

	cmd := exec.Command(path, args...)
	cmd.Env = env

	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unavailable (" + err.Error() + ")"
	}

	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}

	return "?"
}
