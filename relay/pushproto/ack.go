package pushproto

import "bytes"

// decodeCanonicalAck decodes, without encoding/json, an ack frame written
// exactly the way Firefox and EncodeAck write it:
//
//	{"messageType":"ack","updates":[{"channelID":"…","version":"…","code":100},…]}
//
// with no whitespace, no escapes and printable ASCII versions. Acks are
// half the frames a busy relay reads. Anything else (another shape, an
// invalid field) reports false, and DecodeClient decodes the frame the
// general way, which also picks the error; a test checks both ways agree
// wherever this one answers.
func decodeCanonicalAck(b []byte) (Ack, bool) {
	const (
		head     = `{"messageType":"ack","updates":[`
		chanKey  = `{"channelID":"`
		verKey   = `","version":"`
		codeKey  = `","code":`
		listTail = `]}`
	)
	rest, ok := bytes.CutPrefix(b, []byte(head))
	if !ok {
		return Ack{}, false
	}
	// Count the updates first so the slice is allocated once.
	n := bytes.Count(rest, []byte(chanKey))
	if n == 0 || n > MaxAckUpdates {
		return Ack{}, false
	}
	a := Ack{Updates: make([]AckUpdate, 0, n)}
	for {
		if rest, ok = bytes.CutPrefix(rest, []byte(chanKey)); !ok || len(rest) < MaxChannelIDLen {
			return Ack{}, false
		}
		id := string(rest[:MaxChannelIDLen])
		if !ValidChannelID(id) {
			return Ack{}, false
		}
		if rest, ok = bytes.CutPrefix(rest[MaxChannelIDLen:], []byte(verKey)); !ok {
			return Ack{}, false
		}
		end := 0
		for end < len(rest) && rest[end] != '"' {
			if c := rest[end]; c < 0x20 || c > 0x7e || c == '\\' {
				return Ack{}, false
			}
			end++
		}
		if end == 0 || end > MaxVersionLen || end == len(rest) {
			return Ack{}, false
		}
		version := rest[:end]
		if rest, ok = bytes.CutPrefix(rest[end:], []byte(codeKey)); !ok {
			return Ack{}, false
		}
		code, used := smallInt(rest)
		if used == 0 || used == len(rest) || rest[used] != '}' {
			return Ack{}, false
		}
		rest = rest[used+1:]
		a.Updates = append(a.Updates, AckUpdate{ChannelID: id, Version: string(version), Code: code})
		if len(rest) > 0 && rest[0] == ',' {
			rest = rest[1:]
			continue
		}
		return a, len(a.Updates) == n && bytes.Equal(rest, []byte(listTail))
	}
}

// smallInt reads a JSON integer of at most nine digits (so it fits an
// int32 whatever its digits) at the start of b, and how many bytes it
// took; 0 bytes means there was none in that form.
func smallInt(b []byte) (int, int) {
	i, neg := 0, false
	if i < len(b) && b[i] == '-' {
		neg, i = true, 1
	}
	start, v := i, 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i-start < 9 {
		v = v*10 + int(b[i]-'0')
		i++
	}
	switch {
	case i == start:
		return 0, 0
	case i < len(b) && b[i] >= '0' && b[i] <= '9':
		return 0, 0 // ten digits or more
	case b[start] == '0' && i-start > 1:
		return 0, 0 // JSON has no leading zeros
	}
	if neg {
		v = -v
	}
	return v, i
}
