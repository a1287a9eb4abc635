package site

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pushrelay/pushrelay/relay/push"
	"github.com/pushrelay/pushrelay/relay/store"
)

// An entry of the site's replicated log: the writes of one proposal,
// made at one time by one member. Its encoding is this package's own,
// versioned, and independent of the store's file format (entries outlive
// upgrades in the log and in snapshots' tails):
//
//	entry    = version(1) = 1 | at (8, Unix ns, big-endian; 0 for none) | member (8) | request (uvarint) | kind (1) | payload
//	append   = count (uvarint) | message…
//	message  = uaid (16) | channel (16) | origin (str) | received (8) | ttl ns (8) | expiry (8)
//	           | urgency (1) | version (uvarint) | topic (str) | encoding (str) | encryption (str)
//	           | crypto-key (str) | data (str)
//	ack      = uaid (16) | count (uvarint) | seq (uvarint)…
//	delete   = uaid (16) | channel (16) | seq (uvarint)
//	register = uaid (16) | channel (16) | created (8) | key (str) | endpoint (str)
//	unregister = uaid (16) | channel (16)
//	reset    = uaid (16)
//	broadcasts = count (uvarint) | (id (str) | version (str))…
//	sweep    = limit (uvarint)
//	wake owner = count (uvarint) | uaid (16)…   (the owner is the entry's member)
//	holder   = holder (8) | term (8)
//	regreq   = uaid (16) | channel (16) | key (str)
//	regres   = for member (8) | for request (uvarint) | endpoint (str) | error (str)
//	upid     = op (1) | uaid (16) | upstream uaid (16) | helloed (8)
//	hellos   = count (uvarint) | (uaid (16) | at (8))…
//	outbox   = op (1) = 1 | uaid (16) | channel (16) | upstream uaid (16)
//	         | op (1) = 2 | count (uvarint) | seq (uvarint)…
//	link     = op (1) = 1 | identity print (8) | link name (str)   (the member's, linkid.go)
//	         | op (1) = 2 | uaid (16) | child (str)                 (SetLinkChild)
//	         | op (1) = 3 | uaid (16) | child (str)                 (LinkForgotten)
//	         | op (1) = 4 | child (str) | address (16) | port (2)   (SetLinkChildAddr)
//	         | op (1) = 5 | count (uvarint) | (uaid (16) | count (uvarint) | seq (uvarint)…)…   (AckMany)
//	         | op (1) = 6 | epoch (str)                              (the site's link epoch)
//
// where str is a uvarint length and the bytes. A decoder refuses unknown
// versions and kinds, fields over their limits, and trailing bytes.

// Kind is what an entry writes.
type Kind uint8

// Kinds. Never renumber: entries are kept in the log and in snapshots.
const (
	KindAppend     Kind = 1
	KindAck        Kind = 2
	KindDelete     Kind = 3
	KindRegister   Kind = 4
	KindUnregister Kind = 5
	KindReset      Kind = 6
	KindBroadcasts Kind = 7
	KindSweep      Kind = 8
	// The site's upstream (holder.go): which member holds it, a
	// register asked of the holder and its answer, and the upstream
	// link's state (identities, hello times, the unregister outbox).
	KindHolder          Kind = 9
	KindRegisterRequest Kind = 10
	KindRegisterResult  Kind = 11
	KindUpstreamID      Kind = 12
	KindHellos          Kind = 13
	KindOutbox          Kind = 14
	// KindLink (15): the relay link's (a quic:// upstream, relay_listen),
	// by op: OpIdentity, the identity a member presents on the link to
	// its parent (linkid.go; nothing stored); the parent side's writes
	// (parent.go): which child serves a UAID, a forget a child answered,
	// a child's last address, the messages children acked, and the
	// site's link epoch.
	KindLink Kind = 15
	// KindWakeOwner (16): the member that made
	// it now holds these devices' wake bindings (they proved their
	// addresses to its STUN socket, or it accepted their hello for wake);
	// every other member forgets its own (waking.go). It writes nothing
	// to the store.
	KindWakeOwner Kind = 16
	// KindBroadcastWant (17): broadcast ids devices named at a member
	// that does not hold the upstream, for the holder to ask it for
	// (bwant.go); Broadcasts holds them, with empty versions. It
	// writes nothing to the store.
	KindBroadcastWant Kind = 17
)

