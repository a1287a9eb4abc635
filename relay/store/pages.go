package store

import (
	"encoding/binary"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// bbolt's page layout, as its file format defines it (native byte
// order): a 16-byte header (id 8, flags 2, count 2, overflow 4), then
// count 16-byte elements whose key (and value) sit pos bytes after the
// element itself. A branch element is pos 4, ksize 4, child page id 8; a
// leaf element flags 4, pos 4, ksize 4, vsize 4, and a leaf element
// flagged as a bucket holds the bucket's root page id and sequence, then,
// when the root id is 0, the bucket's own (inline) leaf page.
//
// Verify and Salvage read the trees this way, with plain reads and a
// visited set, because bbolt itself follows ids and offsets through
// unsafe pointers: on a damaged file it can fault, or loop, where no
// recover reaches.
const (
	pageHeaderSize = 16
	pageElemSize   = 16
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01
	inBucketSize   = 16
)

// geometry is what bbolt tells of a file: page size, page count (the
// high-water mark) and the root page of each top-level bucket (0 for an
// inline bucket).
type geometry struct {
	pageSize int
	hwm      uint64
	names    []string
	roots    map[string]uint64
}

func readGeometry(db *bolt.DB) (geometry, error) {
	g := geometry{pageSize: db.Info().PageSize, roots: map[string]uint64{}}
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			g.hwm = uint64(tx.Size()) / uint64(g.pageSize)
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				g.names = append(g.names, string(name))
				g.roots[string(name)] = uint64(b.Root())
				return nil
			})
		})
	})
	return g, err
}

// pageFile reads a bbolt file's pages.
type pageFile struct {
	f        *os.File
	size     int64
	pageSize int
	hwm      uint64
	seen     []byte // a bit per page: reached by walk
	buf      []byte
}

func openPageFile(path string, g geometry) (*pageFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &pageFile{f: f, size: fi.Size(), pageSize: g.pageSize, hwm: g.hwm,
		seen: make([]byte, (g.hwm+7)/8), buf: make([]byte, g.pageSize)}, nil
}

func (pf *pageFile) close() { pf.f.Close() }

func (pf *pageFile) reached(id uint64) bool { return pf.seen[id/8]&(1<<(id%8)) != 0 }
func (pf *pageFile) reach(id uint64)        { pf.seen[id/8] |= 1 << (id % 8) }

// read returns page id whole (with its overflow pages) and its flags, or
// what is wrong with it. The slice is valid until the next read.
func (pf *pageFile) read(id uint64) ([]byte, uint16, string, error) {
	if id < 2 || id >= pf.hwm {
		return nil, 0, fmt.Sprintf("page id outside 2..%d", pf.hwm-1), nil
	}
	off := int64(id) * int64(pf.pageSize)
	if off+int64(pf.pageSize) > pf.size {
		return nil, 0, "past the end of the file", nil
	}
	p := pf.buf
	if _, err := pf.f.ReadAt(p, off); err != nil {
		return nil, 0, "", err
	}
	ne := binary.NativeEndian
	flags := ne.Uint16(p[8:])
	switch {
	case ne.Uint64(p) != id:
		return nil, 0, fmt.Sprintf("header names page %d", ne.Uint64(p)), nil
	case flags != branchPageFlag && flags != leafPageFlag:
		return nil, 0, fmt.Sprintf("not a branch or leaf page (flags %#x)", flags), nil
	}
	overflow := uint64(ne.Uint32(p[12:]))
	if id+overflow >= pf.hwm || off+int64(1+overflow)*int64(pf.pageSize) > pf.size {
		return nil, 0, fmt.Sprintf("overflow %d runs past the last page", overflow), nil
	}
	for o := id + 1; o <= id+overflow; o++ {
		if pf.reached(o) {
			return nil, 0, fmt.Sprintf("overflow page %d reached twice", o), nil
		}
	}
	if overflow > 0 {
		p = make([]byte, (1+overflow)*uint64(pf.pageSize))
		if _, err := pf.f.ReadAt(p, off); err != nil {
			return nil, 0, "", err
		}
	}
	if msg := checkPageBounds(p, flags, pf.hwm); msg != "" {
		return nil, 0, msg, nil
	}
	for o := id + 1; o <= id+overflow; o++ {
		pf.reach(o)
	}
	return p, flags, "", nil
}

