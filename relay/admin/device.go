package admin

import (
	"encoding/json"
	"net/http"
)

// DeviceHandler is the device listener's handler: ws (the WebSocket
// upgrade) at the root, the health paths autopush's connection server
// answers on the same port (for load balancers in front of the device
// listener), and a JSON 404 for every other path, as autopush answers.
//
//	GET /                   ws (which answers 426 to a request that is
//	                        not a WebSocket upgrade)
//	GET /health             {"status":"OK","version":…,"connections":n};
//	GET /__heartbeat__      503 and "ERROR" while the relay is not ready
//	GET /__lbheartbeat__    200, empty, while the process runs
//	GET /status             {"status":"OK","version":…} (503, "ERROR")
//	GET /__version__        {"version":…}
//
// Other methods on these paths answer 405; every other path 404. What
// the device listener tells is less than the admin listener's /status:
// devices reach it, operators reach the other.
func (s *Server) DeviceHandler(ws http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", ws)
	health := func(w http.ResponseWriter, r *http.Request) {
		st := s.status()
		st.Problems = s.problems()
		writeJSON(w, s.httpStatus(st), map[string]any{"status": s.word(st), "version": st.Version, "connections": st.Connections})
	}
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("GET /__heartbeat__", health)
	mux.HandleFunc("GET /__lbheartbeat__", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := s.status()
		st.Problems = s.problems()
		writeJSON(w, s.httpStatus(st), map[string]any{"status": s.word(st), "version": st.Version})
	})
	mux.HandleFunc("GET /__version__", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"version": s.status().Version})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern == "" {
			// No route: ServeMux would answer in plain text (404, or 405
			// for a known path with another method).
			code, msg := http.StatusNotFound, "no such path on the device listener: devices connect with a WebSocket to /"
			if _, p := mux.Handler(withMethod(r, http.MethodGet)); p != "" {
				code, msg = http.StatusMethodNotAllowed, "only GET is served here"
				w.Header().Set("Allow", "GET, HEAD")
			}
			writeJSON(w, code, errorBody{Code: code, Errno: errnoFor(code), Error: http.StatusText(code), Message: msg})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// errorBody is the JSON error the endpoint API answers with too.
type errorBody struct {
	Code    int    `json:"code"`
	Errno   int    `json:"errno"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// errnoFor: 102 (invalid URL, autopush's errno for a path it does not
// serve) and 999 (autopush's catch-all) for a method.
func errnoFor(code int) int {
	if code == http.StatusNotFound {
		return 102
	}
	return 999
}

func withMethod(r *http.Request, m string) *http.Request {
	r2 := *r
	r2.Method = m
	return &r2
}

func (s *Server) ok(st Status) bool { return s.ready.Load() && len(st.Problems) == 0 }

func (s *Server) httpStatus(st Status) int {
	if s.ok(st) {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

func (s *Server) word(st Status) string {
	if s.ok(st) {
		return "OK"
	}
	return "ERROR"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
