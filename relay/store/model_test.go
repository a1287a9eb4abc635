package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/push"
)

// The model is what the store should hold, kept the simple way.
type modelMsg struct {
	seq    uint64
	ch     push.ChannelID
	topic  string
	expiry time.Time
	data   string
}

type modelDev struct {
	chans map[push.ChannelID]string // channel → key and endpoint
	msgs  []modelMsg                // in seq order
}

type model struct {
	devs    map[push.UAID]*modelDev
	deleted map[string]int
	lastSeq uint64
	// origins: the message first appended with each origin key, until
	// a sweep after its expiry.
	origins map[push.Origin]modelOrigin
	// outbox: the unregisters waiting for the upstream, in order;
	// lastOut the last outbox seq issued; tombstoned the appends refused
	// for a tombstone.
	outbox     []modelUnreg
	lastOut    uint64
	tombstoned int
	// ids: each device's upstream identity.
	ids map[push.UAID]modelID
}

type modelUnreg struct {
	seq  uint64
	uaid push.UAID
	ch   push.ChannelID
	up   push.UAID
}

type modelID struct {
	up      push.UAID
	helloed time.Time
}

func (m *model) tombstone(u push.UAID, ch push.ChannelID) bool {
	return slices.ContainsFunc(m.outbox, func(x modelUnreg) bool { return x.uaid == u && x.ch == ch })
}

func (m *model) owner(up push.UAID) (push.UAID, bool) {
	for u, id := range m.ids {
		if id.up == up {
			return u, true
		}
	}
	return push.UAID{}, false
}

type modelOrigin struct {
	uaid   push.UAID
	seq    uint64
	expiry time.Time
}

func (m *model) totals() Stats {
	var st Stats
	for _, d := range m.devs {
		st.Devices++
		st.Channels += int64(len(d.chans))
		st.Waiting += int64(len(d.msgs))
	}
	st.UpstreamIDs, st.PendingUnregisters = int64(len(m.ids)), int64(len(m.outbox))
	return st
}

// remove drops the messages for which drop is true, counted under why.
func (m *model) remove(d *modelDev, why func(modelMsg) string) int {
	n := 0
	d.msgs = slices.DeleteFunc(d.msgs, func(x modelMsg) bool {
		r := why(x)
		if r == "" {
			return false
		}
		m.deleted[r]++
		n++
		return true
	})
	return n
}

