package agentcli

// End-to-end tests of the stage endpoints through real kvmagent processes: the test binary
// re-executes itself as kvmagent, serves HTTPS with mutual TLS on 127.0.0.1 with a libvirt test
// node, and runs stage scripts the tests write. The service executor's detached stage runner,
// kvmagent-stage beside kvmagent, is that same binary again, so every process boundary of
// production is crossed. With BENCH_BIN set, the benchmarks run the real kvmagent and
// kvmagent-stage of that directory instead (make bench).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// envAsAgent makes the test binary run as kvmagent with its arguments, under its own name: an
// agent with no kvmagent-stage beside it (e2eOptions.bare).
const envAsAgent = "KVMCTL_AGENTCLI_TEST_AS_KVMAGENT"

// TestMain registers kvmagent and kvmagent-stage as testscript does for kvmctl's tests: copies of
// this test binary under those names, side by side in a directory on PATH, so that an agent
// started from there finds its stage runner beside it as an installed one does.
func TestMain(m *testing.M) {
	if os.Getenv(envAsAgent) == "1" && filepath.Base(os.Args[0]) != hooks.StageRunnerName {
		os.Exit(Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	testscript.Main(m, map[string]func(){
		"kvmagent":            func() { os.Exit(Run(os.Args[1:], os.Stdout, os.Stderr)) },
		hooks.StageRunnerName: func() { os.Exit(hooks.StageExecMain(os.Args[1:])) },
	})
}

// e2eOptions choose how an e2eAgent runs.
type e2eOptions struct {
	// agentExecutor sets rolling.maintenance.service.executor.disabled.
	agentExecutor bool
	// agent is the kvmagent to start; "" for the one TestMain put on PATH, beside its
	// kvmagent-stage.
	agent string
	// bare runs this test binary under its own name as the agent: no kvmagent-stage beside it.
	bare bool
	// runner sets rolling.maintenance.stage.runner.
	runner string
}

// onPath returns the absolute path of the program name that TestMain put on PATH, its directory
// closed to group and others so that a stage runner there passes the agent's trust check
// whatever the umask.
func onPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH (TestMain puts it there): %v", name, err)
	}
	if p, err = filepath.Abs(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// e2eAgent is one kvmagent process for host kvm1 with its own dirs, and a client for it.
type e2eAgent struct {
	t                      testing.TB
	dir, hooks, state, pki string
	conf, addr             string
	client                 *api.Client
	opts                   e2eOptions

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

// newE2EAgent writes the PKI, node, boot id and agent.properties of an agent and starts it.
// agentExecutor sets rolling.maintenance.service.executor.disabled.
func newE2EAgent(t testing.TB, agentExecutor bool) *e2eAgent {
	t.Helper()
	return newE2EAgentWith(t, e2eOptions{agentExecutor: agentExecutor})
}

// newE2EAgentWith is newE2EAgent with every option.
func newE2EAgentWith(t testing.TB, opts e2eOptions) *e2eAgent {
	t.Helper()
	dir := t.TempDir()
	a := &e2eAgent{t: t, dir: dir, hooks: filepath.Join(dir, "hooks"), state: filepath.Join(dir, "state"), pki: filepath.Join(dir, "pki"), opts: opts}
	if opts.agent == "" && !opts.bare {
		a.opts.agent = onPath(t, "kvmagent")
	}
	now := time.Now()
	kp, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := ca.NewAgent("kvm1", []string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	op, err := ca.NewOperator("alice", now)
	if err != nil {
		t.Fatal(err)
	}
	node, err := virt.NodeXML(virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{a.hooks, a.pki} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for path, data := range map[string][]byte{
		filepath.Join(a.pki, pki.CACertFile): kp.CertPEM, filepath.Join(a.pki, pki.OperatorCertFile): op.CertPEM,
		filepath.Join(a.pki, pki.OperatorKeyFile): op.KeyPEM,
		filepath.Join(dir, "agent.crt"):           ag.CertPEM, filepath.Join(dir, "agent.key"): ag.KeyPEM,
		filepath.Join(dir, "node.xml"): node, filepath.Join(dir, "boot_id"): []byte("boot-1\n"),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a.addr = e2eFreeAddr(t)
	a.conf = filepath.Join(dir, "agent.properties")
	props := strings.Join([]string{
		"host.name=kvm1",
		"listen=" + a.addr,
		"tls.cert=" + filepath.Join(dir, "agent.crt"),
		"tls.key=" + filepath.Join(dir, "agent.key"),
		"tls.ca=" + filepath.Join(a.pki, pki.CACertFile),
		"libvirt.uri=test://" + filepath.Join(dir, "node.xml"),
		"state.dir=" + a.state,
		"rolling.maintenance.hooks.dir=" + a.hooks,
		"rolling.maintenance.service.executor.disabled=" + strconv.FormatBool(opts.agentExecutor),
		"rolling.maintenance.stage.runner=" + opts.runner,
		"boot.id.file=" + filepath.Join(dir, "boot_id"),
	}, "\n") + "\n"
	if err := os.WriteFile(a.conf, []byte(props), 0o600); err != nil {
		t.Fatal(err)
	}
	a.client, err = api.ClientForHost(a.pki, "kvm1", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.stop(syscall.SIGTERM)
		a.client.Close()
	})
	a.start()
	return a
}

func e2eFreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs the agent process and returns once it answers health checks.
func (a *e2eAgent) start() {
	a.t.Helper()
	exe := a.opts.agent
	// GORACE: a race-enabled binary otherwise sleeps 1 s at exit, the stage runner included.
	env := append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	if a.opts.bare {
		var err error
		if exe, err = os.Executable(); err != nil {
			a.t.Fatal(err)
		}
		env = append(env, envAsAgent+"=1")
	}
	cmd := exec.Command(exe, "run", "--config", a.conf, "--log-level", "debug")
	cmd.Env = env
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	a.mu.Lock()
	a.cmd, a.done, a.log = cmd, done, log
	a.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := a.client.Healthz(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			a.t.Fatalf("kvmagent exited at start (%v):\n%s", cmd.ProcessState, log.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("kvmagent not healthy after 30s: %v\n%s", err, log.String())
		}
	}
}

// stop sends sig to the agent process, if it runs, and waits for it to exit.
func (a *e2eAgent) stop(sig syscall.Signal) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		a.t.Errorf("kvmagent did not stop on %s", sig)
	}
	a.client.Close() // drop connections to the dead process
}

// script writes a stage script (with a #!/bin/sh line) with mode perm.
func (a *e2eAgent) script(t testing.TB, name, body string, perm os.FileMode) {
	t.Helper()
	p := filepath.Join(a.hooks, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
}

// run starts a stage and long-polls it to completion.
func (a *e2eAgent) run(t testing.TB, req api.StageRequest) api.StageStatus {
	t.Helper()
	id, err := a.client.StartStage(context.Background(), req)
	if err != nil {
		t.Fatalf("StartStage(%+v): %v", req, err)
	}
	return a.wait(t, id, 30*time.Second)
}

// wait long-polls execution id until it completes, at most limit.
func (a *e2eAgent) wait(t testing.TB, id string, limit time.Duration) api.StageStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		st, err := a.client.WaitStage(ctx, id, 10*time.Second)
		if err != nil {
			t.Fatalf("WaitStage(%s): %v\nagent log:\n%s", id, err, a.logs())
		}
		if st.Done() {
			return st
		}
	}
}

func (a *e2eAgent) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.log == nil {
		return ""
	}
	return a.log.String()
}

func TestE2EStageOutcomes(t *testing.T) {
	t.Parallel()
	a := newE2EAgent(t, false)
	pidFile := filepath.Join(a.dir, "bg.pid")
	for _, tc := range []struct {
		name, body  string
		timeoutS    int
		outcome     events.Outcome
		code        int
		outputHas   string
		maxDuration time.Duration
	}{
		{"succeeded", "echo fine; exit 0", 10, events.OutcomeSucceeded, 0, "fine", 5 * time.Second},
		{"skipped", "echo nothing to do; exit 70", 10, events.OutcomeSkipped, 70, "nothing to do", 5 * time.Second},
		{"failed", "echo broken >&2; exit 3", 10, events.OutcomeFailed, 3, "broken", 5 * time.Second},
		// The background sleep holds the output pipe too: the whole group must die for the
		// stage to end in about its timeout.
		{"timed_out", "sleep 30 & echo $! > " + pidFile + "; echo waiting; sleep 30", 1, events.OutcomeTimedOut, 0, "waiting", 8 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.script(t, "PreFlight.sh", tc.body, 0o755)
			start := time.Now()
			st := a.run(t, api.StageRequest{RunID: "outcome-" + tc.name, Stage: "PreFlight", TimeoutS: tc.timeoutS})
			took := time.Since(start)
			if st.State != events.StageCompleted || st.Outcome != tc.outcome || !strings.Contains(st.Output, tc.outputHas) {
				t.Errorf("status = %+v, want outcome %s with output %q", st, tc.outcome, tc.outputHas)
			}
			if tc.outcome != events.OutcomeTimedOut && st.ExitCode != tc.code {
				t.Errorf("exit code = %d, want %d", st.ExitCode, tc.code)
			}
			if st.StartedAt.IsZero() || st.EndedAt.Before(st.StartedAt) || st.Stage != "PreFlight" || st.RunID != "outcome-"+tc.name {
				t.Errorf("status = %+v", st)
			}
			if took > tc.maxDuration {
				t.Errorf("stage took %s, want under %s", took, tc.maxDuration)
			}
			if tc.outcome == events.OutcomeTimedOut {
				b, err := os.ReadFile(pidFile)
				if err != nil {
					t.Fatal(err)
				}
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				if pid <= 0 || processAlive(pid) {
					t.Errorf("background child %q of the timed-out script is still alive", b)
				}
			}
		})
	}
}

