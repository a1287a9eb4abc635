package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const sampleUCI = `# /etc/config/pushrelay
config pushrelay 'main'
	option enabled '1'
	option data_dir '/etc/pushrelay'
	option device_listen ':8080'
	option endpoint_listen ":8082"
	option public_url 'https://push.gw.example.net'   # as app servers see it
	option max_messages_per_uaid 500

config other 'x'
	option whatever 'ignored'
	list things 'a'
`

func TestUCIRender(t *testing.T) {
	dir := t.TempDir()
	uci := filepath.Join(dir, "pushrelay")
	os.WriteFile(uci, []byte(sampleUCI), 0o600)
	var out bytes.Buffer
	if err := runUCIConfig([]string{uci}, &out); err != nil {
		t.Fatal(err)
	}
	yml := filepath.Join(dir, "pushrelay.yaml")
	os.WriteFile(yml, out.Bytes(), 0o600)
	c, err := loadConfig("t", []string{"--config", yml}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatalf("rendered config rejected: %v\n%s", err, out.String())
	}
	if c.DataDir != "/etc/pushrelay" || c.EndpointListen != ":8082" || c.PublicURL != "https://push.gw.example.net" || c.MaxMessagesPerUAID != 500 {
		t.Fatalf("rendered config: %+v", c)
	}
}

func TestUCIErrors(t *testing.T) {
	cases := map[string]string{
		"unknown option":  "config pushrelay 'main'\n\toption upstreem 'x'\n",
		"no section":      "config other 'x'\n\toption a 'b'\n",
		"open quote":      "config pushrelay 'main'\n\toption data_dir '/x\n",
		"list in ours":    "config pushrelay 'main'\n\tlist join 'a'\n",
		"bad statement":   "config pushrelay 'main'\n\tset data_dir=/x\n",
		"option no value": "config pushrelay 'main'\n\toption data_dir\n",
	}
	for name, body := range cases {
		if _, err := parseUCI([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The binary's uci-config exits 2 with one line on a bad file.
func TestE2EUCIConfigExit(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "pushrelay")
	os.WriteFile(bad, []byte("config pushrelay 'main'\n\toption nope '1'\n"), 0o600)
	cmd := exec.Command(binPath, "uci-config", bad)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
		t.Fatalf("exit %v, stderr %q", err, stderr.String())
	}
}
