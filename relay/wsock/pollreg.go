package wsock

import "sync"

// pollReg is a socket's registration with a poller (poll_linux.go).
type pollReg struct {
	fd         int
	pmu        sync.Mutex // guards registered and released
	registered bool       // fd is in the poller
	released   bool       // forgotten by the poller: never arm again
}

func (r *pollReg) reg() *pollReg { return r }

// pollee is what a poller watches: a device connection (Conn) or a
// parked client connection (ClientConn).
type pollee interface {
	reg() *pollReg
	// fire is the poller's event; it must not block.
	fire()
}