// processAlive reports whether pid runs (a zombie that nobody reaps counts as gone).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func TestE2EStagePayloadIsNotAShell(t *testing.T) {
	t.Parallel()
	a := newE2EAgent(t, false)
	touched := filepath.Join(a.dir, "x")
	a.script(t, "PreMaintenance.sh", `echo "argc=$#"; for w in "$@"; do echo "[$w]"; done`, 0o755)
	st := a.run(t, api.StageRequest{RunID: "payload", Stage: "PreMaintenance", TimeoutS: 10,
		Payload: `a=1 "b c" ';touch ` + touched + `'`})
	want := "argc=3\n[a=1]\n[b c]\n[;touch " + touched + "]\n"
	if st.Outcome != events.OutcomeSucceeded || st.Output != want {
		t.Errorf("status = %+v\noutput %q, want %q", st, st.Output, want)
	}
	if _, err := os.Stat(touched); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the payload ran: %s exists (%v)", touched, err)
	}
	// An unquoted ; is refused before anything runs.
	_, err := a.client.StartStage(context.Background(), api.StageRequest{RunID: "payload2", Stage: "PreMaintenance", Payload: "a; touch " + touched})
	if !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("unquoted ; = %v, want %s", err, api.CodeBadRequest)
	}
}

func TestE2EStageIdempotent(t *testing.T) {
	t.Parallel()
	a := newE2EAgent(t, false)
	counter := filepath.Join(a.dir, "counter")
	a.script(t, "Maintenance", "echo run >> "+counter+"; sleep 0.3", 0o755)
	req := api.StageRequest{RunID: "idem", Stage: "Maintenance", TimeoutS: 10}
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, err := a.client.StartStage(context.Background(), req)
			if err != nil {
				t.Errorf("StartStage: %v", err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	if ids[0] == "" || len(slices.Compact(slices.Clone(ids))) != 1 {
		t.Fatalf("concurrent POSTs gave ids %q, want one", ids)
	}
	if ids[0] != hooks.ExecID("idem", events.Maintenance) {
		t.Errorf("exec id %s, want hooks.ExecID", ids[0])
	}
	st := a.wait(t, ids[0], 20*time.Second)
	// Asking again after the end finds the same execution and does not run it again.
	again, err := a.client.StartStage(context.Background(), req)
	if err != nil || again != ids[0] {
		t.Errorf("POST after completion = %q, %v; want %q", again, err, ids[0])
	}
	time.Sleep(200 * time.Millisecond)
	b, err := os.ReadFile(counter)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "run\n" || st.Outcome != events.OutcomeSucceeded {
		t.Errorf("counter %q (want one run), status %+v", b, st)
	}
}

// gatedStage is a Maintenance script that records its pid (its process group, as it leads
// one), writes `before` output, waits for a gate file, writes `after` output, prints
// "finished", touches an end file and exits 3: a test ends it when it has seen what it must see
// while the script runs, and never depends on how long an agent restart takes.
type gatedStage struct {
	pid, started, gate, ended string
}

func (a *e2eAgent) gatedScript(t *testing.T, before, after string) gatedStage {
	t.Helper()
	g := gatedStage{pid: filepath.Join(a.dir, "script.pid"), started: filepath.Join(a.dir, "started"),
		gate: filepath.Join(a.dir, "gate"), ended: filepath.Join(a.dir, "ended")}
	a.script(t, "Maintenance.sh", fmt.Sprintf("echo $$ > %s\n%s\ntouch %s\nwhile [ ! -e %s ]; do sleep 0.02; done\n%s\necho finished\ntouch %s\nexit 3",
		g.pid, before, g.started, g.gate, after, g.ended), 0o755)
	return g
}

// release opens the gate: the script ends.
func (g gatedStage) release(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(g.gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// chatty writes mib mebibytes of output, in lines of 1 MiB.
func chatty(mib int) string {
	return fmt.Sprintf("i=0; while [ $i -lt %d ]; do head -c 1048575 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done", mib)
}

// runnerPID is the stage runner's pid, from the <id>.pid file it writes before it starts the
// script, once the script's process group is recorded there too (see groupRecorded).
func (a *e2eAgent) runnerPID(t *testing.T, id string) int {
	t.Helper()
	return a.groupRecorded(t, id).PID
}

// groupRecorded waits until the process that started execution id's script (the runner, or
// the agent) has recorded the script's process group in <id>.pid: killed before that, it leaves
// a script nobody watches, which is not what these tests are about.
func (a *e2eAgent) groupRecorded(t *testing.T, id string) (p struct {
	PID  int `json:"pid"`
	PGID int `json:"pgid"`
}) {
	t.Helper()
	path := filepath.Join(a.state, "stages", id+".pid")
	for deadline := time.Now().Add(30 * time.Second); p.PGID <= 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b, err := os.ReadFile(path)
			t.Fatalf("process group of %s never recorded: %q, %v", id, b, err)
		}
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &p)
		}
	}
	return p
}

