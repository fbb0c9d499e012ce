package agent

import (
	"bufio"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/fsutil"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Keys of agent.properties. Where CloudStack's agent.properties has the setting, the name is
// CloudStack's.
const (
	KeyHostName                = "host.name"
	KeyListen                  = "listen"
	KeyTLSCert                 = "tls.cert"
	KeyTLSKey                  = "tls.key"
	KeyTLSCA                   = "tls.ca"
	KeyLibvirtURI              = "libvirt.uri"
	KeyStateDir                = "state.dir"
	KeyHooksDir                = "rolling.maintenance.hooks.dir"
	KeyServiceExecutorDisabled = "rolling.maintenance.service.executor.disabled"
	KeyStageRunner             = "rolling.maintenance.stage.runner"
	KeyHeartbeatDir            = "heartbeat.dir"
	KeyHeartbeatInterval       = "heartbeat.interval"
	KeyBootIDFile              = "boot.id.file"
	KeyVMDiskDirs              = "vm.disk.dirs"
	// KeyLabStorageStallFile is for `kvmctl lab` only: see Config.LabStorageStallFile.
	KeyLabStorageStallFile = "lab.storage.stall.file"
)

// Defaults of the optional keys.
const (
	DefaultListen            = ":9250"
	DefaultLibvirtURI        = "qemu:///system"
	DefaultStateDir          = "/var/lib/kvmagent"
	DefaultHooksDir          = "/etc/kvmagent/hooks"
	DefaultHeartbeatInterval = time.Second
	DefaultBootIDFile        = "/proc/sys/kernel/random/boot_id"
	// DefaultVMDiskDirs is libvirt's default image directory.
	DefaultVMDiskDirs = "/var/lib/libvirt/images"
)

// maxHeartbeatSeconds keeps heartbeat.interval sane: HA neighbours look for the heartbeat's seq
// to advance between two activity checks a few seconds apart, so an interval of hours would make
// every host look dead.
const maxHeartbeatSeconds = 3600

// keyHeartbeatFile is the key that named the heartbeat file before heartbeat.dir: the file's name
// is now fixed (hb-<host.name>, the name HA neighbours read), so a value is refused with the
// heartbeat.dir to set instead, and an empty one is a warning.
const keyHeartbeatFile = "heartbeat.file"

// Config is the agent's configuration, read from agent.properties.
type Config struct {
	// HostName is the host's inventory name; the agent's certificate must carry it.
	HostName string
	// Listen is the TCP address of the HTTPS listener.
	Listen                  string
	TLSCert, TLSKey, TLSCA  string
	LibvirtURI              string
	StateDir                string
	HooksDir                string
	ServiceExecutorDisabled bool
	// StageRunner is the kvmagent-stage the service executor starts for each stage; "" for the
	// one beside the agent's executable.
	StageRunner string
	// HeartbeatDir is the directory on the shared storage where the agent writes its heartbeat
	// file hb-<HostName> and from which it reads its neighbours' in an activity check; "" for no
	// heartbeat (and activity checks read no heartbeats).
	HeartbeatDir      string
	HeartbeatInterval time.Duration
	BootIDFile        string
	// VMDiskDirs are the only directories from which a VM defined through the API may take
	// file disks and boot files (kernel, initrd, loader, nvram): the operator's certificate must
	// not be a way to hand a host file (/etc/shadow) to a guest.
	VMDiskDirs []string
	// LabStorageStallFile is for the lab only ("" on a real host): while this file exists, every
	// heartbeat write blocks, as a write to a hung NFS server does, until the file is removed
	// (`kvmctl lab storage-stall` and `storage-resume` create and remove it).
	LabStorageStallFile string
}

// HeartbeatFile is the path of the agent's heartbeat file, HeartbeatDir/hb-<HostName>; "" when
// HeartbeatDir is not set.
func (c Config) HeartbeatFile() string {
	if c.HeartbeatDir == "" {
		return ""
	}
	return filepath.Join(c.HeartbeatDir, api.HeartbeatFileName(c.HostName))
}

// DefaultConfig returns a Config holding every default; the required keys are empty.
func DefaultConfig() Config {
	return Config{
		Listen:            DefaultListen,
		LibvirtURI:        DefaultLibvirtURI,
		StateDir:          DefaultStateDir,
		HooksDir:          DefaultHooksDir,
		HeartbeatInterval: DefaultHeartbeatInterval,
		BootIDFile:        DefaultBootIDFile,
		VMDiskDirs:        []string{DefaultVMDiskDirs},
	}
}

// key describes one key of agent.properties: how to set it from text and how to write it back.
type key struct {
	name     string
	required bool
	set      func(c *Config, v string) error
	get      func(c Config) string
}

// keys lists every known key in the order Format writes them.
var keys = []key{
	{KeyHostName, true, func(c *Config, v string) error {
		if strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
			return errors.New("must not contain spaces or control characters")
		}
		c.HostName = v
		return nil
	}, func(c Config) string { return c.HostName }},
	{KeyListen, false, func(c *Config, v string) error {
		if err := checkListen(v); err != nil {
			return err
		}
		c.Listen = v
		return nil
	}, func(c Config) string { return c.Listen }},
	{KeyTLSCert, true, setString(func(c *Config) *string { return &c.TLSCert }), func(c Config) string { return c.TLSCert }},
	{KeyTLSKey, true, setString(func(c *Config) *string { return &c.TLSKey }), func(c Config) string { return c.TLSKey }},
	{KeyTLSCA, true, setString(func(c *Config) *string { return &c.TLSCA }), func(c Config) string { return c.TLSCA }},
	{KeyLibvirtURI, false, func(c *Config, v string) error {
		u, err := url.Parse(v)
		if err != nil || u.Scheme == "" {
			return errors.New("want a libvirt URI such as qemu:///system or test:///default")
		}
		c.LibvirtURI = v
		return nil
	}, func(c Config) string { return c.LibvirtURI }},
	{KeyStateDir, false, setString(func(c *Config) *string { return &c.StateDir }), func(c Config) string { return c.StateDir }},
	{KeyHooksDir, false, setString(func(c *Config) *string { return &c.HooksDir }), func(c Config) string { return c.HooksDir }},
	{KeyServiceExecutorDisabled, false, func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		c.ServiceExecutorDisabled = b
		return nil
	}, func(c Config) string { return strconv.FormatBool(c.ServiceExecutorDisabled) }},
	{KeyStageRunner, false, func(c *Config, v string) error {
		if !filepath.IsAbs(v) {
			return fmt.Errorf("want the absolute path of %s", hooks.StageRunnerName)
		}
		c.StageRunner = filepath.Clean(v)
		return nil
	}, func(c Config) string { return c.StageRunner }},
	{KeyHeartbeatDir, false, func(c *Config, v string) error {
		if !filepath.IsAbs(v) {
			return errors.New("want the absolute path of a directory on the shared storage, mounted at the same path on every host of the cluster")
		}
		if err := safetext.Check("directory", v); err != nil {
			return err
		}
		c.HeartbeatDir = filepath.Clean(v)
		return nil
	}, func(c Config) string { return c.HeartbeatDir }},
	{KeyHeartbeatInterval, false, func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHeartbeatSeconds {
			return fmt.Errorf("want a whole number of seconds from 1 to %d", maxHeartbeatSeconds)
		}
		c.HeartbeatInterval = time.Duration(n) * time.Second
		return nil
	}, func(c Config) string { return strconv.Itoa(int(c.HeartbeatInterval / time.Second)) }},
	{KeyBootIDFile, false, setString(func(c *Config) *string { return &c.BootIDFile }), func(c Config) string { return c.BootIDFile }},
	{KeyVMDiskDirs, false, func(c *Config, v string) error {
		var dirs []string
		for _, d := range strings.Split(v, ",") {
			if d = strings.TrimSpace(d); d == "" {
				continue
			}
			if !filepath.IsAbs(d) {
				return fmt.Errorf("%q is not an absolute directory", d)
			}
			dirs = append(dirs, filepath.Clean(d))
		}
		if len(dirs) == 0 {
			return errors.New("want one or more absolute directories, comma-separated")
		}
		c.VMDiskDirs = dirs
		return nil
	}, func(c Config) string { return strings.Join(c.VMDiskDirs, ",") }},
	{KeyLabStorageStallFile, false, func(c *Config, v string) error {
		if !filepath.IsAbs(v) {
			return errors.New("want an absolute path (the lab's storage stall flag file), or nothing on a real host")
		}
		c.LabStorageStallFile = filepath.Clean(v)
		return nil
	}, func(c Config) string { return c.LabStorageStallFile }},
}

