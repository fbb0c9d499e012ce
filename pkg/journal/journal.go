// Package journal is the record every engine writes before it acts and after: Append writes a
// change, the event that says what changed and its sequence number in one transaction, and only
// then emits the event, so what an operator sees has always been recorded. Read replays a
// stream in order, for a view that attaches late (resume, --follow, the dashboard) and for a
// killed engine that must find what it was doing.
//
// A stream is a rolling run (its id), a standalone maintenance action, and later a host's HA
// life or a fence. Events of a stream are keyed "<stream>/<seq, 8 digits>" in the journal bucket;
// the streams bucket keeps each stream's kind, subject, last sequence number and whether it
// ended, which is what retention reads.
package journal

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Kind is what a stream records.
type Kind string

// Stream kinds.
const (
	Rolling     Kind = "rolling"
	Maintenance Kind = "maintenance"
	HA          Kind = "ha"
	Fence       Kind = "fence"
)

// Stream is what the journal keeps about one stream besides its events.
type Stream struct {
	ID      string    `json:"id"`
	Kind    Kind      `json:"kind"`
	Subject string    `json:"subject,omitempty"`
	Seq     int       `json:"seq"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Ended: the stream's work is over; retention may drop it.
	Ended bool `json:"ended,omitempty"`
	// Record is the bucket holding the stream's own record under its id (a run's), dropped with
	// the stream.
	Record string `json:"record,omitempty"`
}

// Record is one journaled event and its place in its stream.
type Record struct {
	Seq   int
	Event events.Event
}

// Journal appends to streams in a store and emits what it wrote.
type Journal struct {
	DB    state.DB
	Clock clock.Clock
	// Sink receives each event once its transaction committed; nil drops them.
	Sink events.Sink
}

// Key is the journal key of event seq of stream.
func Key(stream string, seq int) string { return fmt.Sprintf("%s/%08d", stream, seq) }

// Open starts stream (kind, subject), in tx, if it does not exist yet.
func Open(tx state.Tx, id string, kind Kind, subject, record string, now time.Time) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := tx.Get(state.BucketStreams, id); err == nil {
		return nil
	} else if !state.IsNotFound(err) {
		return err
	}
	seq, err := lastSeq(tx, id)
	if err != nil {
		return err
	}
	return state.PutJSON(tx, state.BucketStreams, id, Stream{ID: id, Kind: kind, Subject: subject, Record: record, Seq: seq, Created: now.UTC(), Updated: now.UTC()})
}

func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("journal: bad stream id %q", id)
	}
	return nil
}

// lastSeq finds the sequence of the newest event of stream by seeking (streams written before
// the streams bucket existed have no record there).
func lastSeq(tx state.Tx, id string) (int, error) {
	k, _, ok, err := tx.Last(state.BucketJournal, id+"/")
	if err != nil || !ok {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscanf(k[len(id)+1:], "%d", &n); err != nil {
		return 0, fmt.Errorf("journal key %q: %w", k, err)
	}
	return n, nil
}

// GetStream reads the record of stream id.
func GetStream(tx state.Tx, id string) (Stream, error) {
	var s Stream
	err := state.GetJSON(tx, state.BucketStreams, id, &s)
	if state.IsNotFound(err) {
		// A stream of an earlier kvmctl: only its events exist.
		seq, serr := lastSeq(tx, id)
		if serr != nil || seq == 0 {
			return s, err
		}
		return Stream{ID: id, Kind: Rolling, Record: state.BucketRuns, Seq: seq}, nil
	}
	return s, err
}

// AppendTx writes e as the next event of stream, in tx, and returns it as it was written (time,
// stream and sequence set). The caller emits it once tx has committed (Emit).
func AppendTx(tx state.Tx, stream string, e events.Event, now time.Time) (events.Event, int, error) {
	s, err := GetStream(tx, stream)
	if state.IsNotFound(err) {
		if err := Open(tx, stream, "", "", "", now); err != nil {
			return e, 0, err
		}
		s, err = GetStream(tx, stream)
	}
	if err != nil {
		return e, 0, err
	}
	s.Seq++
	s.Updated = now.UTC()
	if e.Time.IsZero() {
		e.Time = now.UTC()
	}
	e.Stream = stream
	if err := state.PutJSON(tx, state.BucketJournal, Key(stream, s.Seq), e); err != nil {
		return e, 0, err
	}
	if err := state.PutJSON(tx, state.BucketStreams, stream, s); err != nil {
		return e, 0, err
	}
	return e, s.Seq, nil
}

// Append applies change and writes e as the next event of stream in one transaction, then emits
// e. When change fails nothing is written and nothing emitted.
func (j *Journal) Append(stream string, e events.Event, change func(tx state.Tx) error) (events.Event, error) {
	now := clock.OrReal(j.Clock).Now()
	err := j.DB.Update(func(tx state.Tx) error {
		if change != nil {
			if err := change(tx); err != nil {
				return err
			}
		}
		var err error
		e, _, err = AppendTx(tx, stream, e, now)
		return err
	})
	if err != nil {
		return e, err
	}
	j.Emit(e)
	return e, nil
}

// Emit sends e to the sink; for events written by AppendTx once their transaction committed,
// and for live-only events (never journaled).
func (j *Journal) Emit(e events.Event) {
	if e.Time.IsZero() {
		e.Time = clock.OrReal(j.Clock).Now().UTC()
	}
	if j.Sink != nil {
		_ = j.Sink.Emit(e)
	}
}

// End marks stream as ended, in tx: its work is over and retention may drop it later.
func End(tx state.Tx, stream string, now time.Time) error {
	s, err := GetStream(tx, stream)
	if err != nil {
		return err
	}
	s.Ended, s.Updated = true, now.UTC()
	return state.PutJSON(tx, state.BucketStreams, stream, s)
}

// Read returns the events of stream after sequence after (0: from the first), in order. A record
// that cannot be decoded is returned as an event that says so rather than failing the read:
// one damaged record must not hide the rest of a run.
func Read(tx state.Tx, stream string, after int) ([]Record, error) {
	if err := checkID(stream); err != nil {
		return nil, err
	}
	var out []Record
	from := ""
	if after > 0 {
		from = Key(stream, after)
	}
	err := tx.Scan(state.BucketJournal, stream+"/", from, func(k string, raw []byte) error {
		var seq int
		if _, err := fmt.Sscanf(k[len(stream)+1:], "%d", &seq); err != nil {
			return nil // not one of ours
		}
		var e events.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			e = events.Event{Type: "journal.unreadable", Stream: stream, Message: fmt.Sprintf("record %s could not be read: %v", k, err)}
		}
		out = append(out, Record{Seq: seq, Event: e})
		return nil
	})
	return out, err
}

// Events returns the events of stream, in order.
func Events(tx state.Tx, stream string) ([]events.Event, error) {
	recs, err := Read(tx, stream, 0)
	out := make([]events.Event, len(recs))
	for i, r := range recs {
		out[i] = r.Event
	}
	return out, err
}

// Retention bounds the journal: an ended stream is dropped once it is older than MaxAge, or when
// more than Keep newer ended streams of its kind exist. A stream that has not ended is kept.
type Retention struct {
	Keep   int
	MaxAge time.Duration
}

// Prune drops, in tx, the ended streams that r does not keep: their events, their stream record
// and their own record. It returns the ids dropped.
func Prune(tx state.Tx, r Retention, now time.Time) ([]string, error) {
	var streams []Stream
	err := tx.ForEach(state.BucketStreams, func(_ string, raw []byte) error {
		var s Stream
		if json.Unmarshal(raw, &s) == nil && s.Ended {
			streams = append(streams, s)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(streams, func(i, j int) bool { return streams[i].Updated.After(streams[j].Updated) })
	kept := map[Kind]int{}
	var dropped []string
	for _, s := range streams {
		kept[s.Kind]++
		old := r.MaxAge > 0 && now.Sub(s.Updated) > r.MaxAge
		tooMany := r.Keep > 0 && kept[s.Kind] > r.Keep
		if !old && !tooMany {
			continue
		}
		if err := drop(tx, s); err != nil {
			return dropped, err
		}
		dropped = append(dropped, s.ID)
	}
	return dropped, nil
}

func drop(tx state.Tx, s Stream) error {
	var keys []string
	if err := tx.Scan(state.BucketJournal, s.ID+"/", "", func(k string, _ []byte) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(state.BucketJournal, k); err != nil {
			return err
		}
	}
	if s.Record != "" {
		if err := tx.Delete(s.Record, s.ID); err != nil {
			return err
		}
	}
	return tx.Delete(state.BucketStreams, s.ID)
}
