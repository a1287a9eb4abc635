//go:build !notools

package main

import (
	"context"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/pushrelay/pushrelay/relay/atomicfile"
	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/pushclient"
	"github.com/pushrelay/pushrelay/relay/pushproto"
)

// subscription is what a device keeps per channel: the shape browsers give
// PushSubscription.toJSON(), plus the private half.
type subscription struct {
	ChannelID string            `json:"channelID"`
	Endpoint  string            `json:"endpoint"`
	Keys      map[string]string `json:"keys"`
	Private   string            `json:"private"` // base64url P-256 scalar
}

func (s subscription) public() string {
	b, _ := json.Marshal(struct {
		Endpoint string            `json:"endpoint"`
		Keys     map[string]string `json:"keys"`
	}{s.Endpoint, s.Keys})
	return string(b)
}

type deviceState struct {
	UAID          string         `json:"uaid"`
	Subscriptions []subscription `json:"subscriptions"`
}

type deviceOpts struct {
	server   string
	channels int
	appKey   string
	state    string
	count    int
	legacy   bool
	timeout  time.Duration

	wake       string        // wake socket address: the device sleeps
	wakeCompat bool          // ask for compatible (unauthenticated) datagrams
	quiet      time.Duration // a woken device sleeps again after this long without a notification
}

