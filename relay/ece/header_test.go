package ece

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseHeaderList(t *testing.T) {
	tests := []struct {
		in   string
		want []map[string]string
	}{
		{"", nil},
		{"  ,, ; ", nil},
		{"salt=abc", []map[string]string{{"salt": "abc"}}},
		{"salt=abc;rs=4096", []map[string]string{{"salt": "abc", "rs": "4096"}}},
		{" salt = abc ; RS=24 ", []map[string]string{{"salt": "abc", "rs": "24"}}},
		{`keyid="p256dh";dh=AAA,p256ecdsa=BBB`, []map[string]string{{"keyid": "p256dh", "dh": "AAA"}, {"p256ecdsa": "BBB"}}},
		{`a="x,y;z"; b=1`, []map[string]string{{"a": "x,y;z", "b": "1"}}},
		{`a="q\"uote\\"`, []map[string]string{{"a": `q"uote\`}}},
		{"a=1;a=2", []map[string]string{{"a": "1"}}},
		{"dh=", []map[string]string{{"dh": ""}}},
		{"a=1,,b=2,", []map[string]string{{"a": "1"}, {"b": "2"}}},
	}
	for _, tc := range tests {
		got, err := ParseHeaderList(tc.in)
		if err != nil {
			t.Errorf("ParseHeaderList(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseHeaderList(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	for _, in := range []string{
		"=abc",
		"salt",
		"salt=abc;rs",
		`a="unterminated`,
		`a="x"y`,
		`a=x"y"`,
		"a b=1",
		"a=b c",
		`a="bad"quote"`,
		strings.Repeat("a", MaxHeaderLength+1),
	} {
		if _, err := ParseHeaderList(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseHeaderList(%q): err = %v, want ErrMalformed", truncate(in), err)
		}
	}
}

func TestParseHeaderParams(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"dh=BXX;p256ecdsa=BYY", map[string]string{"dh": "BXX", "p256ecdsa": "BYY"}},
		{"dh=BXX, p256ecdsa=BYY", map[string]string{"dh": "BXX", "p256ecdsa": "BYY"}},
		{`keyid="p256dh";dh=A,keyid=x;p256ecdsa="B"`, map[string]string{"keyid": "p256dh", "dh": "A", "p256ecdsa": "B"}},
		{"junk; P256ECDSA=K ;=x; y", map[string]string{"p256ecdsa": "K"}},
		{`a=1;b="open`, map[string]string{"a": "1"}},
	}
	for _, tc := range tests {
		if got := ParseHeaderParams(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseHeaderParams(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := ParseHeaderParams(strings.Repeat("a=b;", MaxHeaderLength)); got == nil || len(got) != 0 {
		t.Errorf("oversized header: %v", got)
	}
}
