package kick

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
)

// record is what the kicker keeps about one device, stored verbatim as the
// store's wake blob. Between flushes, memory may hold a fresher time and
// stamp for the same verified address (see seen and overlay).
type record struct {
	auth bool // the device checks authenticated datagrams

	// claimed is the wakeup_hostport of the device's last hello, trusted
	// only inside the configured ranges (checked again at every kick).
	claimed   netip.AddrPort
	claimedAt time.Time
	network   string // "mcc-mnc" of that hello, or ""

	// verified is the source address of the device's last authenticated
	// STUN request, fresh for the binding TTL after verifiedAt.
	verified   netip.AddrPort
	verifiedAt time.Time
	stamp      int64 // PUSHRELAY-TIME (Unix ms) of that request
}

const (
	recordVersion = 1
	flagAuth      = 1 << 0
	flagClaimed   = 1 << 1
	flagVerified  = 1 << 2
	recordFixed   = 2 + 18 + 8 + 18 + 8 + 8 + 1
)

var errBadRecord = errors.New("kick: bad wake record")

func (r *record) encode() []byte {
	b := make([]byte, recordFixed+len(r.network))
	b[0] = recordVersion
	if r.auth {
		b[1] |= flagAuth
	}
	if r.claimed.IsValid() {
		b[1] |= flagClaimed
		putAddr(b[2:], r.claimed)
		binary.BigEndian.PutUint64(b[20:], uint64(r.claimedAt.UnixMilli()))
	}
	if r.verified.IsValid() {
		b[1] |= flagVerified
		putAddr(b[28:], r.verified)
		binary.BigEndian.PutUint64(b[46:], uint64(r.verifiedAt.UnixMilli()))
	}
	binary.BigEndian.PutUint64(b[54:], uint64(r.stamp))
	b[62] = byte(len(r.network))
	copy(b[63:], r.network)
	return b
}

// decodeRecord reads a wake blob; an empty blob is the zero record.
func decodeRecord(b []byte) (record, error) {
	var r record
	if len(b) == 0 {
		return r, nil
	}
	if len(b) < recordFixed || b[0] != recordVersion || len(b) != recordFixed+int(b[62]) {
		return r, errBadRecord
	}
	r.auth = b[1]&flagAuth != 0
	if b[1]&flagClaimed != 0 {
		r.claimed = getAddr(b[2:])
		r.claimedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(b[20:])))
	}
	if b[1]&flagVerified != 0 {
		r.verified = getAddr(b[28:])
		r.verifiedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(b[46:])))
	}
	r.stamp = int64(binary.BigEndian.Uint64(b[54:]))
	r.network = string(b[63:])
	return r, nil
}

func putAddr(b []byte, a netip.AddrPort) {
	ip := a.Addr().As16()
	copy(b, ip[:])
	binary.BigEndian.PutUint16(b[16:], a.Port())
}

func getAddr(b []byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])).Unmap(), binary.BigEndian.Uint16(b[16:]))
}

// Why a device cannot be woken; also labels of the dropped counter.
const (
	reasonNotWakeable   = "not_wakeable"
	reasonStaleAddress  = "stale_address"
	reasonOutsideRanges = "outside_ranges"
)

// target is where to wake the device now: its STUN-verified address while
// fresh, or its claimed address while inside the allowed ranges, the more
// recent of the two when both qualify. Otherwise it returns the reason.
func (r *record) target(now time.Time, ttl time.Duration, ranges *Ranges) (netip.AddrPort, string) {
	verified := r.verified.IsValid() && now.Sub(r.verifiedAt) < ttl
	claimed := r.claimed.IsValid() && ranges.Allows(r.claimed.Addr(), r.network)
	switch {
	case verified && claimed:
		if r.claimedAt.After(r.verifiedAt) {
			return r.claimed, ""
		}
		return r.verified, ""
	case verified:
		return r.verified, ""
	case claimed:
		return r.claimed, ""
	case r.verified.IsValid():
		return netip.AddrPort{}, reasonStaleAddress
	case r.claimed.IsValid():
		return netip.AddrPort{}, reasonOutsideRanges
	}
	return netip.AddrPort{}, reasonNotWakeable
}
