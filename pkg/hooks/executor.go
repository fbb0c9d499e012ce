package hooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// Executor starts stage scripts and reports on them. Implementations are safe for concurrent use.
type Executor interface {
	// Start runs the script of req.Stage unless (req.RunID, req.Stage) was started before, and
	// returns the execution id either way. It returns ErrNoScript when the stage has no script
	// and a *RefusedError when the script must not run.
	Start(ctx context.Context, req Request) (string, error)
	// Get returns what is known about an execution; ErrUnknownID if there is none.
	Get(id string) (Status, error)
	// Wait returns once the execution has completed, or with ctx's error.
	Wait(ctx context.Context, id string) (Status, error)
}

// Request asks for one stage of one rolling-maintenance run.
type Request struct {
	// RunID names the run: 1 to 64 characters of [A-Za-z0-9._-].
	RunID string
	Stage events.Stage
	// Payload is appended to the script's argv, split into words by shell quoting rules.
	Payload string
	// Timeout bounds the script's run time; it must be positive.
	Timeout time.Duration
}

// StageExecCommand is the name of the hidden agent subcommand that must call StageExecMain: the
// service executor's fallback when the stage runner is missing, and what an agent older than
// the runner started.
const StageExecCommand = "stage-exec"

// Defaults of Config.
const (
	DefaultGrace         = 10 * time.Second
	DefaultLaunchTimeout = time.Minute
)

// Config configures an executor. Only HooksDir and StateDir are required.
type Config struct {
	// HooksDir is rolling.maintenance.hooks.dir.
	HooksDir string
	// StateDir holds the stages/ directory of execution records.
	StateDir string
	// AgentExecutor is rolling.maintenance.service.executor.disabled: run scripts inside the
	// agent rather than detached (used by New only).
	AgentExecutor bool
	// Host is KVM_HOST in the script's environment; default os.Hostname().
	Host string
	// Env is the environment scripts inherit, before KVM_*; default os.Environ() at Start.
	Env []string
	// Grace is how long a script has between SIGTERM and SIGKILL; default DefaultGrace.
	Grace time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// BootID returns the host's boot id; default ReadBootID. The lab overrides it.
	BootID func() (string, error)
	// Runner is the stage runner the service executor starts for each stage, as RUNNER SPEC
	// (rolling.maintenance.stage.runner); it must pass CheckStageRunner. Default: the
	// StageRunnerName beside Binary, else Binary's stage-exec subcommand.
	Runner string
	// Binary is the agent executable, which has the stage-exec subcommand; default
	// os.Executable().
	Binary string
	// NoSystemd makes the service executor start the stage runner in a new session even where
	// systemd-run is available.
	NoSystemd bool
	// LaunchTimeout is how long a stage runner that this agent did not start itself may take to
	// write its first record before the stage counts as failed; default DefaultLaunchTimeout.
	LaunchTimeout time.Duration
	// Log receives what the executor settles on its own, such as an unreadable record; default
	// discard.
	Log *slog.Logger
}

// New returns the executor cfg asks for: the AgentExecutor when cfg.AgentExecutor is set, the
// ServiceExecutor otherwise. Either has already recovered the state left in cfg.StateDir.
func New(cfg Config) (Executor, error) {
	if cfg.AgentExecutor {
		return NewAgentExecutor(cfg)
	}
	return NewServiceExecutor(cfg)
}

