package linux

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/vcored/vcored/internal/hw"
)

func TestMbindNode0PageNodes(t *testing.T) {
	ps := PageSize()
	const pages = 4
	mem, err := Mmap(pages*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	node0 := hw.NewSet[hw.Node](0)
	if err := Mbind(base, uintptr(len(mem)), MPOL_BIND, node0, MPOL_MF_STRICT); err != nil {
		t.Fatal(err)
	}
	mode, nodes, err := GetMempolicy(base, MPOL_F_ADDR)
	if err != nil {
		t.Fatal(err)
	}
	if mode != MPOL_BIND || !nodes.Equal(node0) {
		t.Errorf("policy of the range: mode %d nodes %s, want MPOL_BIND 0", mode, nodes)
	}
	// Touch all pages but the last.
	for p := 0; p < pages-1; p++ {
		mem[p*ps] = 1
	}
	addrs := make([]uintptr, pages)
	for i := range addrs {
		addrs[i] = base + uintptr(i*ps)
	}
	got, err := PageNodes(0, addrs)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range got {
		if i == pages-1 {
			if !untouched(n) {
				t.Errorf("untouched page %d: %d, want -ENOENT (or -EFAULT before Linux 6.x)", i, n)
			}
			continue
		}
		if n != 0 {
			t.Errorf("page %d: node %d, want 0", i, n)
		}
	}
	// The same query through the explicit pid.
	if self, err := PageNodes(os.Getpid(), addrs[:1]); err != nil || self[0] != 0 {
		t.Errorf("PageNodes(own pid) = %v, %v", self, err)
	}
	if node, _, err := GetMempolicy(base, MPOL_F_ADDR|MPOL_F_NODE); err != nil || node != 0 {
		t.Errorf("GetMempolicy(F_ADDR|F_NODE) = node %d, %v", node, err)
	}
	// A node this machine lacks: EINVAL, errno identity kept.
	if _, err := os.Stat("/sys/devices/system/node/node63"); err != nil {
		err := Mbind(base, uintptr(len(mem)), MPOL_BIND, hw.NewSet[hw.Node](63), 0)
		if !errors.Is(err, EINVAL) {
			t.Errorf("mbind to absent node 63 = %v, want EINVAL", err)
		}
	}
}

func TestMempolicyThread(t *testing.T) {
	_, allowed, err := GetMempolicy(0, MPOL_F_MEMS_ALLOWED)
	if err != nil {
		t.Fatal(err)
	}
	if !allowed.Contains(0) {
		t.Fatalf("mems allowed %s lacks node 0", allowed)
	}
	done := make(chan error)
	go func() {
		// A goroutine locked to its thread that exits locked: the thread,
		// and its policy, die with it.
		lockThreadForTest()
		if err := SetMempolicy(MPOL_PREFERRED, hw.NewSet[hw.Node](0)); err != nil {
			done <- err
			return
		}
		mode, nodes, err := GetMempolicy(0, 0)
		if err == nil && (mode != MPOL_PREFERRED || !nodes.Equal(hw.NewSet[hw.Node](0))) {
			err = fmt.Errorf("thread policy mode %d nodes %s, want MPOL_PREFERRED 0", mode, nodes)
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHelperPageToucher is not a test: the re-exec'd child of
// TestPageNodesOtherProcess. It maps two pages, touches the first, prints its address
// and waits for stdin to close.
func TestHelperPageToucher(t *testing.T) {
	if os.Getenv("VCORED_LINUX_TEST_HELPER") != "toucher" {
		t.Skip("helper process for TestPageNodesOtherProcess")
	}
	mem, err := Mmap(2*PageSize(), PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	mem[0] = 1
	fmt.Printf("addr %d\n", uintptr(unsafe.Pointer(&mem[0])))
	bufio.NewReader(os.Stdin).ReadString('\n')
	os.Exit(0)
}

func TestPageNodesOtherProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPageToucher$")
	cmd.Env = append(os.Environ(), "VCORED_LINUX_TEST_HELPER=toucher")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "addr" {
		t.Fatalf("helper said %q", line)
	}
	addr, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := PageNodes(cmd.Process.Pid, []uintptr{uintptr(addr), uintptr(addr) + uintptr(PageSize())})
	if err != nil {
		t.Fatal(err)
	}
	if nodes[0] != 0 {
		t.Errorf("helper's touched page on node %d, want 0", nodes[0])
	}
	if !untouched(nodes[1]) {
		t.Errorf("helper's untouched page: %d, want -ENOENT (or -EFAULT before Linux 6.x)", nodes[1])
	}
}

// untouched reports whether a move_pages status means "no page there": the
// kernels of this project's hosts say -ENOENT, the 6.1 kernel of the qemu
// guests says -EFAULT for a page never populated.
func untouched(status int) bool { return status == PageNotPresent || status == PageNoFrame }