// stillRunning asks the agent about id several times while g's script is held at its gate:
// every answer must be running.
func (a *e2eAgent) stillRunning(t *testing.T, id string, g gatedStage) {
	t.Helper()
	for range 5 {
		st, err := a.client.Stage(context.Background(), id)
		if err != nil {
			t.Fatalf("Stage(%s): %v\n%s", id, err, a.logs())
		}
		if st.State != events.StageRunning {
			t.Fatalf("the script waits at its gate (ended: %v), but the agent reports %+v", exists(g.ended), st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish opens g's gate and waits for id to complete; the script must have ended by then and
// its process be gone soon after.
func (a *e2eAgent) finish(t *testing.T, id string, g gatedStage) api.StageStatus {
	t.Helper()
	g.release(t)
	st := a.wait(t, id, 60*time.Second)
	if !exists(g.ended) {
		t.Errorf("the stage completed (%+v) before its script ended", st)
	}
	pid := readPIDFile(t, g.pid)
	deadline := time.Now().Add(20 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("script %d still runs 20s after its stage completed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		t.Fatalf("pid file %s: %q", path, b)
	}
	return pid
}

// An agent SIGKILLed during a stage and restarted reports the stage running for as long as its
// script runs, then completed: the service executor with the script's own result, the agent
// executor as succeeded (the seed's rule) with its output and a note that its exit status is
// unknown. A chatty script (MiBs of output after the agent died) is not killed by SIGPIPE.
func TestE2EAgentKilledMidStage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		agentExecutor bool
		before, after string
	}{
		{"service", false, "", ""},
		{"agent", true, "", ""},
		{"agent/chatty", true, chatty(2), chatty(4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newE2EAgent(t, tc.agentExecutor)
			g := a.gatedScript(t, tc.before, tc.after)
			id, err := a.client.StartStage(context.Background(), api.StageRequest{RunID: "kill", Stage: "Maintenance", TimeoutS: 120})
			if err != nil {
				t.Fatal(err)
			}
			waitFile(t, g.started, 30*time.Second)
			a.groupRecorded(t, id)
			a.stop(syscall.SIGKILL)
			a.start()
			a.stillRunning(t, id, g)
			st := a.finish(t, id, g)
			if !strings.HasSuffix(st.Output, "finished\n") || len(st.Output) > hooks.MaxOutput {
				t.Errorf("output: %d bytes ending %q, want at most %d ending with the script's last line", len(st.Output), lastBytes(st.Output, 40), hooks.MaxOutput)
			}
			st.Output = ""
			if tc.agentExecutor {
				if st.State != events.StageCompleted || st.Outcome != events.OutcomeSucceeded || st.Note != hooks.NoteAgentRestartScriptEnded {
					t.Errorf("final = %+v, want completed, succeeded, note %q", st, hooks.NoteAgentRestartScriptEnded)
				}
				return
			}
			if st.Outcome != events.OutcomeFailed || st.ExitCode != 3 || st.Note != "" {
				t.Errorf("final = %+v, want the script's own result (failed, exit 3)", st)
			}
		})
	}
}

// A stage runner SIGKILLed during a stage leaves its script watched, not orphaned: the agent
// reports the stage running while the script runs, then completed and failed (nothing saw the
// script's exit status) with its output. Also when the script writes MiBs of output after the
// runner died, of which the API returns the last 64 KiB.
func TestE2ERunnerKilledMidStage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		before, after string
	}{
		{"quiet", "", ""},
		{"chatty", chatty(2), chatty(40)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newE2EAgent(t, false)
			g := a.gatedScript(t, tc.before, tc.after)
			id, err := a.client.StartStage(context.Background(), api.StageRequest{RunID: "kill-runner", Stage: "Maintenance", TimeoutS: 120})
			if err != nil {
				t.Fatal(err)
			}
			waitFile(t, g.started, 30*time.Second)
			if err := syscall.Kill(a.runnerPID(t, id), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			a.stillRunning(t, id, g)
			st := a.finish(t, id, g)
			if !strings.HasSuffix(st.Output, "finished\n") || len(st.Output) > hooks.MaxOutput {
				t.Errorf("output: %d bytes ending %q, want at most %d ending with the script's last line", len(st.Output), lastBytes(st.Output, 40), hooks.MaxOutput)
			}
			st.Output = ""
			if st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != hooks.NoteRunnerDiedScriptEnded {
				t.Errorf("final = %+v, want completed, failed, note %q", st, hooks.NoteRunnerDiedScriptEnded)
			}
			// A restarted agent reports the same.
			a.stop(syscall.SIGKILL)
			a.start()
			again, err := a.client.Stage(context.Background(), id)
			again.Output = ""
			if err != nil || again != st {
				t.Errorf("after an agent restart: %+v, %v; want %+v", again, err, st)
			}
		})
	}
}

func lastBytes(s string, n int) string { return s[len(s)-min(n, len(s)):] }

func waitFile(t *testing.T, path string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %s", path, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestE2EStageRunner: the service executor runs a stage through kvmagent-stage, the one beside
// the agent or the one agent.properties names, and through the agent's own stage-exec, with one
// warning at start, where there is none. The script prints how its parent, the process that ran
// the stage, was started.
func TestE2EStageRunner(t *testing.T) {
	t.Parallel()
	runner := onPath(t, hooks.StageRunnerName)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		opts       e2eOptions
		argv0, exe string // how the stage's runner was started
		argv1      string // "" for the spec file
		warned     bool
	}{
		{"beside the agent", e2eOptions{}, runner, runner, "", false},
		{"configured", e2eOptions{bare: true, runner: runner}, runner, runner, "", false},
		{"missing", e2eOptions{bare: true}, self, self, hooks.StageExecCommand, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newE2EAgentWith(t, tc.opts)
			a.script(t, "PreFlight", `tr '\0' '\n' < /proc/$PPID/cmdline; readlink /proc/$PPID/exe`, 0o755)
			for _, runID := range []string{"r1", "r2"} {
				st := a.run(t, api.StageRequest{RunID: runID, Stage: "PreFlight", TimeoutS: 10})
				want := []string{tc.argv0, tc.argv1, filepath.Join(a.state, "stages", hooks.ExecID(runID, events.PreFlight)+".spec"), tc.exe}
				if tc.argv1 == "" {
					want = slices.Delete(want, 1, 2)
				}
				if got := strings.Split(strings.TrimSpace(st.Output), "\n"); st.Outcome != events.OutcomeSucceeded || !slices.Equal(got, want) {
					t.Errorf("stage %s ran under %q (status %+v), want argv and executable %q", runID, got, st, want)
				}
			}
			want := 0
			if tc.warned {
				want = 1
			}
			if n := strings.Count(a.logs(), "stage runner is missing"); n != want {
				t.Errorf("the agent warned %d times that the stage runner is missing, want %d:\n%s", n, want, a.logs())
			}
		})
	}
}

