package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/cmd/pushrelay/internal/relayproc"
)

// TestFirefox drives a stock Firefox (firefox-esr, under Xvfb, through
// Marionette) against the built relay: a page on http://localhost registers
// testdata/firefox/sw.js and calls pushManager.subscribe with a VAPID key
// from `pushrelay keygen`; `pushrelay send` pushes to the subscription; the
// service worker posts the decrypted payload back to the page; and the relay
// counts Firefox's ack. Opt-in: PUSHRELAY_FIREFOX=1, with firefox-esr and
// Xvfb installed (Debian: firefox-esr, xvfb).
func TestFirefox(t *testing.T) {
	if os.Getenv("PUSHRELAY_FIREFOX") != "1" {
		t.Skip("set PUSHRELAY_FIREFOX=1 to run the Firefox end-to-end test (needs firefox-esr and Xvfb)")
	}
	firefox, err := exec.LookPath("firefox-esr")
	if err != nil {
		t.Skip("firefox-esr is not installed (Debian: apt-get install firefox-esr)")
	}
	xvfb, err := exec.LookPath("Xvfb")
	if err != nil {
		t.Skip("Xvfb is not installed (Debian: apt-get install xvfb)")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	tokenFile, token := writeAdminToken(t)
	p := startRelay(t, t.TempDir(), "--admin-token-file", tokenFile)
	// Remote Settings' broadcast, at a version Firefox cannot have: its
	// hello (or broadcast_subscribe) is answered with it.
	const rsID = "remote-settings/monitor_changes"
	if code, v := adminCall(t, p, "PUT", "/broadcasts/"+rsID, token, `"1700000000000"`); code != 200 {
		t.Fatalf("PUT broadcast = %d %v", code, v)
	}

	// The page and worker, served from a loopback origin Firefox treats as
	// secure (localhost), as service workers require.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.FileServer(http.Dir("testdata/firefox"))}}
	web.Start()
	t.Cleanup(web.Close)
	pageURL := fmt.Sprintf("http://localhost:%d/index.html", ln.Addr().(*net.TCPAddr).Port)

	display := startXvfb(t, xvfb)

	profile := t.TempDir()
	writeFirefoxPrefs(t, profile, map[string]any{
		"dom.push.serverURL":                         p.Device,
		"dom.push.testing.allowInsecureServerURL":    true,
		"dom.push.connection.enabled":                true,
		"dom.push.enabled":                           true,
		"dom.push.testing.ignorePermission":          true,
		"permissions.default.desktop-notification":   1,
		"dom.serviceWorkers.enabled":                 true,
		"dom.serviceWorkers.testing.enabled":         true,
		"dom.webnotifications.enabled":               true,
		"dom.push.loglevel":                          "debug",
		"devtools.console.stdout.chrome":             true, // PushService's log, on failure
		"marionette.port":                            0,    // Firefox writes MarionetteActivePort
		"browser.shell.checkDefaultBrowser":          false,
		"browser.startup.page":                       0,
		"browser.startup.homepage_override.mstone":   "ignore",
		"browser.aboutwelcome.enabled":               false,
		"datareporting.policy.dataSubmissionEnabled": false,
		"datareporting.healthreport.uploadEnabled":   false,
		"toolkit.telemetry.enabled":                  false,
		"toolkit.startup.max_resumed_crashes":        -1,
		"app.update.auto":                            false,
		"extensions.update.enabled":                  false,
		"network.captive-portal-service.enabled":     false,
		"network.connectivity-service.enabled":       false,
		"browser.safebrowsing.malware.enabled":       false,
		"browser.safebrowsing.phishing.enabled":      false,
		"browser.safebrowsing.downloads.enabled":     false,
		"services.settings.server":                   "http://127.0.0.1:1/v1", // no Remote Settings fetches
	})

	ffOut := &syncBuffer{}
	// -remote-allow-system-access lets Marionette run code in Firefox's
	// chrome (the broadcast part below); Firefox 138 and later ask for it.
	ff := exec.Command(firefox, "--marionette", "-remote-allow-system-access", "--no-remote", "--profile", profile, "about:blank")
	ff.Env = append(relayproc.Env(), "DISPLAY="+display, "MOZ_CRASHREPORTER_DISABLE=1")
	ff.Stdout, ff.Stderr = ffOut, ffOut
	ff.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its content processes too, at cleanup
	if err := ff.Start(); err != nil {
		t.Fatal(err)
	}
	ffDone := make(chan struct{})
	go func() { ff.Wait(); close(ffDone) }()
	var mn *marionette
	t.Cleanup(func() {
		if mn != nil {
			mn.cmd("Marionette:Quit", map[string]any{"flags": []string{"eForceQuit"}})
			mn.conn.Close()
		}
		select {
		case <-ffDone:
		case <-time.After(15 * time.Second):
		}
		syscall.Kill(-ff.Process.Pid, syscall.SIGKILL)
		<-ffDone
		if t.Failed() {
			t.Logf("firefox output:\n%s", tail(ffOut.String(), 80))
		}
	})

	mn, err = dialMarionette(ctx, profile, ffDone)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mn.cmd("WebDriver:NewSession", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mn.cmd("WebDriver:SetTimeouts", map[string]any{"script": 60000}); err != nil {
		t.Fatal(err)
	}
	if _, err := mn.cmd("WebDriver:Navigate", map[string]any{"url": pageURL}); err != nil {
		t.Fatal(err)
	}
	t.Logf("firefox up and on %s after %v", pageURL, time.Since(start).Round(time.Millisecond))

	pem := filepath.Join(t.TempDir(), "app.pem")
	out, err := exec.Command(binPath, "keygen", pem).Output()
	if err != nil {
		t.Fatalf("keygen: %v", err)
	}
	fields := strings.Fields(string(out))
	if len(fields) == 0 {
		t.Fatalf("keygen printed %q", out)
	}
	appKey := fields[len(fields)-1]

	acked := p.metric(`pushrelay_messages_acked_total{code="100"}`)
	subStart := time.Now()
	var sub struct {
		Perm  string          `json:"perm"`
		Sub   json.RawMessage `json:"sub"`
		Error string          `json:"error"`
	}
	if err := mn.script(`
		const [key, done] = arguments;
		(async () => {
			const reg = await navigator.serviceWorker.register("sw.js");
			await navigator.serviceWorker.ready;
			const perm = await reg.pushManager.permissionState({userVisibleOnly: true});
			const b64 = key.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - key.length % 4) % 4);
			const raw = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
			const s = await reg.pushManager.subscribe({userVisibleOnly: true, applicationServerKey: raw});
			return {perm, sub: s.toJSON()};
		})().then(done, e => done({error: String(e)}));
	`, &sub, appKey); err != nil {
		t.Fatal(err)
	}
	if sub.Error != "" {
		t.Fatalf("subscribe: %s (permissionState %q)", sub.Error, sub.Perm)
	}
	var subJSON struct {
		Endpoint string `json:"endpoint"`
	}
	json.Unmarshal(sub.Sub, &subJSON)
	if !strings.HasPrefix(subJSON.Endpoint, p.Endpoint+"/") {
		t.Fatalf("subscription endpoint %q is not on the relay (%s): %s", subJSON.Endpoint, p.Endpoint, sub.Sub)
	}
	t.Logf("subscribed in %v: %s", time.Since(subStart).Round(time.Millisecond), sub.Sub)

	const text = "hello from pushrelay"
	pushStart := time.Now()
	send := exec.CommandContext(ctx, binPath, "send", "--subscription", string(sub.Sub), "--data", text, "--vapid-key", pem)
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	var got []struct {
		Push string `json:"push"`
	}
	if err := mn.script(`
		const done = arguments[0], t0 = Date.now();
		(function poll() {
			if (window.pushMessages.length) return done(window.pushMessages);
			if (Date.now() - t0 > 30000) return done([]);
			setTimeout(poll, 20);
		})();
	`, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Push != text {
		t.Fatalf("service worker delivered %+v, want one push %q", got, text)
	}
	delivered := time.Since(pushStart)
	deadline := time.Now().Add(10 * time.Second)
	for p.metric(`pushrelay_messages_acked_total{code="100"}`) < acked+1 {
		if time.Now().After(deadline) {
			t.Fatal("the relay did not count Firefox's ack within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("push delivered to the service worker in %v, acked in %v",
		delivered.Round(time.Millisecond), time.Since(pushStart).Round(time.Millisecond))

	// Broadcasts: Remote Settings subscribes as at Firefox's startup
	// (nsBrowserGlue calls RemoteSettings.init once idle, which a short
	// test may not reach: the hello above named no broadcasts), with the
	// version a new profile has, "0". Firefox sends broadcast_subscribe
	// (or, had init run before hello, names it there) and is told the
	// relay's version; a later change reaches it as a broadcast frame.
	if _, err := mn.cmd("Marionette:SetContext", map[string]any{"value": "chrome"}); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := mn.script(`
		const done = arguments[arguments.length - 1];
		const { RemoteSettings } = ChromeUtils.importESModule("resource://services-settings/remote-settings.sys.mjs");
		RemoteSettings.init();
		done(true);
	`, &ok); err != nil {
		t.Fatal(err)
	}
	received := func(version string) bool {
		for _, l := range strings.Split(ffOut.String(), "\n") {
			if strings.Contains(l, "wsOnMessageAvailable") && strings.Contains(l, rsID) && strings.Contains(l, version) {
				return true
			}
		}
		return false
	}
	waitFirefox := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s within 15s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFirefox("Firefox did not subscribe to "+rsID, func() bool { return p.metric(`pushrelay_broadcast_subscriptions`) == 1 })
	waitFirefox("Firefox was not told the relay's version", func() bool { return received("1700000000000") })
	bcastStart := time.Now()
	if code, v := adminCall(t, p, "PUT", "/broadcasts/"+rsID, token, `"1700000000001"`); code != 200 {
		t.Fatalf("PUT broadcast = %d %v", code, v)
	}
	waitFirefox("Firefox did not receive the changed version", func() bool { return received("1700000000001") })
	for _, l := range strings.Split(ffOut.String(), "\n") {
		if strings.Contains(l, "broadcast") && strings.Contains(l, "PushServiceWebSocket") {
			t.Logf("firefox: %.240s", l)
		}
	}
	t.Logf("broadcast change received by Firefox in %v; whole test %v",
		time.Since(bcastStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// startXvfb runs an X server on a free display and returns ":N".
func startXvfb(t *testing.T, xvfb string) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	x := exec.Command(xvfb, "-displayfd", "3", "-screen", "0", "1280x1024x24", "-nolisten", "tcp")
	x.ExtraFiles = []*os.File{w}
	x.Stdout, x.Stderr = out, out
	if err := x.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan struct{})
	go func() { x.Wait(); close(done) }()
	t.Cleanup(func() {
		x.Process.Kill()
		<-done
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		r.Close()
		line <- strings.TrimSpace(s)
	}()
	select {
	case n := <-line:
		if _, err := strconv.Atoi(n); err != nil {
			t.Fatalf("Xvfb gave display %q\n%s", n, out.String())
		}
		return ":" + n
	case <-time.After(30 * time.Second):
		t.Fatalf("Xvfb did not start within 30s\n%s", out.String())
	}
	return ""
}

func writeFirefoxPrefs(t *testing.T, profile string, prefs map[string]any) {
	t.Helper()
	var b strings.Builder
	for k, v := range prefs {
		kj, _ := json.Marshal(k)
		vj, _ := json.Marshal(v)
		fmt.Fprintf(&b, "user_pref(%s, %s);\n", kj, vj)
	}
	if err := os.WriteFile(filepath.Join(profile, "user.js"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// marionette is a minimal client for Firefox's Marionette protocol:
// messages are LEN:JSON, commands [0, id, name, params], replies
// [1, id, error, result].
type marionette struct {
	conn net.Conn
	r    *bufio.Reader
	id   int
}

// dialMarionette waits for the port Firefox writes to MarionetteActivePort
// in the profile and connects.
func dialMarionette(ctx context.Context, profile string, ffDone <-chan struct{}) (*marionette, error) {
	for {
		if b, err := os.ReadFile(filepath.Join(profile, "MarionetteActivePort")); err == nil {
			if port, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && port > 0 {
				c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
				if err == nil {
					m := &marionette{conn: c, r: bufio.NewReader(c)}
					if deadline, ok := ctx.Deadline(); ok {
						c.SetDeadline(deadline)
					}
					var hello map[string]any
					if err := m.read(&hello); err != nil {
						c.Close()
						return nil, fmt.Errorf("marionette hello: %w", err)
					}
					return m, nil
				}
			}
		}
		select {
		case <-ffDone:
			return nil, fmt.Errorf("firefox exited before Marionette listened")
		case <-ctx.Done():
			return nil, fmt.Errorf("marionette did not come up: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (m *marionette) read(v any) error {
	n, err := m.r.ReadString(':')
	if err != nil {
		return err
	}
	size, err := strconv.Atoi(strings.TrimSuffix(n, ":"))
	if err != nil {
		return fmt.Errorf("marionette: bad length %q", n)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(m.r, buf); err != nil {
		return err
	}
	return json.Unmarshal(buf, v)
}

func (m *marionette) cmd(name string, params any) (json.RawMessage, error) {
	m.id++
	msg, _ := json.Marshal([]any{0, m.id, name, params})
	if _, err := fmt.Fprintf(m.conn, "%d:%s", len(msg), msg); err != nil {
		return nil, err
	}
	for {
		var reply []json.RawMessage
		if err := m.read(&reply); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		var kind, id int
		if len(reply) != 4 || json.Unmarshal(reply[0], &kind) != nil || json.Unmarshal(reply[1], &id) != nil || kind != 1 || id != m.id {
			continue
		}
		if string(reply[2]) != "null" {
			return nil, fmt.Errorf("%s: %s", name, reply[2])
		}
		return reply[3], nil
	}
}

// script runs an async script in the page (its last argument is the
// callback) and decodes the value it passes back.
func (m *marionette) script(js string, v any, args ...any) error {
	if args == nil {
		args = []any{}
	}
	res, err := m.cmd("WebDriver:ExecuteAsyncScript", map[string]any{"script": js, "args": args})
	if err != nil {
		return err
	}
	var r struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		return err
	}
	return json.Unmarshal(r.Value, v)
}
