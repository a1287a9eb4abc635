package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	bolt "go.etcd.io/bbolt"
)

// metaLinkAddrs is a parent relay's record of each child's last UDP
// address, one value in meta (no schema change: a file without it has
// none, and a build that does not know it ignores it):
//
//	meta  "link_addrs" → entries, oldest first, each
//	      name length (1 byte) | name | IPv6 or IPv4-mapped address (16) | port (2, big-endian)
//
// The parent announces its restart to these addresses (relay/link); it is
// a hint, so Salvage does not copy it.
var metaLinkAddrs = []byte("link_addrs")

// MaxLinkChildAddrs bounds the children whose address is kept; setting
// one more drops the one set longest ago.
const MaxLinkChildAddrs = 1024

// SetLinkChildAddr records child's last address (a no-op when it is
// already the one recorded): one small commit when a child connects from
// a new address.
func (s *Store) SetLinkChildAddr(ctx context.Context, child string, addr netip.AddrPort) error {
	if len(child) == 0 || len(child) > MaxChildNameLen {
		return fmt.Errorf("%w: child name of %d bytes", ErrBadChannel, len(child))
	}
	return s.do(ctx, func(t *txn) error { return t.setLinkChildAddr(child, addr) })
}

// SetLinkChildAddr is Store.SetLinkChildAddr in tx (relay/site).
func (tx *Tx) SetLinkChildAddr(child string, addr netip.AddrPort) error {
	if len(child) == 0 || len(child) > MaxChildNameLen {
		return fmt.Errorf("%w: child name of %d bytes", ErrBadChannel, len(child))
	}
	return tx.t.setLinkChildAddr(child, addr)
}

func (t *txn) setLinkChildAddr(child string, addr netip.AddrPort) error {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	es, err := decodeLinkAddrs(t.meta.Get(metaLinkAddrs))
	if err != nil {
		es = nil // a hint: start it again rather than fail the connect
	}
	for i, e := range es {
		if e.name == child {
			if e.addr == addr {
				return nil
			}
			es = append(es[:i], es[i+1:]...)
			break
		}
	}
	es = append(es, linkAddr{child, addr})
	if len(es) > MaxLinkChildAddrs {
		es = es[len(es)-MaxLinkChildAddrs:]
	}
	return t.meta.Put(metaLinkAddrs, encodeLinkAddrs(es))
}

// LinkChildAddrs calls fn with each child's recorded address, the one set
// longest ago first.
func (s *Store) LinkChildAddrs(fn func(child string, addr netip.AddrPort)) error {
	var es []linkAddr
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		es, err = decodeLinkAddrs(tx.Bucket(bucketMeta).Get(metaLinkAddrs))
		return err
	})
	if err != nil {
		return err
	}
	for _, e := range es {
		fn(e.name, e.addr)
	}
	return nil
}

type linkAddr struct {
	name string
	addr netip.AddrPort
}

func encodeLinkAddrs(es []linkAddr) []byte {
	var b []byte
	for _, e := range es {
		b = append(b, byte(len(e.name)))
		b = append(b, e.name...)
		a := e.addr.Addr().As16()
		b = append(b, a[:]...)
		b = binary.BigEndian.AppendUint16(b, e.addr.Port())
	}
	return b
}

// decodeLinkAddrs copies the entries out of v (valid only in its
// transaction).
func decodeLinkAddrs(v []byte) ([]linkAddr, error) {
	var es []linkAddr
	for len(v) > 0 {
		n := int(v[0])
		if n == 0 || n > MaxChildNameLen || len(v) < 1+n+18 {
			return nil, corrupt("meta", metaLinkAddrs)
		}
		name := string(v[1 : 1+n])
		a := netip.AddrFrom16([16]byte(v[1+n : 1+n+16])).Unmap()
		port := binary.BigEndian.Uint16(v[1+n+16:])
		es = append(es, linkAddr{name, netip.AddrPortFrom(a, port)})
		v = v[1+n+18:]
	}
	return es, nil
}
