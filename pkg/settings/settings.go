// Package settings is the registry of kvmctl's global settings: CloudStack's key names, types,
// defaults and allowed ranges. Values live in the state file's settings bucket as the operator
// typed them; this package is the only place that knows what a valid value is.
package settings

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Type is the kind of value a setting holds.
type Type string

// Setting value types.
const (
	Int   Type = "int"
	Float Type = "float"
	Bool  Type = "bool"
)

// Key describes one known setting.
type Key struct {
	Name        string
	Type        Type
	Default     string
	Min, Max    float64 // inclusive bounds for Int and Float
	Description string
}

// Known setting names, declared once.
const (
	StageTimeout           = "kvm.rolling.maintenance.stage.timeout"
	PingInterval           = "kvm.rolling.maintenance.ping.interval"
	WaitMaintenanceTimeout = "kvm.rolling.maintenance.wait.maintenance.timeout"
	SSHToAgent             = "kvm.ssh.to.agent"
	MaxParallelMigrations  = "host.maintenance.max.parallel.migrations"
	CPUOverprovisioning    = "cpu.overprovisioning.factor"
	MemOverprovisioning    = "mem.overprovisioning.factor"
	AgentRestartTimeout    = "kvm.ssh.agent.restart.timeout"
	JournalKeep            = "kvmctl.journal.keep"
	JournalDays            = "kvmctl.journal.days"
	FenceTimeout           = "kvm.ha.fence.timeout"
	FenceMaxCount          = "kvm.ha.fence.max.count"
	FenceWindow            = "kvm.ha.fence.window"
	HealthCheckInterval    = "kvm.ha.health.check.interval"
	HealthCheckTimeout     = "kvm.ha.health.check.timeout"
	ActivityCheckInterval  = "kvm.ha.activity.check.interval"
	ActivityNeighbours     = "kvm.ha.activity.check.neighbours"
	ActivityMaxAttempts    = "kvm.ha.activity.check.max.attempts"
	DegradedRestartEvery   = "kvm.ha.degraded.restart.interval"
	FenceStartupGrace      = "kvm.ha.fence.startup.grace"
	StormRatio             = "kvm.ha.storm.ratio"
	FenceQuietTime         = "kvm.ha.fence.quiet.time"
	RecoverWithoutFence    = "kvm.ha.recover.without.fence"
	RecoverMaxParallel     = "kvm.ha.recover.max.parallel"
)

