// Package admin serves pushrelay's operator endpoints: Prometheus metrics,
// liveness and readiness, a status page and pprof. It binds to loopback by
// default; nothing here is meant for devices or app servers.
//
//	GET /metrics   Prometheus text format
//	GET /healthz   200 while the process runs
//	GET /readyz    200 once every listener is up, 503 before, while
//	               shutting down and while a check fails (the store out
//	               of space: the body says which and since when); a
//	               warning (AddWarning: the upstream down) keeps it 200
//	               and adds a "warning:" line
//	GET /status    JSON (Accept: application/json or ?format=json) or a
//	               small HTML page
//	/debug/pprof/  Go profiles (left out of builds tagged nopprof, which
//	               the smallest gateway targets use to save space)
//	GET /broadcasts, PUT /broadcasts/{id}
//	               broadcast versions, for sites with no megaphone, with
//	               the operator's bearer token (broadcasts.go)
package admin

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// Status is what /status reports; the daemon fills it on each request.
type Status struct {
	Version     string            `json:"version"`
	Ready       bool              `json:"ready"`
	Uptime      string            `json:"uptime"`
	Connections int               `json:"connections"`
	Devices     int64             `json:"devices"`
	Channels    int64             `json:"channels"`
	Waiting     int64             `json:"waiting_messages"`
	WakePending int               `json:"wake_pending"`
	Listeners   map[string]string `json:"listeners"`
	// Upstream is the upstream link's state; nil in standalone mode.
	Upstream *UpstreamStatus `json:"upstream,omitempty"`
	// Link is the relay link's state: this relay's link to its parent
	// and its children; nil when it has neither.
	Link *LinkStatus `json:"link,omitempty"`
	// Cluster is the site membership's state; nil when this relay runs
	// alone.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
	// Problems are the failing checks (AddCheck) by name; Ready is false
	// while there is one.
	Problems map[string]string `json:"problems,omitempty"`
	// Warnings are the failing conditions that do not make the relay
	// unready (AddWarning) by name: the upstream down, while local
	// service goes on.
	Warnings map[string]string `json:"warnings,omitempty"`
}

// UpstreamStatus is the upstream link's part of Status.
type UpstreamStatus struct {
	URL string `json:"url"`
	// Held are the device identities with a held session; Open, those
	// connected now.
	Held int `json:"held_sessions"`
	Open int `json:"open_sessions"`
	// Polled are the device identities polled instead of held; PollLag
	// is how late the latest poll started after its due time.
	Polled  int    `json:"polled"`
	PollLag string `json:"poll_lag"`
	// PendingUnregisters are devices' unregisters not yet sent upstream.
	PendingUnregisters int64 `json:"pending_unregisters"`
}

// LinkStatus is the relay link's part of Status: Parent is the link to
// this relay's parent (nil when it has none), Listen and Children the
// children's side (empty when it takes none).
type LinkStatus struct {
	Parent   *LinkParent `json:"parent,omitempty"`
	Listen   string      `json:"listen,omitempty"`
	Children []LinkChild `json:"children,omitempty"`
}

// LinkParent is this relay's link to its parent.
type LinkParent struct {
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	Since     string `json:"since,omitempty"`
	// Acked is the last sequence acked on the link.
	Acked     uint64 `json:"acked"`
	LastError string `json:"last_error,omitempty"`
}

// LinkChild is one child relay known to this parent.
type LinkChild struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Addr      string `json:"addr,omitempty"`
	UAIDs     int    `json:"uaids"`
	InFlight  int    `json:"in_flight"`
}

// ClusterStatus is the site membership's part of Status: this member and
// every member it knows.
type ClusterStatus struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// Keys are the installed gossip keys' fingerprints, the primary
	// first.
	Keys    []string        `json:"keys"`
	Members []ClusterMember `json:"members"`
	// Site is the replicated log's state on this member (nil before it
	// is formed or joined).
	Site *SiteStatus `json:"site,omitempty"`
	// KeysRefused, when set, says why this member does not form or join
	// the site: its endpoint.key or wake.key differs from the site's.
	KeysRefused string `json:"keys_refused,omitempty"`
}