// walk visits the tree rooted at root depth first, in key order, reaching
// each page at most once: leaf gets each leaf element (k and v are valid
// during the call only; flags marks nested buckets), bad each page that
// cannot be used (its subtree is skipped). A page reached twice is bad
// the second time: the tree loops or shares a page. leaf may be nil.
func (pf *pageFile) walk(root uint64, leaf func(k, v []byte, flags uint32) error, bad func(id uint64, msg string)) error {
	ne := binary.NativeEndian
	stack := []uint64{root}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if id < pf.hwm && pf.reached(id) {
			bad(id, "reached twice (the tree loops or shares a page)")
			continue
		}
		p, flags, msg, err := pf.read(id)
		if err != nil {
			return err
		}
		if msg != "" {
			bad(id, msg)
			continue
		}
		pf.reach(id)
		count := int(ne.Uint16(p[10:]))
		if flags == branchPageFlag {
			for i := count - 1; i >= 0; i-- {
				e := p[pageHeaderSize+i*pageElemSize:]
				stack = append(stack, ne.Uint64(e[8:]))
			}
			continue
		}
		for i := range count {
			off := pageHeaderSize + i*pageElemSize
			e := p[off:]
			eflags, pos, ksize, vsize := ne.Uint32(e), int(ne.Uint32(e[4:])), int(ne.Uint32(e[8:])), int(ne.Uint32(e[12:]))
			k := p[off+pos : off+pos+ksize]
			v := p[off+pos+ksize : off+pos+ksize+vsize]
			if eflags&bucketLeafFlag != 0 {
				if sub := ne.Uint64(v); sub != 0 {
					stack = append(stack, sub) // a nested bucket's tree
				}
			}
			if leaf != nil {
				if err := leaf(k, v, eflags); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// checkPageBounds checks one page (or an inline bucket page) held whole
// in p: every element's key and value inside it, every page id it names
// inside the file. It returns what is wrong, or "".
func checkPageBounds(p []byte, flags uint16, hwm uint64) string {
	ne := binary.NativeEndian
	if len(p) < pageHeaderSize {
		return "shorter than a page header"
	}
	count := int(ne.Uint16(p[10:]))
	if pageHeaderSize+count*pageElemSize > len(p) {
		return fmt.Sprintf("%d elements do not fit", count)
	}
	for i := range count {
		off := pageHeaderSize + i*pageElemSize
		e := p[off : off+pageElemSize]
		if flags == branchPageFlag {
			pos, ksize, child := uint64(ne.Uint32(e)), uint64(ne.Uint32(e[4:])), ne.Uint64(e[8:])
			if uint64(off)+pos+ksize > uint64(len(p)) {
				return fmt.Sprintf("branch element %d lies outside the page", i)
			}
			if child < 2 || child >= hwm {
				return fmt.Sprintf("branch element %d names page %d, outside 2..%d", i, child, hwm-1)
			}
			continue
		}
		eflags, pos, ksize, vsize := ne.Uint32(e), uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		end := uint64(off) + pos + ksize + vsize
		if end > uint64(len(p)) {
			return fmt.Sprintf("leaf element %d lies outside the page", i)
		}
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		v := p[uint64(off)+pos+ksize : end]
		if len(v) < inBucketSize {
			return fmt.Sprintf("bucket %d: header cut short", i)
		}
		root := ne.Uint64(v)
		switch {
		case root == 0:
			if msg := checkPageBounds(v[inBucketSize:], leafPageFlag, hwm); msg != "" {
				return fmt.Sprintf("inline bucket %d: %s", i, msg)
			}
		case root < 2 || root >= hwm:
			return fmt.Sprintf("bucket %d: root page %d outside 2..%d", i, root, hwm-1)
		}
	}
	return ""
}