// Ops of KindUpstreamID and KindOutbox entries.
const (
	OpAdd    = 1 // upstream id: AddUpstreamID
	OpSet    = 2 // upstream id: SetUpstreamID
	OpDelete = 3 // upstream id: DeleteUpstreamID

	OpLater = 1 // outbox: UnregisterLater
	OpSent  = 2 // outbox: UnregisterSent

	OpIdentity      = 1 // link: a member's identity on the link to the parent
	OpLinkChild     = 2 // link: SetLinkChild
	OpLinkForgotten = 3 // link: LinkForgotten
	OpLinkChildAddr = 4 // link: SetLinkChildAddr
	OpLinkAcks      = 5 // link: AckMany
	OpLinkEpoch     = 6 // link: the site's link epoch
)

// Hello is a device's hello upstream at a time (KindHellos).
type Hello struct {
	UAID push.UAID
	At   time.Time
}

const entryVersion = 1

// Limits of a decoded entry (a batch's messages, a message's fields).
const (
	maxMessages   = 10000
	maxSeqs       = 100000
	maxStr        = 1 << 20
	maxBroadcasts = 1024
	maxOwned      = 10000
	maxHellos     = 10000
)

// ErrBadEntry: the bytes are no entry this version knows.
var ErrBadEntry = errors.New("site: bad log entry")

// Entry is one log entry.
type Entry struct {
	At time.Time
	// Member and Request name the proposal, so the member that made it
	// can hand its results to the waiting caller.
	Member  uint64
	Request uint64
	Kind    Kind

	Messages   []store.Message   // KindAppend (Seq ignored)
	UAID       push.UAID         // ack, delete, register, unregister, reset
	Channel    push.ChannelID    // delete, register, unregister
	Seqs       []uint64          // ack; delete (one)
	Key        []byte            // register
	Endpoint   string            // register
	Created    time.Time         // register
	Broadcasts map[string]string // broadcasts
	Limit      int               // sweep
	UAIDs      []push.UAID       // wake owner

	Holder, Term uint64 // holder: the member named, by the leader of Term
	// register result: the request (ForMember, ForRequest) it answers,
	// with Endpoint or Error.
	ForMember, ForRequest uint64
	Error                 string
	Op                    uint8                  // upstream id, outbox
	Upstream              push.UAID              // upstream id, outbox (later)
	Helloed               time.Time              // upstream id
	Hellos                []Hello                // hellos
	LinkPrint             uint64                 // link identity: the fingerprint
	LinkName              string                 // link identity: the name; link child, forgotten, address: the child
	LinkAddr              netip.AddrPort         // link address
	Acks                  map[push.UAID][]uint64 // link acks
	LinkEpoch             []byte                 // link epoch
}

