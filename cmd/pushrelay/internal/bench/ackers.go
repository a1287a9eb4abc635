package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushrelay/pushrelay/relay/pushclient"
)

// ackers are devices connected to a relay, one per UAID, each reading and
// acking every notification until the context it was started with ends;
// done is closed once want notifications were read in all.
type ackers struct {
	got     atomic.Int64
	done    chan struct{}
	readers sync.WaitGroup
	clients []*pushclient.Client
	stops   []func() bool
}

// startAckers connects the devices to url (hello with each UAID) and
// starts their readers; a reader's failure goes to errc (sized for one
// per UAID). Close aborts them and waits for the readers.
func startAckers(ctx context.Context, url string, uaids []string, want int, errc chan<- error) (*ackers, error) {
	a := &ackers{done: make(chan struct{})}
	for _, uaid := range uaids {
		cl, err := pushclient.Dial(ctx, url)
		if err != nil {
			a.close()
			return nil, err
		}
		a.clients = append(a.clients, cl)
		if _, err := cl.Hello(uaid, pushclient.HelloOptions{}); err != nil {
			a.close()
			return nil, err
		}
		a.stops = append(a.stops, context.AfterFunc(ctx, func() { cl.Abort() }))
		a.readers.Go(func() {
			for {
				f, err := cl.Next(time.Now().Add(time.Minute))
				if err != nil {
					if ctx.Err() == nil {
						errc <- fmt.Errorf("device: %w", err)
					}
					return
				}
				if err := cl.Ack(f); err != nil {
					errc <- fmt.Errorf("device ack: %w", err)
					return
				}
				if a.got.Add(1) == int64(want) {
					close(a.done)
				}
			}
		})
	}
	return a, nil
}

// close aborts the devices and waits for their readers.
func (a *ackers) close() {
	for _, stop := range a.stops {
		stop()
	}
	for _, cl := range a.clients {
		cl.Abort()
	}
	a.readers.Wait()
}
