package nri

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/vcored/vcored/internal/config"
)

// The Kubernetes manifests under contrib/kubernetes: they parse, the TOML
// files in the ConfigMap parse as vcored configuration, and the names and
// paths agree with what the plugin and the daemons expect.

type k8sDoc struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	Spec       struct {
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		podSpec `yaml:",inline"`
	} `yaml:"spec"`
}

type k8sMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Annotations map[string]string `yaml:"annotations"`
}

type podSpec struct {
	HostPID        bool           `yaml:"hostPID"`
	InitContainers []k8sContainer `yaml:"initContainers"`
	Containers     []k8sContainer `yaml:"containers"`
	Volumes        []struct {
		Name      string                 `yaml:"name"`
		HostPath  *struct{ Path string } `yaml:"hostPath"`
		ConfigMap *struct{ Name string } `yaml:"configMap"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name         string   `yaml:"name"`
	Image        string   `yaml:"image"`
	Command      []string `yaml:"command"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	SecurityContext map[string]any `yaml:"securityContext"`
}

func readManifests(t *testing.T) map[string][]k8sDoc {
	t.Helper()
	files, err := filepath.Glob("../../contrib/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests under contrib/kubernetes: %v", err)
	}
	out := map[string][]k8sDoc{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(false)
		for i := 0; ; i++ {
			var d k8sDoc
			err := dec.Decode(&d)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if d.APIVersion == "" || d.Kind == "" || d.Metadata.Name == "" {
				t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", f, i)
			}
			out[d.Kind] = append(out[d.Kind], d)
		}
	}
	return out
}

// hostMount returns the host path behind c's mount at mountPath (exact or
// a parent), "" if none.
func hostMount(spec podSpec, c k8sContainer, path string) string {
	for _, m := range c.VolumeMounts {
		if path != m.MountPath && !strings.HasPrefix(path, m.MountPath+"/") {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return v.HostPath.Path + strings.TrimPrefix(path, m.MountPath)
			}
		}
	}
	return ""
}

