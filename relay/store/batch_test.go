package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pushrelay/pushrelay/relay/metrics"
)

// results summarizes a batch's outcomes as "data:queue" for stored
// messages and the error otherwise.
func results(ms []Message, rs []AppendResult) string {
	var b []string
	for i, r := range rs {
		if r.Err != nil {
			b = append(b, fmt.Sprintf("%s:%v", ms[i].Data, r.Err))
			continue
		}
		b = append(b, fmt.Sprintf("%s:%d", r.Message.Data, r.Queue))
	}
	return strings.Join(b, " ")
}

func TestAppendBatchOneCommitAndOutcomes(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg})
	u1, u2 := uaid(1), uaid(2)
	mustRegister(t, s, u1, chid(1))
	mustRegister(t, s, u2, chid(1))
	mustAppend(t, s, msg(u2, chid(1), "old"))

	zero := msg(u1, chid(1), "zero")
	zero.TTL = 0
	long := msg(u1, chid(1), "long")
	long.Topic = strings.Repeat("t", MaxTopicLen+1)
	batch := []Message{
		msg(u1, chid(1), "a"),
		msg(u1, chid(9), "nochan"),
		zero,
		msg(u2, chid(1), "b"),
		long,
		msg(u1, chid(1), "c"),
	}
	before := s.nCommits.Load()
	rs, err := s.AppendBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.nCommits.Load() - before; n != 1 {
		t.Errorf("batch took %d commits, want 1", n)
	}
	if len(rs) != len(batch) {
		t.Fatalf("%d results for %d messages", len(rs), len(batch))
	}
	for i, want := range []error{nil, ErrNoChannel, ErrZeroTTL, nil, ErrBadMessage, nil} {
		if !errors.Is(rs[i].Err, want) || (want == nil) != (rs[i].Err == nil) {
			t.Errorf("message %d: err %v, want %v", i, rs[i].Err, want)
		}
	}
	if rs[0].Queue != 1 || rs[3].Queue != 2 || rs[5].Queue != 2 {
		t.Errorf("queue sizes: %s", results(batch, rs))
	}
	if !(rs[0].Message.Seq < rs[3].Message.Seq && rs[3].Message.Seq < rs[5].Message.Seq) {
		t.Errorf("seqs not in batch order: %d %d %d", rs[0].Message.Seq, rs[3].Message.Seq, rs[5].Message.Seq)
	}
	if got := datas(mustMessages(t, s, u1)); got != "a,c" {
		t.Errorf("u1 messages: %s", got)
	}
	if got := datas(mustMessages(t, s, u2)); got != "old,b" {
		t.Errorf("u2 messages: %s", got)
	}
	// Stored messages read back with the seqs the batch reported.
	got := mustMessages(t, s, u1)
	if got[0].Seq != rs[0].Message.Seq || got[1].Seq != rs[5].Message.Seq {
		t.Errorf("stored seqs %d %d, reported %d %d", got[0].Seq, got[1].Seq, rs[0].Message.Seq, rs[5].Message.Seq)
	}
	checkStats(t, s, Stats{Devices: 2, Channels: 2, Waiting: 4})
	if v := metricValue(t, reg, "pushrelay_store_messages_stored_total"); v != 4 {
		t.Errorf("stored metric %v, want 4", v)
	}
}

func TestAppendBatchCapAndTopic(t *testing.T) {
	ctx := context.Background()
	reg := metrics.NewRegistry()
	s := openTest(t, Options{Metrics: reg, MaxMessagesPerUAID: 3})
	u := uaid(1)
	mustRegister(t, s, u, chid(1))
	mustAppend(t, s, msg(u, chid(1), "m0"))
	withTopic := func(topic, data string) Message {
		m := msg(u, chid(1), data)
		m.Topic = topic
		return m
	}
	batch := []Message{
		msg(u, chid(1), "m1"),
		withTopic("t", "t1"),
		msg(u, chid(1), "m2"), // cap 3: drops m0
		withTopic("t", "t2"),  // replaces t1 of this batch
		msg(u, chid(1), "m3"), // drops m1
	}
	reports := make(chan []Message, 10)
	s.OnStored(func(ms []Message) { reports <- ms })
	rs, err := s.AppendBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := results(batch, rs), "m1:2 t1:3 m2:3 t2:3 m3:3"; got != want {
		t.Errorf("results %s, want %s", got, want)
	}
	if got := datas(mustMessages(t, s, u)); got != "m2,t2,m3" {
		t.Errorf("messages: %s", got)
	}
	checkDevice(t, s, u, 3, 1)
	if v := deletedMetric(t, reg, "dropped_cap"); v != 2 {
		t.Errorf("dropped_cap %v, want 2", v)
	}
	if v := deletedMetric(t, reg, "replaced_topic"); v != 1 {
		t.Errorf("replaced_topic %v, want 1", v)
	}
	// OnStored reports what the one commit left stored, in seq order.
	var report []Message
	select {
	case report = <-reports:
	case <-time.After(5 * time.Second):
		t.Fatal("no OnStored report")
	}
	s.OnStored(nil)
	if datas(report) != "m2,t2,m3" || !slices.IsSortedFunc(report, func(a, b Message) int { return cmp.Compare(a.Seq, b.Seq) }) {
		t.Errorf("OnStored report: %v", report)
	}
	select {
	case more := <-reports:
		t.Errorf("a second report: %v", more)
	default:
	}
}

func TestAppendBatchAllRejectedAndClosed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	zero := msg(uaid(1), chid(1), "z")
	zero.TTL = 0
	before := s.nCommits.Load()
	rs, err := s.AppendBatch(ctx, []Message{zero})
	if err != nil || !errors.Is(rs[0].Err, ErrZeroTTL) {
		t.Fatalf("all rejected: %v %v", rs, err)
	}
	if s.nCommits.Load() != before {
		t.Errorf("an all-rejected batch committed")
	}
	// Unknown channels are only known inside the transaction: one commit,
	// every message rejected, nothing stored.
	rs, err = s.AppendBatch(ctx, []Message{msg(uaid(1), chid(1), "a"), msg(uaid(2), chid(1), "b")})
	if err != nil || !errors.Is(rs[0].Err, ErrNoChannel) || !errors.Is(rs[1].Err, ErrNoChannel) {
		t.Fatalf("unknown channels: %v %v", rs, err)
	}
	checkStats(t, s, Stats{})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	mustRegister(t, s, uaid(1), chid(1))
	if _, err := s.AppendBatch(cctx, []Message{msg(uaid(1), chid(1), "a")}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	s.Close()
	if _, err := s.AppendBatch(ctx, []Message{msg(uaid(1), chid(1), "a")}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed: %v", err)
	}
}
