package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// buildRelay builds the real pushrelay into a dist directory the way make
// cross names it.
func buildRelay(t *testing.T, target string) string {
	t.Helper()
	dist := t.TempDir()
	cmd := exec.Command("go", "-C", "../..", "build", "-trimpath", "-o",
		filepath.Join(dist, "pushrelay-linux-"+target), "./cmd/pushrelay")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+target)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/pushrelay: %v\n%s", err, out)
	}
	return dist
}

// ipkControl returns the control file of an .ipk (a gzip'd tar holding
// control.tar.gz).
func ipkControl(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	member := func(b []byte, name string) []byte {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err != nil {
				t.Fatalf("%s: no %s: %v", path, name, err)
			}
			if strings.TrimPrefix(h.Name, "./") == name {
				data, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				return data
			}
		}
	}
	return string(member(member(raw, "control.tar.gz"), "control"))
}

func TestMkpkg(t *testing.T) {
	dist := buildRelay(t, "amd64")
	out := filepath.Join(t.TempDir(), "packages")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{
		"-dir", "..",
		"-dist", dist,
		"-out", out,
		"-version", "v0.1.0-3-gabc1234-dirty",
		"-targets", "amd64",
		"-ipk-arch", "amd64=x86_64,x86_64_custom",
	}, func(k string) string {
		if k == "SOURCE_DATE_EPOCH" {
			return "1795000000"
		}
		return ""
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("mkpkg: %v\n%s", err, stderr.String())
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		if !strings.Contains(stdout.String(), e.Name()) {
			t.Errorf("mkpkg did not report %s:\n%s", e.Name(), stdout.String())
		}
	}
	want := []string{
		"pushrelay_0.1.0+git3.gabc1234.dirty_amd64.deb",
		"pushrelay_0.1.0+git3.gabc1234.dirty_x86_64.ipk",
		"pushrelay_0.1.0+git3.gabc1234.dirty_x86_64_custom.ipk",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("packages %q, want %q (nothing else: no temporary files left)", got, want)
	}
	control := ipkControl(t, filepath.Join(out, want[2]))
	lines := strings.Split(control, "\n")
	for _, want := range []string{"Architecture: x86_64_custom", "Version: 0.1.0+git3.gabc1234.dirty"} {
		if !slices.Contains(lines, want) {
			t.Errorf("control file lacks %q:\n%s", want, control)
		}
	}
}

func TestMkpkgUsage(t *testing.T) {
	dist := t.TempDir()
	for name, args := range map[string][]string{
		"no version":     {"-dist", dist},
		"bad -ipk-arch":  {"-dist", dist, "-version", "v1.0.0", "-ipk-arch", "armv7"},
		"stray argument": {"-dist", dist, "-version", "v1.0.0", "extra"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), args, func(string) string { return "" }, io.Discard, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
	// No binaries: the error says what to run.
	err := run(context.Background(), []string{"-dist", dist, "-version", "v1.0.0"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "make cross") {
		t.Errorf("empty dist: %v, want an error pointing at make cross", err)
	}
}
