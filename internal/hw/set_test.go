package hw

import (
	"errors"
	"strings"
	"testing"
)

func TestParseString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"\n", ""},
		{"0", "0"},
		{"0-3,8,10-11\n", "0-3,8,10-11"},
		{"3,2,1,0", "0-3"},
		{"0,1", "0-1"},
		{"0-0", "0"},
		{"1-2,2-3", "1-3"},
		{"63,64,65", "63-65"},
		{"0,2,4", "0,2,4"},
		{"65535", "65535"},
	} {
		s, err := ParseCPUSet(tc.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.in, err)
		}
		if got := s.String(); got != tc.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, token string }{
		{"3-1", `"3-1"`},
		{"a", `"a"`},
		{"1,,2", `""`},
		{"1,", `""`},
		{"-1", `"-1"`},
		{"1-", `"1-"`},
		{"1-2-3", `"1-2-3"`},
		{"99999999999999999999", `"99999999999999999999"`},
		{"65536", `"65536"`},
		{"0-3, 5", `" 5"`},
		{"+1", `"+1"`},
	} {
		_, err := ParseCPUSet(tc.in)
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.in)
			continue
		}
		if !errors.Is(err, ErrBadList) {
			t.Errorf("Parse(%q): %v does not wrap ErrBadList", tc.in, err)
		}
		if !strings.Contains(err.Error(), "token "+tc.token) {
			t.Errorf("Parse(%q): error %q does not name token %s", tc.in, err, tc.token)
		}
	}
}

func TestSetAlgebra(t *testing.T) {
	a := MustParse[CPU]("0-7")
	b := MustParse[CPU]("4-11,70")
	if got := a.Union(b).String(); got != "0-11,70" {
		t.Errorf("union = %q", got)
	}
	if got := a.Intersect(b).String(); got != "4-7" {
		t.Errorf("intersect = %q", got)
	}
	if got := a.Difference(b).String(); got != "0-3" {
		t.Errorf("difference = %q", got)
	}
	if got := b.Difference(a).String(); got != "8-11,70" {
		t.Errorf("difference = %q", got)
	}
	if !MustParse[CPU]("4-5").IsSubsetOf(a) || b.IsSubsetOf(a) {
		t.Error("IsSubsetOf wrong")
	}
	if a.Len() != 8 || b.Len() != 9 || (CPUSet{}).Len() != 0 {
		t.Error("Len wrong")
	}
	if !b.Contains(70) || b.Contains(69) || b.Contains(-1) || b.Contains(100000) {
		t.Error("Contains wrong")
	}
	if m, ok := b.Min(); !ok || m != 4 {
		t.Errorf("Min = %d, %v", m, ok)
	}
	if _, ok := (CPUSet{}).Min(); ok {
		t.Error("Min of empty set reported ok")
	}
	// Operations with a set that becomes empty must equal the zero value.
	if !a.Difference(a).Equal(CPUSet{}) || !a.Intersect(MustParse[CPU]("100")).IsEmpty() {
		t.Error("empty results are not canonical")
	}
	// Immutability: the receiver is unchanged by every operation.
	before := a.String()
	_ = a.Union(b)
	_ = a.Difference(b)
	if a.String() != before {
		t.Error("operation mutated the receiver")
	}
	if got := Range[Node](2, 4).String(); got != "2-4" {
		t.Errorf("Range = %q", got)
	}
}

func TestTextMarshal(t *testing.T) {
	var s NodeSet
	if err := s.UnmarshalText([]byte("0,2")); err != nil {
		t.Fatal(err)
	}
	b, _ := s.MarshalText()
	if string(b) != "0,2" {
		t.Errorf("MarshalText = %q", b)
	}
	if err := s.UnmarshalText([]byte("x")); err == nil {
		t.Error("UnmarshalText accepted garbage")
	}
}

func FuzzRoundTrip(f *testing.F) {
	for _, s := range []string{"", "0", "0-3,8,10-11", "1,,2", "3-1", "63-65,128", "0,2,4-6"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseCPUSet(in)
		if err != nil {
			return
		}
		out := s.String()
		again, err := ParseCPUSet(out)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", out, in, err)
		}
		if !again.Equal(s) || again.String() != out {
			t.Fatalf("round trip of %q: %q then %q", in, out, again.String())
		}
		if again.Len() != len(again.Slice()) {
			t.Fatalf("Len %d != len(Slice) %d", again.Len(), len(again.Slice()))
		}
	})
}
