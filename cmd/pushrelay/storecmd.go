package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/relay/node"
	"github.com/pushrelay/pushrelay/relay/store"
)

// runCheckStore is `pushrelay check-store`: verify the stopped relay's
// store, its write-ahead log (and that its keys are there) without
// writing anything.
func runCheckStore(args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg, err := loadConfig("pushrelay check-store", args, getenv, stderr)
	if err != nil {
		return err
	}
	path := cfg.dataPath(node.StoreFile)
	state, err := node.StateOf(path)
	if err != nil {
		return err
	}
	if state != node.FilePresent {
		return fmt.Errorf("store %s is %s", path, state)
	}
	inUse := fmt.Errorf("data dir %s is in use by a running relay: stop it first (a running relay checks its store at start after an unclean stop)", cfg.DataDir)
	rep, err := store.Verify(path, time.Second)
	if errors.Is(err, store.ErrLocked) {
		return inUse
	}
	fmt.Fprintf(stdout, "store %s: %d devices, %d channels, %d messages read in %s\n",
		path, rep.Devices, rep.Channels, rep.Messages, rep.Took.Round(time.Millisecond))
	for _, p := range rep.Problems {
		fmt.Fprintf(stdout, "  damage: %s\n", p)
	}
	if rep.Dropped > 0 {
		fmt.Fprintf(stdout, "  and %d more\n", rep.Dropped)
	}
	if err != nil && !errors.Is(err, store.ErrDamaged) {
		return err
	}
	// The log's records are applied (and rolled back) only on a sound
	// file: bbolt must not write over damaged pages.
	fileErr := err
	wrep, werr := store.VerifyWAL(path, time.Second, fileErr == nil)
	if errors.Is(werr, store.ErrLocked) {
		return inUse
	}
	printWAL(stdout, wrep, "")
	if wrep.Pending > 0 && wrep.Devices+wrep.Channels > 0 {
		fmt.Fprintf(stdout, "  with them: %d devices, %d channels\n", wrep.Devices, wrep.Channels)
	}
	for _, p := range wrep.Problems {
		fmt.Fprintf(stdout, "  damage: %s\n", p)
	}
	for _, err := range []error{fileErr, werr} {
		if errors.Is(err, store.ErrDamaged) {
			return node.DamagedError(cfg.DataDir, err)
		}
		if err != nil {
			return err
		}
	}
	// Devices only in the log (a new relay killed before its first
	// checkpoint) need the keys too: the next start applies them first.
	held := rep.Devices + rep.Channels
	if wrep.Pending > 0 {
		held = max(held, int64(wrep.Devices+wrep.Channels))
	}
	for _, name := range []string{node.EndpointKeyFile, node.WakeKeyFile} {
		st, err := node.StateOf(cfg.dataPath(name))
		if err != nil {
			return err
		}
		if st != node.FilePresent && held > 0 {
			return fmt.Errorf("data dir %s: %s holds devices but %s is %s: restore it from a backup (the relay will not start without it)", cfg.DataDir, node.StoreFile, name, st)
		}
	}
	fmt.Fprintln(stdout, "store ok")
	return nil
}

// printWAL prints what was found in the store's write-ahead log, for
// check-store (what the next start does) or for salvage (what it carried
// into dst).
func printWAL(w io.Writer, r store.WALReport, salvagedInto string) {
	if !r.Present {
		fmt.Fprintf(w, "write-ahead log %s: none\n", r.Dir)
		return
	}
	applied, dropped, cut := "the next start applies them", "the next start drops them", "the next start cuts it"
	if salvagedInto != "" {
		applied, dropped, cut = "carried into "+salvagedInto, "not carried", "not carried"
	}
	switch {
	case r.Pending > 0:
		fmt.Fprintf(w, "write-ahead log %s: %d records (%d bytes) not yet in the file; %s\n", r.Dir, r.Pending, r.PendingBytes, applied)
	case r.Other == 0 && len(r.Problems) == 0:
		fmt.Fprintf(w, "write-ahead log %s: the file holds every record\n", r.Dir)
	}
	if r.Other > 0 {
		fmt.Fprintf(w, "write-ahead log %s: %d records written for another store file (one this file replaced); %s\n", r.Dir, r.Other, dropped)
	}
	if r.TornBytes > 0 {
		fmt.Fprintf(w, "write-ahead log %s: a torn append at its tail (%d bytes at offset %d of %s), one a crash interrupted before it was acknowledged; %s\n",
			r.Dir, r.TornBytes, r.TornOffset, filepath.Base(r.TornFile), cut)
	}
}

// runSalvage is `pushrelay salvage`: copy what can be read of a damaged
// store, and the acknowledged batches its write-ahead log holds, into
// pushrelay.db.salvaged beside it, for the operator to move into place.
func runSalvage(args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg, err := loadConfig("pushrelay salvage", args, getenv, stderr)
	if err != nil {
		return err
	}
	src := cfg.dataPath(node.StoreFile)
	dst := src + node.SalvagedSuffix
	rep, err := store.Salvage(src, dst, time.Second)
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("data dir %s is in use by a running relay: stop it first", cfg.DataDir)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists (an earlier salvage?): move it away first", dst)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "salvaged %s into %s in %s: %d devices, %d channels, %d messages\n",
		src, dst, rep.Took.Round(time.Millisecond), rep.Devices, rep.Channels, rep.Messages)
	fmt.Fprintf(stdout, "and %d origin keys, %d upstream identities, %d unregisters still to send upstream\n",
		rep.Origins, rep.UpstreamIDs, rep.Unregisters)
	fmt.Fprintf(stdout, "left behind: %d damaged key ranges, %d unreadable rows, %d messages whose channel was lost\n",
		rep.DamagedRegions, rep.BadRows, rep.Orphans)
	printWAL(stdout, rep.WAL, filepath.Base(dst))
	for _, p := range rep.WAL.Problems {
		fmt.Fprintf(stdout, "  not carried: %s\n", p)
	}
	// The damaged file and its log are kept together (salvage can be run
	// on them again); the salvaged file starts a log of its own.
	next := fmt.Sprintf("mv %s %s.damaged", src, src)
	if rep.WAL.Present {
		next += fmt.Sprintf(" && mv %s %s.damaged.wal", rep.WAL.Dir, src)
	}
	next += fmt.Sprintf(" && mv %s %s", dst, src)
	fmt.Fprintf(stdout, "next: %s, then start the relay (keep endpoint.key and wake.key)\n", next)
	return nil
}

// checkDataDirNoWrite is check-config's data dir check: what checkDataDir
// would find, without creating or writing anything.
func checkDataDirNoWrite(dir string) error {
	probe := dir
	for {
		fi, err := os.Stat(probe)
		if err == nil {
			if !fi.IsDir() {
				return cfgErr("data_dir %q: %s is not a directory", dir, probe)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return cfgErr("data_dir %q: %v", dir, errors.Unwrap(err))
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return cfgErr("data_dir %q: no existing parent", dir)
		}
		probe = parent // run would create it here
	}
	const wOK = 0x2 // access(2)'s W_OK
	if err := syscall.Access(probe, wOK|0x1); err != nil {
		return cfgErr("data_dir %q is not writable: %s: %v", dir, probe, err)
	}
	return nil
}