// AppendEntry appends e's encoding to b.
func AppendEntry(b []byte, e *Entry) ([]byte, error) {
	b = append(b, entryVersion)
	b = binary.BigEndian.AppendUint64(b, nanos(e.At))
	b = binary.BigEndian.AppendUint64(b, e.Member)
	b = binary.AppendUvarint(b, e.Request)
	b = append(b, byte(e.Kind))
	switch e.Kind {
	case KindAppend:
		if len(e.Messages) == 0 || len(e.Messages) > maxMessages {
			return b, fmt.Errorf("%w: %d messages", ErrBadEntry, len(e.Messages))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Messages)))
		for i := range e.Messages {
			var err error
			if b, err = appendMessage(b, &e.Messages[i]); err != nil {
				return b, err
			}
		}
	case KindAck:
		if len(e.Seqs) > maxSeqs {
			return b, fmt.Errorf("%w: %d seqs", ErrBadEntry, len(e.Seqs))
		}
		b = append(b, e.UAID[:]...)
		b = binary.AppendUvarint(b, uint64(len(e.Seqs)))
		for _, s := range e.Seqs {
			b = binary.AppendUvarint(b, s)
		}
	case KindDelete:
		if len(e.Seqs) != 1 {
			return b, fmt.Errorf("%w: delete of %d seqs", ErrBadEntry, len(e.Seqs))
		}
		b = append(append(b, e.UAID[:]...), e.Channel[:]...)
		b = binary.AppendUvarint(b, e.Seqs[0])
	case KindRegister:
		b = append(append(b, e.UAID[:]...), e.Channel[:]...)
		b = binary.BigEndian.AppendUint64(b, nanos(e.Created))
		b = appendStr(appendStr(b, string(e.Key)), e.Endpoint)
	case KindUnregister:
		b = append(append(b, e.UAID[:]...), e.Channel[:]...)
	case KindReset:
		b = append(b, e.UAID[:]...)
	case KindBroadcasts, KindBroadcastWant:
		if len(e.Broadcasts) > maxBroadcasts {
			return b, fmt.Errorf("%w: %d broadcasts", ErrBadEntry, len(e.Broadcasts))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Broadcasts)))
		for id, v := range e.Broadcasts {
			b = appendStr(appendStr(b, id), v)
		}
	case KindSweep:
		b = binary.AppendUvarint(b, uint64(max(e.Limit, 0)))
	case KindWakeOwner:
		if len(e.UAIDs) == 0 || len(e.UAIDs) > maxOwned {
			return b, fmt.Errorf("%w: %d wake owner uaids", ErrBadEntry, len(e.UAIDs))
		}
		b = binary.AppendUvarint(b, uint64(len(e.UAIDs)))
		for _, u := range e.UAIDs {
			b = append(b, u[:]...)
		}
	case KindHolder:
		b = binary.BigEndian.AppendUint64(b, e.Holder)
		b = binary.BigEndian.AppendUint64(b, e.Term)
	case KindRegisterRequest:
		b = append(append(b, e.UAID[:]...), e.Channel[:]...)
		b = appendStr(b, string(e.Key))
	case KindRegisterResult:
		b = binary.BigEndian.AppendUint64(b, e.ForMember)
		b = binary.AppendUvarint(b, e.ForRequest)
		b = appendStr(appendStr(b, e.Endpoint), e.Error)
	case KindUpstreamID:
		if e.Op < OpAdd || e.Op > OpDelete {
			return b, fmt.Errorf("%w: upstream id op %d", ErrBadEntry, e.Op)
		}
		b = append(b, e.Op)
		b = append(append(b, e.UAID[:]...), e.Upstream[:]...)
		b = binary.BigEndian.AppendUint64(b, nanos(e.Helloed))
	case KindHellos:
		if len(e.Hellos) == 0 || len(e.Hellos) > maxHellos {
			return b, fmt.Errorf("%w: %d hellos", ErrBadEntry, len(e.Hellos))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Hellos)))
		for _, h := range e.Hellos {
			b = append(b, h.UAID[:]...)
			b = binary.BigEndian.AppendUint64(b, nanos(h.At))
		}
	case KindOutbox:
		b = append(b, e.Op)
		switch e.Op {
		case OpLater:
			b = append(append(append(b, e.UAID[:]...), e.Channel[:]...), e.Upstream[:]...)
		case OpSent:
			if len(e.Seqs) > maxSeqs {
				return b, fmt.Errorf("%w: %d seqs", ErrBadEntry, len(e.Seqs))
			}
			b = binary.AppendUvarint(b, uint64(len(e.Seqs)))
			for _, s := range e.Seqs {
				b = binary.AppendUvarint(b, s)
			}
		default:
			return b, fmt.Errorf("%w: outbox op %d", ErrBadEntry, e.Op)
		}
	case KindLink:
		b = append(b, e.Op)
		switch e.Op {
		case OpIdentity:
			b = binary.BigEndian.AppendUint64(b, e.LinkPrint)
			b = appendStr(b, e.LinkName)
		case OpLinkChild, OpLinkForgotten:
			b = appendStr(append(b, e.UAID[:]...), e.LinkName)
		case OpLinkChildAddr:
			a := e.LinkAddr.Addr().As16()
			b = append(appendStr(b, e.LinkName), a[:]...)
			b = binary.BigEndian.AppendUint16(b, e.LinkAddr.Port())
		case OpLinkAcks:
			if len(e.Acks) > maxSeqs {
				return b, fmt.Errorf("%w: %d acked devices", ErrBadEntry, len(e.Acks))
			}
			b = binary.AppendUvarint(b, uint64(len(e.Acks)))
			for u, seqs := range e.Acks {
				if len(seqs) > maxSeqs {
					return b, fmt.Errorf("%w: %d seqs", ErrBadEntry, len(seqs))
				}
				b = binary.AppendUvarint(append(b, u[:]...), uint64(len(seqs)))
				for _, q := range seqs {
					b = binary.AppendUvarint(b, q)
				}
			}
		case OpLinkEpoch:
			b = appendStr(b, string(e.LinkEpoch))
		default:
			return b, fmt.Errorf("%w: link op %d", ErrBadEntry, e.Op)
		}
	default:
		return b, fmt.Errorf("%w: kind %d", ErrBadEntry, e.Kind)
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendMessage(b []byte, m *store.Message) ([]byte, error) {
	b = append(append(b, m.UAID[:]...), m.Channel[:]...)
	var o []byte
	if !m.Origin.IsZero() {
		var err error
		if o, err = m.Origin.AppendBinary(nil); err != nil {
			return b, fmt.Errorf("%w: %w", ErrBadEntry, err)
		}
	}
	b = appendStr(b, string(o))
	b = binary.BigEndian.AppendUint64(b, nanos(m.Received))
	b = binary.BigEndian.AppendUint64(b, uint64(m.TTL))
	b = binary.BigEndian.AppendUint64(b, nanos(m.Expiry))
	b = append(b, byte(m.Urgency))
	b = binary.AppendUvarint(b, m.Version)
	for _, s := range [...]string{m.Topic, m.Encoding, m.Encryption, m.CryptoKey} {
		b = appendStr(b, s)
	}
	return appendStr(b, string(m.Data)), nil
}

