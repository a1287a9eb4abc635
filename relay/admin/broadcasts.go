package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pushrelay/pushrelay/relay/broadcast"
	"github.com/pushrelay/pushrelay/relay/store"
)

// Broadcasts is what the broadcast calls need (broadcast.Registry).
type Broadcasts interface {
	Versions() map[string]string
	Set(ctx context.Context, source string, versions map[string]string) (map[string]string, error)
}

// bcastAPI is the broadcast calls' state: the registry and the digest of
// the operator's token. Without it the calls answer 404.
type bcastAPI struct {
	reg   Broadcasts
	token [sha256.Size]byte
}

// bcastTimeout bounds the store write of a PUT.
const bcastTimeout = 10 * time.Second

// maxVersionBody bounds a PUT body: a version is at most broadcast.MaxLen
// bytes, with room for surrounding whitespace.
const maxVersionBody = 4 << 10

// ServeBroadcasts turns on the broadcast calls for sites with no
// megaphone, for callers that send Authorization: Bearer token:
//
//	GET /broadcasts       {"broadcasts": {"<id>": "<version>", ...}}
//	PUT /broadcasts/{id}  body: the version, as text (surrounding
//	                      whitespace trimmed); the answer is
//	                      {"changed": {...}}, empty when it was current
//
// The id may hold slashes (remote-settings/monitor_changes). Until it is
// called, and with an empty token, the calls answer 404.
func (s *Server) ServeBroadcasts(reg Broadcasts, token string) {
	if token == "" {
		return
	}
	s.bcast.Store(&bcastAPI{reg: reg, token: sha256.Sum256([]byte(token))})
}

func (s *Server) registerBroadcasts() {
	s.mux.HandleFunc("GET /broadcasts", s.withBroadcasts(func(a *bcastAPI, w http.ResponseWriter, r *http.Request) {
		answerJSON(w, http.StatusOK, map[string]any{"broadcasts": a.reg.Versions()})
	}))
	s.mux.HandleFunc("PUT /broadcasts/{id...}", s.withBroadcasts(func(a *bcastAPI, w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxVersionBody))
		if err != nil {
			answerError(w, http.StatusRequestEntityTooLarge, "the body is the version: at most 128 bytes")
			return
		}
		version := strings.TrimSpace(string(body))
		ctx, cancel := context.WithTimeout(r.Context(), bcastTimeout)
		defer cancel()
		changed, err := a.reg.Set(ctx, "admin", map[string]string{id: version})
		switch {
		case err == nil:
			answerJSON(w, http.StatusOK, map[string]any{"changed": changed})
		case errors.Is(err, broadcast.ErrBad):
			answerError(w, http.StatusBadRequest, err.Error())
		case store.IsNoSpace(err):
			// As the endpoint answers a push the full store refused.
			w.Header().Set("Retry-After", "60")
			answerError(w, http.StatusInsufficientStorage, "the relay's storage is full, try again later: "+err.Error())
		default:
			w.Header().Set("Retry-After", "10")
			answerError(w, http.StatusServiceUnavailable, "the version could not be stored, try again: "+err.Error())
		}
	}))
}

// withBroadcasts answers 404 while the calls are off and 401 without the
// token, else calls f.
func (s *Server) withBroadcasts(f func(*bcastAPI, http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a := s.bcast.Load()
		if a == nil {
			answerError(w, http.StatusNotFound, "broadcast calls are off: set admin_token_file to turn them on")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		// Digests of equal length: the comparison's time says nothing
		// about the token.
		if subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 || !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pushrelay admin"`)
			answerError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		f(a, w, r)
	}
}

func answerJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func answerError(w http.ResponseWriter, code int, msg string) {
	answerJSON(w, code, map[string]any{"code": code, "error": msg})
}
