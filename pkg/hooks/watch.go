package hooks

import (
	"fmt"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// watchEvery is how often the process group of an orphaned script is checked.
const watchEvery = 50 * time.Millisecond

// An orphaned stage is one whose script outlived the process that started it: the agent
// (agent executor) or the stage runner (service executor) died, and no one can see the script's
// exit status any more. It is not completed while its script runs: a Maintenance script that
// is still installing a kernel must not have VMs moved onto its host. The agent watches the
// script's process group (recorded in <id>.pid as soon as the script ran) instead: the stage is
// running while any process of the group lives, and completed, with the tail of its log as
// output and an outcome inferred by the executor, once none does.

// watchOrphan waits until nothing of p's process group lives, then settles the stage with
// outcome and note. Past the script's timeout it stops the group as the process that started
// it would have (SIGTERM, then SIGKILL after the grace period) and the stage has timed out.
func (c Config) watchOrphan(s store, id string, p stageProcs, outcome events.Outcome, note string) (Status, error) {
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	stopped := false
	for groupAlive(p.PGID, p.PGIDStart) {
		if p.Timeout > 0 && !p.ScriptStart.IsZero() {
			now, deadline := c.Now(), p.ScriptStart.Add(p.Timeout)
			switch {
			case !now.Before(deadline.Add(p.Grace)):
				_ = syscall.Kill(-p.PGID, syscall.SIGKILL)
				stopped = true
			case !now.Before(deadline) && !stopped:
				_ = syscall.Kill(-p.PGID, syscall.SIGTERM)
				stopped = true
			}
		}
		<-tick.C
	}
	if stopped {
		outcome, note = events.OutcomeTimedOut, joinNote(fmt.Sprintf("timed out after %s", p.Timeout), note)
	}
	return c.settleOrphan(s, id, outcome, note)
}

// settleOrphan completes the running record of id, whose script's exit status no one saw, with
// outcome, exit code -1 and note. The record is read again first: what the process that ran
// the script wrote before it died wins.
func (c Config) settleOrphan(s store, id string, outcome events.Outcome, note string) (Status, error) {
	rec, err := c.readRecord(s, id)
	if err != nil || rec.State == events.StageCompleted {
		return rec.Status, err
	}
	return settle(s, rec, outcome, -1, note, c.Now())
}

// settle marks rec completed with an inferred outcome, its output the tail of the stage's log,
// and persists it; what the stage needed only while it ran is then removed.
func settle(s store, rec record, outcome events.Outcome, code int, note string, now time.Time) (Status, error) {
	if rec.Output == "" {
		rec.Output = readTail(s.logPath(rec.ID), MaxOutput)
	}
	rec.State, rec.Outcome, rec.ExitCode, rec.Note, rec.EndedAt = events.StageCompleted, outcome, code, note, now
	if err := s.write(rec); err != nil {
		return rec.Status, err
	}
	s.removeLeftovers(rec.ID)
	return rec.Status, nil
}

// watchedGroup returns the process group of id's script when it still runs.
func (s store) watchedGroup(id string) (stageProcs, bool) {
	p, ok := s.procs(id)
	if !ok || !groupAlive(p.PGID, p.PGIDStart) {
		return stageProcs{}, false
	}
	return p, true
}
