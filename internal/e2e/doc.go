// Package e2e holds vcored's end-to-end tests: real `vcored core` and
// `vcored vcore` processes, real cgroups, real subsystems and real page
// faults, driven the way an operator would (configs, signals, kill -9,
// the status API). The package has no code of its own; see e2e_test.go.
//
// The tests need root and a vcored binary: TestMain builds one, or uses
// $VCORED_BIN (the qemu guest of `make vmtest` has no Go toolchain).
package e2e
