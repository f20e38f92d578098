// Package archtest holds no code: its test enforces the module's import
// rules (the syscall funnel, one adapter per third-party library, and the
// dependency direction: mechanisms never import engines).
package archtest
