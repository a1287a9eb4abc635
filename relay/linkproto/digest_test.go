package linkproto

import (
	"math/rand/v2"
	"testing"

	"github.com/pushrelay/pushrelay/relay/push"
)

// The digest does not depend on order, Remove undoes Add, a digest kept up
// to date pair by pair equals one computed from scratch, and a pair added
// twice is not a pair added once (XOR would miss it).
func TestDigest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type pair struct {
		u push.UAID
		c push.ChannelID
	}
	pairs := make([]pair, 1000)
	for i := range pairs {
		pairs[i] = pair{uaidN(i / 3), chanN(i % 3)}
	}
	var fwd, back Digest
	for _, p := range pairs {
		fwd.Add(p.u, p.c)
	}
	perm := rng.Perm(len(pairs))
	for _, i := range perm {
		back.Add(pairs[i].u, pairs[i].c)
	}
	if fwd != back || fwd.Count != 1000 {
		t.Fatalf("order matters: %v vs %v", fwd, back)
	}

	// Incrementally: drop half, add 100 new ones; compare with scratch.
	inc := fwd
	var scratch Digest
	for i, p := range pairs {
		if i%2 == 0 {
			inc.Remove(p.u, p.c)
		} else {
			scratch.Add(p.u, p.c)
		}
	}
	for i := range 100 {
		inc.Add(uaidN(5000+i), chanN(9))
		scratch.Add(uaidN(5000+i), chanN(9))
	}
	if inc != scratch {
		t.Fatalf("incremental %v, from scratch %v", inc, scratch)
	}

	// One pair more, one fewer or one different: a different digest.
	var a, b Digest
	a.Add(uaidA, chan1)
	b.Add(uaidA, chan2)
	if a == b || a == (Digest{}) {
		t.Fatal("different pairs, same digest")
	}
	twice := a
	twice.Add(uaidA, chan1)
	twice.Count-- // even with the count forged, the sum differs
	if twice == a {
		t.Fatal("a pair added twice looks like once")
	}
	a.Remove(uaidA, chan1)
	if a != (Digest{}) {
		t.Fatalf("add then remove: %v", a)
	}
}

// Add and Remove allocate nothing: a child updates its digest on every
// register for free.
func TestDigestAllocs(t *testing.T) {
	var d Digest
	if n := testing.AllocsPerRun(100, func() { d.Add(uaidA, chan1); d.Remove(uaidA, chan1) }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}

func BenchmarkDigestAdd(b *testing.B) {
	var d Digest
	for i := range b.N {
		d.Add(uaidN(i), chan1)
	}
}
