package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Boot describes one guest run.
type Boot struct {
	Topology Topology
	Kernel   string // bzImage or uncompressed vmlinux
	Initrd   string // initramfs (cpio, optionally gzipped)
	Qemu     string // qemu-system-x86_64 when empty
	Timeout  time.Duration
	// Console receives the guest console, line by line, each prefixed with
	// Prefix. Nil discards it.
	Console io.Writer
	Prefix  string
	// AfterSentinel is how long qemu may take to power off once the
	// sentinel was printed before it is killed (10s when zero).
	AfterSentinel time.Duration
	// BootTimeout is how long /init may take to say "guest up" (90s when
	// zero; it takes ~3s). A guest that never gets there — qemu TCG has
	// been seen to hang in the firmware — is killed and reported NoBoot,
	// so the caller can boot it again instead of waiting out Timeout.
	BootTimeout time.Duration
}

// Outcome is how a guest run ended.
type Outcome struct {
	// Code is the harness's exit code: the tests' code from the sentinel,
	// ExitTimeout, or ExitNoSentinel.
	Code     int
	Sentinel bool // the sentinel line was seen
	TimedOut bool
	// Interrupted is set when the caller's context ended the run (a
	// signal); Code is then ExitInterrupted.
	Interrupted bool
	Panicked    bool // a kernel panic line was seen
	// NoBoot is set when /init did not speak within BootTimeout (the
	// guest was killed; Code is ExitNoSentinel). Booting again may work.
	NoBoot bool
	// Results are the per-binary lines the guest printed.
	Results []BinaryResult
	// Up is when /init first spoke (from qemu's start); Wall the whole run.
	Up, Wall time.Duration
	// QemuErr is qemu's own exit error, if any (informational: poweroff -f
	// exits qemu with status 0).
	QemuErr error
}

// Run boots the guest and waits for it to finish, streaming its console.
// The error is for failures to start qemu; what happened in the guest is in
// the Outcome.
func (b Boot) Run(ctx context.Context) (Outcome, error) {
	args, err := QemuArgs(b.Topology, b.Kernel, b.Initrd)
	if err != nil {
		return Outcome{}, err
	}
	qemu := b.Qemu
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(qemu); err != nil {
		return Outcome{}, fmt.Errorf("vmtest: %s: %w (apt-get install qemu-system-x86)", qemu, err)
	}
	after := b.AfterSentinel
	if after == 0 {
		after = 10 * time.Second
	}
	bootTimeout := b.BootTimeout
	if bootTimeout == 0 {
		bootTimeout = 90 * time.Second
	}
	console := b.Console
	if console == nil {
		console = io.Discard
	}

	runCtx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	// A second, shorter deadline once the sentinel is in: qemu should be
	// powering off by itself.
	killCtx, kill := context.WithCancel(runCtx)
	defer kill()

	cmd := exec.CommandContext(killCtx, qemu, args...)
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw // stdin stays /dev/null

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Outcome{}, fmt.Errorf("vmtest: start %s: %w", qemu, err)
	}

	var out Outcome
	var mu sync.Mutex
	noBoot := false // under mu
	watchdog := time.AfterFunc(bootTimeout, func() {
		mu.Lock()
		defer mu.Unlock()
		if out.Up == 0 && !out.Sentinel && !out.Panicked {
			noBoot = true
			kill()
		}
	})
	defer watchdog.Stop()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := stripEscapes(strings.TrimRight(sc.Text(), "\r"))
			fmt.Fprintf(console, "%s%s\n", b.Prefix, line)
			mu.Lock()
			if out.Up == 0 && strings.Contains(line, "vmtest: guest up") {
				out.Up = time.Since(start)
			}
			if r, ok := ParseResult(line); ok {
				out.Results = append(out.Results, r)
			}
			if IsPanicLine(line) {
				out.Panicked = true
			}
			if code, ok := ParseSentinel(line); ok && !out.Sentinel {
				out.Sentinel, out.Code = true, code
				time.AfterFunc(after, kill)
			}
			mu.Unlock()
		}
		io.Copy(io.Discard, pr) // a line over 1 MiB: keep qemu from blocking
	}()
	werr := cmd.Wait()
	pw.Close()
	<-scanned

	mu.Lock()
	defer mu.Unlock()
	out.Wall = time.Since(start)
	out.QemuErr = werr
	switch {
	case out.Sentinel:
		// The tests' code stands, even if qemu had to be killed after it.
	case ctx.Err() != nil:
		out.Interrupted, out.Code = true, ExitInterrupted
	case noBoot:
		out.NoBoot, out.Code = true, ExitNoSentinel
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		out.TimedOut, out.Code = true, ExitTimeout
	default:
		out.Code = ExitNoSentinel
	}
	return out, nil
}

// stripEscapes removes terminal escape sequences (SeaBIOS clears the screen
// on the serial console) so the streamed log stays plain text.
func stripEscapes(s string) string {
	if !strings.ContainsRune(s, 0x1b) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != 0x1b {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '[' {
			// CSI: parameters and intermediates up to a final byte @..~.
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j
			continue
		}
		i++ // a two-byte escape such as ESC c
	}
	return b.String()
}