func TestE2EHooksListAndRefusals(t *testing.T) {
	t.Parallel()
	a := newE2EAgent(t, false)
	a.script(t, "PreFlight.sh", "exit 0", 0o755)
	a.script(t, "PostMaintenance.sh", "exit 0", 0o777)
	a.script(t, "PreMaintenance.py", "exit 0", 0o644)

	scripts, err := a.client.Hooks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]api.HookScript{}
	var order []string
	for _, s := range scripts {
		got[string(s.Stage)] = s
		order = append(order, string(s.Stage))
	}
	if want := []string{"PreFlight", "PreMaintenance", "Maintenance", "PostMaintenance"}; !slices.Equal(order, want) {
		t.Errorf("stages %q, want %q", order, want)
	}
	if s := got["PreFlight"]; !s.Present || s.Refused != "" || !strings.HasSuffix(s.Path, "/PreFlight.sh") {
		t.Errorf("PreFlight = %+v, want present", s)
	}
	if s := got["Maintenance"]; s.Present || s.Refused != "" {
		t.Errorf("Maintenance = %+v, want missing", s)
	}
	if s := got["PostMaintenance"]; !s.Present || !strings.Contains(s.Refused, "writable by group or others") {
		t.Errorf("PostMaintenance = %+v, want refused as world-writable", s)
	}
	if s := got["PreMaintenance"]; !s.Present || !strings.Contains(s.Refused, "not executable") {
		t.Errorf("PreMaintenance = %+v, want refused as not executable", s)
	}

	_, err = a.client.StartStage(context.Background(), api.StageRequest{RunID: "r1", Stage: "PostMaintenance", TimeoutS: 5})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeScriptRefused || ae.Status != 409 || !strings.Contains(ae.Message, "writable by group or others") {
		t.Errorf("refused script: %v, want 409 %s with the reason", err, api.CodeScriptRefused)
	}
	_, err = a.client.StartStage(context.Background(), api.StageRequest{RunID: "r1", Stage: "Maintenance", TimeoutS: 5})
	if !errors.As(err, &ae) || ae.Code != api.CodeNoScript || ae.Status != 404 {
		t.Errorf("missing script: %v, want 404 %s", err, api.CodeNoScript)
	}
	// A refused stage leaves no execution behind.
	if _, err := a.client.Stage(context.Background(), hooks.ExecID("r1", events.PostMaintenance)); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("Stage of a refused start: %v, want %s", err, api.CodeNotFound)
	}
}

