// Package push holds pushrelay's domain types: the identifiers and values
// every part of the relay passes around (UAID, ChannelID, Urgency, the
// ingest Message and its Origin key). The store, the core and every
// transport (the device WebSocket, the endpoint API, an upstream, a relay
// link) import it; it imports only the standard library.
//
// What belongs here: plain values, their parsing and printing, and their
// compact encodings. What does not: storage, I/O, wire protocols,
// configuration or anything that needs a goroutine.
package push

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Errors of the parsers, tested with errors.Is.
var (
	// ErrBadChannelID: ParseChannelID got anything but a lower-case dashed
	// UUID.
	ErrBadChannelID = errors.New("bad channel id")
	// ErrBadUAID: ParseUAID got neither 32 hex digits nor a dashed UUID.
	ErrBadUAID = errors.New("bad uaid")
	// ErrBadUrgency: ParseUrgency got a value RFC 8030 does not define.
	ErrBadUrgency = errors.New("bad urgency")
)

// UAID identifies a device (user agent). It prints as 32 lower-case hex
// digits, the form autopush and Firefox use.
type UAID [16]byte

// String returns u as 32 lower-case hex digits.
func (u UAID) String() string { return hex.EncodeToString(u[:]) }

// ParseUAID accepts 32 hex digits or a dashed 36-character UUID, in either
// case.
func ParseUAID(s string) (UAID, error) {
	var u UAID
	switch len(s) {
	case 32:
		if _, err := hex.Decode(u[:], []byte(s)); err != nil {
			return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
		}
		return u, nil
	case 36:
		if !parseDashed(u[:], s) {
			return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
		}
		return u, nil
	}
	return UAID{}, fmt.Errorf("%w: %q", ErrBadUAID, s)
}

// ChannelID identifies one subscription of a device. It prints as a
// lower-case dashed UUID, the only form the push protocol uses.
type ChannelID [16]byte

// String returns id as a lower-case dashed UUID.
func (id ChannelID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], id[10:16])
	return string(b[:])
}

// ParseChannelID accepts only a lower-case dashed 36-character UUID, so
// that one channel has exactly one spelling on the wire.
func ParseChannelID(s string) (ChannelID, error) {
	var id ChannelID
	if len(s) != 36 || strings.ToLower(s) != s || !parseDashed(id[:], s) {
		return ChannelID{}, fmt.Errorf("%w: %q", ErrBadChannelID, s)
	}
	return id, nil
}

// parseDashed decodes an 8-4-4-4-12 UUID of either case into dst.
func parseDashed(dst []byte, s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	_, err := hex.Decode(dst, []byte(h))
	return err == nil
}

// Urgency is RFC 8030 message urgency. The zero value is UrgencyNormal,
// the default when an app server sends none. The numeric values are an
// encoding, not an order: compare with AtLeast.
type Urgency uint8

// Urgency values. They are stored on disk; never renumber them.
const (
	UrgencyNormal  Urgency = 0
	UrgencyVeryLow Urgency = 1
	UrgencyLow     Urgency = 2
	UrgencyHigh    Urgency = 3
)

var urgencyNames = [...]string{
	UrgencyNormal:  "normal",
	UrgencyVeryLow: "very-low",
	UrgencyLow:     "low",
	UrgencyHigh:    "high",
}

var urgencyRank = [...]int{UrgencyVeryLow: 0, UrgencyLow: 1, UrgencyNormal: 2, UrgencyHigh: 3}

// String returns the RFC 8030 name: "very-low", "low", "normal" or "high".
func (u Urgency) String() string {
	if int(u) < len(urgencyNames) {
		return urgencyNames[u]
	}
	return fmt.Sprintf("urgency(%d)", uint8(u))
}

// AtLeast reports whether u is as urgent as v or more, in RFC 8030 order
// very-low < low < normal < high. Unknown values rank as normal.
func (u Urgency) AtLeast(v Urgency) bool { return u.rank() >= v.rank() }

func (u Urgency) rank() int {
	if int(u) < len(urgencyRank) {
		return urgencyRank[u]
	}
	return urgencyRank[UrgencyNormal]
}

// ParseUrgency parses an RFC 8030 Urgency header value, ignoring ASCII
// case and surrounding spaces. An empty value means UrgencyNormal.
func ParseUrgency(s string) (Urgency, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return UrgencyNormal, nil
	}
	for u, name := range urgencyNames {
		if strings.EqualFold(s, name) {
			return Urgency(u), nil
		}
	}
	return UrgencyNormal, fmt.Errorf("%w: %q", ErrBadUrgency, s)
}
