package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// helperEnv, when set, makes the test binary a client helper (see
// TestHelperClient) instead of running the tests.
const helperEnv = "VCORED_WIRE_HELPER"

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// echoServer serves a Listener: wire connections get Hello -> HelloOK and
// then every frame echoed back; HTTP GET /peer answers with the caller's
// credentials. It returns an idempotent stop function that waits for Serve.
func echoServer(t *testing.T, l *Listener) (stop func()) {
	t.Helper()
	wireHandler := func(ctx context.Context, c *Conn) {
		f, err := c.Recv()
		if err != nil {
			return
		}
		var h Hello
		if f.Type != TypeHello || h.Unmarshal(f.Payload) != nil {
			c.SendMsg(&Error{Code: CodeBadRequest, Msg: "want Hello"})
			return
		}
		c.SendMsg(&HelloOK{Server: "vcore", Pid: os.Getpid(), Version: Version})
		for {
			f, err := c.Recv()
			if err != nil {
				return
			}
			err = c.Send(f.Type, f.Payload, f.FDs...)
			f.CloseFDs()
			if err != nil {
				return
			}
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /peer", func(w http.ResponseWriter, r *http.Request) {
		p, ok := PeerFromContext(r.Context())
		if !ok {
			http.Error(w, "no peer", 500)
			return
		}
		json.NewEncoder(w).Encode(p)
	})
	done := make(chan error, 1)
	go func() { done <- l.Serve(context.Background(), wireHandler, mux) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.Close()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
}

func unixHTTPClient(path string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}
}

func hello(t *testing.T, c *Conn) {
	t.Helper()
	if err := c.SendMsg(&Hello{Role: RoleWorker, Pid: os.Getpid(), Version: Version}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != TypeHelloOK {
		t.Fatalf("answer to Hello: %s %s", f.Type, f.Payload)
	}
}

func TestListenerHTTPAndWireInterleaved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", fmt.Sprintf("core-%d.sock", os.Getpid()))
	l, err := Listen(path, 0o600, -1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	stop := echoServer(t, l)
	defer stop()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v, want 0600 socket", fi.Mode())
	}

	ctx := context.Background()
	w, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	hello(t, w)
	hc := unixHTTPClient(path)
	defer hc.CloseIdleConnections()

	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer wp.Close()
	for i := range 3 {
		resp, err := hc.Get("http://vcored/peer")
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Pid, Uid int }
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || p.Pid != os.Getpid() || p.Uid != os.Geteuid() {
			t.Fatalf("GET /peer: %d %+v %v", resp.StatusCode, p, err)
		}
		// A frame with a descriptor on the wire connection in between.
		if err := w.SendMsg(&Attach{Name: "heap", Addr: uint64(4096 * (i + 1)), Length: 4096}, int(wp.Fd())); err != nil {
			t.Fatal(err)
		}
		f, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		if a := m.(*Attach); a.Addr != uint64(4096*(i+1)) || len(f.FDs) != 1 {
			t.Fatalf("echo: %+v fds %v", a, f.FDs)
		}
		f.CloseFDs()
	}
	resp, err := hc.Get("http://vcored/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nothing: %d", resp.StatusCode)
	}

	stop()
	// Shutdown closed the wire connection and removed the socket.
	if _, err := w.Recv(); err == nil {
		t.Fatal("wire connection still open after Close")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, 0o600, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := echoServer(t, l)
	defer stop()
	if l2, err := Listen(path, 0o600, -1, nil); !errors.Is(err, ErrInUse) {
		if l2 != nil {
			l2.Close()
		}
		t.Fatalf("second Listen = %v, want ErrInUse", err)
	}
	// The live daemon still serves.
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello(t, c)
}

func TestListenRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close() // leaves a socket file nobody answers on
	var logs logBuf
	l, err := Listen(path, 0o600, -1, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !strings.Contains(logs.String(), "removed stale socket") {
		t.Errorf("no log of the stale socket: %q", logs.String())
	}
}

func TestListenKeepsNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path, 0o600, -1, nil); err == nil {
		l.Close()
		t.Fatal("Listen over a regular file succeeded")
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("regular file damaged: %q %v", b, err)
	}
}

func TestListenerServeStopsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, 0o600, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	entered := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- l.Serve(ctx, func(ctx context.Context, c *Conn) {
			close(entered)
			c.Recv() // blocks until shutdown closes the connection
		}, nil)
	}()
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A connection that never sends its first bytes is cut at shutdown too.
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	<-entered
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after shutdown: %v", err)
	}
	if err := l.Serve(context.Background(), nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close = %v, want ErrClosed", err)
	}
}

