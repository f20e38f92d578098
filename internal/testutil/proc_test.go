package testutil

import (
	"os"
	"strconv"
	"testing"
)

func TestProcStatus(t *testing.T) {
	got, err := ProcStatus(os.Getpid(), "Pid")
	if err != nil || got != strconv.Itoa(os.Getpid()) {
		t.Fatalf("ProcStatus(self, Pid) = %q, %v", got, err)
	}
	if _, err := ProcStatus(os.Getpid(), "NoSuchField"); err == nil {
		t.Error("a missing field gave no error")
	}
	if _, err := ProcStatus(-1, "Pid"); err == nil {
		t.Error("a missing process gave no error")
	}
}
