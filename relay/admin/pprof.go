//go:build !nopprof

package admin

import (
	"net/http"
	"net/http/pprof"
)

// pprofBuilt reports whether this build serves profiles.
const pprofBuilt = true

// registerPprof serves the Go profiles under /debug/pprof/.
func registerPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