func setString(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		*field(c) = v
		return nil
	}
}

func lookupKey(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

// KnownKeys returns the names of every key of agent.properties.
func KnownKeys() []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.name
	}
	return out
}

func checkListen(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("want HOST:PORT or :PORT (e.g. %s): %v", DefaultListen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if strings.ContainsAny(host, " \t/") {
		return fmt.Errorf("host %q is not an address", host)
	}
	return nil
}

// Problem is one thing wrong with agent.properties. Line is 0 when the problem is not on one
// line, such as a missing key.
type Problem struct {
	Line int
	Key  string
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// ConfigError lists every problem found in agent.properties, so that one edit fixes them all.
type ConfigError struct {
	// Path is the file, "" when read from a reader.
	Path     string
	Problems []Problem
}

func (e *ConfigError) Error() string {
	name := e.Path
	if name == "" {
		name = "agent.properties"
	}
	var b strings.Builder
	if len(e.Problems) == 1 {
		fmt.Fprintf(&b, "%s: %s", name, e.Problems[0])
		return b.String()
	}
	fmt.Fprintf(&b, "%s has %d problems:", name, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.String())
	}
	return b.String()
}

// Warning is something in agent.properties the agent ignores, such as an unknown key.
type Warning struct {
	Line int
	Key  string
	// Closest is the known key nearest to Key.
	Closest string
	// Msg, when set, says why Key is ignored instead of "unknown key" (a retired key).
	Msg string
}

func (w Warning) String() string {
	if w.Msg != "" {
		return fmt.Sprintf("line %d: %s: %s", w.Line, w.Key, w.Msg)
	}
	return fmt.Sprintf("line %d: unknown key %q ignored (did you mean %q?)", w.Line, w.Key, w.Closest)
}

// maxLine bounds one line of agent.properties.
const maxLine = 64 << 10

// ParseConfig reads agent.properties: key=value lines, # comments and blank lines, whitespace
// around keys and values trimmed. It applies the defaults and checks every value, and returns a
// *ConfigError that lists every problem (with its line) rather than the first. Unknown keys are
// warnings. It does not touch the file system; LoadConfig does.
func ParseConfig(r io.Reader) (Config, []Warning, error) {
	c, _, warns, probs := parseConfig(r)
	if len(probs) > 0 {
		return c, warns, &ConfigError{Problems: probs}
	}
	return c, warns, nil
}

// parseConfig is ParseConfig, also returning on which line each key was set.
func parseConfig(r io.Reader) (Config, map[string]int, []Warning, []Problem) {
	c := DefaultConfig()
	lines := map[string]int{}
	invalid := map[string]bool{} // set to a value that was refused: already reported
	var (
		warns []Warning
		probs []Problem
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			probs = append(probs, Problem{Line: n, Msg: fmt.Sprintf("%q is not key=value", abbreviate(line))})
			continue
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if name == "" {
			probs = append(probs, Problem{Line: n, Msg: "empty key before '='"})
			continue
		}
		if name == keyHeartbeatFile {
			if w, p := retiredHeartbeatFile(n, value); p != nil {
				probs = append(probs, *p)
			} else {
				warns = append(warns, w)
			}
			continue
		}
		k, known := lookupKey(name)
		if !known {
			warns = append(warns, Warning{Line: n, Key: name, Closest: closestKey(name)})
			continue
		}
		if first, dup := lines[name]; dup {
			probs = append(probs, Problem{Line: n, Key: name, Msg: fmt.Sprintf("set again (first set on line %d): keep one", first)})
			continue
		}
		lines[name] = n
		if value == "" {
			// An empty value means "use the default"; required keys are reported below.
			continue
		}
		if err := k.set(&c, value); err != nil {
			invalid[name] = true
			probs = append(probs, Problem{Line: n, Key: name, Msg: fmt.Sprintf("%q: %v", abbreviate(value), err)})
		}
	}
	if err := sc.Err(); err != nil {
		probs = append(probs, Problem{Line: n + 1, Msg: fmt.Sprintf("cannot read: %v", err)})
	}
	for _, k := range keys {
		if k.required && k.get(c) == "" && !invalid[k.name] {
			if line, ok := lines[k.name]; ok {
				probs = append(probs, Problem{Line: line, Key: k.name, Msg: "required, but empty"})
			} else {
				probs = append(probs, Problem{Key: k.name, Msg: "required, but missing"})
			}
		}
	}
	return c, lines, warns, probs
}

// retiredHeartbeatFile handles heartbeat.file on line n: a value is a problem naming the
// heartbeat.dir to set instead (the agent would otherwise write no heartbeat where the operator
// expects one); an empty value asked for no heartbeat, which is still the default, so it is only
// a warning.
func retiredHeartbeatFile(n int, value string) (Warning, *Problem) {
	if value == "" {
		return Warning{Line: n, Key: keyHeartbeatFile, Msg: "ignored: the key is retired (" + KeyHeartbeatDir + " replaces it): remove the line"}, nil
	}
	dir := filepath.Dir(value)
	return Warning{}, &Problem{Line: n, Key: keyHeartbeatFile, Msg: fmt.Sprintf(
		"%q: the key is retired: set %s=%s instead and remove this line; the agent then writes %s there, the name HA neighbours read",
		abbreviate(value), KeyHeartbeatDir, dir, filepath.Join(dir, api.HeartbeatFileName("<"+KeyHostName+">")))}
}

func abbreviate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// LoadConfig reads and checks the agent.properties at path: ParseConfig, then the files it
// names (certificate, key and CA readable, a matching pair issued for host.name; boot id file
// readable). Every problem of both kinds is in one *ConfigError.
func LoadConfig(path string) (Config, []Warning, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, nil, &ConfigError{Path: path, Problems: []Problem{{Msg: fmt.Sprintf("cannot open: %v", err)}}}
	}
	defer f.Close()
	c, lines, warns, probs := parseConfig(f)
	probs = append(probs, checkFiles(c, lines)...)
	if len(probs) > 0 {
		return c, warns, &ConfigError{Path: path, Problems: probs}
	}
	return c, warns, nil
}