// envBenchBin names a directory with a kvmagent and its kvmagent-stage (make bench sets it to
// bin/): the benchmarks then start that kvmagent, so that they measure the real programs and not
// this test binary, which links libvirt and everything else.
const envBenchBin = "BENCH_BIN"

// benchAgents are the agents the benchmarks compare: the service executor (through
// kvmagent-stage) and the agent executor, and with BENCH_BIN also the service executor of an
// agent without kvmagent-stage beside it, which runs each stage through kvmagent stage-exec as
// agents did before there was a runner.
func benchAgents(b *testing.B) []struct {
	name string
	opts e2eOptions
} {
	b.Helper()
	agents := []struct {
		name string
		opts e2eOptions
	}{{"service", e2eOptions{}}, {"agent", e2eOptions{agentExecutor: true}}}
	dir := os.Getenv(envBenchBin)
	if dir == "" {
		return agents
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		b.Fatal(err)
	}
	agent := filepath.Join(dir, "kvmagent")
	for i := range agents {
		agents[i].opts.agent = agent
	}
	// A copy of the agent alone in a directory: no kvmagent-stage beside it.
	alone := filepath.Join(b.TempDir(), "kvmagent")
	data, err := os.ReadFile(agent)
	if err != nil {
		b.Fatalf("%s=%s: %v", envBenchBin, dir, err)
	}
	if err := os.WriteFile(alone, data, 0o755); err != nil {
		b.Fatal(err)
	}
	return append(agents, struct {
		name string
		opts e2eOptions
	}{"service-stage-exec", e2eOptions{agent: alone}})
}

