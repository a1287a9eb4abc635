package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("device_listen: \":7000\"\nendpoint_listen: \":7001\"\nadmin_listen: \":7002\"\nhello_timeout: 3s\n"), 0o600)
	c, err := loadConfig("t", []string{"--config", file, "--endpoint-listen", ":9001"},
		env(map[string]string{"PUSHRELAY_DEVICE_LISTEN": ":8001", "PUSHRELAY_ENDPOINT_LISTEN": ":8002"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceListen != ":8001" {
		t.Errorf("env should beat file: device_listen = %q", c.DeviceListen)
	}
	if c.EndpointListen != ":9001" {
		t.Errorf("flag should beat env: endpoint_listen = %q", c.EndpointListen)
	}
	if c.AdminListen != ":7002" || c.HelloTimeout != 3*time.Second {
		t.Errorf("file should beat default: %q %s", c.AdminListen, c.HelloTimeout)
	}
	if c.DataDir != "./data" || c.InflightWindow != 100 {
		t.Errorf("defaults: %q %d", c.DataDir, c.InflightWindow)
	}
	// The config file can come from the environment too.
	c, err = loadConfig("t", nil, env(map[string]string{"PUSHRELAY_CONFIG": file}), &bytes.Buffer{})
	if err != nil || c.DeviceListen != ":7000" {
		t.Fatalf("PUSHRELAY_CONFIG: %v %q", err, c.DeviceListen)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown key", []string{"--config", write("u.yaml", "device_listen: \":1\"\nupstreem: x\n")}, nil, `line 2: unknown key "upstreem"`},
		{"bad yaml", []string{"--config", write("y.yaml", "a: [\n")}, nil, "y.yaml"},
		{"nested value", []string{"--config", write("n.yaml", "device_listen:\n  a: 1\n")}, nil, "want a single value"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, nil, "nope.yaml"},
		{"bad address flag", []string{"--device-listen", "nonsense"}, nil, `device_listen "nonsense"`},
		{"bad port", []string{"--endpoint-listen", ":99999"}, nil, "port must be"},
		{"bad env duration", nil, map[string]string{"PUSHRELAY_HELLO_TIMEOUT": "soon"}, "PUSHRELAY_HELLO_TIMEOUT"},
		{"bad int", []string{"--inflight-window", "0"}, nil, "between 1 and"},
		{"bad public url", []string{"--public-url", "push.example.net"}, nil, "public_url"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "log_level"},
		{"unknown flag", []string{"--upstream-typo", "x"}, nil, "flag provided but not defined"},
		{"bad upstream", []string{"--upstream", "https://push.example.net/"}, nil, "ws:// or wss://"},
		{"poll interval too short", []string{"--upstream-poll-interval", "500ms"}, nil, "upstream_poll_interval 500ms"},
		{"poll interval too long", []string{"--upstream-poll-interval", "25h"}, nil, "upstream_poll_interval 25h0m0s"},
		{"no upstream sessions", []string{"--upstream-sessions", "0"}, nil, "between 1 and"},
		{"quic upstream without port", []string{"--upstream", "quic://core.example.net"}, nil, "want quic://host:port"},
		{"quic upstream without keys", []string{"--upstream", "quic://core.example.net:4433"}, nil, "link_ca or link_pins"},
		{"quic upstream with upstream_ca_file", []string{"--upstream", "quic://core:4433", "--upstream-ca-file", "x"}, nil, "upstream_ca_file is for a wss://"},
		{"relay_listen without cert", []string{"--relay-listen", ":4433", "--link-ca", "x"}, nil, "relay_listen needs link_cert"},
		{"link key without link", []string{"--link-ca", "ca.crt"}, nil, "link_ca is set but neither"},
		{"link ca missing", []string{"--upstream", "quic://core:4433", "--link-ca", filepath.Join(dir, "nope.crt"), "--link-token", "t"}, nil, "nope.crt"},
		{"link idle timeout under keepalive", []string{"--upstream", "quic://core:4433", "--link-keepalive", "2s", "--link-idle-timeout", "2s"}, nil, "link_idle_timeout 2s must be longer than link_keepalive 2s"},
		{"link token and file", []string{"--upstream", "quic://core:4433", "--link-ca", "x", "--link-token", "t", "--link-token-file", "f"}, nil, "set one"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadConfig("t", c.args, env(c.env), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

// Every shipped config parses and validates.
func TestShippedConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../configs/*.yaml")
	if len(files) == 0 {
		t.Fatal("no configs found")
	}
	for _, f := range files {
		if _, err := loadConfig("t", []string{"--config", f}, env(nil), &bytes.Buffer{}); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// The binary reports bad config on one line of stderr and exits 2;
// check-config accepts a good one.
func TestE2EBadConfigExit(t *testing.T) {
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	os.MkdirAll(ro, 0o500)
	unknown := filepath.Join(dir, "u.yaml")
	os.WriteFile(unknown, []byte("wat: 1\n"), 0o600)
	cases := [][]string{
		{"run", "--config", unknown},
		{"run", "--device-listen", "nope"},
		{"check-config", "--admin-listen", "1.2.3:4:5"},
	}
	if os.Geteuid() != 0 { // root can write anywhere
		cases = append(cases, []string{"run", "--data-dir", filepath.Join(ro, "sub")})
	} else {
		file := filepath.Join(dir, "afile")
		os.WriteFile(file, nil, 0o600)
		cases = append(cases, []string{"run", "--data-dir", filepath.Join(file, "sub")})
	}
	for _, args := range cases {
		cmd := exec.Command(binPath, args...)
		cmd.Env = relayproc.Env()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2; stderr %q", args, err, stderr.String())
			continue
		}
		if lines := strings.Count(strings.TrimSpace(stderr.String()), "\n"); lines != 0 {
			t.Errorf("%v: error is %d lines: %q", args, lines+1, stderr.String())
		}
	}
	cmd := exec.Command(binPath, "check-config", "--config", "../../configs/pushrelay.yaml", "--data-dir", dir)
	cmd.Env = relayproc.Env()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "configuration ok") {
		t.Fatalf("check-config: %v %s", err, out)
	}
}

func TestE2EVersion(t *testing.T) {
	out, err := exec.Command(binPath, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "pushrelay ") {
		t.Fatalf("version: %v %q", err, out)
	}
}

// docs/configuration.md documents every key.
func TestConfigDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		if !strings.Contains(string(doc), "`"+s.key+"`") {
			t.Errorf("docs/configuration.md does not document %s", s.key)
		}
	}
}

func TestConfigSizes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		out  string
	}{
		{"0", 0, "0"},
		{"160MiB", 160 << 20, "160MiB"},
		{"200 MiB", 200 << 20, "200MiB"},
		{"256MB", 256e6, "250000KiB"},
		{"1GiB", 1 << 30, "1GiB"},
		{"64kB", 64000, "64000"},
		{"4096", 4096, "4KiB"},
		{"12B", 12, "12"},
	} {
		c, err := loadConfig("t", []string{"--memory-limit", tc.in}, env(nil), &bytes.Buffer{})
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if c.MemoryLimit != tc.want {
			t.Errorf("%q = %d bytes, want %d", tc.in, c.MemoryLimit, tc.want)
		}
		if got := formatBytes(c.MemoryLimit); got != tc.out {
			t.Errorf("%q is written back as %q, want %q", tc.in, got, tc.out)
		}
	}
	for _, bad := range []string{"-1MiB", "1.5GiB", "MiB", "12 parsecs", "99999999999GiB"} {
		if _, err := loadConfig("t", []string{"--memory-limit", bad}, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "not a size") {
			t.Errorf("%q: %v, want a size error", bad, err)
		}
	}
	c, err := loadConfig("t", nil, env(map[string]string{"PUSHRELAY_DEVICE_MAX_CONNS_PER_IP": "0"}), &bytes.Buffer{})
	if err != nil || c.DeviceMaxConnsPerIP != 0 || c.DeviceMaxConns != 10000 || c.EndpointConcurrency != 1024 || c.MemoryLimit != 160<<20 {
		t.Fatalf("caps: %v %+v", err, c)
	}
}

// An environment variable set to the empty string sets its key to empty
// (PUSHRELAY_STUN_LISTEN= turns STUN off); an unset one leaves the key
// alone.
func TestConfigEnvEmpty(t *testing.T) {
	c, err := loadConfig("t", nil, env(map[string]string{"PUSHRELAY_STUN_LISTEN": "", "PUSHRELAY_PUBLIC_URL": ""}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.STUNListen != "" {
		t.Errorf("PUSHRELAY_STUN_LISTEN= left stun_listen %q", c.STUNListen)
	}
	c, err = loadConfig("t", nil, env(nil), &bytes.Buffer{})
	if err != nil || c.STUNListen != ":3478" {
		t.Fatalf("unset: stun_listen %q, %v", c.STUNListen, err)
	}
	// The file's value too can be emptied from the environment.
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("stun_listen: \":4000\"\n"), 0o600)
	c, err = loadConfig("t", []string{"--config", file}, env(map[string]string{"PUSHRELAY_STUN_LISTEN": ""}), &bytes.Buffer{})
	if err != nil || c.STUNListen != "" {
		t.Fatalf("file then empty env: stun_listen %q, %v", c.STUNListen, err)
	}
}

// The megaphone keys: refused with a clear message when wrong, the token
// from its file (first line), never printed by check-config.
func TestConfigMegaphone(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "megaphone.token")
	os.WriteFile(tokFile, []byte("abc123\n"), 0o600)
	empty := filepath.Join(dir, "empty.token")
	os.WriteFile(empty, []byte("\n"), 0o600)
	url := "--megaphone-url=https://megaphone.example.net/v1/broadcasts"
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"not http", []string{"--megaphone-url", "ftp://example.net/"}, `megaphone_url "ftp://example.net/": want an absolute http:// or https:// URL`},
		{"relative", []string{"--megaphone-url", "/v1/broadcasts"}, "megaphone_url"},
		{"credentials in url", []string{"--megaphone-url", "https://u:secretpw@example.net/"}, "megaphone_token_file"},
		{"too often", []string{url, "--megaphone-poll-interval", "100ms"}, "megaphone_poll_interval 100ms: must be at least 1s"},
		{"token without url", []string{"--megaphone-token", "x"}, "megaphone_url is not"},
		{"both tokens", []string{url, "--megaphone-token", "x", "--megaphone-token-file", tokFile}, "set one"},
		{"missing token file", []string{url, "--megaphone-token-file", filepath.Join(dir, "nope")}, "megaphone_token_file"},
		{"empty token file", []string{url, "--megaphone-token-file", empty}, "empty"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadConfig("t", c.args, env(nil), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if strings.Contains(err.Error(), "secretpw") {
				t.Fatalf("the error shows the URL's password: %v", err)
			}
		})
	}
	c, err := loadConfig("t", []string{url, "--megaphone-token-file", tokFile}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := c.megaphoneToken(); err != nil || tok != "abc123" {
		t.Fatalf("token %q %v", tok, err)
	}
	if c.MegaphonePollInterval != 30*time.Second {
		t.Fatalf("default poll interval %v, autopush's is 30s", c.MegaphonePollInterval)
	}
	c, err = loadConfig("t", []string{url, "--megaphone-token", "hunter2"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	c.dump(&out)
	if strings.Contains(out.String(), "hunter2") {
		t.Fatalf("check-config prints the token:\n%s", out.String())
	}
}

// batch_token_file is read (white space around the token ignored) and a
// missing file or a token too short is refused.
func TestConfigBatchToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("  0123456789abcdef0123\n"), 0o600)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("0123456789\n"), 0o600)
	c, err := loadConfig("t", []string{"--batch-token-file", good}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := c.batchToken(); err != nil || string(tok) != "0123456789abcdef0123" {
		t.Errorf("token %q, %v", tok, err)
	}
	for _, f := range []string{short, filepath.Join(dir, "missing")} {
		if _, err := loadConfig("t", []string{"--batch-token-file", f}, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "batch_token_file") {
			t.Errorf("%s: %v", f, err)
		}
	}
	if c, err := loadConfig("t", nil, env(nil), &bytes.Buffer{}); err != nil || c.BatchMaxMessages != 100 || c.BatchConcurrency != 4 || c.BatchTokenFile != "" {
		t.Errorf("defaults: %+v %v", c, err)
	}
}

// store_checkpoint_interval and store_checkpoint_bytes: defaults, every
// source, and the bounds with one-line errors naming the key.
func TestConfigStoreCheckpoint(t *testing.T) {
	c, err := loadConfig("t", nil, env(nil), &bytes.Buffer{})
	if err != nil || c.StoreCheckpointInterval != 250*time.Millisecond || c.StoreCheckpointBytes != 4<<20 {
		t.Fatalf("defaults: %v %v %d", err, c.StoreCheckpointInterval, c.StoreCheckpointBytes)
	}
	c, err = loadConfig("t", []string{"--store-checkpoint-interval", "1s", "--store-checkpoint-bytes", "16MiB"}, env(nil), &bytes.Buffer{})
	if err != nil || c.StoreCheckpointInterval != time.Second || c.StoreCheckpointBytes != 16<<20 {
		t.Fatalf("flags: %v %v %d", err, c.StoreCheckpointInterval, c.StoreCheckpointBytes)
	}
	c, err = loadConfig("t", nil, env(map[string]string{"PUSHRELAY_STORE_CHECKPOINT_INTERVAL": "10ms", "PUSHRELAY_STORE_CHECKPOINT_BYTES": "64KiB"}), &bytes.Buffer{})
	if err != nil || c.StoreCheckpointInterval != 10*time.Millisecond || c.StoreCheckpointBytes != 64<<10 {
		t.Fatalf("env: %v %v %d", err, c.StoreCheckpointInterval, c.StoreCheckpointBytes)
	}
	// The largest, with memory to hold it; and the default under any
	// memory_limit.
	c, err = loadConfig("t", []string{"--store-checkpoint-interval", "1m", "--store-checkpoint-bytes", "256MiB", "--memory-limit", "2GiB"}, env(nil), &bytes.Buffer{})
	if err != nil || c.StoreCheckpointBytes != 256<<20 {
		t.Fatalf("256MiB with 2GiB: %v", err)
	}
	if _, err := loadConfig("t", []string{"--memory-limit", "16MiB"}, env(nil), &bytes.Buffer{}); err != nil {
		t.Fatalf("the default under a small memory_limit: %v", err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--store-checkpoint-interval", "5ms"}, "store_checkpoint_interval 5ms: must be between 10ms and 1m0s"},
		{[]string{"--store-checkpoint-interval", "2m"}, "store_checkpoint_interval 2m0s: must be between"},
		{[]string{"--store-checkpoint-interval", "0"}, "must be positive"},
		{[]string{"--store-checkpoint-bytes", "32KiB"}, "store_checkpoint_bytes 32KiB: must be between 64KiB and 256MiB"},
		{[]string{"--store-checkpoint-bytes", "1GiB", "--memory-limit", "0"}, "store_checkpoint_bytes 1GiB: must be between"},
		{[]string{"--store-checkpoint-bytes", "lots"}, "not a size"},
		{[]string{"--store-checkpoint-bytes", "32MiB"}, "store_checkpoint_bytes 32MiB: must be at most an eighth of memory_limit 160MiB"},
	} {
		_, err := loadConfig("t", tc.args, env(nil), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want one line with %q", tc.args, err, tc.want)
		}
	}
	// 20MiB is an eighth of the default memory_limit; none set, no bound
	// but 256MiB.
	for _, args := range [][]string{{"--store-checkpoint-bytes", "20MiB"}, {"--store-checkpoint-bytes", "200MiB", "--memory-limit", "0"}} {
		if _, err := loadConfig("t", args, env(nil), &bytes.Buffer{}); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
}
