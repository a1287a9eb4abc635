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
// store (and that its keys are there) without writing anything.
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
	rep, err := store.Verify(path, time.Second)
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("data dir %s is in use by a running relay: stop it first (a running relay checks its store at start after an unclean stop)", cfg.DataDir)
	}
	fmt.Fprintf(stdout, "store %s: %d devices, %d channels, %d messages read in %s\n",
		path, rep.Devices, rep.Channels, rep.Messages, rep.Took.Round(time.Millisecond))
	for _, p := range rep.Problems {
		fmt.Fprintf(stdout, "  damage: %s\n", p)
	}
	if rep.Dropped > 0 {
		fmt.Fprintf(stdout, "  and %d more\n", rep.Dropped)
	}
	if errors.Is(err, store.ErrDamaged) {
		return node.DamagedError(cfg.DataDir, err)
	}
	if err != nil {
		return err
	}
	for _, name := range []string{node.EndpointKeyFile, node.WakeKeyFile} {
		st, err := node.StateOf(cfg.dataPath(name))
		if err != nil {
			return err
		}
		if st != node.FilePresent && rep.Devices+rep.Channels > 0 {
			return fmt.Errorf("data dir %s: %s holds devices but %s is %s: restore it from a backup (the relay will not start without it)", cfg.DataDir, node.StoreFile, name, st)
		}
	}
	fmt.Fprintln(stdout, "store ok")
	return nil
}

// runSalvage is `pushrelay salvage`: copy what can be read of a damaged
// store into pushrelay.db.salvaged beside it, for the operator to move
// into place.
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
	fmt.Fprintf(stdout, "next: mv %s %s.damaged && mv %s %s, then start the relay (keep endpoint.key and wake.key)\n", src, src, dst, src)
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