// BenchmarkStageNoop measures a no-op stage through the API on loopback (POST, then long-poll
// until completed) with each executor. Every iteration runs one stage on each agent in turn, the
// first one rotating, so that the agents share the machine's slow and fast moments (and none
// always follows the slowest) and their ratio is the executors' own: ns/op is the sum,
// NAME_median_ms and NAME_p90_ms come from every iteration of agent NAME.
func BenchmarkStageNoop(b *testing.B) {
	agents := benchAgents(b)
	running := make([]*e2eAgent, len(agents))
	lat := make([][]time.Duration, len(agents))
	for j, k := range agents {
		running[j] = newE2EAgentWith(b, k.opts)
		running[j].script(b, "PreFlight", "exit 0", 0o755)
	}
	for i := 0; b.Loop(); i++ {
		for n := range running {
			j := (i + n) % len(running)
			a := running[j]
			start := time.Now()
			st := a.run(b, api.StageRequest{RunID: fmt.Sprintf("bench-%d", i), Stage: "PreFlight", TimeoutS: 10})
			lat[j] = append(lat[j], time.Since(start))
			if st.Outcome != events.OutcomeSucceeded {
				b.Fatalf("%s: status %+v", agents[j].name, st)
			}
		}
	}
	for j, k := range agents {
		reportQuantiles(b, k.name+"_", lat[j])
	}
}

