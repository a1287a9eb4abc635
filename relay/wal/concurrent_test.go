package wal

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentReaders runs Get and Range against a writer that appends,
// rolls segments, and truncates at both ends; run it with -race.
func TestConcurrentReaders(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: 2048})
	appendRange(t, l, 1, 50)
	var (
		done  atomic.Bool
		wg    sync.WaitGroup
		reads atomic.Int64
		errc  = make(chan error, 8)
	)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	// Entries at an index may be rewritten after a TruncateBack: readers
	// accept either version.
	ok := func(i uint64, b []byte) bool {
		return bytes.Equal(b, entry(i)) || bytes.Equal(b, fmt.Appendf(nil, "rewritten %d", i))
	}
	for range 3 {
		wg.Go(func() {
			for !done.Load() {
				first, last := l.FirstIndex(), l.LastIndex()
				if last == 0 {
					continue
				}
				i := first + rand.Uint64N(last-first+1)
				b, err := l.Get(i)
				if errors.Is(err, ErrNotFound) {
					continue // truncated meanwhile
				}
				if err != nil || !ok(i, b) {
					fail(fmt.Errorf("Get(%d) = %q, %v", i, b, err))
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Go(func() {
		for !done.Load() {
			next := uint64(0)
			err := l.Range(0, func(i uint64, b []byte) error {
				if next != 0 && i != next {
					return fmt.Errorf("Range gave %d after %d", i, next-1)
				}
				if !ok(i, b) {
					return fmt.Errorf("Range gave %d %q", i, b)
				}
				next = i + 1
				reads.Add(1)
				return nil
			})
			if err != nil && !errors.Is(err, ErrNotFound) {
				fail(err)
				return
			}
		}
	})
	next := uint64(51)
	for round := range 150 {
		appendRange(t, l, next, next+9)
		next += 10
		switch round % 10 {
		case 3:
			if err := l.TruncateFront(l.LastIndex() - 60); err != nil {
				t.Fatal(err)
			}
		case 7:
			cut := l.LastIndex() - 5
			if err := l.TruncateBack(cut); err != nil {
				t.Fatal(err)
			}
			if err := l.Append(cut+1, fmt.Appendf(nil, "rewritten %d", cut+1)); err != nil {
				t.Fatal(err)
			}
			if err := l.TruncateBack(cut); err != nil {
				t.Fatal(err)
			}
			next = cut + 1
		}
	}
	done.Store(true)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads", reads.Load())
	check(t, l, l.FirstIndex(), l.LastIndex())
}
