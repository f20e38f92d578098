package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// ExternalDataspace is a local dataspace declared for an external worker
// (a container placed by the NRI plugin), like [[subsystem.dataspace]].
type ExternalDataspace struct {
	Name    string `json:"name"`
	Size    uint64 `json:"size"`
	Content string `json:"content,omitempty"` // "zero" (default) or "pattern"
	Seed    uint64 `json:"seed,omitempty"`
}

// ExternalRequest is the body of POST /v1/external on a vcore socket
// (root only): place a container on the vcore's partition.
type ExternalRequest struct {
	// ID is the container's id (the registry's key).
	ID string `json:"id"`
	// Cgroup is the container's cgroup path as /proc/<pid>/cgroup shows it
	// to the vcore (cpuset hierarchy on v1, unified on v2), with a leading
	// "/".
	Cgroup    string `json:"cgroup"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	// CPUs is how many exclusive CPUs of the partition it gets (>= 1).
	CPUs int `json:"cpus"`
	// CPUSet, if set, asks for exactly these CPUs (a running container
	// registered again keeps the CPUs it runs on); they must be free.
	CPUSet string `json:"cpuset,omitempty"`
	// Memory is accounted in the partition (its memory limit), > 0.
	Memory uint64 `json:"memory"`
	// Dataspaces are its workers' local dataspaces; Shared names core-owned
	// dataspaces they may attach.
	Dataspaces []ExternalDataspace `json:"dataspaces,omitempty"`
	Shared     []string            `json:"shared,omitempty"`
}

// External is a container placed on a vcore's partition (GET /v1/external,
// and the answer to POST).
type External struct {
	ExternalRequest
	Node            int       `json:"node"`
	Assigned        string    `json:"assigned"` // the CPUs it was given
	Mems            string    `json:"mems"`
	Socket          string    `json:"socket"` // the vcore's socket on the host
	QuotaUsedBytes  uint64    `json:"quota_used_bytes"`
	QuotaLimitBytes uint64    `json:"quota_limit_bytes"`
	Workers         int       `json:"workers"` // uffds held for its processes
	Created         time.Time `json:"created"`
}

// ErrorBody is the JSON body of a refused request.
type ErrorBody struct {
	Error string `json:"error"`
}

// StatusError is a non-2xx answer of Do.
type StatusError struct {
	Code int
	Msg  string
	// Socket, Method and Path name the request, for the message.
	Socket, Method, Path string
}

func (e *StatusError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("%d %s: %s", e.Code, http.StatusText(e.Code), e.Msg)
	}
	return fmt.Sprintf("%s %s %s: %d %s: %s", e.Socket, e.Method, e.Path, e.Code, http.StatusText(e.Code), e.Msg)
}

// Do sends method path with body (JSON, may be nil) and decodes a 2xx
// answer into v (may be nil). A non-2xx answer is a *StatusError carrying
// the server's message.
func (c *Client) Do(ctx context.Context, method, path string, body, v any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vcored"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s %s: %w", c.Socket, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s %s: %w", c.Socket, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = string(bytes.TrimSpace(data))
		}
		return &StatusError{Code: resp.StatusCode, Msg: eb.Error, Socket: c.Socket, Method: method, Path: path}
	}
	if v == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s %s %s: decode: %w", c.Socket, method, path, err)
	}
	return nil
}

// WriteError answers code with an ErrorBody.
func WriteError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// ExternalCapacity is GET /v1/external/capacity on a vcore: what a new
// container could still get on its partition.
type ExternalCapacity struct {
	Node       int    `json:"node"`
	FreeCPUs   int    `json:"free_cpus"`
	FreeCPUSet string `json:"free_cpuset"`
	FreeMemory uint64 `json:"free_memory"`
	Mems       string `json:"mems"`
	Socket     string `json:"socket"`
}
