package linux

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/vcored/vcored/internal/hw"
)

// lockThreadForTest locks the calling goroutine to its OS thread for good:
// the goroutine must exit locked so that the thread (with whatever affinity
// or policy the test gave it) is destroyed rather than reused.
func lockThreadForTest() { runtime.LockOSThread() }

func TestThreadAffinityGetcpu(t *testing.T) {
	orig, err := ThreadAffinity()
	if err != nil {
		t.Fatal(err)
	}
	for _, cpu := range orig.Slice() {
		done := make(chan error)
		go func() {
			lockThreadForTest()
			if err := SetThreadAffinity(hw.NewSet(cpu)); err != nil {
				done <- err
				return
			}
			got, err := ThreadAffinity()
			if err == nil && !got.Equal(hw.NewSet(cpu)) {
				err = fmt.Errorf("affinity %s after pinning to %d", got, cpu)
			}
			if err == nil {
				var on hw.CPU
				on, _, err = Getcpu()
				if err == nil && on != cpu {
					err = fmt.Errorf("running on cpu %d after pinning to %d", on, cpu)
				}
			}
			if err == nil && Gettid() <= 0 {
				err = fmt.Errorf("gettid %d", Gettid())
			}
			done <- err
		}()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if err := SetThreadAffinity(hw.NewSet[hw.CPU](4095)); err == nil {
		t.Error("pinning to cpu 4095 succeeded")
	}
}
