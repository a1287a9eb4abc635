package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pushrelay/pushrelay/kick"
	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/token"
)

// The data dir's state files. The keys and the store belong together:
// endpoints handed out are sealed with endpoint.key and name channels in
// pushrelay.db, and every device's wake key derives from wake.key. So the
// relay makes keys only for a store that holds no device (a new one), and
// refuses to start on a store without its keys or keys without their
// store, rather than replace either silently.
const (
	storeFile       = "pushrelay.db"
	endpointKeyFile = "endpoint.key"
	wakeKeyFile     = "wake.key"
	salvagedSuffix  = ".salvaged"
)

// fileState is what a state file looks like before it is read.
type fileState int

const (
	fileMissing fileState = iota
	fileEmpty             // 0 bytes: a file cut short by a crash, or truncated
	filePresent
)

func (s fileState) String() string {
	return [...]string{"missing", "empty (0 bytes)", "present"}[s]
}

func stateOf(path string) (fileState, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileMissing, nil
	case err != nil:
		return 0, err
	case fi.Size() == 0:
		return fileEmpty, nil
	}
	return filePresent, nil
}

// openState opens the data dir's store and keys for the daemon: keys
// without a store, or a store that holds devices without its keys, are
// refused with one line; a damaged store is refused with one line naming
// the recovery steps. A new data dir gets all three files (the store
// first, so a crash before the keys are written leaves a store with no
// device, for which the next start makes them).
func openState(cfg *Config, reg *metrics.Registry, log *slog.Logger) (*store.Store, *token.Codec, []byte, error) {
	dbState, err := stateOf(cfg.dataPath(storeFile))
	if err != nil {
		return nil, nil, nil, err
	}
	if dbState != filePresent {
		var keys []string
		for _, name := range []string{endpointKeyFile, wakeKeyFile} {
			if st, err := stateOf(cfg.dataPath(name)); err != nil || st != fileMissing {
				keys = append(keys, name)
			}
		}
		verb := "exists"
		if len(keys) > 1 {
			verb = "exist"
		}
		switch {
		case len(keys) == 0:
		case cfg.AllowNewStore:
			log.Warn("starting a new, empty store beside existing keys (allow_new_store): endpoints handed out before reach no device any more", "path", cfg.dataPath(storeFile), "was", dbState.String(), "keys", strings.Join(keys, ", "))
		default:
			return nil, nil, nil, fmt.Errorf("data dir %s: %s %s but %s is %s: refusing to start on a new store, which would make every endpoint handed out invalid; restore %s from a backup, or, to start afresh with no devices, delete %s (or set allow_new_store where this is expected, as after an OpenWrt sysupgrade)",
				cfg.DataDir, strings.Join(keys, " and "), verb, storeFile, dbState, storeFile, strings.Join(keys, " and "))
		}
	}
	st, err := store.Open(store.Options{
		Path:               cfg.dataPath(storeFile),
		MaxMessagesPerUAID: cfg.MaxMessagesPerUAID,
		MaxChannelsPerUAID: cfg.MaxChannelsPerUAID,
		SweepInterval:      cfg.SweepInterval,
		Metrics:            reg,
		Logger:             log.With("component", "store"),
	})
	if errors.Is(err, store.ErrLocked) {
		return nil, nil, nil, fmt.Errorf("data dir %s is in use by another pushrelay process", cfg.DataDir)
	}
	if errors.Is(err, store.ErrDamaged) {
		return nil, nil, nil, damagedError(cfg, err)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	stats, err := st.Stats()
	if err == nil {
		var tokens *token.Codec
		var secret []byte
		tokens, secret, err = loadKeys(cfg.DataDir, stats.Devices+stats.Channels, log)
		if err == nil {
			return st, tokens, secret, nil
		}
	}
	return nil, nil, nil, errors.Join(err, st.Close())
}

// damagedError is the one line a damaged store is refused with.
func damagedError(cfg *Config, err error) error {
	path := cfg.dataPath(storeFile)
	return fmt.Errorf("%w; the relay will not serve it. Recover: stop here, then restore %s from a backup, or run `pushrelay salvage --data-dir %s` and move %s into its place (docs/operations.md, \"Damaged store\")",
		err, path, cfg.DataDir, path+salvagedSuffix)
}

// loadKeys reads endpoint.key and wake.key from dir. A missing or empty
// key is made only when the store holds no device and no channel (held is
// their sum); otherwise it is refused with one line.
func loadKeys(dir string, held int64, log *slog.Logger) (*token.Codec, []byte, error) {
	for _, k := range []struct{ name, loses string }{
		{endpointKeyFile, "every endpoint handed out would become invalid"},
		{wakeKeyFile, "every device's wake key would change"},
	} {
		path := filepath.Join(dir, k.name)
		st, err := stateOf(path)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case st == filePresent:
		case held > 0:
			return nil, nil, fmt.Errorf("data dir %s: %s holds devices but %s is %s: refusing to make a new key (%s); restore %s from a backup, or, to start afresh with no devices, delete %s too",
				dir, storeFile, k.name, st, k.loses, k.name, storeFile)
		case st == fileEmpty:
			if err := os.Remove(path); err != nil {
				return nil, nil, err
			}
			fallthrough
		default:
			log.Info("creating key", "path", path)
		}
	}
	tokens, err := token.LoadOrCreate(filepath.Join(dir, endpointKeyFile))
	if err != nil {
		return nil, nil, err
	}
	secret, err := kick.LoadOrCreateSecret(filepath.Join(dir, wakeKeyFile))
	if err != nil {
		return nil, nil, err
	}
	return tokens, secret, nil
}

// runCheckStore is `pushrelay check-store`: verify the stopped relay's
// store (and that its keys are there) without writing anything.
func runCheckStore(args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg, err := loadConfig("pushrelay check-store", args, getenv, stderr)
	if err != nil {
		return err
	}
	path := cfg.dataPath(storeFile)
	state, err := stateOf(path)
	if err != nil {
		return err
	}
	if state != filePresent {
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
		return damagedError(cfg, err)
	}
	if err != nil {
		return err
	}
	for _, name := range []string{endpointKeyFile, wakeKeyFile} {
		st, err := stateOf(cfg.dataPath(name))
		if err != nil {
			return err
		}
		if st != filePresent && rep.Devices+rep.Channels > 0 {
			return fmt.Errorf("data dir %s: %s holds devices but %s is %s: restore it from a backup (the relay will not start without it)", cfg.DataDir, storeFile, name, st)
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
	src := cfg.dataPath(storeFile)
	dst := src + salvagedSuffix
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
