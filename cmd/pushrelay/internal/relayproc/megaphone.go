package relayproc

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// MegaphoneStub is a megaphone service on loopback: it serves one
// broadcasts map to requests with the right bearer token (401 otherwise),
// counts what it was asked and notes when it first served the map set
// last.
type MegaphoneStub struct {
	mu          sync.Mutex
	token       string
	status      int
	versions    map[string]string
	polls       int
	badAuth     int
	firstServed time.Time // of the current versions; zero until served

	ln  net.Listener
	srv *http.Server
}

// NewMegaphoneStub serves versions to requests bearing token (any, if
// token is empty) on a loopback port until Close.
func NewMegaphoneStub(token string, versions map[string]string) (*MegaphoneStub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &MegaphoneStub{token: token, status: 200, versions: versions, ln: ln}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

// URL is where the stub answers.
func (s *MegaphoneStub) URL() string { return "http://" + s.ln.Addr().String() + "/v1/broadcasts" }

// Close stops the stub.
func (s *MegaphoneStub) Close() error { return s.srv.Close() }

// Set serves status and versions from the next poll on.
func (s *MegaphoneStub) Set(status int, versions map[string]string) {
	s.mu.Lock()
	s.status, s.versions, s.firstServed = status, versions, time.Time{}
	s.mu.Unlock()
}

// Counts are the polls served and those refused for a wrong token.
func (s *MegaphoneStub) Counts() (polls, badAuth int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polls, s.badAuth
}

// Served is when the versions set last were first served (zero: not yet).
func (s *MegaphoneStub) Served() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstServed
}

// ServeHTTP answers a poll.
func (s *MegaphoneStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.polls++
	status, body := s.status, ""
	if s.token != "" && r.Header.Get("Authorization") != "Bearer "+s.token {
		s.badAuth++
		status, body = 401, `{"code":401,"error":"Unauthorized"}`
	} else {
		b, _ := json.Marshal(map[string]any{"code": status, "broadcasts": s.versions})
		body = string(b)
		if status == 200 && s.firstServed.IsZero() {
			s.firstServed = time.Now()
		}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}