// BenchmarkExitToSeen measures the time from a script's last action (it writes the time in
// nanoseconds to a file and exits) to the long poll returning it to the client.
func BenchmarkExitToSeen(b *testing.B) {
	for _, k := range benchAgents(b) {
		b.Run(k.name, func(b *testing.B) {
			a := newE2EAgentWith(b, k.opts)
			stamp := filepath.Join(a.dir, "exit-ns")
			a.script(b, "PostMaintenance", "date +%s%N > "+stamp, 0o755)
			lat := make([]time.Duration, 0, b.N)
			for i := 0; b.Loop(); i++ {
				id, err := a.client.StartStage(context.Background(), api.StageRequest{RunID: fmt.Sprintf("seen-%d", i), Stage: "PostMaintenance", TimeoutS: 10})
				if err != nil {
					b.Fatal(err)
				}
				st := a.wait(b, id, 30*time.Second)
				seen := time.Now()
				data, err := os.ReadFile(stamp)
				if err != nil || st.Outcome != events.OutcomeSucceeded {
					b.Fatalf("status %+v, stamp: %v", st, err)
				}
				ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, seen.Sub(time.Unix(0, ns)))
			}
			reportQuantiles(b, "", lat)
		})
	}
}

// reportQuantiles reports the median and 90th percentile of lat as PREFIXmedian_ms and
// PREFIXp90_ms.
func reportQuantiles(b *testing.B, prefix string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), prefix+"median_ms")
	b.ReportMetric(ms(lat[len(lat)*9/10]), prefix+"p90_ms")
}

