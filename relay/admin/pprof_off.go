//go:build nopprof

package admin

import "net/http"

// pprofBuilt reports whether this build serves profiles.
const pprofBuilt = false

// registerPprof: this build leaves the profiles out (tag nopprof) to fit
// the smallest gateways' flash; /debug/pprof/ says so.
func registerPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "profiling is not built into this binary (tag nopprof)", http.StatusNotImplemented)
	})
}