func TestAccessGroups(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "77"), 0o755)
	os.WriteFile(filepath.Join(root, "77", "status"), []byte("Name:\tx\nUid:\t5\t5\t5\t5\nGroups:\t4 24 1001 \nNStgid:\t77\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "78"), 0o755)
	os.WriteFile(filepath.Join(root, "78", "status"), []byte("Name:\tx\nGroups:\n"), 0o644)
	cases := []struct {
		a    Access
		p    linux.Ucred
		want bool
	}{
		{Access{Gid: -1, ProcRoot: root}, linux.Ucred{Pid: 77, Uid: 0, Gid: 0}, true},
		{Access{Gid: -1, ProcRoot: root}, linux.Ucred{Pid: 77, Uid: 5, Gid: 5}, os.Geteuid() == 5},
		{Access{Gid: 5, ProcRoot: root}, linux.Ucred{Pid: 77, Uid: 5, Gid: 5}, true},
		{Access{Gid: 1001, ProcRoot: root}, linux.Ucred{Pid: 77, Uid: 5, Gid: 5}, true},
		{Access{Gid: 1002, ProcRoot: root}, linux.Ucred{Pid: 77, Uid: 5, Gid: 5}, false},
		{Access{Gid: 1001, ProcRoot: root}, linux.Ucred{Pid: 78, Uid: 5, Gid: 5}, false},
		{Access{Gid: 1001, ProcRoot: root}, linux.Ucred{Pid: 79, Uid: 5, Gid: 5}, false}, // no such pid
	}
	for _, c := range cases {
		if got, why := c.a.Allowed(c.p); got != c.want {
			t.Errorf("%+v.Allowed(%+v) = %v (%s), want %v", c.a, c.p, got, why, c.want)
		}
	}
}

// TestHelperClient is not a test: re-executed with helperEnv set, it dials
// the socket named by VCORED_WIRE_SOCKET with both protocols and prints what
// happened, for tests that need a client with other credentials.
func TestHelperClient(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process only")
	}
	path := os.Getenv("VCORED_WIRE_SOCKET")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wireResult := func() string {
		c, err := Dial(ctx, path)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		if err := c.SendMsg(&Hello{Role: RoleWorker, Pid: os.Getpid(), Version: Version}); err != nil {
			return "send: " + err.Error()
		}
		f, err := c.RecvContext(ctx)
		if err != nil {
			return "recv: " + err.Error()
		}
		return "ok " + f.Type.String()
	}()
	httpResult := func() string {
		hc := unixHTTPClient(path)
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("http://vcored/peer")
		if err != nil {
			return "get: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("ok %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}()
	fmt.Printf("wire=%s\nhttp=%s\n", wireResult, httpResult)
}

// runAs runs TestHelperClient as uid/gid (and supplementary groups) against
// the socket at path and returns its "wire=" and "http=" lines.
func runAs(t *testing.T, bin, path string, uid, gid uint32, groups []uint32) (wireRes, httpRes string) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestHelperClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "VCORED_WIRE_SOCKET="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	cmd.Dir = filepath.Dir(bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as %d:%d: %v\n%s", uid, gid, err, out)
	}
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "wire="); ok {
			wireRes = v
		}
		if v, ok := strings.CutPrefix(line, "http="); ok {
			httpRes = v
		}
	}
	return wireRes, httpRes
}

// nobodyDir makes a directory user nobody can enter, holding a copy of the
// test binary (go test's own build directory is private to root).
func nobodyDir(t *testing.T) (dir, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("vcored-wire-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "wire.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

func TestListenerPeerCredentials(t *testing.T) {
	dir, bin := nobodyDir(t)
	const nobody = 65534
	cases := []struct {
		name     string
		gid      int // listener's group
		groups   []uint32
		allowed  bool
		inLogFor string
	}{
		{"nobody refused", -1, nil, false, "uid=65534"},
		{"primary group allowed", nobody, nil, true, ""},
		{"supplementary group allowed", 4242, []uint32{4242}, true, ""},
		{"other group refused", 4242, []uint32{4243}, false, "not in group 4242"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("s%d.sock", i))
			var logs logBuf
			// 0666 for this test only, so that the kernel lets nobody
			// connect and the peer check is what decides.
			l, err := Listen(path, 0o666, c.gid, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			stop := echoServer(t, l)
			defer stop()
			wireRes, httpRes := runAs(t, bin, path, nobody, nobody, c.groups)
			if c.allowed {
				if wireRes != "ok HelloOK" || !strings.HasPrefix(httpRes, `ok 200 {"Pid":`) || !strings.Contains(httpRes, `"Uid":65534`) {
					t.Fatalf("allowed client: wire=%q http=%q\nlog:\n%s", wireRes, httpRes, logs.String())
				}
				if strings.Contains(logs.String(), "refused") {
					t.Fatalf("allowed client was refused:\n%s", logs.String())
				}
				return
			}
			if strings.HasPrefix(wireRes, "ok") || strings.HasPrefix(httpRes, "ok") {
				t.Fatalf("refused client got answers: wire=%q http=%q", wireRes, httpRes)
			}
			// Two connections (wire, HTTP), each refused and logged.
			log := logs.String()
			if n := strings.Count(log, "refused connection"); n != 2 || !strings.Contains(log, c.inLogFor) {
				t.Fatalf("want 2 refusals mentioning %q, log:\n%s", c.inLogFor, log)
			}
		})
	}
}