func TestKubernetesManifests(t *testing.T) {
	docs := readManifests(t)
	if len(docs["ConfigMap"]) != 1 || len(docs["DaemonSet"]) != 1 || len(docs["Pod"]) != 1 {
		t.Fatalf("want one ConfigMap, one DaemonSet and one example Pod; have %v", slices.Collect(func(y func(string) bool) {
			for k, v := range docs {
				if !y(fmt.Sprintf("%s x%d", k, len(v))) {
					return
				}
			}
		}))
	}
	cm := docs["ConfigMap"][0]
	dir := t.TempDir()
	core, err := config.LoadCore(write(t, dir, "core.toml", cm.Data["core.toml"]))
	if err != nil {
		t.Fatalf("ConfigMap core.toml: %v", err)
	}
	coreDir := filepath.Dir(core.Socket)
	var vcores []*config.VCore
	seenDirs := map[string]bool{coreDir: true}
	for name, body := range cm.Data {
		if name == "core.toml" {
			continue
		}
		v, err := config.LoadVCore(write(t, dir, name, body))
		if err != nil {
			t.Fatalf("ConfigMap %s: %v", name, err)
		}
		if want := fmt.Sprintf("node%d.toml", v.Node); name != want {
			t.Errorf("ConfigMap %s has node = %d: the DaemonSet looks for %s", name, v.Node, want)
		}
		if v.CoreSocket != core.Socket {
			t.Errorf("%s: core_socket %s, core listens on %s", name, v.CoreSocket, core.Socket)
		}
		// The plugin mounts the vcore socket's directory into placed
		// containers: it must hold that vcore's socket only.
		if d := filepath.Dir(v.Socket); seenDirs[d] {
			t.Errorf("%s: socket %s shares its directory with another socket", name, v.Socket)
		} else {
			seenDirs[d] = true
		}
		vcores = append(vcores, v)
	}
	if len(vcores) == 0 {
		t.Fatal("the ConfigMap has no vcore file")
	}

	ds := docs["DaemonSet"][0]
	spec := ds.Spec.Template.Spec
	if !spec.HostPID {
		t.Error("the DaemonSet needs hostPID: the vcores check workers by the cgroup of their pid")
	}
	byName := map[string]k8sContainer{}
	for _, c := range spec.Containers {
		byName[c.Name] = c
	}
	for _, n := range []string{"core", "vcores", "nri"} {
		if _, ok := byName[n]; !ok {
			t.Fatalf("the DaemonSet has no %s container", n)
		}
	}
	flag := func(c k8sContainer, name string) string {
		if i := slices.Index(c.Command, name); i >= 0 && i+1 < len(c.Command) {
			return c.Command[i+1]
		}
		return ""
	}
	nri := byName["nri"]
	if !slices.Contains(nri.Command, "nri") {
		t.Errorf("the nri container does not run `vcored nri`: %v", nri.Command)
	}
	if got := flag(nri, "--nri-socket"); got != DefaultNRISocket || hostMount(spec, nri, got) != got {
		t.Errorf("nri: --nri-socket %q, want %s mounted from the same host path (got host %q)", got, DefaultNRISocket, hostMount(spec, nri, got))
	}
	if got := flag(nri, "--core-socket"); got != core.Socket || got != DefaultCoreSocket {
		t.Errorf("nri: --core-socket %q, core.toml says %s, the default is %s", got, core.Socket, DefaultCoreSocket)
	}
	for _, v := range vcores {
		// containerd mounts the host's directory: same path inside and out.
		if h := hostMount(spec, nri, v.Socket); h != v.Socket {
			t.Errorf("vcore socket %s is host path %q in the nri container, want the same path", v.Socket, h)
		}
		if h := hostMount(spec, byName["vcores"], v.Socket); h != v.Socket {
			t.Errorf("vcore socket %s is host path %q in the vcores container", v.Socket, h)
		}
		if hostMount(spec, byName["vcores"], v.StateDir) == "" {
			t.Errorf("vcore state_dir %s is not on a host path: a restarted pod would lose the placements", v.StateDir)
		}
		if !strings.Contains(strings.Join(byName["vcores"].Command, " "), "/etc/vcored/node$n.toml") {
			t.Error("the vcores container does not start /etc/vcored/node<N>.toml")
		}
	}
	if len(spec.InitContainers) != 1 || !strings.Contains(strings.Join(spec.InitContainers[0].Command, " "), "vcored check $files") {
		t.Error("the DaemonSet does not run `vcored check` on the node's files first")
	}
	// The shell scripts parse (POSIX sh).
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if len(c.Command) == 3 && c.Command[0] == "/bin/sh" && c.Command[1] == "-c" {
			if out, err := exec.Command("sh", "-n", "-c", c.Command[2]).CombinedOutput(); err != nil {
				t.Errorf("%s: the script does not parse: %v\n%s", c.Name, err, out)
			}
		}
	}
	if hostMount(spec, byName["core"], core.Socket) == "" || hostMount(spec, byName["core"], core.StateDir) == "" {
		t.Error("core's socket and state_dir must be on host paths")
	}
	for _, c := range []k8sContainer{byName["core"], byName["vcores"]} {
		if hostMount(spec, c, "/sys/fs/cgroup") != "/sys/fs/cgroup" {
			t.Errorf("%s: /sys/fs/cgroup is not the host's", c.Name)
		}
	}
	if priv, _ := nri.SecurityContext["privileged"].(bool); priv {
		t.Error("the nri container needs no privilege")
	}

	pod := docs["Pod"][0]
	if w := pod.Metadata.Annotations[AnnotationPartition]; w != "auto" && !strings.HasPrefix(w, "node") {
		t.Errorf("example pod: %s = %q", AnnotationPartition, w)
	}
	if _, err := ParseDataspaces(pod.Metadata.Annotations[AnnotationDataspaces]); err != nil {
		t.Errorf("example pod: %v", err)
	}
}

func write(t *testing.T, dir, name, body string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