// Registry lists every known key in the order `config list` shows them.
var Registry = []Key{
	{Name: StageTimeout, Type: Int, Default: "1800", Min: 1, Max: 7 * 24 * 3600,
		Description: "seconds a rolling-maintenance stage may run on a host (rolling start --timeout overrides)"},
	{Name: PingInterval, Type: Int, Default: "10", Min: 1, Max: 3600,
		Description: "longest gap in seconds between two progress checks of a stage; a stage timeout must be at least this"},
	{Name: WaitMaintenanceTimeout, Type: Int, Default: "1800", Min: 1, Max: 7 * 24 * 3600,
		Description: "seconds to wait for a host to reach Maintenance"},
	{Name: SSHToAgent, Type: Bool, Default: "true",
		Description: "may kvmctl SSH into a host to restart its disconnected agent when cancelling maintenance"},
	{Name: AgentRestartTimeout, Type: Int, Default: "120", Min: 1, Max: 3600,
		Description: "seconds to wait for an agent restarted over SSH to answer again"},
	{Name: MaxParallelMigrations, Type: Int, Default: "2", Min: 1, Max: 64,
		Description: "VMs migrated off a host at the same time when it enters maintenance"},
	{Name: CPUOverprovisioning, Type: Float, Default: "1", Min: 0.1, Max: 64,
		Description: "vCPUs a host may carry per physical CPU when VMs are placed"},
	{Name: MemOverprovisioning, Type: Float, Default: "1", Min: 0.1, Max: 16,
		Description: "memory a host may promise per byte of RAM when VMs are placed"},
	{Name: FenceTimeout, Type: Int, Default: "30", Min: 1, Max: 3600,
		Description: "seconds a power action may take to show in the BMC's power status; unconfirmed is not fenced"},
	{Name: FenceMaxCount, Type: Int, Default: "3", Min: 1, Max: 1000,
		Description: "hosts that may be powered down (off, reboot, reset, soft) within kvm.ha.fence.window, per cluster and fleet-wide; a power-down of one more is refused and notified (seed 002)"},
	{Name: FenceWindow, Type: Int, Default: "3600", Min: 60, Max: 7 * 24 * 3600,
		Description: "seconds over which kvm.ha.fence.max.count power-downs are counted"},
	{Name: HealthCheckInterval, Type: Int, Default: "1", Min: 1, Max: 60,
		Description: "seconds between two health checks of every HA host by `kvmctl ha watch`"},
	{Name: HealthCheckTimeout, Type: Int, Default: "3", Min: 1, Max: 600,
		Description: "seconds without a good health answer before an HA host is Suspect"},
	{Name: ActivityCheckInterval, Type: Int, Default: "2", Min: 1, Max: 600,
		Description: "seconds between two activity checks of a Suspect host by its neighbours"},
	{Name: ActivityNeighbours, Type: Int, Default: "2", Min: 1, Max: 16,
		Description: "healthy hosts of the cluster that read a Suspect host's heartbeat and VM disks in each activity check"},
	{Name: ActivityMaxAttempts, Type: Int, Default: "3", Min: 1, Max: 100,
		Description: "INACTIVE verdicts in a row, after the baseline, before a Suspect host is fenced"},
	{Name: DegradedRestartEvery, Type: Int, Default: "300", Min: 10, Max: 86400,
		Description: "seconds between two SSH restarts of a Degraded host's agent (with kvm.ssh.to.agent)"},
	{Name: FenceStartupGrace, Type: Int, Default: "60", Min: 0, Max: 3600,
		Description: "seconds after `kvmctl ha watch` starts during which it fences nothing (it has not seen the fleet long enough)"},
	{Name: StormRatio, Type: Float, Default: "0.3", Min: 0, Max: 1,
		Description: "share of a cluster's HA hosts not Available at once above which nothing there is fenced (an outage, not crashes; one host alone is never a storm)"},
	{Name: FenceQuietTime, Type: Int, Default: "600", Min: 0, Max: 7 * 24 * 3600,
		Description: "seconds after a host was fenced during which HA does not fence it again"},
	{Name: RecoverWithoutFence, Type: Bool, Default: "false",
		Description: "restart the VMs of a host whose HA action is none or blink without `kvmctl ha confirm-down` (seed 002's literal behaviour; risks running a VM twice)"},
	{Name: RecoverMaxParallel, Type: Int, Default: "4", Min: 1, Max: 64,
		Description: "VMs of a fenced host started elsewhere at the same time"},
	{Name: JournalKeep, Type: Int, Default: "200", Min: 1, Max: 1000000,
		Description: "finished rolling runs (and, apart, finished maintenance actions) whose journal the state file keeps"},
	{Name: JournalDays, Type: Int, Default: "90", Min: 1, Max: 36500,
		Description: "days a finished run's or maintenance action's journal is kept"},
}

// Lookup returns the key called name, or an error naming the closest known key.
func Lookup(name string) (Key, error) {
	if err := safetext.Check("setting name", name); err != nil {
		return Key{}, err
	}
	for _, k := range Registry {
		if k.Name == name {
			return k, nil
		}
	}
	if c := Closest(name); distance(name, c) <= max(3, len(name)/3) {
		return Key{}, fmt.Errorf("unknown setting %q: did you mean %s? (`kvmctl config list` shows them all)", name, c)
	}
	return Key{}, fmt.Errorf("unknown setting %q: `kvmctl config list` shows them all", name)
}

// Closest returns the known key nearest to name by edit distance.
func Closest(name string) string {
	best, bestD := "", math.MaxInt
	for _, k := range Registry {
		if d := distance(name, k.Name); d < bestD {
			best, bestD = k.Name, d
		}
	}
	return best
}

// Normalize checks value against k and returns its canonical spelling ("TRUE" -> "true",
// "010" -> "10"), or an error that states the allowed values.
func (k Key) Normalize(value string) (string, error) {
	// Checked before trimming, which would drop a trailing newline or U+0085 unseen.
	if err := safetext.Check(k.Name+" value", value); err != nil {
		return "", err
	}
	v := strings.TrimSpace(value)
	switch k.Type {
	case Bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return "", fmt.Errorf("%s must be true or false, not %q", k.Name, value)
		}
		return strconv.FormatBool(b), nil
	case Int:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || float64(n) < k.Min || float64(n) > k.Max {
			return "", fmt.Errorf("%s must be a whole number from %s to %s, not %q", k.Name, fmtNum(k.Min), fmtNum(k.Max), value)
		}
		return strconv.FormatInt(n, 10), nil
	case Float:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || f < k.Min || f > k.Max {
			return "", fmt.Errorf("%s must be a number from %s to %s, not %q", k.Name, fmtNum(k.Min), fmtNum(k.Max), value)
		}
		return strconv.FormatFloat(f, 'g', -1, 64), nil
	}
	return "", fmt.Errorf("%s has unknown type %s", k.Name, k.Type)
}