func (c Config) withDefaults() (Config, error) {
	if c.HooksDir == "" {
		return c, errors.New("hooks dir not set: set rolling.maintenance.hooks.dir")
	}
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("host name: %w", err)
		}
		c.Host = h
	}
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.BootID == nil {
		c.BootID = ReadBootID
	}
	if c.LaunchTimeout <= 0 {
		c.LaunchTimeout = DefaultLaunchTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// validRunID reports whether id is 1 to 64 characters of [A-Za-z0-9._-]. A loop, not a regexp:
// compiling `{1,64}` costs a quarter of a millisecond at the start of every stage runner.
func validRunID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// plan is a validated request, ready to run.
type plan struct {
	id   string
	req  Request
	args []string
}

func validate(req Request) (plan, error) {
	if !validRunID(req.RunID) {
		return plan{}, fmt.Errorf("invalid run id %q: use 1 to 64 characters of A-Z a-z 0-9 . _ -", req.RunID)
	}
	if _, err := events.ParseStage(string(req.Stage)); err != nil {
		return plan{}, err
	}
	if req.Timeout <= 0 {
		return plan{}, fmt.Errorf("invalid timeout %s: must be positive", req.Timeout)
	}
	args, err := SplitPayload(req.Payload)
	if err != nil {
		return plan{}, err
	}
	return plan{id: ExecID(req.RunID, req.Stage), req: req, args: args}, nil
}

// spec resolves the script of p and builds what runScript needs.
// newRun resolves the stage's script and builds the record that claims the execution id before
// anything runs, for either executor.
func (c Config) newRun(p plan, kind string) (runSpec, record, error) {
	spec, err := c.spec(p)
	if err != nil {
		return runSpec{}, record{}, err
	}
	boot, err := c.BootID()
	if err != nil {
		return runSpec{}, record{}, err
	}
	rec := record{
		Status:   Status{ID: p.id, RunID: p.req.RunID, Stage: p.req.Stage, State: events.StageRunning, StartedAt: c.Now()},
		Executor: kind, Script: spec.Script, BootID: boot,
	}
	return spec, rec, nil
}

func (c Config) spec(p plan) (runSpec, error) {
	script, err := Resolve(c.HooksDir, p.req.Stage)
	if err != nil {
		return runSpec{}, err
	}
	dir, err := realDir(c.HooksDir)
	if err != nil {
		return runSpec{}, err
	}
	env := c.Env
	if env == nil {
		env = os.Environ()
	}
	env = append(env[:len(env):len(env)],
		"KVM_STAGE="+string(p.req.Stage), "KVM_HOST="+c.Host, "KVM_RUN_ID="+p.req.RunID)
	return runSpec{Script: script, Args: p.args, Dir: dir, Env: env, Timeout: p.req.Timeout, Grace: c.Grace}, nil
}

// currentBoot returns the boot id, or "" when it cannot be read (the reboot rule is then off).
func (c Config) currentBoot() string {
	id, err := c.BootID()
	if err != nil {
		return ""
	}
	return id
}

// rebooted tells whether rec started in an earlier boot of the host.
func (c Config) rebooted(rec record) bool {
	now := c.currentBoot()
	return rec.BootID != "" && now != "" && now != rec.BootID
}

// readRecord reads the record of id. An entry that cannot be its record (see store.read: cut
// short by a crash or a full disk, not a regular file, another execution's) is logged, kept
// aside as <id>.json.corrupt and replaced by a completed, failed record with the note
// NoteRecordUnreadable: the stage is settled, never run again, and one bad entry does not stop
// the agent.
func (c Config) readRecord(s store, id string) (record, error) {
	rec, err := s.read(id)
	if !errors.Is(err, errCorruptRecord) {
		return rec, err
	}
	path := s.recordPath(id)
	kept, rerr := setAside(path)
	if rerr != nil {
		return record{}, fmt.Errorf("%w; set it aside: %w", err, rerr)
	}
	c.Log.Error("stage record unreadable: kept aside, the stage counts as failed",
		"exec_id", id, "file", path, "kept_as", kept, "err", err)
	now := c.Now()
	rec = record{Status: Status{ID: id, State: events.StageCompleted, Outcome: events.OutcomeFailed, ExitCode: -1,
		StartedAt: now, EndedAt: now, Note: NoteRecordUnreadable}}
	if werr := s.write(rec); werr != nil {
		// Answered from memory this once; a later read finds no record.
		c.Log.Error("stage record unreadable: replacement not saved", "exec_id", id, "err", werr)
	}
	return rec, nil
}

// recoverAll applies get to every recorded execution, so that a restarted agent settles what
// its predecessor left half done, and starts watching the scripts that outlived it. An entry
// that fails is logged and left for the next time it is asked about: it never stops the agent.
func recoverAll(s store, log *slog.Logger, get func(string) (Status, error)) ([]Status, error) {
	ids, err := s.ids()
	if err != nil {
		log.Error("stages not settled at start: each is settled when asked about", "err", err)
		return nil, err
	}
	var out []Status
	var errs []error
	for _, id := range ids {
		st, err := get(id)
		if err != nil {
			log.Error("stage not settled at start: retried when asked about", "exec_id", id, "err", err)
			errs = append(errs, fmt.Errorf("recover %s: %w", id, err))
			continue
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}
