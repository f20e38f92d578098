package linux

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vcored/vcored/internal/hw"
)

// Memory policy modes and flags (linux/mempolicy.h).
const (
	MPOL_DEFAULT             = unix.MPOL_DEFAULT
	MPOL_PREFERRED           = unix.MPOL_PREFERRED
	MPOL_BIND                = unix.MPOL_BIND
	MPOL_INTERLEAVE          = unix.MPOL_INTERLEAVE
	MPOL_LOCAL               = unix.MPOL_LOCAL
	MPOL_PREFERRED_MANY      = unix.MPOL_PREFERRED_MANY
	MPOL_WEIGHTED_INTERLEAVE = unix.MPOL_WEIGHTED_INTERLEAVE
	MPOL_F_STATIC_NODES      = unix.MPOL_F_STATIC_NODES   // mode flag
	MPOL_F_RELATIVE_NODES    = unix.MPOL_F_RELATIVE_NODES // mode flag
	MPOL_F_NODE              = unix.MPOL_F_NODE           // get_mempolicy flag
	MPOL_F_ADDR              = unix.MPOL_F_ADDR           // get_mempolicy flag
	MPOL_F_MEMS_ALLOWED      = unix.MPOL_F_MEMS_ALLOWED   // get_mempolicy flag
	MPOL_MF_STRICT           = unix.MPOL_MF_STRICT        // mbind flag
	MPOL_MF_MOVE             = unix.MPOL_MF_MOVE          // mbind flag
	MPOL_MF_MOVE_ALL         = unix.MPOL_MF_MOVE_ALL      // mbind flag
	mempolicyMaskBits        = 1024                       // nodes get_mempolicy can report
	mempolicyMaskWords       = mempolicyMaskBits / 64
)

// nodeMask encodes nodes as the kernel's unsigned long bitmap and returns the
// maxnode argument for it (the kernel ignores the last bit it is told of, so
// maxnode is one more than the bits passed).
func nodeMask(nodes hw.NodeSet) (mask []uint64, maxnode uintptr, err error) {
	ids := nodes.Slice()
	if len(ids) == 0 {
		return nil, 0, nil
	}
	top := int(ids[len(ids)-1])
	if ids[0] < 0 || top >= mempolicyMaskBits {
		return nil, 0, fmt.Errorf("node set %s: %w (node ids must be in 0..%d)", nodes, unix.EINVAL, mempolicyMaskBits-1)
	}
	mask = make([]uint64, top/64+1)
	for _, n := range ids {
		mask[n/64] |= 1 << (uint(n) % 64)
	}
	return mask, uintptr(len(mask)*64 + 1), nil
}

func maskPtr(mask []uint64) uintptr {
	if len(mask) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&mask[0]))
}

// Mbind sets the memory policy of [addr, addr+length) (mbind(2)): mode is
// MPOL_* (optionally or-ed with MPOL_F_STATIC_NODES/RELATIVE_NODES), flags
// MPOL_MF_*. With MPOL_MF_STRICT, pages already present elsewhere make it
// fail with EIO.
func Mbind(addr, length uintptr, mode int, nodes hw.NodeSet, flags int) error {
	mask, maxnode, err := nodeMask(nodes)
	if err != nil {
		return fmt.Errorf("mbind %#x+%#x: %w", addr, length, err)
	}
	_, _, errno := unix.Syscall6(unix.SYS_MBIND, addr, length, uintptr(mode), maskPtr(mask), maxnode, uintptr(flags))
	if errno != 0 {
		return fmt.Errorf("mbind %#x+%#x mode %d nodes %q flags %#x: %w", addr, length, mode, nodes.String(), flags, errno)
	}
	return nil
}

// SetMempolicy sets the calling thread's default memory policy
// (set_mempolicy(2)); MPOL_DEFAULT takes an empty set.
func SetMempolicy(mode int, nodes hw.NodeSet) error {
	mask, maxnode, err := nodeMask(nodes)
	if err != nil {
		return fmt.Errorf("set_mempolicy: %w", err)
	}
	_, _, errno := unix.Syscall(unix.SYS_SET_MEMPOLICY, uintptr(mode), maskPtr(mask), maxnode)
	if errno != 0 {
		return fmt.Errorf("set_mempolicy mode %d nodes %q: %w", mode, nodes.String(), errno)
	}
	return nil
}

// GetMempolicy returns a policy (get_mempolicy(2)): the calling thread's,
// or with MPOL_F_ADDR the one of the VMA holding addr. With MPOL_F_NODE|
// MPOL_F_ADDR, mode is the node of the page at addr (faulting it in). With
// MPOL_F_MEMS_ALLOWED, nodes are the ones the thread may use.
func GetMempolicy(addr uintptr, flags int) (mode int, nodes hw.NodeSet, err error) {
	var m int32
	var mask [mempolicyMaskWords]uint64
	_, _, errno := unix.Syscall6(unix.SYS_GET_MEMPOLICY, uintptr(unsafe.Pointer(&m)),
		uintptr(unsafe.Pointer(&mask[0])), mempolicyMaskBits, addr, uintptr(flags), 0)
	if errno != 0 {
		return 0, hw.NodeSet{}, fmt.Errorf("get_mempolicy addr %#x flags %#x: %w", addr, flags, errno)
	}
	var ids []hw.Node
	for w, word := range mask {
		for b := 0; b < 64; b++ {
			if word&(1<<uint(b)) != 0 {
				ids = append(ids, hw.Node(w*64+b))
			}
		}
	}
	return int(m), hw.NewSet(ids...), nil
}

// PageNodes status values that are not node ids.
const (
	// PageNotPresent: the page is not populated (-ENOENT). Older kernels
	// (6.1) report PageNoFrame for a page that was never populated.
	PageNotPresent = -int(unix.ENOENT)
	// PageNoFrame: the shared zero page, or an address not mapped (-EFAULT).
	PageNoFrame = -int(unix.EFAULT)
)

// PageNodes asks where pages live (move_pages(2) in query mode): for each
// address of process pid (0 = the caller), the node holding its page, or a
// negative errno: PageNotPresent (-ENOENT), PageNoFrame (-EFAULT: the zero
// page or an unmapped address).
func PageNodes(pid int, addrs []uintptr) ([]int, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	status := make([]int32, len(addrs))
	_, _, errno := unix.Syscall6(unix.SYS_MOVE_PAGES, uintptr(pid), uintptr(len(addrs)),
		uintptr(unsafe.Pointer(&addrs[0])), 0, uintptr(unsafe.Pointer(&status[0])), 0)
	if errno != 0 {
		return nil, fmt.Errorf("move_pages pid %d (%d pages from %#x): %w", pid, len(addrs), addrs[0], errno)
	}
	out := make([]int, len(addrs))
	for i, s := range status {
		out[i] = int(s)
	}
	return out, nil
}
