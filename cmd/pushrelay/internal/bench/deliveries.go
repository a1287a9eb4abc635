package bench

import (
	"bytes"
	"time"
)

// deliveries times each message of the throughput bench from its POST to
// its device (issue #10: post → device at 300 msg/s), matching the two by
// message id, never by order: the relay's 201 names the message in its
// Location (.../m/<id>) and the notification carries the same id as its
// version (relay.Result.ID and session.keyFor seal the same
// token.MessageID, deterministically; autopush-rs does the same with its
// message_id). Several senders post to one device at once, so the n-th
// notification a device reads need not be its n-th POST's.
//
// The 201 and the notification race: the store's committer answers the
// POST's handler and then hands the commit to the device's session
// (store.OnStored), and the load generator may read either first. Whichever comes first waits in pending
// under the id until the other does; a match takes it out, so pending
// holds only the messages in flight (and, at the end, the ones that never
// matched). The 201's id is copied into a string only when it comes first.
type deliveries struct {
	start   time.Time
	pending map[string]sighting
	lat     []time.Duration // POST written → notification read, per matched message

	noID    int64 // 201s without a Location id: never matchable
	repeats int64 // a notification read again while its first was unmatched
	early   int64 // matched messages whose notification came before their 201
}

// sighting is one side of a message seen: at is the POST's write (the 201
// came first) or the notification's read (notified), since start. No
// pointers, so the GC does not scan the values.
type sighting struct {
	at       time.Duration
	notified bool
}

func newDeliveries(start time.Time, expect int) *deliveries {
	return &deliveries{start: start, pending: make(map[string]sighting, 64), lat: make([]time.Duration, 0, expect)}
}

// posted is a 201 for the message whose POST was written at written;
// location is its Location header.
func (d *deliveries) posted(location []byte, written time.Time) {
	id := messageIDOf(location)
	if len(id) == 0 {
		d.noID++
		return
	}
	at := written.Sub(d.start)
	if s, ok := d.pending[string(id)]; ok && s.notified {
		delete(d.pending, string(id))
		d.lat = append(d.lat, s.at-at)
		d.early++
		return
	}
	d.pending[string(id)] = sighting{at: at}
}

// notified is a notification with version id read by its device at read.
func (d *deliveries) notified(id string, read time.Time) {
	at := read.Sub(d.start)
	s, ok := d.pending[id]
	switch {
	case !ok:
		d.pending[id] = sighting{at: at, notified: true}
	case s.notified:
		d.repeats++
	default:
		delete(d.pending, id)
		d.lat = append(d.lat, at-s.at)
	}
}

// unmatched counts the 201s no notification matched (those without an id
// included) and the notifications no 201 did (repeats included).
func (d *deliveries) unmatched() (posts, notes int64) {
	posts, notes = d.noID, d.repeats
	for _, s := range d.pending {
		if s.notified {
			notes++
		} else {
			posts++
		}
	}
	return posts, notes
}

// messageIDOf is the message id at the end of a Location URL (.../m/<id>).
func messageIDOf(location []byte) []byte {
	return location[bytes.LastIndexByte(location, '/')+1:]
}
