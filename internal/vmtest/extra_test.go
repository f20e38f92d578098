package vmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseExtra(t *testing.T) {
	for in, want := range map[string]Extra{
		"bin/x/containerd":        {"bin/x/containerd", "/usr/bin/containerd"},
		"/usr/sbin/runc=/sbin/rc": {"/usr/sbin/runc", "/sbin/rc"},
		"a=/x/../y":               {"a", "/y"},
	} {
		got, err := ParseExtra(in)
		if err != nil || got != want {
			t.Errorf("ParseExtra(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "=/x", "a=", "a=rel/path"} {
		if x, err := ParseExtra(bad); err == nil {
			t.Errorf("ParseExtra(%q) = %+v, want an error", bad, x)
		}
	}
}

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffd6b7e2000)
	libseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f0400945000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0400763000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f0400978000)
`
	got, err := parseLdd(out)
	want := []string{"/lib/x86_64-linux-gnu/libseccomp.so.2", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("parseLdd = %q, %v; want %q", got, err, want)
	}
	if got, err := parseLdd("\tnot a dynamic executable\n"); err != nil || len(got) != 0 {
		t.Errorf("parseLdd(static) = %q, %v", got, err)
	}
	if _, err := parseLdd("\tlibfoo.so.1 => not found\n"); err == nil || !strings.Contains(err.Error(), "libfoo.so.1") {
		t.Errorf("parseLdd with a missing library: %v, want an error naming it", err)
	}
}

// TestWithLibs: a dynamic binary of the host comes with its interpreter and
// the libraries ldd lists (and those exist on the host); a static one and
// a script come alone.
func TestWithLibs(t *testing.T) {
	if inGuest() {
		t.Skip("in the vmtest guest: no ldd, no dynamic binaries")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	dyn, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls")
	}
	xs, err := WithLibs(Extra{Host: dyn, Guest: "/usr/bin/ls"})
	if err != nil {
		t.Fatal(err)
	}
	if xs[0] != (Extra{Host: dyn, Guest: "/usr/bin/ls"}) {
		t.Errorf("first extra %+v, want the binary itself", xs[0])
	}
	var libc, interp bool
	for _, x := range xs[1:] {
		if x.Host != x.Guest || !filepath.IsAbs(x.Host) {
			t.Errorf("library %+v: want the same absolute path on both sides", x)
		}
		if _, err := os.Stat(x.Host); err != nil {
			t.Errorf("library %s: %v", x.Host, err)
		}
		libc = libc || strings.Contains(filepath.Base(x.Host), "libc.so")
		interp = interp || strings.HasPrefix(filepath.Base(x.Host), "ld-")
	}
	if !libc || !interp {
		t.Errorf("%s's extras %+v lack libc (%v) or the ELF interpreter (%v)", dyn, xs, libc, interp)
	}
	// A static binary: busybox-static, when present.
	if bb, err := exec.LookPath("busybox"); err == nil {
		if xs, err := WithLibs(Extra{Host: bb, Guest: "/bin/busybox"}); err != nil || len(xs) != 1 {
			t.Errorf("WithLibs(static %s) = %+v, %v; want it alone", bb, xs, err)
		}
	}
	script := filepath.Join(t.TempDir(), "s.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	if xs, err := WithLibs(Extra{Host: script, Guest: "/usr/bin/s"}); err != nil || len(xs) != 1 {
		t.Errorf("WithLibs(script) = %+v, %v; want it alone", xs, err)
	}
	if _, err := WithLibs(Extra{Host: filepath.Join(t.TempDir(), "missing"), Guest: "/x"}); err == nil {
		t.Error("WithLibs(missing file) succeeded")
	}
}

// TestWriteInitramfsExtras: extras land at their guest paths with their
// parent directories, each once; a relative guest path is refused.
func TestWriteInitramfsExtras(t *testing.T) {
	img := fakeImage(t)
	dir := t.TempDir()
	lib := filepath.Join(dir, "libc.so.6")
	tool := filepath.Join(dir, "tool")
	os.WriteFile(lib, []byte("LIBC"), 0o644)
	os.WriteFile(tool, []byte("TOOL"), 0o755)
	img.Extras = []Extra{{tool, "/usr/bin/tool"}, {lib, "/lib/x86_64-linux-gnu/libc.so.6"}, {lib, "/lib/x86_64-linux-gnu/libc.so.6"}, {tool, "/opt/a/b/tool2"}}
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, img); err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	for _, e := range readNewc(t, buf.Bytes()) {
		if _, dup := entries[e.name]; dup {
			t.Errorf("%s twice in the archive", e.name)
		}
		entries[e.name] = e
	}
	for name, data := range map[string]string{"usr/bin/tool": "TOOL", "lib/x86_64-linux-gnu/libc.so.6": "LIBC", "opt/a/b/tool2": "TOOL"} {
		if e, ok := entries[name]; !ok || e.data != data || e.mode&0o111 == 0 {
			t.Errorf("%s: %q mode %o (present %v), want %q, executable", name, e.data, e.mode, ok, data)
		}
	}
	for _, d := range []string{"lib", "lib/x86_64-linux-gnu", "opt", "opt/a", "opt/a/b"} {
		if e, ok := entries[d]; !ok || e.mode&0o170000 != cpioDir {
			t.Errorf("%s: not a directory in the archive", d)
		}
	}
	img.Extras = []Extra{{tool, "usr/bin/tool"}}
	if err := WriteInitramfs(&bytes.Buffer{}, img); err == nil {
		t.Error("an extra with a relative guest path was accepted")
	}
}
