package vcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

// TestHelperProtocol is a worker of a subsystem speaking the wire protocol
// by hand (re-exec'd test binary): it checks the vcore's answers to what an
// outside developer may send, and that a connection is not the lifetime of
// its memory. It writes "ok" or what went wrong to $VCORED_TEST_RESULT.
func TestHelperProtocol(t *testing.T) {
	if os.Getenv(helperEnv) != "protocol" {
		t.Skip("helper process")
	}
	msg := "ok"
	if err := runProtocolWorker(os.Getenv("VCORE_SOCKET")); err != nil {
		msg = err.Error()
	}
	if err := os.WriteFile(os.Getenv("VCORED_TEST_RESULT"), []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// greeted dials the vcore and says Hello with version.
func greeted(socket string, version int) (*wire.Conn, error) {
	c, err := wire.Dial(context.Background(), socket)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.SendMsg(&wire.Hello{Role: wire.RoleWorker, Pid: os.Getpid(), Node: 0, Version: version}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// answer reads one message.
func answer(c *wire.Conn) (wire.Message, error) {
	f, err := c.Recv()
	if err != nil {
		return nil, err
	}
	f.CloseFDs()
	return wire.Decode(f)
}

func hello(socket string) (*wire.Conn, error) {
	c, err := greeted(socket, wire.Version)
	if err != nil {
		return nil, err
	}
	m, err := answer(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	if _, ok := m.(*wire.HelloOK); !ok {
		c.Close()
		return nil, fmt.Errorf("Hello answered %T %+v", m, m)
	}
	return c, nil
}

// attachAnswer sends a and returns the AttachOK, or the AttachErr as error.
func attachAnswer(c *wire.Conn, a *wire.Attach, fds ...int) (*wire.AttachOK, error) {
	if err := c.SendMsg(a, fds...); err != nil {
		return nil, err
	}
	m, err := answer(c)
	if err != nil {
		return nil, err
	}
	switch x := m.(type) {
	case *wire.AttachOK:
		return x, nil
	case *wire.AttachErr:
		return nil, x
	}
	return nil, fmt.Errorf("Attach answered %T %+v", m, m)
}

func wantAttachErr(err error, code wire.ErrCode, contains string) error {
	var ae *wire.AttachErr
	if !errors.As(err, &ae) || ae.Code != code || !strings.Contains(ae.Msg, contains) {
		return fmt.Errorf("got %v, want AttachErr %s mentioning %q", err, code, contains)
	}
	return nil
}

func runProtocolWorker(socket string) error {
	ps := os.Getpagesize()
	// A version the vcore does not speak: Error{version}.
	c, err := greeted(socket, wire.Version+1)
	if err != nil {
		return err
	}
	m, err := answer(c)
	c.Close()
	if e, ok := m.(*wire.Error); !ok || e.Code != wire.CodeVersion {
		return fmt.Errorf("Hello version %d: %v %+v, want Error{version}", wire.Version+1, err, m)
	}

	// A malformed header (reserved flag bits): Error{bad-request}, then
	// the connection closes.
	nc, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	uc := nc.(*net.UnixConn)
	if _, err := uc.Write([]byte(wire.Magic)); err != nil {
		return err
	}
	c, err = wire.NewConn(uc)
	if err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.SendMsg(&wire.Hello{Role: wire.RoleWorker, Pid: os.Getpid(), Node: 0, Version: wire.Version}); err != nil {
		return err
	}
	if m, err := answer(c); err != nil {
		return fmt.Errorf("Hello: %v %+v", err, m)
	}
	bad := []byte{0, 0, 0, 0, byte(wire.TypeDetach), 0, 0x10, 0} // reserved flag bit 4
	if _, err := uc.Write(bad); err != nil {
		return err
	}
	m, err = answer(c)
	if e, ok := m.(*wire.Error); !ok || e.Code != wire.CodeBadRequest || !strings.Contains(e.Msg, "reserved") {
		return fmt.Errorf("malformed header: %v %+v, want Error{bad-request} naming it", err, m)
	}
	if _, err := answer(c); err == nil {
		return errors.New("the connection stayed open after a malformed header")
	}
	c.Close()

	mem, err := linux.Mmap(16*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS|linux.MAP_NORESERVE)
	if err != nil {
		return err
	}
	addr := uint64(uintptr(unsafe.Pointer(&mem[0])))
	u, err := linux.OpenUffd()
	if err != nil {
		return err
	}
	c, err = hello(socket)
	if err != nil {
		return err
	}
	// A descriptor that is not a userfaultfd: bad-request, the connection
	// goes on (and the next Attach must bring the uffd).
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	_, err = attachAnswer(c, &wire.Attach{Name: "data", Addr: addr, Length: uint64(8 * ps)}, int(r.Fd()))
	r.Close()
	w.Close()
	if err := wantAttachErr(err, wire.CodeBadRequest, "not a userfaultfd"); err != nil {
		return fmt.Errorf("a pipe as the uffd: %w", err)
	}
	ok, err := attachAnswer(c, &wire.Attach{Name: "data", Addr: addr, Length: uint64(8 * ps)}, u.FD())
	if err != nil {
		return fmt.Errorf("attach data: %w", err)
	}
	if ok.Content != wire.ContentPattern || ok.Seed != localSeed {
		return fmt.Errorf("AttachOK %+v", ok)
	}
	// Who defines what: denied for another subsystem's or core's
	// dataspace this one does not list, not-found for nobody's.
	for _, x := range []struct {
		name, contains string
		code           wire.ErrCode
	}{
		{"theirs", "local to subsystem other", wire.CodeDenied},
		{"offered", "offered by core", wire.CodeDenied},
		{"nosuch", "no dataspace", wire.CodeNotFound},
	} {
		_, err := attachAnswer(c, &wire.Attach{Name: x.name, Addr: addr + uint64(8*ps), Length: uint64(ps)})
		if err := wantAttachErr(err, x.code, x.contains); err != nil {
			return fmt.Errorf("attach %s: %w", x.name, err)
		}
	}
	// The content the worker expects is checked.
	_, err = attachAnswer(c, &wire.Attach{Name: "data", Addr: addr + uint64(8*ps), Length: uint64(ps), Content: wire.ContentPattern, Seed: localSeed + 1})
	if err := wantAttachErr(err, wire.CodeBadRequest, fmt.Sprintf("pattern (seed %d)", localSeed)); err != nil {
		return fmt.Errorf("attach with another seed: %w", err)
	}
	// An overlap of a region in use (a page of it served) names the region
	// it overlaps. (An overlapped region the worker has no page of is
	// replaced instead: internal/e2e TestReattachSoakWithVCoreKills.)
	if err := content.VerifyPattern(mem[4*ps:5*ps], localSeed, uint64(4*ps)); err != nil {
		return fmt.Errorf("page 4 of data: %w", err)
	}
	_, err = attachAnswer(c, &wire.Attach{Name: "data", Addr: addr + uint64(4*ps), Length: uint64(8 * ps)})
	if err := wantAttachErr(err, wire.CodeBadRequest, fmt.Sprintf("registered %#x+%#x", addr, 8*ps)); err != nil {
		return fmt.Errorf("overlapping attach: %w", err)
	}

	// The connection ends: the memory stays served.
	c.Close()
	time.Sleep(100 * time.Millisecond)
	if err := content.VerifyPattern(mem[:4*ps], localSeed, 0); err != nil {
		return fmt.Errorf("after the connection closed: %w", err)
	}
	// Reconnect with the same uffd and the same region: AttachOK again, and
	// a new region on the same uffd is served too.
	c, err = hello(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := attachAnswer(c, &wire.Attach{Name: "data", Addr: addr, Length: uint64(8 * ps)}, u.FD()); err != nil {
		return fmt.Errorf("re-attach after reconnecting: %w", err)
	}
	if _, err := attachAnswer(c, &wire.Attach{Name: "data", Addr: addr + uint64(8*ps), Length: uint64(8 * ps)}); err != nil {
		return fmt.Errorf("new attach after reconnecting: %w", err)
	}
	if err := content.VerifyPattern(mem[4*ps:8*ps], localSeed, uint64(4*ps)); err != nil {
		return fmt.Errorf("after reconnecting: %w", err)
	}
	if err := content.VerifyPattern(mem[8*ps:], localSeed, 0); err != nil {
		return fmt.Errorf("second region: %w", err)
	}
	return nil
}

// TestWorkerProtocolAnswers: version mismatch, malformed header, a
// descriptor that is not a userfaultfd, denied vs not-found, a wrong
// content, an overlap — each gets the documented answer; a closed
// connection leaves the memory served; a reconnect with the same uffd
// goes on with it (core is told once, never told to drop it).
func TestWorkerProtocolAnswers(t *testing.T) {
	e := newTestEnv(t)
	e.core.set(func(fc *fakeCore) {
		fc.grant.Dataspaces = append(fc.grant.Dataspaces, wire.DataspaceInfo{Name: "offered", Size: uint64(hw.MiB)})
	})
	result := filepath.Join(e.dir, "protocol.result")
	cfg := e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "proto"
command = [%q, "-test.run=^TestHelperProtocol$", "-test.count=1"]
memory = "64MiB"
restart = "never"
dataspaces = ["shared"]
env = { %s = "protocol", VCORED_TEST_RESULT = %q }

[[subsystem.dataspace]]
name = "data"
size = "1MiB"
content = "pattern"
seed = %d

[[subsystem]]
name = "other"
command = ["sleep", "infinity"]
memory = "32MiB"

[[subsystem.dataspace]]
name = "theirs"
size = "1MiB"
`, os.Args[0], helperEnv, result, localSeed))
	e.startVCore(t, cfg)
	waitFor(t, "the worker's result", func() bool { _, err := os.Stat(result); return err == nil })
	time.Sleep(50 * time.Millisecond)
	b, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "ok" {
		t.Fatalf("worker: %s", b)
	}
	_, adds, _, removes, _, _ := e.core.snapshot()
	if len(adds) != 1 {
		t.Errorf("core got %d UffdAdd, want 1 (a re-sent uffd is the one held)", len(adds))
	}
	// The worker has exited by now or soon; until then nothing was removed
	// because of a closed connection.
	var p api.Pager
	if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
		t.Fatal(err)
	}
	if s := subsystemStatus(t, cfg.Socket, "proto"); s.State == "running" && (len(removes) != 0 || p.Uffds != 1) {
		t.Errorf("worker still running, but core was told to drop %v and the vcore holds %d uffds", removes, p.Uffds)
	}
	if len(adds) == 1 {
		waitFor(t, "UffdRemove when the worker exits", func() bool {
			_, _, _, removes, _, _ := e.core.snapshot()
			return slices.Contains(removes, adds[0].UffdID)
		})
	}
}
