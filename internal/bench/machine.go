package bench

import (
	"bufio"
	"bytes"
	"io/fs"
	"strings"

	"github.com/vcored/vcored/topology"
)

// Machine describes where the bench ran (the JSON's "machine").
type Machine struct {
	Kernel     string `json:"kernel"`
	CPUs       int    `json:"cpus"`
	CPUList    string `json:"cpu_list"`
	Nodes      int    `json:"nodes"`
	NodeList   string `json:"node_list"`
	CgroupMode string `json:"cgroup_mode"`
	Model      string `json:"model,omitempty"`
	// Virtualized is true under a hypervisor (the "hypervisor" CPU flag).
	Virtualized bool `json:"virtualized"`
	// Emulated is true when the CPU looks emulated (qemu TCG): timings are
	// then not those of real hardware. Best effort.
	Emulated bool `json:"emulated"`
	// Hypervisor is what was recognised ("qemu", "kvm", …; "" unknown).
	Hypervisor string `json:"hypervisor,omitempty"`
}

// DescribeMachine fills a Machine from the discovered topology and the
// procfs and sysfs roots (os.DirFS("/proc"), os.DirFS("/sys")).
// cgroupMode is passed in ("v1", "hybrid", "v2").
func DescribeMachine(m *topology.Machine, procfs, sysfs fs.FS, cgroupMode string) Machine {
	online := m.OnlineCPUs()
	d := Machine{
		CPUs: online.Len(), CPUList: online.String(),
		Nodes: len(m.Nodes), NodeList: m.NodeIDs().String(),
		CgroupMode: cgroupMode, Model: m.Model,
	}
	if b, err := fs.ReadFile(procfs, "sys/kernel/osrelease"); err == nil {
		d.Kernel = strings.TrimSpace(string(b))
	}
	var flags, model string
	if b, err := fs.ReadFile(procfs, "cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "flags":
				if flags == "" {
					flags = v
				}
			case "model name":
				if model == "" {
					model = strings.TrimSpace(v)
				}
			}
		}
	}
	if d.Model == "" {
		d.Model = model
	}
	d.Virtualized = strings.Contains(" "+flags+" ", " hypervisor ")
	var vendor string
	for _, f := range []string{"class/dmi/id/sys_vendor", "class/dmi/id/product_name"} {
		if b, err := fs.ReadFile(sysfs, f); err == nil {
			vendor += " " + strings.TrimSpace(string(b))
		}
	}
	qemuCPU := strings.Contains(model, "QEMU") || strings.Contains(model, "TCG")
	switch {
	case qemuCPU:
		// qemu's own CPU models ("QEMU Virtual CPU") are what TCG shows;
		// KVM guests normally see the host's model.
		d.Hypervisor, d.Emulated = "qemu", true
	case strings.Contains(vendor, "QEMU") && d.Virtualized:
		d.Hypervisor = "qemu"
	case d.Virtualized:
		if b, err := fs.ReadFile(sysfs, "hypervisor/type"); err == nil {
			d.Hypervisor = strings.TrimSpace(string(b))
		}
	}
	return d
}
