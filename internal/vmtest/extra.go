package vmtest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Extra is a host file installed in the guest (a tool a test runs there,
// such as containerd or runc).
type Extra struct {
	Host  string // path on the host
	Guest string // absolute path in the guest
}

// DefaultExtraDir is where an extra binary goes in the guest when no path
// is given (on the guest's PATH).
const DefaultExtraDir = "/usr/bin"

// ParseExtra parses "HOST[=GUEST]"; GUEST defaults to
// DefaultExtraDir/<base name of HOST>.
func ParseExtra(s string) (Extra, error) {
	host, guest, ok := strings.Cut(s, "=")
	if host == "" || (ok && guest == "") {
		return Extra{}, fmt.Errorf("vmtest: extra %q: want HOST[=GUEST]", s)
	}
	if !ok {
		guest = path.Join(DefaultExtraDir, filepath.Base(host))
	}
	if !path.IsAbs(guest) {
		return Extra{}, fmt.Errorf("vmtest: extra %q: the guest path must be absolute", s)
	}
	return Extra{Host: host, Guest: path.Clean(guest)}, nil
}

// ErrNotELF is wrapped when WithLibs is given something that is not an ELF
// executable.
var ErrNotELF = errors.New("vmtest: not an ELF file")

// WithLibs returns x plus, when x.Host is a dynamically linked ELF binary,
// its ELF interpreter and every shared library ldd lists for it, each at
// its host path in the guest (the guest has no other libraries). A static
// binary or a script is returned alone.
func WithLibs(x Extra) ([]Extra, error) {
	out := []Extra{x}
	f, err := elf.Open(x.Host)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return out, nil // a script or data: no libraries
		}
		return nil, fmt.Errorf("vmtest: extra %s: %w", x.Host, err)
	}
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				f.Close()
				return nil, fmt.Errorf("vmtest: extra %s: PT_INTERP: %w", x.Host, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	f.Close()
	if interp == "" {
		return out, nil // static
	}
	ldd, err := exec.Command("ldd", x.Host).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("vmtest: extra %s: ldd: %w\n%s", x.Host, err, ldd)
	}
	libs, err := parseLdd(string(ldd))
	if err != nil {
		return nil, fmt.Errorf("vmtest: extra %s: %w", x.Host, err)
	}
	seen := map[string]bool{}
	for _, l := range append([]string{interp}, libs...) {
		if !seen[l] {
			seen[l] = true
			out = append(out, Extra{Host: l, Guest: l})
		}
	}
	return out, nil
}

// parseLdd returns the absolute library paths of ldd's output
// ("libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)",
// "/lib64/ld-linux-x86-64.so.2 (0x…)"); the vdso has no file. A library
// ldd could not find is an error.
func parseLdd(s string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.Contains(line, "statically linked") {
			continue
		}
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd: %s", line)
		}
		p := line
		if _, after, ok := strings.Cut(line, "=>"); ok {
			p = strings.TrimSpace(after)
		}
		p, _, _ = strings.Cut(p, " (")
		if path.IsAbs(p) {
			out = append(out, p)
		}
	}
	return out, nil
}