// Entries of the stages directory that an agent cannot use are set aside at start, never fatal:
// a directory, a symlink, garbage, an empty file, a record under another stage's name, a record
// too large to be one (a whole 40 MiB output). A record the agent can read is kept even with
// mode 000 (root reads it), and a name that is no execution id is left alone. The API returns
// at most the documented tail of an output, and a record with a live pid but no start time is
// not reported running forever.
func TestE2EStageRecordsAtStart(t *testing.T) {
	t.Parallel()
	a := newE2EAgent(t, false)
	a.stop(syscall.SIGTERM)
	dir := filepath.Join(a.state, "stages")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	id := func(name string) string { return hooks.ExecID(name, events.Maintenance) }
	rec := func(id, state string, extra string) []byte {
		return []byte(fmt.Sprintf(`{"id":%q,"run_id":"r","stage":"Maintenance","state":%q,"exit_code":0,"started_at":"2026-01-02T03:04:05Z","executor":"service","boot_id":"boot-1"%s}`, id, state, extra))
	}
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, id("dir")+".json"), 0o700); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(a.dir, "elsewhere.json")
	if err := os.WriteFile(elsewhere, rec(id("symlink"), "completed", `,"outcome":"succeeded"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(dir, id("symlink")+".json")); err != nil {
		t.Fatal(err)
	}
	write(id("garbage")+".json", []byte("\x00\x01 not json"), 0o600)
	write(id("empty")+".json", nil, 0o600)
	write(id("mode000")+".json", rec(id("mode000"), "completed", `,"outcome":"succeeded"`), 0)
	write("not-an-id.json", []byte("whatever"), 0o600)
	write(id("renamed")+".json", rec(id("other"), "completed", `,"outcome":"succeeded"`), 0o600)
	huge := strings.Repeat("x", 40<<20) + "the end\n"
	write(id("huge")+".json", rec(id("huge"), "completed", `,"outcome":"failed","exit_code":3,"output":"`+huge[:len(huge)-1]+`\n"`), 0o600)
	// A runner pid recorded without its start time: this test's own pid, which lives on.
	write(id("nostart")+".json", rec(id("nostart"), "running", fmt.Sprintf(`,"pid":%d`, os.Getpid())), 0o600)
	a.start()

	get := func(name string) api.StageStatus {
		t.Helper()
		st, err := a.client.Stage(context.Background(), id(name))
		if err != nil {
			t.Fatalf("Stage(%s): %v", name, err)
		}
		return st
	}
	for _, name := range []string{"dir", "symlink", "garbage", "empty", "renamed", "huge"} {
		st := get(name)
		if st.ExecID != id(name) || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != hooks.NoteRecordUnreadable || len(st.Output) > hooks.MaxOutput {
			st.Output = lastBytes(st.Output, 40)
			t.Errorf("%s: %+v, want completed, failed, note %q", name, st, hooks.NoteRecordUnreadable)
		}
		if _, err := os.Lstat(filepath.Join(dir, id(name)+".json.corrupt")); err != nil {
			t.Errorf("%s: not set aside: %v", name, err)
		}
	}
	if b, err := os.ReadFile(elsewhere); err != nil || !strings.Contains(string(b), `"succeeded"`) {
		t.Errorf("the symlink's target was changed: %q, %v", b, err)
	}
	if st := get("mode000"); st.State != events.StageCompleted || st.Outcome != events.OutcomeSucceeded {
		t.Errorf("mode 000 record: %+v, want its own result", st)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "not-an-id.json")); err != nil || string(b) != "whatever" {
		t.Errorf("not-an-id.json: %q, %v; want it left alone", b, err)
	}
	if st := get("nostart"); st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != hooks.NoteRunnerUnverifiable {
		t.Errorf("a live pid without a start time: %+v, want completed, failed, note %q", st, hooks.NoteRunnerUnverifiable)
	}
	// What this agent writes itself is bounded too: a script that prints 40 MiB.
	a.script(t, "PreFlight", chatty(40)+"; echo the end", 0o755)
	st := a.run(t, api.StageRequest{RunID: "big", Stage: "PreFlight", TimeoutS: 120})
	if st.Outcome != events.OutcomeSucceeded || len(st.Output) > hooks.MaxOutput || !strings.HasSuffix(st.Output, "the end\n") {
		t.Errorf("40 MiB of output: %s, %d bytes ending %q; want at most %d ending with its last line", st.Outcome, len(st.Output), lastBytes(st.Output, 20), hooks.MaxOutput)
	}
}