// SiteStatus is the consensus group as this member sees it.
type SiteStatus struct {
	ID     string `json:"id"`
	Leader string `json:"leader"`
	// State: leader, follower, candidate, precandidate.
	State   string   `json:"state"`
	Term    uint64   `json:"term"`
	Commit  uint64   `json:"commit"`
	Applied uint64   `json:"applied"`
	Voters  []string `json:"voters"`
	// Holder is the member the log names to hold the site's upstream
	// sessions ("" without an upstream, "none" before one is named);
	// Holding is set on that member while it runs them.
	Holder  string `json:"holder,omitempty"`
	Holding bool   `json:"holding,omitempty"`
	// Peers (on the leader): each voter's replication lag in entries.
	Peers []SitePeer `json:"peers,omitempty"`
}

// SitePeer is one voter's replication as the leader sees it.
type SitePeer struct {
	ID     string `json:"id"`
	Addr   string `json:"addr"`
	Match  uint64 `json:"match"`
	Lag    uint64 `json:"lag"`
	State  string `json:"state"`
	Active bool   `json:"active"`
}

// ClusterMember is one member of the site as this one sees it.
type ClusterMember struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// State is alive, failed or left; Since when it became so.
	State        string `json:"state"`
	Since        string `json:"since"`
	Version      string `json:"version,omitempty"`
	LinkAddr     string `json:"link_addr,omitempty"`
	AdminAddr    string `json:"admin_addr,omitempty"`
	Load         uint32 `json:"load_permille"`
	Sockets      uint64 `json:"sockets"`
	WakeBindings uint64 `json:"wake_bindings"`
	// EndpointKey and WakeKey are fingerprints of the member's
	// endpoint.key and wake.key (never the keys): every member of a site
	// must show the same.
	EndpointKey string `json:"endpoint_key,omitempty"`
	WakeKey     string `json:"wake_key,omitempty"`
}

// Server is the admin handler.
type Server struct {
	ready  atomic.Bool
	status func() Status
	mux    *http.ServeMux

	mu       sync.Mutex
	checks   []check
	warnings []check

	bcast atomic.Pointer[bcastAPI] // the broadcast calls, once ServeBroadcasts turned them on
}

type check struct {
	name string
	fn   func() error
}

// New returns an admin handler exporting reg; status is called for /status.
func New(reg *metrics.Registry, status func() Status) *Server {
	s := &Server{status: status, mux: http.NewServeMux()}
	s.mux.Handle("GET /metrics", reg.Handler())
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if p := s.problems(); len(p) > 0 {
			var b strings.Builder
			b.WriteString("not ready:")
			for _, name := range sortedKeys(p) {
				fmt.Fprintf(&b, " %s: %s;", name, p[name])
			}
			http.Error(w, strings.TrimSuffix(b.String(), ";"), http.StatusServiceUnavailable)
			return
		}
		var b strings.Builder
		b.WriteString("ready\n")
		warn := s.warned()
		for _, name := range sortedKeys(warn) {
			fmt.Fprintf(&b, "warning: %s: %s\n", name, warn[name])
		}
		w.Write([]byte(b.String()))
	})
	s.mux.HandleFunc("GET /status", s.serveStatus)
	s.registerBroadcasts()
	registerPprof(s.mux)
	return s
}

// SetReady flips /readyz.
func (s *Server) SetReady(v bool) { s.ready.Store(v) }

// AddCheck adds a condition of readiness: while fn returns an error,
// /readyz answers 503 with it and /status lists it under name. fn runs on
// every /readyz and /status request, so it must be cheap.
func (s *Server) AddCheck(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, check{name, fn})
}

// AddWarning adds a condition that does not make the relay unready but is
// worth a look: while fn returns an error, /readyz still answers 200 and
// says it on a "warning:" line, and /status lists it under warnings. fn
// runs on every /readyz and /status request, so it must be cheap.
func (s *Server) AddWarning(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.warnings = append(s.warnings, check{name, fn})
}

// problems runs the checks and returns the failing ones.
func (s *Server) problems() map[string]string {
	s.mu.Lock()
	checks := s.checks
	s.mu.Unlock()
	return failing(checks)
}

// warned runs the warnings' conditions and returns the failing ones.
func (s *Server) warned() map[string]string {
	s.mu.Lock()
	checks := s.warnings
	s.mu.Unlock()
	return failing(checks)
}

