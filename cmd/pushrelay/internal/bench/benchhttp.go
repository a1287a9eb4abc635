package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// rawPoster is the bench's app server: HTTP/1.1 over one keep-alive TCP
// connection with the request bytes prepared once, so the load generator
// spends little of the CPU it shares with the relay (net/http's client
// costs about as much as the server it measures). It speaks just enough
// HTTP for the relay's answers: a status line, headers, Content-Length.
type rawPoster struct {
	addr string
	conn net.Conn
	br   *bufio.Reader
	// keep makes roundTrip keep each answer's body in body.
	keep bool
	body []byte
}

func newRawPoster(endpoint string) (*rawPoster, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("raw poster needs an http:// endpoint, got %q", endpoint)
	}
	return &rawPoster{addr: u.Host}, nil
}

// request builds the bytes of one POST.
func rawRequest(endpoint string, body []byte, headers map[string]string) ([]byte, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", u.RequestURI(), u.Host, len(body))
	for k, v := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes(), nil
}

// do sends one prepared request and returns the status code.
func (p *rawPoster) do(req []byte) (int, error) {
	for attempt := 0; ; attempt++ {
		if p.conn == nil {
			c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
			if err != nil {
				return 0, err
			}
			p.conn, p.br = c, bufio.NewReaderSize(c, 4096)
		}
		p.conn.SetDeadline(time.Now().Add(30 * time.Second))
		code, err := p.roundTrip(req)
		if err == nil {
			return code, nil
		}
		p.conn.Close()
		p.conn = nil
		if attempt > 0 {
			return 0, err
		}
		// The server may have closed an idle keep-alive connection: retry
		// once on a fresh one.
	}
}

func (p *rawPoster) roundTrip(req []byte) (int, error) {
	if _, err := p.conn.Write(req); err != nil {
		return 0, err
	}
	line, err := p.br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, err
	}
	length, closeConn := 0, false
	for {
		h, err := p.br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, _ := bytes.Cut(h, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.Atoi(string(value))
			if err != nil {
				return 0, err
			}
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			closeConn = true
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, errors.New("chunked responses are not expected from the relay")
		}
	}
	if p.keep {
		p.body = append(p.body[:0], make([]byte, length)...)
		if _, err := io.ReadFull(p.br, p.body); err != nil {
			return 0, err
		}
	} else if _, err := p.br.Discard(length); err != nil {
		return 0, err
	}
	if closeConn {
		p.conn.Close()
		p.conn = nil
	}
	return code, nil
}

func (p *rawPoster) close() {
	if p.conn != nil {
		p.conn.Close()
	}
}
