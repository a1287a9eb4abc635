package consensus

import (
	"fmt"
	"log/slog"
)

// raftLogger is raft.Logger on slog: raft's Info (elections, leader
// changes, snapshots) at Info, its Debug at Debug.
type raftLogger struct{ l *slog.Logger }

func (r *raftLogger) Debug(v ...any)              { r.l.Debug("raft: " + fmt.Sprint(v...)) }
func (r *raftLogger) Debugf(f string, v ...any)   { r.l.Debug("raft: " + fmt.Sprintf(f, v...)) }
func (r *raftLogger) Info(v ...any)               { r.l.Info("raft: " + fmt.Sprint(v...)) }
func (r *raftLogger) Infof(f string, v ...any)    { r.l.Info("raft: " + fmt.Sprintf(f, v...)) }
func (r *raftLogger) Warning(v ...any)            { r.l.Warn("raft: " + fmt.Sprint(v...)) }
func (r *raftLogger) Warningf(f string, v ...any) { r.l.Warn("raft: " + fmt.Sprintf(f, v...)) }
func (r *raftLogger) Error(v ...any)              { r.l.Error("raft: " + fmt.Sprint(v...)) }
func (r *raftLogger) Errorf(f string, v ...any)   { r.l.Error("raft: " + fmt.Sprintf(f, v...)) }
func (r *raftLogger) Fatal(v ...any)              { r.Panic(v...) }
func (r *raftLogger) Fatalf(f string, v ...any)   { r.Panicf(f, v...) }
func (r *raftLogger) Panic(v ...any)              { r.l.Error("raft: " + fmt.Sprint(v...)); panic(fmt.Sprint(v...)) }
func (r *raftLogger) Panicf(f string, v ...any)   { r.Panic(fmt.Sprintf(f, v...)) }
