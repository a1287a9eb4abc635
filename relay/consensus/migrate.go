package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pushrelay/pushrelay/relay/metrics"
	"github.com/pushrelay/pushrelay/relay/store"
	"github.com/pushrelay/pushrelay/relay/wal"
)

// migratedSuffix is added to raft.db's name once its content is in LogDir.
const migratedSuffix = ".migrated"

// HasState reports whether dir holds a raft log: LogDir, or a raft.db
// that New will migrate (relay/site restarts from it rather than forming
// or joining a site).
func HasState(dir string) bool {
	if fi, err := os.Stat(filepath.Join(dir, store.LogFile)); err == nil && fi.Size() > 0 {
		return true
	}
	fi, err := os.Stat(filepath.Join(dir, LogDir))
	return err == nil && fi.IsDir()
}

// openLog opens the raft log in dir/LogDir and its stable values,
// migrating dir/raft.db (relay/store's Log, the format of this package
// on hashicorp/raft before relay/wal) first if there is one.
func openLog(dir string, lg *slog.Logger, reg *metrics.Registry) (*wal.Log, *stableFile, error) {
	old := filepath.Join(dir, store.LogFile)
	if _, err := os.Stat(old); err == nil {
		if err := migrate(dir, old, lg); err != nil {
			return nil, nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	logDir := filepath.Join(dir, LogDir)
	w, err := wal.Open(logDir, wal.Options{Logger: lg, Metrics: reg, MetricsPrefix: "pushrelay_consensus_wal"})
	if err != nil {
		return nil, nil, err
	}
	st, err := openStable(filepath.Join(logDir, StableFile))
	if err != nil {
		return nil, nil, errors.Join(err, w.Close())
	}
	return w, st, nil
}

// migrate copies raft.db's entries and values into LogDir, then renames
// it raft.db.migrated. A LogDir already there is what a migration cut by
// a crash left (raft.db is renamed last): it is written anew. A raft.db
// of the etcd raft engine is refused (store.ErrLogFormat), naming it.
func migrate(dir, old string, lg *slog.Logger) (err error) {
	rl, err := store.OpenLog(old)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, rl.Close()) }()
	logDir := filepath.Join(dir, LogDir)
	if err := os.RemoveAll(logDir); err != nil {
		return err
	}
	w, err := wal.Open(logDir, wal.Options{Logger: lg})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()

	first, err := rl.FirstIndex()
	if err != nil {
		return err
	}
	last, err := rl.LastIndex()
	if err != nil {
		return err
	}
	// raft.db may hold a gap (entries before an installed snapshot, then
	// those after it): what precedes the last gap is covered by the
	// snapshot, and the new log has no gaps. Keep the run ending at last.
	start := last
	for start > first {
		if _, err := rl.Entry(start - 1); errors.Is(err, store.ErrLogNotFound) {
			break
		} else if err != nil {
			return err
		}
		start--
	}
	var batch [][]byte
	flush := func(next uint64) error {
		if len(batch) == 0 {
			return nil
		}
		err := w.Append(next-uint64(len(batch)), batch...)
		batch = batch[:0]
		return err
	}
	for i := start; last > 0 && i <= last; i++ {
		b, err := rl.Entry(i)
		if err != nil {
			return fmt.Errorf("migrate %s: entry %d: %w", old, i, err)
		}
		var l raft.Log
		if err := decodeLogV0(b, &l); err != nil {
			return fmt.Errorf("migrate %s: entry %d: %w", old, i, err)
		}
		batch = append(batch, encodeLog(&l))
		if len(batch) == 1024 {
			if err := flush(i + 1); err != nil {
				return err
			}
		}
	}
	if err := flush(last + 1); err != nil {
		return err
	}
	vals := map[string][]byte{}
	for _, k := range []string{stableKey(raftKeyCurrentTerm), stableKey(raftKeyLastVoteTerm), stableKey(raftKeyLastVoteCand), keySnapshot} {
		v, err := rl.Value([]byte(k))
		if err != nil {
			return err
		}
		if v != nil {
			vals[k] = v
		}
	}
	st, err := openStable(filepath.Join(logDir, StableFile))
	if err != nil {
		return err
	}
	if err := st.setAll(vals); err != nil {
		return err
	}
	if err := os.Rename(old, old+migratedSuffix); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	n := uint64(0)
	if last > 0 {
		n = last - start + 1
	}
	lg.Info("consensus: moved the raft log from raft.db to "+LogDir+"/ (relay/wal)",
		"entries", n, "first", start, "last", last, "left_before_a_gap", start-first, "old", old+migratedSuffix)
	return nil
}

// raft's stable keys (hashicorp/raft's keyCurrentTerm, ...).
var (
	raftKeyCurrentTerm  = []byte("CurrentTerm")
	raftKeyLastVoteTerm = []byte("LastVoteTerm")
	raftKeyLastVoteCand = []byte("LastVoteCand")
)

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// decodeLogV0 decodes an entry as raft.db kept it: type(1) | term(8) |
// appended at(8, unix ns) | extensions length(uvarint) | extensions |
// data.
func decodeLogV0(b []byte, out *raft.Log) error {
	if len(b) < 17 {
		return errors.New("short entry")
	}
	out.Type = raft.LogType(b[0])
	out.Term = binary.BigEndian.Uint64(b[1:])
	out.AppendedAt = time.Time{}
	if at := int64(binary.BigEndian.Uint64(b[9:])); at != 0 {
		out.AppendedAt = time.Unix(0, at)
	}
	n, k := binary.Uvarint(b[17:])
	if k <= 0 || n > uint64(len(b)-17-k) {
		return errors.New("bad extensions length")
	}
	rest := b[17+k:]
	out.Extensions = nil
	if n > 0 {
		out.Extensions = rest[:n]
	}
	out.Data = rest[n:]
	return nil
}