func failing(checks []check) map[string]string {
	var p map[string]string
	for _, c := range checks {
		if err := c.fn(); err != nil {
			if p == nil {
				p = map[string]string{}
			}
			p[c.name] = err.Error()
		}
	}
	return p
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// writePage renders the status page. It is built by hand, with every
// value escaped, so the smallest builds need no template packages.
func writePage(w io.Writer, st Status) {
	row := func(k, v string) {
		fmt.Fprintf(w, "<tr><td>%s</td><td>%s</td></tr>\n", html.EscapeString(k), html.EscapeString(v))
	}
	fmt.Fprintf(w, `<!doctype html>
<html><head><meta charset="utf-8"><title>pushrelay status</title>
<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em}</style></head>
<body><h1>pushrelay %s</h1>
<table>
`, html.EscapeString(st.Version))
	row("ready", strconv.FormatBool(st.Ready))
	row("uptime", st.Uptime)
	row("device connections", strconv.Itoa(st.Connections))
	row("devices", strconv.FormatInt(st.Devices, 10))
	row("channels", strconv.FormatInt(st.Channels, 10))
	row("waiting messages", strconv.FormatInt(st.Waiting, 10))
	row("devices with a wake due", strconv.Itoa(st.WakePending))
	if u := st.Upstream; u != nil {
		row("upstream", u.URL)
		row("upstream sessions held / open", strconv.Itoa(u.Held)+" / "+strconv.Itoa(u.Open))
		row("upstream devices polled (latest poll's lag)", strconv.Itoa(u.Polled)+" ("+u.PollLag+")")
		row("unregisters waiting for the upstream", strconv.FormatInt(u.PendingUnregisters, 10))
	}
	if l := st.Link; l != nil {
		if p := l.Parent; p != nil {
			state := "down"
			if p.Connected {
				state = "up since " + p.Since
			}
			row("relay link to parent", p.Name+" "+p.Addr+": "+state)
			if p.LastError != "" {
				row("relay link: last error", p.LastError)
			}
		}
		if l.Listen != "" {
			row("relay link listener", l.Listen)
		}
		for _, c := range l.Children {
			state := "away"
			if c.Connected {
				state = "connected from " + c.Addr
			}
			row("child relay "+c.Name, state+"; "+strconv.Itoa(c.UAIDs)+" UAIDs, "+strconv.Itoa(c.InFlight)+" messages in flight")
		}
	}
	if c := st.Cluster; c != nil {
		row("cluster member (this relay)", c.Name+" "+c.Addr+"; keys "+strings.Join(c.Keys, ", "))
		for _, m := range c.Members {
			row("cluster member "+m.Name, m.State+" since "+m.Since+"; "+m.Addr+" "+m.Version+"; "+
				strconv.FormatUint(m.Sockets, 10)+" sockets, load "+strconv.FormatUint(uint64(m.Load), 10)+"‰")
		}
		if sc := c.Site; sc != nil {
			row("site log", sc.State+" in term "+strconv.FormatUint(sc.Term, 10)+", leader "+sc.Leader+"; commit "+
				strconv.FormatUint(sc.Commit, 10)+", applied "+strconv.FormatUint(sc.Applied, 10)+"; voters "+strings.Join(sc.Voters, ", "))
			for _, p := range sc.Peers {
				row("site voter "+p.ID, p.State+" at "+p.Addr+"; "+strconv.FormatUint(p.Lag, 10)+" entries behind")
			}
		}
	}
	for _, k := range sortedKeys(st.Problems) {
		row("problem: "+k, st.Problems[k])
	}
	for _, k := range sortedKeys(st.Warnings) {
		row("warning: "+k, st.Warnings[k])
	}
	for _, k := range sortedKeys(st.Listeners) {
		row(k+" listener", st.Listeners[k])
	}
	io.WriteString(w, `</table>
<p><a href="/metrics">metrics</a> · <a href="/status?format=json">json</a> · <a href="/debug/pprof/">pprof</a></p>
</body></html>
`)
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	st := s.status()
	st.Problems = s.problems()
	st.Warnings = s.warned()
	st.Ready = s.ready.Load() && len(st.Problems) == 0
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	writePage(w, st)
}
