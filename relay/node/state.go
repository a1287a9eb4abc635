package node

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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
	StoreFile       = "pushrelay.db"
	EndpointKeyFile = "endpoint.key"
	WakeKeyFile     = "wake.key"
	SalvagedSuffix  = ".salvaged"
)

// FileState is what a state file looks like before it is read.
type FileState int

const (
	FileMissing FileState = iota
	FileEmpty             // 0 bytes: a file cut short by a crash, or truncated
	FilePresent
)

func (s FileState) String() string {
	return [...]string{"missing", "empty (0 bytes)", "present"}[s]
}

// StateOf tells what the state file at path looks like.
func StateOf(path string) (FileState, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return FileMissing, nil
	case err != nil:
		return 0, err
	case fi.Size() == 0:
		return FileEmpty, nil
	}
	return FilePresent, nil
}

// openState opens the data dir's store and keys for the daemon: keys
// without a store, or a store that holds devices without its keys, are
// refused with one line; a damaged store is refused with one line naming
// the recovery steps. A new data dir gets all three files (the store
// first, so a crash before the keys are written leaves a store with no
// device, for which the next start makes them).
func openState(cfg *Config, reg *metrics.Registry, log *slog.Logger) (*store.Store, *token.Codec, []byte, error) {
	dbState, err := StateOf(cfg.dataPath(StoreFile))
	if err != nil {
		return nil, nil, nil, err
	}
	if dbState != FilePresent {
		var keys []string
		for _, name := range []string{EndpointKeyFile, WakeKeyFile} {
			if st, err := StateOf(cfg.dataPath(name)); err != nil || st != FileMissing {
				keys = append(keys, name)
			}
		}
		verb := "exists"
		if len(keys) > 1 {
			verb = "exist"
		}
		switch {
		case len(keys) == 0:
		case cfg.NewSite != nil:
			// A member of a site provisioned with the site's keys (or
			// whose store was lost): the site's log fills the store.
			log.Info("starting a new store beside the site's keys: the site's log fills it", "path", cfg.dataPath(StoreFile), "was", dbState.String(), "keys", strings.Join(keys, ", "))
		case cfg.AllowNewStore:
			log.Warn("starting a new, empty store beside existing keys (allow_new_store): endpoints handed out before reach no device any more", "path", cfg.dataPath(StoreFile), "was", dbState.String(), "keys", strings.Join(keys, ", "))
		default:
			return nil, nil, nil, fmt.Errorf("data dir %s: %s %s but %s is %s: refusing to start on a new store, which would make every endpoint handed out invalid; restore %s from a backup, or, to start afresh with no devices, delete %s (or set allow_new_store where this is expected, as after an OpenWrt sysupgrade)",
				cfg.DataDir, strings.Join(keys, " and "), verb, StoreFile, dbState, StoreFile, strings.Join(keys, " and "))
		}
	}
	st, err := store.Open(store.Options{
		Path:               cfg.dataPath(StoreFile),
		VerifyAlways:       cfg.VerifyStore,
		CheckpointInterval: cfg.StoreCheckpointInterval,
		CheckpointBytes:    cfg.StoreCheckpointBytes,
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
		return nil, nil, nil, DamagedError(cfg.DataDir, err)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	stats, err := st.Stats()
	if err == nil {
		var tokens *token.Codec
		var secret []byte
		tokens, secret, err = LoadKeys(cfg.DataDir, stats.Devices+stats.Channels, log)
		if err == nil {
			return st, tokens, secret, nil
		}
	}
	return nil, nil, nil, errors.Join(err, st.Close())
}

// DamagedError is the one line a damaged store in dataDir is refused with.
func DamagedError(dataDir string, err error) error {
	path := filepath.Join(dataDir, StoreFile)
	return fmt.Errorf("%w; the relay will not serve it. Recover: stop here, then restore %s from a backup, or run `pushrelay salvage --data-dir %s` and move %s into its place, the old %s.wal aside (docs/operations.md, \"Damaged store\")",
		err, path, dataDir, path+SalvagedSuffix, StoreFile)
}

// LoadKeys reads endpoint.key and wake.key from dir. A missing or empty
// key is made only when the store holds no device and no channel (held is
// their sum); otherwise it is refused with one line.
func LoadKeys(dir string, held int64, log *slog.Logger) (*token.Codec, []byte, error) {
	for _, k := range []struct{ name, loses string }{
		{EndpointKeyFile, "every endpoint handed out would become invalid"},
		{WakeKeyFile, "every device's wake key would change"},
	} {
		path := filepath.Join(dir, k.name)
		st, err := StateOf(path)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case st == FilePresent:
		case held > 0:
			return nil, nil, fmt.Errorf("data dir %s: %s holds devices but %s is %s: refusing to make a new key (%s); restore %s from a backup, or, to start afresh with no devices, delete %s too",
				dir, StoreFile, k.name, st, k.loses, k.name, StoreFile)
		case st == FileEmpty:
			if err := os.Remove(path); err != nil {
				return nil, nil, err
			}
			fallthrough
		default:
			log.Info("creating key", "path", path)
		}
	}
	tokens, err := token.LoadOrCreate(filepath.Join(dir, EndpointKeyFile))
	if err != nil {
		return nil, nil, err
	}
	secret, err := kick.LoadOrCreateSecret(filepath.Join(dir, WakeKeyFile))
	if err != nil {
		return nil, nil, err
	}
	return tokens, secret, nil
}

func (c *Config) dataPath(name string) string { return filepath.Join(c.DataDir, name) }

// KeyPrints are the fingerprints of a data dir's endpoint.key and
// wake.key (KeyPrint), which a site's members compare: they must hold the
// same keys.
type KeyPrints struct{ Endpoint, Wake uint64 }

// KeyPrint is the fingerprint of the key file name holding contents: the
// first 8 bytes of the SHA-256 of a domain-separation prefix, the file's
// name and its contents. It tells two keys apart and says nothing of
// either.
func KeyPrint(name string, contents []byte) uint64 {
	h := sha256.New()
	h.Write([]byte("pushrelay key fingerprint v1\x00" + name + "\x00"))
	h.Write(contents)
	return binary.BigEndian.Uint64(h.Sum(nil)[:8])
}

// readKeyPrints reads the fingerprints of dir's keys (LoadKeys made them
// if they were missing).
func readKeyPrints(dir string) (KeyPrints, error) {
	var p KeyPrints
	for _, k := range []struct {
		name string
		dst  *uint64
	}{{EndpointKeyFile, &p.Endpoint}, {WakeKeyFile, &p.Wake}} {
		b, err := os.ReadFile(filepath.Join(dir, k.name))
		if err != nil {
			return p, fmt.Errorf("fingerprint of %s: %w", k.name, err)
		}
		*k.dst = KeyPrint(k.name, b)
	}
	return p, nil
}
