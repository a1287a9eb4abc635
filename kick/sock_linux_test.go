//go:build linux

package kick

import (
	"syscall"
	"time"
)

// realSleep lets real time pass inside a synctest bubble, where
// time.Sleep is virtual: the kernel delivers a loopback datagram in
// real time, usually within the sender's syscall, sometimes a little later.
func realSleep(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	_ = syscall.Nanosleep(&ts, nil)
}
