package consensus

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"

	"github.com/hashicorp/go-hclog"
)

// hclogger is go-hclog's Logger (what hashicorp/raft logs to) on slog:
// raft's Trace and Debug at Debug, its Info, Warn and Error at theirs,
// its key-value pairs as slog's attributes.
type hclogger struct {
	l    *slog.Logger
	name string
	args []any
}

var _ hclog.Logger = (*hclogger)(nil)

func newHCLogger(l *slog.Logger) *hclogger { return &hclogger{l: l} }

func (h *hclogger) level(lv hclog.Level) slog.Level {
	switch {
	case lv <= hclog.Debug:
		return slog.LevelDebug
	case lv == hclog.Info:
		return slog.LevelInfo
	case lv == hclog.Warn:
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (h *hclogger) Log(lv hclog.Level, msg string, args ...any) {
	level := h.level(lv)
	// A connection closed under raft's reader by a stop is no error.
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, net.ErrClosed) {
			level = slog.LevelDebug
		}
	}
	h.l.Log(context.Background(), level, "raft: "+msg, args...)
}
func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogger) enabled(lv hclog.Level) bool {
	return h.l.Enabled(context.Background(), h.level(lv))
}
func (h *hclogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogger) ImpliedArgs() []any { return h.args }
func (h *hclogger) With(args ...any) hclog.Logger {
	return &hclogger{l: h.l.With(args...), name: h.name, args: append(append([]any(nil), h.args...), args...)}
}
func (h *hclogger) Name() string { return h.name }
func (h *hclogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}
func (h *hclogger) ResetNamed(name string) hclog.Logger {
	return &hclogger{l: h.l, name: name, args: h.args}
}

// SetLevel does nothing: slog's handler decides.
func (h *hclogger) SetLevel(hclog.Level) {}
func (h *hclogger) GetLevel() hclog.Level {
	for _, lv := range []hclog.Level{hclog.Trace, hclog.Info, hclog.Warn} {
		if h.enabled(lv) {
			return lv
		}
	}
	return hclog.Error
}

func (h *hclogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.l.Handler(), slog.LevelInfo)
}
func (h *hclogger) StandardWriter(o *hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(o).Writer()
}
