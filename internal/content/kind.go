package content

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Kind is what a dataspace's pages are filled with. It is the one content
// enum of vcored: the configuration, the wire protocol, core and the vcores
// all use it, and Open is the one place that turns a kind into a Source.
type Kind string

// Content kinds.
const (
	KindZero    Kind = "zero"    // zero pages
	KindPattern Kind = "pattern" // a deterministic pattern per offset (Pattern(seed))
	KindFile    Kind = "file"    // a read-only file
)

// Kinds lists every kind, in documentation order.
var Kinds = []Kind{KindZero, KindPattern, KindFile}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindZero || k == KindPattern || k == KindFile }

// ErrKind is wrapped when a kind is unknown or its parameters do not fit.
var ErrKind = errors.New("content: bad kind")

// Open builds the source of kind k. KindPattern uses seed; KindFile reads
// the already open file f, which the caller opened (or received as a
// descriptor): nothing here ever opens a path. For KindFile, Open takes
// ownership of f (also on error) and the returned Closer closes it; for the
// other kinds f must be nil and the Closer is nil.
func Open(k Kind, seed uint64, f *os.File) (Source, io.Closer, error) {
	if k != KindFile && f != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %q content takes no file", ErrKind, k)
	}
	switch k {
	case KindZero:
		return Zero(), nil, nil
	case KindPattern:
		return Pattern(seed), nil, nil
	case KindFile:
		if f == nil {
			return nil, nil, fmt.Errorf("%w: file content needs an open file", ErrKind)
		}
		src, err := fromFile(f, f.Name())
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return src, f, nil
	}
	return nil, nil, fmt.Errorf("%w: %q (want zero, pattern or file)", ErrKind, k)
}

// FileOf returns the open file behind a KindFile source (so its descriptor
// can be handed to another process), or false for other sources.
func FileOf(src Source) (*os.File, bool) {
	if fs, ok := src.(*fileSource); ok {
		return fs.f, true
	}
	return nil, false
}

// KindOf tells the kind of a source built by this package.
func KindOf(src Source) Kind {
	switch src.(type) {
	case patternSource:
		return KindPattern
	case *fileSource:
		return KindFile
	}
	return KindZero
}

func fromFile(f *os.File, name string) (*fileSource, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("content: %s is not a regular file (%s)", name, st.Mode().Type())
	}
	return &fileSource{f: f, size: uint64(st.Size()), path: name}, nil
}
