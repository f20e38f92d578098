// Package config reads vcored's two configuration files: the core's
// (core.toml) and a vcore's (one per node, e.g. node0.toml). It is the only
// package that imports the TOML library.
//
// Reading is strict and reports every problem at once: an unknown key, a
// value of the wrong type, a bad size, list, duration or enum value each
// become an *Error naming the file, line and key, and all of them are
// returned together as Errors. ParseCore and ParseVCore check what a file can
// say about itself (syntax, types, ranges, unique names, quotas that must add
// up); Core.Validate and VCore.Validate then check the file against a
// machine's topology (nodes, CPUs, memory) and, for a vcore, against the core
// file it will register with. VCore.CommandWarnings checks that each
// subsystem's program is an executable file on this host; what it finds are
// warnings (ErrWarning), not errors: the program may be installed later.
//
// docs/CONFIG.md documents every key (a test keeps it complete).
package config
