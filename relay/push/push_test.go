package push

import (
	"errors"
	"testing"
)

func TestParseUAID(t *testing.T) {
	want := UAID{0x8c, 0xbe, 0x4f, 0x3a, 0x12, 0x34, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67}
	for _, in := range []string{
		"8cbe4f3a1234456789abcdef01234567",
		"8CBE4F3A1234456789ABCDEF01234567",
		"8cbe4f3a-1234-4567-89ab-cdef01234567",
		"8CBE4F3A-1234-4567-89AB-CDEF01234567",
	} {
		got, err := ParseUAID(in)
		if err != nil || got != want {
			t.Errorf("ParseUAID(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if got := want.String(); got != "8cbe4f3a1234456789abcdef01234567" {
		t.Errorf("String() = %q", got)
	}
	for _, in := range []string{
		"", "8cbe4f3a", "8cbe4f3a1234456789abcdef0123456", "8cbe4f3a1234456789abcdef0123456z",
		"8cbe4f3a-1234-4567-89ab_cdef01234567", "8cbe4f3a12-34-4567-89ab-cdef01234567",
		"{8cbe4f3a-1234-4567-89ab-cdef012345}",
	} {
		if _, err := ParseUAID(in); !errors.Is(err, ErrBadUAID) {
			t.Errorf("ParseUAID(%q) err = %v, want ErrBadUAID", in, err)
		}
	}
}

func TestParseChannelID(t *testing.T) {
	const s = "d9b74644-4f97-46aa-b8fa-9393985cd6cd"
	id, err := ParseChannelID(s)
	if err != nil {
		t.Fatal(err)
	}
	if id.String() != s {
		t.Errorf("round trip: %q", id.String())
	}
	if id[0] != 0xd9 || id[15] != 0xcd {
		t.Errorf("bytes: %x", id)
	}
	for _, in := range []string{
		"D9B74644-4F97-46AA-B8FA-9393985CD6CD", // upper case is another spelling
		"d9b74644-4f97-46aa-b8fa-9393985cd6cD",
		"d9b746444f9746aab8fa9393985cd6cd", // undashed
		"d9b74644-4f97-46aa-b8fa-9393985cd6c",
		"d9b74644-4f97-46aa-b8fa-9393985cd6cdx",
		"d9b74644+4f97-46aa-b8fa-9393985cd6cd",
		"g9b74644-4f97-46aa-b8fa-9393985cd6cd",
		"",
	} {
		if _, err := ParseChannelID(in); !errors.Is(err, ErrBadChannelID) {
			t.Errorf("ParseChannelID(%q) err = %v, want ErrBadChannelID", in, err)
		}
	}
}

func TestUrgency(t *testing.T) {
	var zero Urgency
	if zero != UrgencyNormal || zero.String() != "normal" {
		t.Errorf("zero urgency is %v", zero)
	}
	for _, u := range []Urgency{UrgencyVeryLow, UrgencyLow, UrgencyNormal, UrgencyHigh} {
		got, err := ParseUrgency(u.String())
		if err != nil || got != u {
			t.Errorf("ParseUrgency(%q) = %v, %v", u.String(), got, err)
		}
	}
	if got, err := ParseUrgency(" HIGH "); err != nil || got != UrgencyHigh {
		t.Errorf("ParseUrgency(HIGH) = %v, %v", got, err)
	}
	if got, err := ParseUrgency(""); err != nil || got != UrgencyNormal {
		t.Errorf("ParseUrgency(\"\") = %v, %v", got, err)
	}
	for _, in := range []string{"urgent", "very_low", "verylow", "4"} {
		if _, err := ParseUrgency(in); !errors.Is(err, ErrBadUrgency) {
			t.Errorf("ParseUrgency(%q) err = %v", in, err)
		}
	}
	order := []Urgency{UrgencyVeryLow, UrgencyLow, UrgencyNormal, UrgencyHigh}
	for i, a := range order {
		for j, b := range order {
			if a.AtLeast(b) != (i >= j) {
				t.Errorf("%v.AtLeast(%v) = %v", a, b, a.AtLeast(b))
			}
		}
	}
}

func TestOrigin(t *testing.T) {
	u, ch := UAID{1, 2}, ChannelID{3, 4}
	long := string(make([]byte, 500))
	for _, o := range []Origin{
		LocalOrigin([16]byte{9, 9, 9}),
		UpstreamOrigin(u, ch, "gAAAAABk-version"),
		UpstreamOrigin(u, ch, long),
		ParentOrigin([]byte("parent-7")),
		ParentOrigin([]byte(long)),
	} {
		b, err := o.AppendBinary(nil)
		if err != nil {
			t.Fatalf("%v: %v", o, err)
		}
		if len(b) > 1+MaxOriginID {
			t.Errorf("%v: %d bytes", o, len(b))
		}
		got, err := DecodeOrigin(b)
		if err != nil || got != o {
			t.Errorf("DecodeOrigin(%x) = %v, %v; want %v", b, got, err, o)
		}
	}
	if UpstreamOrigin(u, ch, "v1") == UpstreamOrigin(u, ch, "v2") ||
		UpstreamOrigin(u, ch, "v1") == UpstreamOrigin(u, ChannelID{5}, "v1") ||
		UpstreamOrigin(u, ch, long) == UpstreamOrigin(u, ch, long+"x") {
		t.Error("distinct upstream messages share an origin key")
	}
	for _, o := range []Origin{{}, {Kind: 4, ID: "x"}, {Kind: OriginLocal}, {Kind: OriginParent, ID: long}} {
		if _, err := o.AppendBinary(nil); !errors.Is(err, ErrBadOrigin) {
			t.Errorf("%v encoded: %v", o, err)
		}
	}
	for _, b := range [][]byte{nil, {1}, {0, 1}, {9, 1}} {
		if _, err := DecodeOrigin(b); !errors.Is(err, ErrBadOrigin) {
			t.Errorf("DecodeOrigin(%x): %v", b, err)
		}
	}
}
