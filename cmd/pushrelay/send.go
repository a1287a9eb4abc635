//go:build !notools

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pushrelay/pushrelay/relay/ece"
	"github.com/pushrelay/pushrelay/relay/vapid"
)

// runSend is `pushrelay send`: what an app server does. It encrypts --data
// to the subscription's keys (RFC 8291), signs with --vapid-key (RFC 8292)
// and posts one message.
func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushrelay send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: pushrelay send [flags] [ENDPOINT]   (ENDPOINT may come from --subscription)")
		fs.PrintDefaults()
	}
	subJSON := fs.String("subscription", "", "subscription JSON {endpoint, keys:{p256dh, auth}} as the device prints it, or @FILE")
	p256dh := fs.String("p256dh", "", "subscription public key (base64url), instead of --subscription")
	auth := fs.String("auth", "", "subscription auth secret (base64url), instead of --subscription")
	data := fs.String("data", "", "message text to encrypt and send")
	dataFile := fs.String("data-file", "", "file whose bytes to encrypt and send")
	encoding := fs.String("encoding", "aes128gcm", "content encoding: aes128gcm (RFC 8291) or aesgcm (legacy)")
	ttl := fs.Int("ttl", 86400, "TTL header, seconds")
	topic := fs.String("topic", "", "Topic header: replaces a waiting message with the same topic")
	urgency := fs.String("urgency", "", "Urgency header: very-low, low, normal or high")
	vapidKey := fs.String("vapid-key", "", "VAPID private key: PEM file, or base64url raw key (as the web-push npm package stores it)")
	vapidSub := fs.String("vapid-subject", "mailto:admin@localhost", "VAPID sub claim")
	version := fs.Uint64("version", 0, "SimplePush version for /update/ endpoints (PUT version=N)")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sub := subscription{Keys: map[string]string{}}
	if *subJSON != "" {
		raw := []byte(*subJSON)
		if strings.HasPrefix(*subJSON, "@") {
			b, err := os.ReadFile((*subJSON)[1:])
			if err != nil {
				return err
			}
			raw = b
		}
		if err := json.Unmarshal(raw, &sub); err != nil {
			return fmt.Errorf("--subscription: %w", err)
		}
	}
	if *p256dh != "" {
		sub.Keys["p256dh"] = *p256dh
	}
	if *auth != "" {
		sub.Keys["auth"] = *auth
	}
	if fs.NArg() > 0 {
		sub.Endpoint = fs.Arg(0)
	}
	if sub.Endpoint == "" {
		fs.Usage()
		return errors.New("send: no endpoint")
	}
	payload := []byte(*data)
	if *dataFile != "" {
		b, err := os.ReadFile(*dataFile)
		if err != nil {
			return err
		}
		payload = b
	}

	method, body, hdr := http.MethodPost, []byte(nil), http.Header{}
	if strings.Contains(sub.Endpoint, "/update/") {
		method = http.MethodPut
		if *version != 0 {
			body = []byte("version=" + strconv.FormatUint(*version, 10))
			hdr.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		hdr.Set("TTL", strconv.Itoa(*ttl))
		if *topic != "" {
			hdr.Set("Topic", *topic)
		}
		if *urgency != "" {
			hdr.Set("Urgency", *urgency)
		}
		if len(payload) > 0 {
			var err error
			body, err = encryptPayload(payload, sub, *encoding, hdr)
			if err != nil {
				return err
			}
		}
	}
	if *vapidKey != "" {
		h, err := vapidHeader(*vapidKey, *vapidSub, sub.Endpoint)
		if err != nil {
			return err
		}
		hdr.Set("Authorization", h)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, sub.Endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(rb)))
	}
	fmt.Fprintf(stdout, "%s location=%s ttl=%s\n", resp.Status, resp.Header.Get("Location"), resp.Header.Get("TTL"))
	return nil
}

func encryptPayload(payload []byte, sub subscription, encoding string, hdr http.Header) ([]byte, error) {
	pub, err := ece.DecodeKey(sub.Keys["p256dh"])
	if err != nil {
		return nil, fmt.Errorf("subscription p256dh: %w", err)
	}
	secret, err := ece.DecodeKey(sub.Keys["auth"])
	if err != nil {
		return nil, fmt.Errorf("subscription auth: %w", err)
	}
	switch encoding {
	case "aes128gcm":
		hdr.Set("Content-Encoding", "aes128gcm")
		return ece.Encrypt(payload, pub, secret)
	case "aesgcm":
		body, enc, ck, err := ece.EncryptAESGCM(payload, pub, secret)
		if err != nil {
			return nil, err
		}
		hdr.Set("Content-Encoding", "aesgcm")
		hdr.Set("Encryption", enc)
		hdr.Set("Crypto-Key", ck)
		return body, nil
	}
	return nil, fmt.Errorf("--encoding %q: want aes128gcm or aesgcm", encoding)
}

func vapidHeader(keyArg, subject, endpoint string) (string, error) {
	raw := []byte(keyArg)
	if b, err := os.ReadFile(keyArg); err == nil {
		raw = b
	}
	priv, err := vapid.ParsePrivateKey(raw)
	if err != nil {
		return "", fmt.Errorf("--vapid-key: %w", err)
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	return vapid.NewSigner(priv).Header(u.Scheme+"://"+u.Host, subject, time.Now().Add(12*time.Hour))
}