// runDevice is `pushrelay device`: connect, register, print endpoints and
// keys, then print and ack every notification, reconnecting with backoff.
func runDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay device", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o deviceOpts
	fs.StringVar(&o.server, "server", "ws://localhost:8080/", "device listener URL")
	fs.IntVar(&o.channels, "channels", 1, "subscriptions to create when the device has none")
	fs.StringVar(&o.appKey, "key", "", "application server (VAPID) public key, base64url: bind new subscriptions to it (v2 endpoints)")
	fs.StringVar(&o.state, "state", "", "file keeping the UAID and subscriptions across runs (default: none, a new device each run)")
	fs.IntVar(&o.count, "count", 0, "exit after this many notifications (0: run until interrupted)")
	fs.BoolVar(&o.legacy, "legacy", false, "speak SimplePush (hello without use_webpush), as Firefox OS 1.x")
	fs.DurationVar(&o.timeout, "timeout", 0, "exit with an error if --count notifications have not arrived in this time")
	fs.StringVar(&o.wake, "wake", "", "sleep between messages: listen for wake datagrams on this IP[:port] (port 5000 by default)")
	fs.BoolVar(&o.wakeCompat, "wake-compat", false, "with --wake: take any datagram as a wake, as Firefox OS did, instead of authenticated ones")
	fs.DurationVar(&o.quiet, "quiet", time.Second, "with --wake: sleep again after this long without a notification")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	st, err := loadDeviceState(o.state)
	if err != nil {
		return err
	}
	if o.wake != "" {
		return runWakeDevice(ctx, &o, st, stdout, stderr)
	}
	seen := 0
	backoff := time.Second
	for {
		err := deviceSession(ctx, &o, st, stdout, stderr, &seen)
		if err == nil || ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && o.count > 0 && seen < o.count {
				return fmt.Errorf("timed out after %d of %d notifications", seen, o.count)
			}
			return nil
		}
		var ce *pushclient.CloseError
		if errors.As(err, &ce) && ce.Code == pushproto.CloseWake {
			fmt.Fprintf(stderr, "relay asked the device to sleep (4774); reconnecting in %s\n", backoff)
		} else {
			fmt.Fprintf(stderr, "connection lost: %v; reconnecting in %s\n", err, backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
}

func loadDeviceState(path string) (*deviceState, error) {
	st := &deviceState{}
	if path == "" {
		return st, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("device state %s: %w", path, err)
	}
	return st, nil
}

func (st *deviceState) save(path string) error {
	if path == "" {
		return nil
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	return atomicfile.Write(path, b, 0o600)
}

// deviceSession runs one connection. It returns nil when done (count
// reached or ctx cancelled), an error when the connection was lost.
func deviceSession(ctx context.Context, o *deviceOpts, st *deviceState, stdout, stderr io.Writer, seen *int) error {
	c, _, err := openSession(ctx, o, st, pushclient.HelloOptions{}, stdout, stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	return readNotifications(ctx, c, o, st, stdout, seen, 0)
}

// openSession connects, says hello (with ho's wake fields), registers
// what the device lacks and prints its subscriptions. The caller closes
// the client.
func openSession(ctx context.Context, o *deviceOpts, st *deviceState, ho pushclient.HelloOptions, stdout, stderr io.Writer) (*pushclient.Client, pushproto.ServerFrame, error) {
	c, err := pushclient.Dial(ctx, o.server)
	if err != nil {
		return nil, pushproto.ServerFrame{}, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	fail := func(err error) (*pushclient.Client, pushproto.ServerFrame, error) {
		stop()
		c.Close()
		return nil, pushproto.ServerFrame{}, err
	}
	ho.Legacy = o.legacy
	hello, err := c.Hello(st.UAID, ho)
	if err != nil {
		return fail(err)
	}
	if hello.UAID != st.UAID {
		if st.UAID != "" {
			fmt.Fprintf(stderr, "relay issued a new UAID; old subscriptions are gone\n")
		}
		st.UAID = hello.UAID
		st.Subscriptions = nil
	}
	fmt.Fprintf(stdout, "uaid %s\n", st.UAID)
	created := len(st.Subscriptions) < o.channels
	for len(st.Subscriptions) < o.channels {
		sub, err := newSubscription(c, o.appKey)
		if err != nil {
			return fail(err)
		}
		st.Subscriptions = append(st.Subscriptions, sub)
	}
	if err := st.save(o.state); err != nil {
		return fail(fmt.Errorf("save device state: %w", err))
	}
	for _, s := range st.Subscriptions {
		fmt.Fprintf(stdout, "subscription %s\n", s.public())
	}
	if created && len(st.Subscriptions) > 0 {
		fmt.Fprintf(stderr, "try: pushrelay send --subscription '%s' --data hello\n", st.Subscriptions[0].public())
	}
	return c, hello, nil
}

// readNotifications prints and acks notifications until ctx is done or
// --count is reached (nil), the connection fails (its error), or, with
// quiet > 0, nothing arrives for that long (nil).
func readNotifications(ctx context.Context, c *pushclient.Client, o *deviceOpts, st *deviceState, stdout io.Writer, seen *int, quiet time.Duration) error {
	for {
		if o.count > 0 && *seen >= o.count {
			return nil
		}
		var deadline time.Time
		if quiet > 0 {
			deadline = time.Now().Add(quiet)
		}
		n, err := c.Next(deadline)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if quiet > 0 && errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		if n.MessageType != pushproto.TypeNotification {
			continue
		}
		printNotification(stdout, st, n)
		if err := c.Ack(n); err != nil {
			return err
		}
		*seen += max(1, len(n.Updates))
	}
}

func newSubscription(c *pushclient.Client, appKey string) (subscription, error) {
	chid := pushproto.NewChannelID()
	reply, err := c.Register(chid, appKey)
	if err != nil {
		return subscription{}, err
	}
	if reply.Status != 200 {
		return subscription{}, fmt.Errorf("register refused: status %d", reply.Status)
	}
	keys, err := ece.NewSubscription()
	if err != nil {
		return subscription{}, err
	}
	return subscription{
		ChannelID: chid,
		Endpoint:  reply.PushEndpoint,
		Keys:      map[string]string{"p256dh": ece.EncodeKey(keys.PublicKey()), "auth": ece.EncodeKey(keys.Auth)},
		Private:   ece.EncodeKey(keys.Private.Bytes()),
	}, nil
}

func printNotification(w io.Writer, st *deviceState, n pushproto.ServerFrame) {
	if len(n.Updates) > 0 {
		for _, u := range n.Updates {
			fmt.Fprintf(w, "notification channel=%s version=%d\n", u.ChannelID, u.Version)
		}
		return
	}
	line := fmt.Sprintf("notification channel=%s version=%s", n.ChannelID, n.Version)
	if n.Data == "" {
		fmt.Fprintln(w, line+" data=none")
		return
	}
	body, err := base64.RawURLEncoding.DecodeString(trimPad(n.Data))
	if err != nil {
		fmt.Fprintf(w, "%s error=%q\n", line, "data is not base64url")
		return
	}
	var sub *subscription
	for i := range st.Subscriptions {
		if st.Subscriptions[i].ChannelID == n.ChannelID {
			sub = &st.Subscriptions[i]
		}
	}
	if sub == nil || n.Headers == nil {
		fmt.Fprintf(w, "%s bytes=%d (not a subscription of this device)\n", line, len(body))
		return
	}
	plain, err := decryptFor(sub, body, n.Headers)
	if err != nil {
		fmt.Fprintf(w, "%s encoding=%s error=%q\n", line, n.Headers.Encoding, err.Error())
		return
	}
	fmt.Fprintf(w, "%s encoding=%s data=%s\n", line, n.Headers.Encoding, strconv.Quote(string(plain)))
}

func decryptFor(sub *subscription, body []byte, h *pushproto.Headers) ([]byte, error) {
	keys, err := sub.keys()
	if err != nil {
		return nil, err
	}
	switch h.Encoding {
	case "aes128gcm":
		return ece.Decrypt(body, keys)
	case "aesgcm":
		return ece.DecryptAESGCM(body, keys, h.Encryption, h.CryptoKey)
	}
	return nil, fmt.Errorf("unknown encoding %q", h.Encoding)
}

func (s *subscription) keys() (*ece.Subscription, error) {
	raw, err := ece.DecodeKey(s.Private)
	if err != nil {
		return nil, fmt.Errorf("subscription private key: %w", err)
	}
	priv, err := ecdh.P256().NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("subscription private key: %w", err)
	}
	auth, err := ece.DecodeKey(s.Keys["auth"])
	if err != nil {
		return nil, fmt.Errorf("subscription auth secret: %w", err)
	}
	return &ece.Subscription{Private: priv, Auth: auth}, nil
}

func trimPad(s string) string {
	for len(s) > 0 && s[len(s)-1] == '=' {
		s = s[:len(s)-1]
	}
	return s
}