// Check reports the problems with the files c names, as LoadConfig does.
func (c Config) Check() error {
	if probs := checkFiles(c, nil); len(probs) > 0 {
		return &ConfigError{Problems: probs}
	}
	return nil
}

func checkFiles(c Config, lines map[string]int) []Problem {
	var probs []Problem
	add := func(k, msg string) { probs = append(probs, Problem{Line: lines[k], Key: k, Msg: msg}) }
	readable := true
	var certPEM []byte
	for _, f := range []struct {
		key, path string
	}{{KeyTLSCert, c.TLSCert}, {KeyTLSKey, c.TLSKey}, {KeyTLSCA, c.TLSCA}} {
		if f.path == "" {
			readable = false // reported by the parser
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			add(f.key, fmt.Sprintf("cannot read: %v", err))
			readable = false
			continue
		}
		if f.key == KeyTLSCert {
			certPEM = b
		}
		if f.key == KeyTLSKey {
			if msg := checkKeyMode(f.path); msg != "" {
				add(f.key, msg)
			}
		}
	}
	if readable {
		if _, err := pki.ServerConfig(c.TLSCert, c.TLSKey, c.TLSCA); err != nil {
			add(KeyTLSCert, fmt.Sprintf("%v: issue a new one with `kvmctl pki issue-agent %s`", err, c.HostName))
		} else if c.HostName != "" {
			if block, _ := pem.Decode(certPEM); block != nil {
				if cert, err := x509.ParseCertificate(block.Bytes); err == nil {
					if err := cert.VerifyHostname(c.HostName); err != nil {
						add(KeyTLSCert, fmt.Sprintf("%s is not for %s=%s (%v): kvmctl would refuse this agent; issue one with `kvmctl pki issue-agent %s`",
							c.TLSCert, KeyHostName, c.HostName, err, c.HostName))
					}
				}
			}
		}
	}
	if c.BootIDFile != "" {
		if _, err := os.ReadFile(c.BootIDFile); err != nil {
			add(KeyBootIDFile, fmt.Sprintf("cannot read: %v", err))
		}
	}
	if c.StageRunner != "" {
		if err := hooks.CheckStageRunner(c.StageRunner); err != nil {
			add(KeyStageRunner, fmt.Sprintf("%v (or leave it empty for the %s beside kvmagent)", err, hooks.StageRunnerName))
		}
	}
	return probs
}

// checkKeyMode returns why the private key at path is exposed, or "": whoever can read it can
// impersonate the agent to kvmctl.
func checkKeyMode(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Sprintf("cannot stat: %v", err)
	}
	mode := fi.Mode().Perm()
	what := fsutil.Exposure(mode)
	if what == "" {
		return ""
	}
	return fmt.Sprintf("%s %s is %s (mode %04o): chmod 600 %s", KeyTLSKey, path, what, mode, path)
}

// Format writes c as agent.properties, one key=value line per known key. ParseConfig of the
// result returns c again.
func (c Config) Format() string {
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k.name, k.get(c))
	}
	return b.String()
}

// closestKey returns the known key nearest to name by Levenshtein distance.
func closestKey(name string) string {
	if r := []rune(name); len(r) > 64 {
		// No key is that long; the prefix decides, and the distance stays cheap.
		name = string(r[:64])
	}
	best, bestD := "", -1
	for _, k := range keys {
		if d := levenshtein(name, k.name); bestD < 0 || d < bestD {
			best, bestD = k.name, d
		}
	}
	return best
}

// levenshtein is the edit distance between a and b, counted in runes.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
