// Package linkproto is the wire format of the relay link (#8): the frames
// a child relay and its parent exchange over one QUIC connection, their
// limits, codes and errors. docs/relay-link.md describes every frame byte
// by byte; its examples are this package's golden tests.
//
// The package is pure: no I/O, no goroutines, no third-party imports. The
// transport (relay/linkquic) reads bytes from a stream, feeds them to a
// Reader and decodes the frames it cuts; it builds frames with Append and,
// for updates, an UpdateBuilder.
//
// A frame is a type varint, a length varint and a payload, with QUIC
// varints (RFC 9000 section 16) always in their shortest form. Every
// length and count is checked against a documented limit and against the
// bytes present before anything is allocated, so a peer cannot make a
// decoder allocate more than the frame it sent. Errors: ErrShort (read
// more), ErrMalformed, ErrTooLarge and ErrUnknownType (close the
// connection with CodeOf(err)).
//
// Streams: the child opens one bidirectional control stream (HELLO,
// WELCOME or REFUSE, REGISTER/REGISTERED, UNREGISTER/UNREGISTERED, CREDIT,
// ACK, BROADCAST, RESYNC, GOAWAY); the parent opens a few unidirectional
// data streams carrying UPDATE frames, one sequence number per frame and
// the messages grouped by UAID. Digest summarises the (UAID, channel)
// pairs a child serves, order independent and updated in O(1).
package linkproto