// Range describes the allowed values of k for people.
func (k Key) Range() string {
	switch k.Type {
	case Bool:
		return "true|false"
	default:
		return fmtNum(k.Min) + ".." + fmtNum(k.Max)
	}
}

func fmtNum(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// Value is a setting as `config list` and `config get` show it.
type Value struct {
	Key         string `json:"key"`
	Value       string `json:"value"`
	Default     string `json:"default"`
	IsDefault   bool   `json:"is_default"`
	Type        Type   `json:"type"`
	Range       string `json:"range"`
	Description string `json:"description"`
}

// Get reads the effective value of key name.
func Get(tx state.Tx, name string) (Value, error) {
	k, err := Lookup(name)
	if err != nil {
		return Value{}, err
	}
	v := Value{Key: k.Name, Value: k.Default, Default: k.Default, IsDefault: true, Type: k.Type, Range: k.Range(), Description: k.Description}
	raw, err := tx.Get(state.BucketSettings, k.Name)
	switch {
	case state.IsNotFound(err):
	case err != nil:
		return Value{}, err
	default:
		// A value written by another version may no longer be valid; fall back loudly, not silently.
		norm, nerr := k.Normalize(string(raw))
		if nerr != nil {
			return Value{}, fmt.Errorf("stored value: %w: run `kvmctl config unset %s` or set a valid value", nerr, k.Name)
		}
		v.Value, v.IsDefault = norm, false
	}
	return v, nil
}

// List reads the effective value of every known key, in registry order.
func List(tx state.Tx) ([]Value, error) {
	out := make([]Value, 0, len(Registry))
	for _, k := range Registry {
		v, err := Get(tx, k.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Set validates value for key name and stores its canonical spelling.
func Set(tx state.Tx, name, value string) (Value, error) {
	k, err := Lookup(name)
	if err != nil {
		return Value{}, err
	}
	norm, err := k.Normalize(value)
	if err != nil {
		return Value{}, err
	}
	if err := tx.Put(state.BucketSettings, k.Name, []byte(norm)); err != nil {
		return Value{}, err
	}
	if err := checkTogether(tx); err != nil {
		return Value{}, err // the caller's transaction rolls the write back
	}
	return Get(tx, k.Name)
}

// checkTogether refuses values that each pass their own range but contradict each other.
func checkTogether(tx state.Tx) error {
	stage, err := GetInt(tx, StageTimeout)
	if err != nil {
		return err
	}
	ping, err := GetInt(tx, PingInterval)
	if err != nil {
		return err
	}
	if stage < ping {
		return errs.Refusedf("%s (%d) would be below %s (%d): a stage timeout must be at least the ping interval; change the other one first",
			StageTimeout, stage, PingInterval, ping)
	}
	return nil
}

// Unset returns key name to its default.
func Unset(tx state.Tx, name string) (Value, error) {
	k, err := Lookup(name)
	if err != nil {
		return Value{}, err
	}
	if err := tx.Delete(state.BucketSettings, k.Name); err != nil {
		return Value{}, err
	}
	return Get(tx, k.Name)
}

// GetInt reads an integer setting.
func GetInt(tx state.Tx, name string) (int64, error) {
	v, err := Get(tx, name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v.Value, 10, 64)
}

// GetBool reads a boolean setting.
func GetBool(tx state.Tx, name string) (bool, error) {
	v, err := Get(tx, name)
	if err != nil {
		return false, err
	}
	return strconv.ParseBool(v.Value)
}

// GetFloat reads a floating-point setting.
func GetFloat(tx state.Tx, name string) (float64, error) {
	v, err := Get(tx, name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(v.Value, 64)
}

// Names returns every known key, sorted, for shell completion.
func Names() []string {
	out := make([]string, 0, len(Registry))
	for _, k := range Registry {
		out = append(out, k.Name)
	}
	sort.Strings(out)
	return out
}

// distance is the Levenshtein edit distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
