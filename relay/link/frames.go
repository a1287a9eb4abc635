package link

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pushrelay/pushrelay/relay/linkproto"
	"github.com/pushrelay/pushrelay/relay/linkquic"
)

// writeTimeout bounds one frame's write on the control stream.
const writeTimeout = 10 * time.Second

// stream is a link stream as the framer uses it.
type stream interface {
	io.Reader
	io.Writer
	SetWriteDeadline(time.Time) error
}

// framer reads frames off a stream (one reader) and writes frames to it
// (any goroutine, one frame at a time).
type framer struct {
	s   stream
	rd  linkproto.Reader
	buf []byte

	wmu  sync.Mutex
	wbuf []byte
}

func newFramer(s stream, kind linkproto.Stream) *framer {
	return &framer{s: s, rd: linkproto.Reader{Stream: kind}, buf: make([]byte, 16<<10)}
}

// nextRaw returns the next frame, its payload valid until the next call.
func (f *framer) nextRaw() (linkproto.RawFrame, error) {
	for {
		raw, err := f.rd.Next()
		if err == nil {
			return raw, nil
		}
		if !errors.Is(err, linkproto.ErrShort) {
			return raw, err
		}
		n, rerr := f.s.Read(f.buf)
		if n > 0 {
			f.rd.Feed(f.buf[:n])
			continue
		}
		if rerr != nil {
			return raw, rerr
		}
	}
}

// next returns the next frame, decoded.
func (f *framer) next() (linkproto.Frame, error) {
	raw, err := f.nextRaw()
	if err != nil {
		return nil, err
	}
	return raw.Decode()
}

// send writes one frame.
func (f *framer) send(fr linkproto.Frame) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	b, err := linkproto.Append(f.wbuf[:0], fr)
	if err != nil {
		return fmt.Errorf("encode %v: %w", fr.Type(), err)
	}
	f.wbuf = b[:0]
	f.s.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = f.s.Write(b)
	return err
}

// closeFor ends conn for err: a decode error with its code, anything
// else as an internal error.
func closeFor(conn *linkquic.Conn, err error, code linkproto.Code) {
	if code == linkproto.CodeNoError {
		code = linkproto.CodeOf(err)
	}
	conn.Close(linkquic.Code(code), err.Error())
}

// readErr prefers why the connection ended to the stream's error.
func readErr(conn *linkquic.Conn, err error) error {
	if cerr := conn.Err(); cerr != nil {
		return cerr
	}
	return err
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
