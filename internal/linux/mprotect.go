package linux

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Mprotect sets the protection of the pages of b (page-aligned).
func Mprotect(b []byte, prot int) error {
	if err := unix.Mprotect(b, prot); err != nil {
		return fmt.Errorf("mprotect %d bytes prot %d: %w", len(b), prot, err)
	}
	return nil
}
