package ha

import (
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
)

// sample is what one neighbour read of a suspect host in one check, to compare with its next.
type sample struct {
	heartbeat *api.HeartbeatRecord // nil when it could not be read
	disks     map[string]fileStat  // by path; a path that could not be read is absent
}

type fileStat struct {
	mtime time.Time
	size  int64
}

// Answer is one neighbour's answer to an activity check: its result, or the error of the call.
type Answer struct {
	Checker string
	Result  api.ActivityCheckResult
	Err     error
}

// Judge compares each answering neighbour's reads with what the same neighbour read the time
// before (prev, by checker; the same reader, so no two hosts' clocks or caches are compared) and
// returns the verdict, every file read with whether it advanced, and the samples to keep.
//
// ACTIVE: some file advanced (a heartbeat's seq or boot id changed, a disk's mtime or size).
// INACTIVE: at least one neighbour answered, every answering neighbour read every file it was
// asked for without error, each had read it before, and nothing advanced. BASELINE: nothing
// advanced and some neighbour read for the first time, so there is nothing to compare yet.
// UNKNOWN: everything else — no neighbour answered, a read failed or timed out. A file that could
// not be read never counts as "no activity".
func Judge(req api.ActivityCheckRequest, prev map[string]sample, answers []Answer) (Verdict, []events.FileRead, map[string]sample) {
	next := map[string]sample{}
	var reads []events.FileRead
	answered, complete, first, advanced := 0, true, false, false
	for _, a := range answers {
		if a.Err != nil {
			reads = append(reads, events.FileRead{Checker: a.Checker, Error: a.Err.Error()})
			continue
		}
		answered++
		p, hadPrev := prev[a.Checker]
		cur := sample{disks: map[string]fileStat{}}

		// The heartbeat, when one was asked for.
		if req.HeartbeatFile != "" {
			hb := a.Result.Heartbeat
			r := events.FileRead{Checker: a.Checker, Path: req.HeartbeatFile}
			switch {
			case hb.Error != "":
				r.Error = hb.Error
				complete = false
			case hb.Path != "" && hb.Path != req.HeartbeatFile:
				r.Error = "answered for another file: " + hb.Path
				complete = false
			default:
				rec := hb.Read
				cur.heartbeat = &rec
				r.Seq, r.BootID = rec.Seq, rec.BootID
				switch {
				case !hadPrev || p.heartbeat == nil:
					r.Baseline, first = true, true
				case rec.Seq != p.heartbeat.Seq || rec.BootID != p.heartbeat.BootID:
					r.Advanced, advanced = true, true
				}
			}
			reads = append(reads, r)
		}

		// Each disk asked for, as answered.
		got := map[string]api.FileSample{}
		for _, d := range a.Result.Disks {
			got[d.Path] = d
		}
		for _, path := range req.Disks {
			r := events.FileRead{Checker: a.Checker, Path: path}
			d, ok := got[path]
			switch {
			case !ok:
				r.Error = "not in the answer"
				complete = false
			case d.Error != "":
				r.Error = d.Error
				complete = false
			default:
				st := fileStat{mtime: d.MTime, size: d.Size}
				cur.disks[path] = st
				r.MTime, r.Size = d.MTime, d.Size
				old, had := p.disks[path]
				switch {
				case !hadPrev || !had:
					r.Baseline, first = true, true
				case !old.mtime.Equal(st.mtime) || old.size != st.size:
					r.Advanced, advanced = true, true
				}
			}
			reads = append(reads, r)
		}
		next[a.Checker] = cur
	}
	switch {
	case advanced:
		return Active, reads, next
	case answered == 0 || !complete:
		return Unknown, reads, next
	case first:
		return Baseline, reads, next
	case req.HeartbeatFile == "" && len(req.Disks) == 0:
		return Unknown, reads, next
	}
	return Inactive, reads, next
}