// TestModel runs random operations against the store and a model and
// checks that results, per-device counts, totals and metrics agree.
func TestModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const (
		nDevs, nChans    = 3, 3
		maxMsgs, maxChan = 4, 2
		steps            = 1500
	)
	ctx := context.Background()
	clk := newClock()
	reg := metrics.NewRegistry()
	path := filepath.Join(t.TempDir(), "store.db")
	opts := Options{Path: path, Metrics: reg, Now: clk.Now, MaxMessagesPerUAID: maxMsgs, MaxChannelsPerUAID: maxChan}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	mod := &model{devs: map[push.UAID]*modelDev{}, deleted: map[string]int{}, origins: map[push.Origin]modelOrigin{}, ids: map[push.UAID]modelID{}}

	check := func(step int, what string) {
		t.Helper()
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if want := mod.totals(); st != want {
			t.Fatalf("step %d (%s): Stats %+v, model %+v", step, what, st, want)
		}
		if o, _ := originRows(t, s); o != len(mod.origins) {
			t.Fatalf("step %d (%s): %d origin keys, model %d", step, what, o, len(mod.origins))
		}
		ps, err := s.PendingUnregisters(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		var gotOut []modelUnreg
		for _, p := range ps {
			gotOut = append(gotOut, modelUnreg{p.Seq, p.UAID, p.Channel, p.Upstream})
		}
		if !slices.Equal(gotOut, mod.outbox) {
			t.Fatalf("step %d (%s): outbox\n got %v\nwant %v", step, what, gotOut, mod.outbox)
		}
		hs, err := s.HelloedBefore(clk.Now().Add(time.Hour), 0)
		if err != nil {
			t.Fatal(err)
		}
		var gotIDs, wantIDs []UpstreamID
		for _, h := range hs {
			gotIDs = append(gotIDs, UpstreamID{h.Device, h.Upstream, h.Helloed.UTC()})
		}
		for u, id := range mod.ids {
			wantIDs = append(wantIDs, UpstreamID{u, id.up, id.helloed.UTC()})
		}
		slices.SortFunc(wantIDs, func(a, b UpstreamID) int {
			if c := a.Helloed.Compare(b.Helloed); c != 0 {
				return c
			}
			return slices.Compare(a.Device[:], b.Device[:])
		})
		if !slices.Equal(gotIDs, wantIDs) {
			t.Fatalf("step %d (%s): hello order\n got %v\nwant %v", step, what, gotIDs, wantIDs)
		}
		for i := range nDevs {
			up := upuaid(byte(i))
			got, ok, err := s.DeviceFor(up)
			want, wantOK := mod.owner(up)
			if err != nil || ok != wantOK || got != want {
				t.Fatalf("step %d (%s): DeviceFor(%v) = %v %v %v, model %v %v", step, what, up, got, ok, err, want, wantOK)
			}
		}
		for i := range nDevs {
			u := uaid(byte(i))
			md := mod.devs[u]
			d, ok, err := s.Device(u)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (md != nil) {
				t.Fatalf("step %d (%s): device %d exists %v, model %v", step, what, i, ok, md != nil)
			}
			if !ok {
				continue
			}
			if d.Waiting != len(md.msgs) || d.Channels != len(md.chans) {
				t.Fatalf("step %d (%s): device %d waiting %d channels %d, model %d %d",
					step, what, i, d.Waiting, d.Channels, len(md.msgs), len(md.chans))
			}
			ms, err := s.Messages(u, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, x := range md.msgs {
				if x.expiry.After(clk.Now()) {
					want = append(want, fmt.Sprint(x.seq, x.data))
				}
			}
			var got []string
			for _, x := range ms {
				got = append(got, fmt.Sprint(x.Seq, string(x.Data)))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("step %d (%s): device %d messages\n got %v\nwant %v", step, what, i, got, want)
			}
		}
	}

	for step := range steps {
		u := uaid(byte(rng.IntN(nDevs)))
		ch := chid(byte(rng.IntN(nChans)))
		md := mod.devs[u]
		var what string
		switch r := rng.IntN(100); {
		case r < 12: // register
			key := []string{"", "k"}[rng.IntN(2)]
			endpoint := []string{"", "", "https://up/e"}[rng.IntN(3)]
			what = fmt.Sprintf("register %v %v %q %q", u, ch, key, endpoint)
			var keyb []byte
			if key != "" {
				keyb = []byte(key)
			}
			err := s.Register(ctx, Channel{UAID: u, ID: ch, Key: keyb, Endpoint: endpoint})
			key += "|" + endpoint
			var want error
			switch {
			case md != nil && hasChan(md, ch):
				if md.chans[ch] != key {
					want = ErrChannelConflict
				}
			case mod.tombstone(u, ch):
				want = ErrTombstoned
			case md != nil && len(md.chans) >= maxChan:
				want = ErrTooManyChannels
			default:
				if md == nil {
					md = &modelDev{chans: map[push.ChannelID]string{}}
					mod.devs[u] = md
				}
				md.chans[ch] = key
			}
			if !errors.Is(err, want) || (want == nil) != (err == nil) {
				t.Fatalf("step %d: %s = %v, want %v", step, what, err, want)
			}
		case r < 16: // unregister, here or (half the time) for the upstream too
			later := rng.IntN(2) == 0
			up := upuaid(byte(rng.IntN(nDevs)))
			what = fmt.Sprintf("unregister %v %v (later %v)", u, ch, later)
			var ok bool
			if later {
				ok, err = s.UnregisterLater(ctx, u, ch, up)
			} else {
				ok, err = s.Unregister(ctx, u, ch)
			}
			want := md != nil && hasChan(md, ch)
			if err != nil || ok != want {
				t.Fatalf("step %d: %s = %v, %v; want %v", step, what, ok, err, want)
			}
			if want && later && !mod.tombstone(u, ch) {
				mod.lastOut++
				mod.outbox = append(mod.outbox, modelUnreg{mod.lastOut, u, ch, up})
			}
			if want {
				delete(md.chans, ch)
				mod.remove(md, func(x modelMsg) string {
					if x.ch == ch {
						return "unregistered"
					}
					return ""
				})
			}
		case r < 55: // append
			topic := []string{"", "", "a", "b"}[rng.IntN(4)]
			ttl := time.Duration(1+rng.IntN(6)) * time.Second
			data := fmt.Sprint("d", step)
			var origin push.Origin
			if rng.IntN(2) == 0 {
				origin = push.ParentOrigin([]byte{byte(rng.IntN(6))})
			}
			what = fmt.Sprintf("append %v %v topic %q ttl %v origin %v", u, ch, topic, ttl, origin)
			rs, err := s.AppendBatch(ctx, []Message{{UAID: u, Channel: ch, TTL: ttl, Topic: topic, Data: []byte(data), Origin: origin}})
			if err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			got, err := rs[0].Message, rs[0].Err
			if first, ok := mod.origins[origin]; ok && first.expiry.After(clk.Now()) {
				// A duplicate, whatever became of the first or its channel.
				waiting := false
				if fd := mod.devs[first.uaid]; fd != nil {
					waiting = slices.ContainsFunc(fd.msgs, func(x modelMsg) bool { return x.seq == first.seq })
				}
				if err != nil || !rs[0].Duplicate || got.Seq != first.seq || rs[0].Waiting != waiting {
					t.Fatalf("step %d: %s = %+v, want a duplicate of %d (waiting %v)", step, what, rs[0], first.seq, waiting)
				}
				break
			}
			if rs[0].Duplicate {
				t.Fatalf("step %d: %s: a duplicate of nothing: %+v", step, what, rs[0])
			}
			if md == nil || !hasChan(md, ch) {
				want := ErrNoChannel
				if mod.tombstone(u, ch) {
					want = ErrTombstoned
					mod.tombstoned++
				}
				if !errors.Is(err, want) {
					t.Fatalf("step %d: %s = %v, want %v", step, what, err, want)
				}
				break
			}
			if err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			if got.Seq <= mod.lastSeq {
				t.Fatalf("step %d: seq %d after %d", step, got.Seq, mod.lastSeq)
			}
			mod.lastSeq = got.Seq
			if !origin.IsZero() {
				mod.origins[origin] = modelOrigin{uaid: u, seq: got.Seq, expiry: clk.Now().Add(ttl)}
			}
			if topic != "" {
				mod.remove(md, func(x modelMsg) string {
					if x.ch == ch && x.topic == topic {
						return "replaced_topic"
					}
					return ""
				})
			}
			md.msgs = append(md.msgs, modelMsg{seq: got.Seq, ch: ch, topic: topic, expiry: clk.Now().Add(ttl), data: data})
			for len(md.msgs) > maxMsgs {
				why := "dropped_cap"
				if !md.msgs[0].expiry.After(clk.Now()) {
					why = "expired"
				}
				mod.deleted[why]++
				md.msgs = md.msgs[1:]
			}
		case r < 67: // ack
			var seqs []uint64
			want := 0
			if md != nil {
				for _, x := range md.msgs {
					if rng.IntN(2) == 0 {
						seqs = append(seqs, x.seq)
						want++
					}
				}
			}
			seqs = append(seqs, mod.lastSeq+1+uint64(rng.IntN(3)))
			if want > 0 && rng.IntN(3) == 0 {
				seqs = append(seqs, seqs[0]) // a duplicate
			}
			what = fmt.Sprintf("ack %v %v", u, seqs)
			n, err := s.Ack(ctx, u, seqs...)
			if err != nil || n != want {
				t.Fatalf("step %d: %s = %d, %v; want %d", step, what, n, err, want)
			}
			if md != nil {
				mod.remove(md, func(x modelMsg) string {
					if slices.Contains(seqs, x.seq) {
						return "acked"
					}
					return ""
				})
			}
		case r < 74: // app-server delete
			var seq uint64 = mod.lastSeq
			if md != nil && len(md.msgs) > 0 {
				seq = md.msgs[rng.IntN(len(md.msgs))].seq
			}
			what = fmt.Sprintf("delete %v %v %d", u, ch, seq)
			ok, err := s.Delete(ctx, u, ch, seq)
			want := false
			if md != nil {
				want = mod.remove(md, func(x modelMsg) string {
					if x.seq == seq && x.ch == ch {
						return "deleted"
					}
					return ""
				}) == 1
			}
			if err != nil || ok != want {
				t.Fatalf("step %d: %s = %v, %v; want %v", step, what, ok, err, want)
			}
		case r < 77: // delete device
			what = fmt.Sprintf("delete device %v", u)
			if err := s.DeleteDevice(ctx, u); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			if md != nil {
				mod.deleted["unregistered"] += len(md.msgs)
				delete(mod.devs, u)
			}
			delete(mod.ids, u)
		case r < 79: // the unregisters sent upstream
			var seqs []uint64
			for _, x := range mod.outbox {
				if rng.IntN(2) == 0 {
					seqs = append(seqs, x.seq)
				}
			}
			want := len(seqs)
			seqs = append(seqs, mod.lastOut+1)
			what = fmt.Sprintf("unregister sent %v", seqs)
			n, err := s.UnregisterSent(ctx, seqs...)
			if err != nil || n != want {
				t.Fatalf("step %d: %s = %d, %v; want %d", step, what, n, err, want)
			}
			mod.outbox = slices.DeleteFunc(mod.outbox, func(x modelUnreg) bool { return slices.Contains(seqs, x.seq) })
		case r < 82: // an upstream identity set or dropped, a hello
			up := upuaid(byte(rng.IntN(nDevs)))
			switch rng.IntN(4) {
			case 0:
				what = fmt.Sprintf("set upstream id %v %v", u, up)
				err := s.SetUpstreamID(ctx, u, up, clk.Now())
				if owner, ok := mod.owner(up); ok && owner != u {
					if !errors.Is(err, ErrUpstreamConflict) {
						t.Fatalf("step %d: %s = %v, want ErrUpstreamConflict", step, what, err)
					}
					break
				}
				if err != nil {
					t.Fatalf("step %d: %s: %v", step, what, err)
				}
				mod.ids[u] = modelID{up, clk.Now()}
			case 3:
				what = fmt.Sprintf("add upstream id %v %v", u, up)
				id, added, err := s.AddUpstreamID(ctx, u, up, clk.Now())
				old, had := mod.ids[u]
				owner, taken := mod.owner(up)
				switch {
				case had:
					if err != nil || added || id.Upstream != old.up || !id.Helloed.Equal(old.helloed) {
						t.Fatalf("step %d: %s = %+v %v %v; want the old %+v", step, what, id, added, err, old)
					}
				case taken && owner != u:
					if !errors.Is(err, ErrUpstreamConflict) {
						t.Fatalf("step %d: %s = %v, want ErrUpstreamConflict", step, what, err)
					}
				default:
					if err != nil || !added || id.Upstream != up || id.Device != u {
						t.Fatalf("step %d: %s = %+v %v %v", step, what, id, added, err)
					}
					mod.ids[u] = modelID{up, clk.Now()}
				}
			case 1:
				what = fmt.Sprintf("delete upstream id %v", u)
				ok, err := s.DeleteUpstreamID(ctx, u)
				_, want := mod.ids[u]
				if err != nil || ok != want {
					t.Fatalf("step %d: %s = %v, %v; want %v", step, what, ok, err, want)
				}
				delete(mod.ids, u)
			default:
				u2 := uaid(byte(rng.IntN(nDevs)))
				what = fmt.Sprintf("helloed %v %v", u, u2)
				n, err := s.Helloed(ctx, clk.Now(), u, u2)
				want := 0
				for _, x := range []push.UAID{u, u2} {
					if id, ok := mod.ids[x]; ok {
						want++
						id.helloed = clk.Now()
						mod.ids[x] = id
					}
				}
				if err != nil || n != want {
					t.Fatalf("step %d: %s = %d, %v; want %d", step, what, n, err, want)
				}
			}
		case r < 90: // time passes
			d := time.Duration(rng.IntN(2000)) * time.Millisecond
			what = fmt.Sprintf("advance %v", d)
			clk.Add(d)
		case r < 96: // sweep
			what = "sweep"
			n, err := s.Sweep(ctx)
			want := 0
			for _, d := range mod.devs {
				want += mod.remove(d, func(x modelMsg) string {
					if !x.expiry.After(clk.Now()) {
						return "expired"
					}
					return ""
				})
			}
			if err != nil || n != want {
				t.Fatalf("step %d: %s = %d, %v; want %d", step, what, n, err, want)
			}
			maps.DeleteFunc(mod.origins, func(_ push.Origin, o modelOrigin) bool { return !o.expiry.After(clk.Now()) })
		default: // touch
			what = fmt.Sprintf("touch %v", u)
			if err := s.Touch(ctx, u, clk.Now()); err != nil {
				t.Fatal(err)
			}
		}
		check(step, what)
	}

	for _, r := range reasonNames {
		if got := deletedMetric(t, reg, r); got != float64(mod.deleted[r]) {
			t.Errorf("deleted{%s} = %v, model %d", r, got, mod.deleted[r])
		}
	}
	if got := metricValue(t, reg, "pushrelay_store_tombstoned_total"); got != float64(mod.tombstoned) {
		t.Errorf("tombstoned_total = %v, model %d", got, mod.tombstoned)
	}
	t.Logf("deleted by reason: %v; final %+v; %d refused for a tombstone, %d unregisters waiting", mod.deleted, mod.totals(), mod.tombstoned, len(mod.outbox))

	// The totals persisted in meta survive a reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// And the file is sound, the upstream buckets' cross-references too.
	if r, err := Verify(path, time.Second); err != nil {
		t.Fatalf("Verify: %v %+v", err, r)
	}
	opts.Metrics = nil
	if s, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	check(steps, "reopen")
}

func hasChan(d *modelDev, ch push.ChannelID) bool {
	_, ok := d.chans[ch]
	return ok
}
