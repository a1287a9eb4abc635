package main

import (
	"context"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// setNofile sets a running process's RLIMIT_NOFILE (soft and hard) with
// prlimit(2); the syscall package keeps its wrapper to itself.
func setNofile(pid, n int) error {
	lim := syscall.Rlimit{Cur: uint64(n), Max: uint64(n)}
	_, _, errno := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), syscall.RLIMIT_NOFILE,
		uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// highestFD is the largest descriptor number pid has open.
func highestFD(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	hi := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > hi {
			hi = n
		}
	}
	return hi
}

// The relay runs out of descriptors: its RLIMIT_NOFILE is lowered to 24
// above the highest one it has open, and 150 idle connections to each of
// the device and endpoint listeners exhaust them. Every accept then fails
// with EMFILE. The relay must stay up (before relay/listener, fasthttp
// took EMFILE for a permanent error and the daemon stopped), log it, and
// once the flood's connections are closed serve again: a device connects,
// registers and receives a push.
func TestE2ESurvivesDescriptorExhaustion(t *testing.T) {
	p := startRelay(t, t.TempDir())
	pid := p.Cmd.Process.Pid
	if err := setNofile(pid, highestFD(t, pid)+1+24); err != nil {
		t.Skipf("cannot lower the relay's RLIMIT_NOFILE: %v", err)
	}
	devAddr := hostOf(t, p.Device)
	epAddr := hostOf(t, p.Endpoint)

	// The flood: bounded in count (150 per listener) and time (2s per dial).
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for i := range 300 {
		addr := devAddr
		if i%2 == 1 {
			addr = epAddr
		}
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			select {
			case <-p.Done:
				t.Fatalf("relay exited under the flood (%v); connection %d: %v", p.ExitErr, i, err)
			case <-time.After(time.Second):
			}
			t.Fatalf("flood connection %d: %v", i, err)
		}
		flood = append(flood, c)
	}
	// Both listeners hit EMFILE and say so; the process stays up. A
	// listener whose connections of the flood were all accepted while
	// descriptors were left (the other listener took the last ones) is
	// sent more, a few at a time (at most 150 more each).
	for _, name := range []string{"device", "endpoint"} {
		line := regexp.MustCompile(`msg="accept failed; retrying" .*listener=` + name + ` `)
		deadline := time.Now().Add(10 * time.Second)
		more, next := 0, time.Now().Add(time.Second)
		for !line.MatchString(p.stderr.String()) {
			if addr := map[string]string{"device": devAddr, "endpoint": epAddr}[name]; time.Now().After(next) && more < 150 {
				for range 10 {
					if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
						flood = append(flood, c)
						more++
					}
				}
				next = time.Now().Add(500 * time.Millisecond)
			}
			select {
			case <-p.Done:
				t.Fatalf("relay exited under the flood: %v", p.ExitErr)
			default:
			}
			if strings.Contains(p.stderr.String(), "msg=fatal") {
				t.Fatal("relay is stopping under the flood (a fatal error)")
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q log line within 10s", line)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !strings.Contains(p.stderr.String(), "too many open files") {
		t.Error("the accept errors logged are not EMFILE")
	}
	// Held for a moment at the limit: still alive.
	select {
	case <-p.Done:
		t.Fatalf("relay exited under the flood: %v", p.ExitErr)
	case <-time.After(500 * time.Millisecond):
	}

	for _, c := range flood {
		c.Close()
	}
	flood = nil

	// Serving again: a device connects (retried while the relay works
	// through the closed flood in its accept queue), registers and gets a
	// push.
	var c *pushclient.Client
	deadline := time.Now().Add(20 * time.Second)
	for c == nil {
		select {
		case <-p.Done:
			t.Fatalf("relay exited after the flood: %v", p.ExitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cc, err := pushclient.Dial(ctx, p.Device)
		cancel()
		if err == nil {
			c = cc
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device could not connect within 20s of the flood ending: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { c.Abort() })
	h, err := c.Hello("", pushclient.HelloOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, c: c, uaid: h.UAID, subs: map[string]*testSub{}}
	s := d.register("")
	mustCreated(t, push(t, s, "after the flood", nil))
	if text, _ := d.receive(5 * time.Second); text != "after the flood" {
		t.Fatalf("device got %q", text)
	}
	for _, name := range []string{"device", "endpoint"} {
		series := `pushrelay_listener_accept_errors_total{listener="` + name + `",reason="emfile"}`
		if v := p.metric(series); v == 0 {
			t.Errorf("%s = 0", series)
		}
	}
	p.stop()
}

func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// memory_limit sets the runtime's soft limit; GOMEMLIMIT, when set, wins.
func TestE2EMemoryLimit(t *testing.T) {
	p := startRelay(t, t.TempDir(), "--memory-limit", "100MiB")
	if got := p.metric("go_gc_gomemlimit_bytes"); got != 100<<20 {
		t.Errorf("memory_limit 100MiB: go_gc_gomemlimit_bytes = %v", got)
	}
	p.stop()

	t.Setenv("GOMEMLIMIT", "50MiB") // the child's environment
	p = startRelay(t, t.TempDir(), "--memory-limit", "100MiB")
	if got := p.metric("go_gc_gomemlimit_bytes"); got != 50<<20 {
		t.Errorf("GOMEMLIMIT=50MiB and memory_limit 100MiB: go_gc_gomemlimit_bytes = %v, want GOMEMLIMIT's", got)
	}
	if !strings.Contains(p.stderr.String(), `msg="memory limit from GOMEMLIMIT; memory_limit not applied"`) {
		t.Error("no log line saying GOMEMLIMIT applies")
	}
	p.stop()
}
