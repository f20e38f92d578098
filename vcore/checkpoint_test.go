package vcore

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckpointHandlerNeedsRoot: a request whose peer is not known to be
// root is refused before anything happens (the VCore here has nothing set
// up: reaching past the check would crash).
func TestCheckpointHandlerNeedsRoot(t *testing.T) {
	v := &VCore{}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/v1/subsystems/x/checkpoint", nil)
	v.handleCheckpoint(rec, req)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "only root") {
		t.Fatalf("no peer credentials: %d %q, want 403", rec.Code, rec.Body.String())
	}
}
