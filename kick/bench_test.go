package kick

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/pushproto"
	"github.com/pushrelay/pushrelay/relay/store"
)

// BenchmarkKick measures the wake datagrams per second the kick path
// sends: Wake → Run's heap → the store's device row (one bbolt read) →
// record and target → datagram → sendto on a real UDP socket, with the
// rate limits off. The store holds benchDevices devices, each accepted for
// wake by a hello (claimed 127.0.0.1 address inside 127.0.0.0/8) and with
// one message waiting; wakes cycle over them in rounds, every device's
// previous wake ended by Connected, as the hub's hello does. sendto-only
// is the same datagrams to the same receivers from a bare loop.
//
//	go test -run '^$' -bench Kick -benchtime 200000x -count 5 ./kick/
func BenchmarkKick(b *testing.B) {
	b.Run("compat", func(b *testing.B) { benchKick(b, false) })
	b.Run("auth", func(b *testing.B) { benchKick(b, true) })
	b.Run("sendto-only", benchSendto)
}

// benchReceiversOn opens benchReceivers sockets on 127.0.0.1, each read
// by a goroutine counting the datagrams that land.
func benchReceiversOn(b *testing.B) (*atomic.Int64, []netip.AddrPort) {
	received := new(atomic.Int64)
	var readers sync.WaitGroup
	var addrs []netip.AddrPort
	var conns []*net.UDPConn
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		readers.Wait()
	})
	for range benchReceivers {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			b.Fatal(err)
		}
		c.SetReadBuffer(4 << 20)
		conns = append(conns, c)
		addrs = append(addrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
		readers.Go(func() {
			buf := make([]byte, 128)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				received.Add(1)
			}
		})
	}
	return received, addrs
}

// benchSendto is the ceiling under the kick path on this machine: the
// same datagrams to the same receivers, sent in a loop by one goroutine
// with nothing else to do.
func benchSendto(b *testing.B) {
	received, addrs := benchReceiversOn(b)
	out, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	msg := make([]byte, AuthSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := out.WriteToUDPAddrPort(msg, addrs[i%len(addrs)]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")
	deadline := time.Now().Add(time.Second)
	for received.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(received.Load())/float64(b.N), "received/op")
}

const (
	benchDevices   = 10000
	benchReceivers = 2
)

// countingSender is the test's udpSender counting the datagrams it sent,
// and telling when a round's last one went.
type countingSender struct {
	UDPSender
	n       atomic.Int64
	target  atomic.Int64
	reached chan struct{}
}

func (s *countingSender) WriteTo(b []byte, to netip.AddrPort) error {
	err := s.UDPSender.WriteTo(b, to)
	if err == nil && s.n.Add(1) == s.target.Load() {
		s.reached <- struct{}{}
	}
	return err
}

func benchKick(b *testing.B, auth bool) {
	ctx := context.Background()
	st, out := openStoreAndSocket(b)

	received, addrs := benchReceiversOn(b)

	keys, err := NewKeys(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	reg := metrics.NewRegistry()
	sender := &countingSender{UDPSender: UDPSender{Conn: out}, reached: make(chan struct{}, 1)}
	k, err := New(Config{Store: st, Sender: sender, Keys: keys, Ranges: ranges("127.0.0.0/8"),
		Rate: -1, TargetRate: -1, Interval: time.Hour, Metrics: reg})
	if err != nil {
		b.Fatal(err)
	}
	k.SetPresence(&presence{online: map[push.UAID]bool{}, proven: map[push.UAID]bool{}})

	// The devices: registered, accepted for wake at hello, one message
	// waiting. Written in parallel so the store's committer groups them.
	devs := make([]push.UAID, benchDevices)
	var until time.Time
	{
		now := time.Now()
		until = now.Add(24 * time.Hour)
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, 64)
		for range 64 {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= len(devs) {
						return
					}
					var u push.UAID
					u[0], u[14], u[15] = 0xbe, byte(i>>8), byte(i)
					devs[i] = u
					ch := push.ChannelID{byte(i >> 8), byte(i)}
					a := addrs[i%len(addrs)]
					err := st.Register(ctx, store.Channel{UAID: u, ID: ch, Created: now})
					if err == nil {
						var r pushproto.HelloReply
						r, err = k.HelloWake(ctx, u, pushproto.Hello{WakeAuth: auth,
							Wake: &pushproto.WakeHostPort{IP: a.Addr().String(), Port: int(a.Port())}}, netip.Addr{})
						if err == nil && r.Status != pushproto.StatusWake {
							err = fmt.Errorf("hello status %d", r.Status)
						}
					}
					if err == nil {
						_, err = st.Append(ctx, store.Message{UAID: u, Channel: ch, Received: now, TTL: 24 * time.Hour,
							Expiry: until, Urgency: push.UrgencyNormal, Data: []byte("x")})
					}
					if err != nil {
						errc <- fmt.Errorf("device %d: %w", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		k.Run(runCtx)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
		k.Close()
	})

	b.ReportAllocs()
	b.ResetTimer()
	// Rounds of at most benchDevices wakes, each device once: a wake is
	// never coalesced with one still due, so every Wake sends a datagram.
	for sent := 0; sent < b.N; {
		round := min(b.N-sent, len(devs))
		sender.target.Store(int64(sent + round))
		for _, u := range devs[:round] {
			k.Connected(u)
			k.Wake(u, until)
		}
		select {
		case <-sender.reached:
		case <-time.After(time.Minute):
			b.Fatalf("%d of %d datagrams sent after a minute", sender.n.Load(), sent+round)
		}
		sent += round
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")

	format := "compat"
	if auth {
		format = "auth"
	}
	series := fmt.Sprintf(`pushrelay_wake_datagrams_total{format="%s",kind="first"}`, format)
	if got := scrapeCounter(b, reg, series); got != float64(b.N) {
		b.Fatalf("%s = %v, want %d", series, got, b.N)
	}
	// What landed on the receivers (loopback may drop under load; the
	// kicker's count is what the benchmark measures).
	deadline := time.Now().Add(time.Second)
	for received.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(received.Load())/float64(b.N), "received/op")
}

// scrapeCounter reads one series from reg.
func scrapeCounter(b *testing.B, reg *metrics.Registry, series string) float64 {
	return reg.Value(series)
}
