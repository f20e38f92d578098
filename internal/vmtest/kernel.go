package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
)

// ErrNoKernel is returned when no guest kernel is found.
var ErrNoKernel = errors.New("vmtest: no guest kernel")

// KernelGlob is where FindKernel looks: Debian's linux-image-amd64.
const KernelGlob = "/boot/vmlinuz-*-amd64"

// FindKernel returns the newest kernel image matching KernelGlob.
func FindKernel() (string, error) {
	m, err := filepath.Glob(KernelGlob)
	if err != nil {
		return "", fmt.Errorf("vmtest: glob %s: %w", KernelGlob, err)
	}
	if len(m) == 0 {
		return "", fmt.Errorf("%w: nothing matches %s (apt-get install linux-image-amd64)", ErrNoKernel, KernelGlob)
	}
	sort.Strings(m)
	return m[len(m)-1], nil
}

// xzMagic starts an XZ stream: the compressed kernel inside a bzImage.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// CachedVmlinux returns the uncompressed ELF kernel inside the bzImage at
// path, extracting it into cacheDir the first time. Booting the ELF (qemu
// loads it through its PVH entry point) skips the in-guest decompression,
// which costs seconds under TCG. The cache key is the image's name, size and
// modification time, so an upgraded kernel is extracted again.
func CachedVmlinux(path, cacheDir string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("vmtest: kernel %s: %w", path, err)
	}
	out := filepath.Join(cacheDir, fmt.Sprintf("vmlinux-%s-%d-%d", filepath.Base(path), st.Size(), st.ModTime().Unix()))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vmtest: read kernel %s: %w", path, err)
	}
	elf, err := ExtractVmlinux(data)
	if err != nil {
		return "", fmt.Errorf("vmtest: extract %s: %w", path, err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("vmtest: cache dir %s: %w", cacheDir, err)
	}
	tmp, err := os.CreateTemp(cacheDir, ".vmlinux-*")
	if err != nil {
		return "", fmt.Errorf("vmtest: cache dir %s: %w", cacheDir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(elf); err != nil {
		tmp.Close()
		return "", fmt.Errorf("vmtest: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("vmtest: write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("vmtest: cache %s: %w", out, err)
	}
	return out, nil
}

// ExtractVmlinux decompresses the XZ payload of a bzImage (with the xz
// tool) and returns it when it is an ELF image.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	i := bytes.Index(bzImage, xzMagic)
	if i < 0 {
		return nil, errors.New("no XZ stream in the image (not an XZ-compressed bzImage)")
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		return nil, fmt.Errorf("xz tool: %w (apt-get install xz-utils)", err)
	}
	// --single-stream stops at the end of the payload and ignores the
	// bzImage's trailing bytes.
	cmd := exec.Command(xz, "-dcq", "--single-stream")
	cmd.Stdin = bytes.NewReader(bzImage[i:])
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil && !isELF(out.Bytes()) {
		return nil, fmt.Errorf("xz -d at offset %d: %w: %s", i, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if !isELF(out.Bytes()) {
		return nil, fmt.Errorf("payload at offset %d is not an ELF image", i)
	}
	return out.Bytes(), nil
}

func isELF(b []byte) bool { return len(b) > 4 && bytes.Equal(b[:4], []byte("\x7fELF")) }
