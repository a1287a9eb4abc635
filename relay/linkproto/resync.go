package linkproto

import (
	"bytes"
	"fmt"

	"github.com/pushrelay/pushrelay/relay/push"
)

// Limits of a RESYNC chunk.
const (
	// MaxResyncUAIDs bounds the UAIDs of one chunk.
	MaxResyncUAIDs = 4096
	// MaxResyncChannels bounds the channels of one chunk (and so of one
	// UAID: the store's default cap is 1,000).
	MaxResyncChannels = 8192
	// MaxResyncPayload bounds a RESYNC payload: two range ends, and
	// MaxResyncUAIDs entries of a UAID and a count carrying
	// MaxResyncChannels channels between them.
	MaxResyncPayload = 32 + 2 + MaxResyncUAIDs*(16+2) + MaxResyncChannels*16
)

// ResyncEntry is one UAID and the channels registered for it, sorted.
type ResyncEntry struct {
	UAID     push.UAID
	Channels []push.ChannelID
}

// Resync is one chunk of the parent's view of the pairs it holds for a
// child, sent after a WELCOME with Resync set. A chunk covers the UAIDs
// from Low to High inclusive: a UAID in that range and not in Entries has
// no channels at the parent. The chunks of one resync cover the whole UAID
// space in order: the first has Low 00..00, each next one starts right
// after the previous High, and the last has High ff..ff. Entries are
// sorted by UAID, each with 1 or more channels sorted, so every view has
// exactly one encoding.
type Resync struct {
	Low, High push.UAID
	Entries   []ResyncEntry
}

func (Resync) Type() FrameType { return TypeResync }

// Last reports whether r is the last chunk of its resync.
func (r Resync) Last() bool { return r.High == maxUAID }

var maxUAID = push.UAID{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func (f Resync) appendPayload(b []byte) ([]byte, error) {
	if bytes.Compare(f.Low[:], f.High[:]) > 0 {
		return b, fmt.Errorf("%w: resync range %s..%s", ErrMalformed, f.Low, f.High)
	}
	if len(f.Entries) > MaxResyncUAIDs {
		return b, fmt.Errorf("%w: %d resync uaids, limit %d", ErrTooLarge, len(f.Entries), MaxResyncUAIDs)
	}
	b = append(b, f.Low[:]...)
	b = append(b, f.High[:]...)
	b = AppendVarint(b, uint64(len(f.Entries)))
	channels := 0
	prev := f.Low
	for i, e := range f.Entries {
		if c := bytes.Compare(e.UAID[:], prev[:]); c < 0 || (c == 0 && i > 0) || bytes.Compare(e.UAID[:], f.High[:]) > 0 {
			return b, fmt.Errorf("%w: resync uaid %s out of order or range", ErrMalformed, e.UAID)
		}
		prev = e.UAID
		if len(e.Channels) == 0 {
			return b, fmt.Errorf("%w: resync uaid %s without channels", ErrMalformed, e.UAID)
		}
		if channels += len(e.Channels); channels > MaxResyncChannels {
			return b, fmt.Errorf("%w: over %d resync channels", ErrTooLarge, MaxResyncChannels)
		}
		b = append(b, e.UAID[:]...)
		b = AppendVarint(b, uint64(len(e.Channels)))
		for j, ch := range e.Channels {
			if j > 0 && bytes.Compare(ch[:], e.Channels[j-1][:]) <= 0 {
				return b, fmt.Errorf("%w: resync channels of %s out of order", ErrMalformed, e.UAID)
			}
			b = append(b, ch[:]...)
		}
	}
	return b, nil
}

func (f *Resync) decodePayload(p []byte) error {
	r := payload{p: p}
	f.Low = r.uaid()
	f.High = r.uaid()
	if r.err == nil && bytes.Compare(f.Low[:], f.High[:]) > 0 {
		r.fail(fmt.Errorf("%w: resync range %s..%s", ErrMalformed, f.Low, f.High))
	}
	n := r.count(MaxResyncUAIDs, 16+1+16, "resync uaids")
	f.Entries = make([]ResyncEntry, n)
	channels := 0
	for i := range f.Entries {
		e := &f.Entries[i]
		e.UAID = r.uaid()
		if r.err != nil {
			break
		}
		if c := bytes.Compare(e.UAID[:], f.Low[:]); c < 0 || bytes.Compare(e.UAID[:], f.High[:]) > 0 ||
			(i > 0 && bytes.Compare(e.UAID[:], f.Entries[i-1].UAID[:]) <= 0) {
			r.fail(fmt.Errorf("%w: resync uaid %s out of order or range", ErrMalformed, e.UAID))
			break
		}
		m := r.count(MaxResyncChannels-channels, 16, "resync channels")
		if r.err == nil && m == 0 {
			r.fail(fmt.Errorf("%w: resync uaid %s without channels", ErrMalformed, e.UAID))
		}
		channels += m
		e.Channels = make([]push.ChannelID, m)
		for j := range e.Channels {
			e.Channels[j] = r.channel()
			if r.err == nil && j > 0 && bytes.Compare(e.Channels[j][:], e.Channels[j-1][:]) <= 0 {
				r.fail(fmt.Errorf("%w: resync channels of %s out of order", ErrMalformed, e.UAID))
			}
		}
	}
	return r.end()
}

// ChunkResync cuts a view, entries sorted by UAID with sorted channels,
// into the RESYNC chunks that carry it, each within the limits, and calls
// emit with each in order. An empty view is one chunk covering every UAID.
// A UAID with more than MaxResyncChannels channels is ErrTooLarge.
func ChunkResync(entries []ResyncEntry, emit func(Resync) error) error {
	low := push.UAID{}
	for len(entries) > 0 || low == (push.UAID{}) {
		n, channels := 0, 0
		for n < len(entries) && n < MaxResyncUAIDs && channels+len(entries[n].Channels) <= MaxResyncChannels {
			channels += len(entries[n].Channels)
			n++
		}
		if n == 0 && len(entries) > 0 {
			return fmt.Errorf("%w: %d channels for %s", ErrTooLarge, len(entries[0].Channels), entries[0].UAID)
		}
		c := Resync{Low: low, High: maxUAID, Entries: entries[:n:n]}
		if n < len(entries) {
			c.High = entries[n-1].UAID
		}
		if _, err := c.appendPayload(nil); err != nil {
			return err
		}
		if err := emit(c); err != nil {
			return err
		}
		entries = entries[n:]
		if c.Last() {
			return nil
		}
		low = c.High
		for i := len(low) - 1; i >= 0; i-- {
			if low[i]++; low[i] != 0 {
				break
			}
		}
	}
	return nil
}

// ResyncReader checks that the chunks of one resync arrive in order and
// cover the UAID space. The zero value expects the first chunk.
type ResyncReader struct {
	next push.UAID
	done bool
}

// Add checks chunk c follows the previous one and reports whether it was
// the last. A gap, an overlap or a chunk after the last is ErrMalformed.
func (rr *ResyncReader) Add(c Resync) (last bool, err error) {
	if rr.done || c.Low != rr.next {
		return false, fmt.Errorf("%w: resync chunk %s..%s does not follow %s", ErrMalformed, c.Low, c.High, rr.next)
	}
	if c.Last() {
		rr.done = true
		return true, nil
	}
	rr.next = c.High
	for i := len(rr.next) - 1; i >= 0; i-- {
		if rr.next[i]++; rr.next[i] != 0 {
			break
		}
	}
	return false, nil
}
