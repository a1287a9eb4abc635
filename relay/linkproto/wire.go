package linkproto

import (
	"fmt"

	"github.com/pushrelay/pushrelay/relay/push"
)

// appendBytes appends a length-prefixed field, refusing one over max.
func appendBytes(b []byte, p []byte, max int, what string) ([]byte, error) {
	if len(p) > max {
		return b, fmt.Errorf("%w: %s of %d bytes, limit %d", ErrTooLarge, what, len(p), max)
	}
	b = AppendVarint(b, uint64(len(p)))
	return append(b, p...), nil
}

// appendString is appendBytes for a string.
func appendString(b []byte, s string, max int, what string) ([]byte, error) {
	if len(s) > max {
		return b, fmt.Errorf("%w: %s of %d bytes, limit %d", ErrTooLarge, what, len(s), max)
	}
	b = AppendVarint(b, uint64(len(s)))
	return append(b, s...), nil
}

// appendVarintChecked appends v, refusing one above MaxVarint.
func appendVarintChecked(b []byte, v uint64, what string) ([]byte, error) {
	if v > MaxVarint {
		return b, fmt.Errorf("%w: %s %d above 2^62-1", ErrTooLarge, what, v)
	}
	return AppendVarint(b, v), nil
}

// payload reads the fields of one frame's payload. The first error sticks;
// later reads return zero values.
type payload struct {
	p   []byte
	err error
}

func (r *payload) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.p = nil
}

func (r *payload) varint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n, err := ReadVarint(r.p)
	if err == ErrShort {
		err = fmt.Errorf("%w: payload ends inside %s", ErrMalformed, what)
	}
	if err != nil {
		r.fail(err)
		return 0
	}
	r.p = r.p[n:]
	return v
}

// count reads a count of items of at least minSize bytes each, refusing
// one over max or one the rest of the payload cannot hold, so nothing is
// ever allocated from a count alone.
func (r *payload) count(max, minSize int, what string) int {
	v := r.varint(what)
	if r.err != nil {
		return 0
	}
	if v > uint64(max) {
		r.fail(fmt.Errorf("%w: %d %s, limit %d", ErrTooLarge, v, what, max))
		return 0
	}
	if v*uint64(minSize) > uint64(len(r.p)) {
		r.fail(fmt.Errorf("%w: %d %s in %d bytes", ErrMalformed, v, what, len(r.p)))
		return 0
	}
	return int(v)
}

func (r *payload) fixed(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.p) < n {
		r.fail(fmt.Errorf("%w: payload ends inside %s", ErrMalformed, what))
		return nil
	}
	v := r.p[:n:n]
	r.p = r.p[n:]
	return v
}

func (r *payload) u8(what string) byte {
	if b := r.fixed(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *payload) uaid() (u push.UAID) {
	copy(u[:], r.fixed(len(u), "uaid"))
	return u
}

func (r *payload) channel() (c push.ChannelID) {
	copy(c[:], r.fixed(len(c), "channel"))
	return c
}

// bytes reads a length-prefixed field of min to max bytes; the result
// aliases the payload.
func (r *payload) field(min, max int, what string) []byte {
	l := r.varint(what)
	if r.err != nil {
		return nil
	}
	if l > uint64(max) {
		r.fail(fmt.Errorf("%w: %s of %d bytes, limit %d", ErrTooLarge, what, l, max))
		return nil
	}
	if l < uint64(min) {
		r.fail(fmt.Errorf("%w: %s of %d bytes, at least %d", ErrMalformed, what, l, min))
		return nil
	}
	return r.fixed(int(l), what)
}

func (r *payload) str(min, max int, what string) string {
	return string(r.field(min, max, what))
}

// end reports the sticky error, or ErrMalformed for trailing bytes.
func (r *payload) end() error {
	if r.err == nil && len(r.p) > 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.p))
	}
	return r.err
}
