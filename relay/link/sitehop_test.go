package link

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay"
	"github.com/pushrelay/pushrelay/relay/endpoint"
	"github.com/pushrelay/pushrelay/relay/linkauth"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// A parent site's members (SiteMember parents): the child, given both
// addresses, is refused by the one that does not hold and connects to
// the one that does; when the other comes to hold (Hold: its restart
// hint to the child's last address) while the first still holds the
// connection open (as a holder that was SIGKILLed does, until the idle
// timeout), the child moves to it at once.
func TestChildMovesToTheParentSiteHolder(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if _, err := linkauth.NewCA(ca, "", false); err != nil {
		t.Fatal(err)
	}
	creds := func(name string) *linkauth.Credentials {
		if _, err := linkauth.Issue(ca, name, dir, false); err != nil {
			t.Fatal(err)
		}
		c, err := linkauth.Load(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(ca, linkauth.CACertFile), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	open := func(name string) *store.Store {
		s, err := store.Open(store.Options{Path: filepath.Join(dir, name+".db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	tokens, err := token.New(bytes.Repeat([]byte{1}, token.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	minter, err := endpoint.NewMinter(tokens, "https://core.example.net")
	if err != nil {
		t.Fatal(err)
	}
	core := creds("core")
	var ps []*Parent
	var pst []*store.Store
	for _, name := range []string{"a", "b"} {
		st := open(name)
		p, err := NewParent(ParentConfig{Listen: "127.0.0.1:0", Name: "core", Credentials: core, Store: st, Endpoints: minter, SiteMember: true})
		if err != nil {
			t.Fatal(err)
		}
		ps, pst = append(ps, p), append(pst, st)
	}
	cst := open("edge")
	child, err := NewChild(ChildConfig{Addr: ps[1].Addr().String() + "," + ps[0].Addr().String(), Name: "edge-1", Credentials: creds("edge-1"),
		Store: cst, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := relay.New(relay.Config{Store: cst, Tokens: tokens, Endpoints: child})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	holdA, stopA := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); hub.Close() }()
	epoch := []byte("site-epk")
	for _, p := range ps {
		wg.Go(func() { p.Run(ctx) })
	}
	wg.Go(func() { ps[0].Hold(holdA, epoch) })
	wg.Go(func() { child.Run(ctx, hub) })
	defer stopA()
	eventually(t, "the child connected to a, after b refused it", func() bool {
		st := child.Status()
		return st.Connected && st.Addr == ps[0].Addr().String()
	})
	// b learns the child's address (in a site: from the log) and comes
	// to hold while a keeps the connection.
	child.mu.Lock()
	la := child.cur.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	child.mu.Unlock()
	if err := pst[1].SetLinkChildAddr(ctx, "edge-1", la); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wg.Go(func() { ps[1].Hold(ctx, epoch) })
	eventually(t, "the child moved to b", func() bool {
		st := child.Status()
		return st.Connected && st.Addr == ps[1].Addr().String()
	})
	t.Logf("the child moved to the new holder %s after its hint", time.Since(start).Round(time.Millisecond))
}
