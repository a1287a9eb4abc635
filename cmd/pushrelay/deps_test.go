package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// goList runs `go list` for linux/amd64, so the answer does not depend on
// the machine running the test.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(strings.TrimSpace(string(out)))
}

func isThirdParty(p string) bool {
	first, _, _ := strings.Cut(p, "/")
	return strings.Contains(first, ".") && !strings.HasPrefix(p, "github.com/pushrelay/pushrelay")
}

// firmware/packages.txt lists every third-party package linked into the
// binary, so a new dependency shows up in review (issue #4).
func TestLinkedPackages(t *testing.T) {
	data, err := os.ReadFile("../../firmware/packages.txt")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			want = append(want, line)
		}
	}
	var got []string
	for _, p := range goList(t, "-deps", ".") {
		if isThirdParty(p) {
			got = append(got, p)
		}
	}
	slices.Sort(got)
	for _, p := range got {
		if !slices.Contains(want, p) {
			t.Errorf("%s is linked but not in firmware/packages.txt", p)
		}
	}
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("%s is in firmware/packages.txt but no longer linked", p)
		}
	}
}

// Each third-party library is imported by exactly one package of ours,
// the one that wraps it.
func TestOneWrapperPerLibrary(t *testing.T) {
	wrappers := map[string]string{
		"go.etcd.io/bbolt":                "github.com/pushrelay/pushrelay/relay/store",
		"github.com/gorilla/websocket":    "github.com/pushrelay/pushrelay/relay/wsock",
		"github.com/VictoriaMetrics/":     "github.com/pushrelay/pushrelay/relay/metrics",
		"github.com/prometheus/":          "github.com/pushrelay/pushrelay/relay/metrics", // its tests' parser only
		"go.yaml.in/yaml/v3":              "github.com/pushrelay/pushrelay/cmd/pushrelay",
		"github.com/pion/stun/v3":         "github.com/pushrelay/pushrelay/discovery",
		"github.com/valyala/fasthttp":     "github.com/pushrelay/pushrelay/relay/endpoint",
		"github.com/quic-go/quic-go":      "github.com/pushrelay/pushrelay/relay/linkquic",
		"github.com/hashicorp/memberlist": "github.com/pushrelay/pushrelay/relay/member",
		"github.com/hashicorp/raft":       "github.com/pushrelay/pushrelay/relay/consensus",
		"github.com/hashicorp/go-hclog":   "github.com/pushrelay/pushrelay/relay/consensus", // raft's logger, adapted to slog
	}
	lines := goList(t, "-f", "{{.ImportPath}}:{{join .Imports \",\"}}", "../../...")
	for _, line := range lines {
		pkg, imports, _ := strings.Cut(line, ":")
		for _, imp := range strings.Split(imports, ",") {
			if !isThirdParty(imp) {
				continue
			}
			owner := ""
			for lib, w := range wrappers {
				if strings.HasPrefix(imp, lib) {
					owner = w
				}
			}
			if owner == "" {
				t.Errorf("%s imports %s, which has no wrapper package assigned", pkg, imp)
			} else if owner != pkg {
				t.Errorf("%s imports %s; only %s may", pkg, imp, owner)
			}
		}
	}
}

// A nofasthttp build (`make cross` for mips and mipsle) serves the
// endpoint with net/http and links neither fasthttp nor what only fasthttp
// brings (its compressors); the default build links fasthttp.
func TestNoFastHTTPBuild(t *testing.T) {
	onlyFastHTTP := []string{"github.com/valyala/fasthttp", "github.com/valyala/bytebufferpool", "github.com/klauspost/compress", "github.com/molecule-man/go-brrr"}
	full := goList(t, "-deps", ".")
	if !slices.Contains(full, onlyFastHTTP[0]) {
		t.Errorf("the default build does not link %s", onlyFastHTTP[0])
	}
	for _, tags := range []string{"nofasthttp", "notools nopprof nofasthttp", "notools nosite nopprof nofasthttp"} {
		for _, p := range goList(t, "-tags", tags, "-deps", ".") {
			for _, lib := range onlyFastHTTP {
				if strings.HasPrefix(p, lib) {
					t.Errorf("a build tagged %q links %s", tags, p)
				}
			}
		}
	}
	files := strings.Fields(strings.Trim(strings.Join(goList(t, "-tags", "nofasthttp", "-f", "{{.GoFiles}}", "../../relay/endpoint"), " "), "[]"))
	if !slices.Contains(files, "server_nethttp.go") || slices.Contains(files, "server_fasthttp.go") {
		t.Errorf("relay/endpoint's files under nofasthttp: %v", files)
	}
	// `go test -tags nofasthttp` runs the end-to-end tests on such a build.
	out, err := exec.Command("go", "version", "-m", binPath).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	if tagged := strings.Contains(string(out), "nofasthttp"); tagged != slices.Contains(binTags, "nofasthttp") {
		t.Errorf("the end-to-end tests' binary, built with tags %q:\n%s", binTags, out)
	}
}

// Gateway builds (`make cross`, tag notools) leave the developer and test
// tools out: the load tools, the test harness packages they bring, and the
// device and send commands' files; the default build (`make build`, `go
// build`, `go test`) keeps them.
func TestGatewayBuildLeavesToolsOut(t *testing.T) {
	tools := []string{
		"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/bench",
		"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc",
		"github.com/pushrelay/pushrelay/relay/upstream/autopushtest",
	}
	toolFiles := []string{"device.go", "devicewake.go", "send.go", "tools.go"}
	full := goList(t, "-deps", ".")
	gateway := goList(t, "-tags", "notools nopprof", "-deps", ".")
	for _, p := range tools {
		if !slices.Contains(full, p) {
			t.Errorf("the default build does not link %s", p)
		}
		if slices.Contains(gateway, p) {
			t.Errorf("the gateway build (tag notools) links %s", p)
		}
	}
	files := strings.Fields(strings.Trim(strings.Join(goList(t, "-tags", "notools", "-f", "{{.GoFiles}}", "."), " "), "[]"))
	for _, f := range toolFiles {
		if slices.Contains(files, f) {
			t.Errorf("the gateway build (tag notools) compiles %s", f)
		}
	}
	if !slices.Contains(files, "tools_off.go") || !slices.Contains(files, "keygen.go") {
		t.Errorf("the gateway build's files %v lack tools_off.go or keygen.go", files)
	}
}

// Gateway builds (make cross) leave out net/http's HTTP/2 (tag
// nethttpomithttp2): nothing of the relay speaks it, and it is 0.3-0.5
// MiB. A binary built so has none of its code; one built without has.
func TestGatewayBuildOmitsHTTP2(t *testing.T) {
	has := func(tags string) bool {
		t.Helper()
		bin := filepath.Join(t.TempDir(), "pushrelay")
		if out, err := exec.Command("go", "build", "-tags", tags, "-o", bin, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build -tags %q: %v\n%s", tags, err, out)
		}
		out, err := exec.Command("go", "tool", "nm", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool nm: %v\n%s", err, out)
		}
		return strings.Contains(string(out), "net/http.(*http2Server)")
	}
	if !has("notools") {
		t.Error("a build without nethttpomithttp2 has no HTTP/2 server: the check looks for the wrong symbol")
	}
	for _, tags := range []string{"notools nethttpomithttp2", "notools nopprof nofasthttp nethttpomithttp2"} {
		if has(tags) {
			t.Errorf("a build tagged %q links net/http's HTTP/2", tags)
		}
	}
}