// reader reads an entry's fields; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrBadEntry, what)
	}
}

func (r *reader) bytes(n int, what string) []byte {
	if r.err != nil || len(r.b) < n {
		r.fail("short " + what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) byte {
	v := r.bytes(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u64(what string) uint64 {
	v := r.bytes(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// u64short reads a big-endian uint16 (a port).
func (r *reader) u64short() uint64 {
	v := r.bytes(2, "port")
	if v == nil {
		return 0
	}
	return uint64(binary.BigEndian.Uint16(v))
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad " + what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) count(max int, what string) int {
	n := r.uvarint(what)
	if n > uint64(max) {
		r.fail(what + " over its limit")
		return 0
	}
	return int(n)
}

func (r *reader) str(what string) string {
	n := r.count(maxStr, what)
	return string(r.bytes(n, what))
}

func (r *reader) time(what string) time.Time {
	n := r.u64(what)
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n))
}

// nanos encodes a time as Unix nanoseconds, the zero time as 0 (the
// store fills a zero Received, Expiry or Created in).
func nanos(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixNano())
}

func (r *reader) uaid() (u push.UAID) {
	copy(u[:], r.bytes(16, "uaid"))
	return u
}

func (r *reader) channel() (c push.ChannelID) {
	copy(c[:], r.bytes(16, "channel"))
	return c
}

// DecodeEntry decodes what AppendEntry wrote.
func DecodeEntry(b []byte) (*Entry, error) {
	r := &reader{b: b}
	if v := r.u8("version"); r.err == nil && v != entryVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadEntry, v)
	}
	e := &Entry{At: r.time("time"), Member: r.u64("member"), Request: r.uvarint("request"), Kind: Kind(r.u8("kind"))}
	if r.err != nil {
		return nil, r.err
	}
	switch e.Kind {
	case KindAppend:
		n := r.count(maxMessages, "messages")
		if n == 0 {
			r.fail("no messages")
		}
		for i := 0; i < n && r.err == nil; i++ {
			e.Messages = append(e.Messages, r.message())
		}
	case KindAck:
		e.UAID = r.uaid()
		n := r.count(maxSeqs, "seqs")
		for i := 0; i < n && r.err == nil; i++ {
			e.Seqs = append(e.Seqs, r.uvarint("seq"))
		}
	case KindDelete:
		e.UAID, e.Channel = r.uaid(), r.channel()
		e.Seqs = []uint64{r.uvarint("seq")}
	case KindRegister:
		e.UAID, e.Channel = r.uaid(), r.channel()
		e.Created = r.time("created")
		if k := r.str("key"); k != "" {
			e.Key = []byte(k)
		}
		e.Endpoint = r.str("endpoint")
	case KindUnregister:
		e.UAID, e.Channel = r.uaid(), r.channel()
	case KindReset:
		e.UAID = r.uaid()
	case KindBroadcasts, KindBroadcastWant:
		n := r.count(maxBroadcasts, "broadcasts")
		e.Broadcasts = make(map[string]string, n)
		for i := 0; i < n && r.err == nil; i++ {
			id := r.str("broadcast id")
			e.Broadcasts[id] = r.str("broadcast version")
		}
	case KindSweep:
		e.Limit = r.count(1<<30, "limit")
	case KindWakeOwner:
		n := r.count(maxOwned, "uaids")
		if n == 0 {
			r.fail("no uaids")
		}
		for i := 0; i < n && r.err == nil; i++ {
			e.UAIDs = append(e.UAIDs, r.uaid())
		}
	case KindHolder:
		e.Holder, e.Term = r.u64("holder"), r.u64("term")
	case KindRegisterRequest:
		e.UAID, e.Channel = r.uaid(), r.channel()
		if k := r.str("key"); k != "" {
			e.Key = []byte(k)
		}
	case KindRegisterResult:
		e.ForMember, e.ForRequest = r.u64("for member"), r.uvarint("for request")
		e.Endpoint, e.Error = r.str("endpoint"), r.str("error")
	case KindUpstreamID:
		if e.Op = r.u8("op"); r.err == nil && (e.Op < OpAdd || e.Op > OpDelete) {
			r.fail(fmt.Sprintf("upstream id op %d", e.Op))
		}
		e.UAID, e.Upstream = r.uaid(), r.uaid()
		e.Helloed = r.time("helloed")
	case KindHellos:
		n := r.count(maxHellos, "hellos")
		if n == 0 {
			r.fail("no hellos")
		}
		for i := 0; i < n && r.err == nil; i++ {
			e.Hellos = append(e.Hellos, Hello{UAID: r.uaid(), At: r.time("hello time")})
		}
	case KindOutbox:
		switch e.Op = r.u8("op"); {
		case r.err != nil:
		case e.Op == OpLater:
			e.UAID, e.Channel, e.Upstream = r.uaid(), r.channel(), r.uaid()
		case e.Op == OpSent:
			n := r.count(maxSeqs, "seqs")
			for i := 0; i < n && r.err == nil; i++ {
				e.Seqs = append(e.Seqs, r.uvarint("seq"))
			}
		default:
			r.fail(fmt.Sprintf("outbox op %d", e.Op))
		}
	case KindLink:
		switch e.Op = r.u8("op"); {
		case r.err != nil:
		case e.Op == OpIdentity:
			e.LinkPrint, e.LinkName = r.u64("link print"), r.str("link name")
		case e.Op == OpLinkChild || e.Op == OpLinkForgotten:
			e.UAID, e.LinkName = r.uaid(), r.str("child")
		case e.Op == OpLinkChildAddr:
			e.LinkName = r.str("child")
			if a := r.bytes(16, "address"); a != nil {
				e.LinkAddr = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a)).Unmap(), uint16(r.u64short()))
			}
		case e.Op == OpLinkAcks:
			n := r.count(maxSeqs, "acked devices")
			e.Acks = make(map[push.UAID][]uint64, n)
			for i := 0; i < n && r.err == nil; i++ {
				u := r.uaid()
				k := r.count(maxSeqs, "seqs")
				seqs := make([]uint64, 0, k)
				for j := 0; j < k && r.err == nil; j++ {
					seqs = append(seqs, r.uvarint("seq"))
				}
				e.Acks[u] = seqs
			}
		case e.Op == OpLinkEpoch:
			if ep := r.str("epoch"); ep != "" {
				e.LinkEpoch = []byte(ep)
			}
		default:
			r.fail(fmt.Sprintf("link op %d", e.Op))
		}
	default:
		r.fail(fmt.Sprintf("kind %d", e.Kind))
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail(fmt.Sprintf("%d trailing bytes", len(r.b)))
	}
	if r.err != nil {
		return nil, r.err
	}
	return e, nil
}

func (r *reader) message() store.Message {
	m := store.Message{UAID: r.uaid(), Channel: r.channel()}
	if o := r.str("origin"); o != "" && r.err == nil {
		var err error
		if m.Origin, err = push.DecodeOrigin([]byte(o)); err != nil {
			r.fail("origin")
		}
	}
	m.Received = r.time("received")
	m.TTL = time.Duration(r.u64("ttl"))
	m.Expiry = r.time("expiry")
	m.Urgency = push.Urgency(r.u8("urgency"))
	m.Version = r.uvarint("version")
	for _, dst := range [...]*string{&m.Topic, &m.Encoding, &m.Encryption, &m.CryptoKey} {
		*dst = r.str("header")
	}
	if d := r.str("data"); d != "" {
		m.Data = []byte(d)
	}
	return m
}
