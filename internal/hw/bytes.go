package hw

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Bytes is a size in bytes. In configuration files it is written with a
// binary unit ("512MiB", "2GiB", "4096" for plain bytes).
type Bytes uint64

// Common sizes.
const (
	KiB Bytes = 1 << 10
	MiB Bytes = 1 << 20
	GiB Bytes = 1 << 30
	TiB Bytes = 1 << 40
)

// ErrBadSize is wrapped by every ParseBytes error.
var ErrBadSize = errors.New("hw: bad size")

var units = []struct {
	suffix string
	mult   Bytes
}{
	{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
	{"T", TiB}, {"G", GiB}, {"M", MiB}, {"K", KiB}, {"B", 1},
}

// ParseBytes reads "123", "4KiB", "512MiB", "2GiB", "1TiB" (also the
// single-letter forms K, M, G, T, which are binary as in numactl and the
// kernel command line). Decimal units ("4GB") are refused: they are a common
// source of off-by-7% quotas.
func ParseBytes(s string) (Bytes, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("%w %q: empty", ErrBadSize, s)
	}
	mult := Bytes(1)
	num := t
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	if strings.HasSuffix(num, "i") || strings.ContainsAny(num, "kmgtbKMGTB") {
		return 0, fmt.Errorf("%w %q: unknown unit (use B, KiB, MiB, GiB or TiB)", ErrBadSize, s)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w %q: %q is not a whole number (use B, KiB, MiB, GiB or TiB)", ErrBadSize, s, num)
	}
	if n > math.MaxUint64/uint64(mult) {
		return 0, fmt.Errorf("%w %q: overflows 64 bits", ErrBadSize, s)
	}
	return Bytes(n) * mult, nil
}

// String gives the largest binary unit that represents b exactly.
func (b Bytes) String() string {
	for _, u := range units[:4] {
		if b >= u.mult && b%u.mult == 0 {
			return strconv.FormatUint(uint64(b/u.mult), 10) + u.suffix
		}
	}
	return strconv.FormatUint(uint64(b), 10) + "B"
}

// MarshalText writes the String form.
func (b Bytes) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText parses with ParseBytes.
func (b *Bytes) UnmarshalText(t []byte) error {
	v, err := ParseBytes(string(t))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Human gives a rounded form for people ("5.3GiB", "512MiB", "900B"); use
// String where the value must round-trip exactly.
func (b Bytes) Human() string {
	for _, u := range units[:4] {
		if b >= u.mult {
			v := float64(b) / float64(u.mult)
			if b%u.mult == 0 || v >= 100 {
				return strconv.FormatFloat(v, 'f', 0, 64) + u.suffix
			}
			return strconv.FormatFloat(v, 'f', 1, 64) + u.suffix
		}
	}
	return strconv.FormatUint(uint64(b), 10) + "B"
}
