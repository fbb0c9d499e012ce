package inventory

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Document is the YAML form of the inventory: zones hold pods, pods hold clusters, clusters
// hold hosts. Resource states are not part of it: they are the fleet's live condition, not its
// shape. Nor is a host's lab mark: only `kvmctl lab up` sets it, since it lets kvmctl carry VM
// definitions between hosts, and a file applied to the state must not be a way to turn it on.
// Nor is a BMC password: a bmc block names a file that holds it (BMCDoc).
type Document struct {
	Zones []ZoneDoc `yaml:"zones" json:"zones"`
}

// ZoneDoc is one zone and its pods.
type ZoneDoc struct {
	Name string   `yaml:"name" json:"name"`
	Pods []PodDoc `yaml:"pods,omitempty" json:"pods,omitempty"`
}

// PodDoc is one pod and its clusters.
type PodDoc struct {
	Name     string       `yaml:"name" json:"name"`
	Clusters []ClusterDoc `yaml:"clusters,omitempty" json:"clusters,omitempty"`
}

// ClusterDoc is one cluster and its hosts.
type ClusterDoc struct {
	Name string `yaml:"name" json:"name"`
	// BMC holds the BMC settings the cluster's hosts inherit.
	BMC   *BMCDoc   `yaml:"bmc,omitempty" json:"bmc,omitempty"`
	Hosts []HostDoc `yaml:"hosts,omitempty" json:"hosts,omitempty"`
}

// HostDoc is one host.
type HostDoc struct {
	Name    string     `yaml:"name" json:"name"`
	Address string     `yaml:"address" json:"address"`
	Tags    []string   `yaml:"tags,omitempty" json:"tags,omitempty"`
	SSH     *state.SSH `yaml:"ssh,omitempty" json:"ssh,omitempty"`
	// RestartCommand restarts the agent over SSH (default `systemctl restart kvmagent`).
	RestartCommand string `yaml:"restart_command,omitempty" json:"restart_command,omitempty"`
	// BMC holds the host's own BMC settings, over its cluster's.
	BMC *BMCDoc `yaml:"bmc,omitempty" json:"bmc,omitempty"`
}

// BMCDoc is a cluster's or a host's BMC settings (state.BMC, `kvmctl bmc set`). The password
// is never in the file: PasswordFile names a file that holds it (mode 0600, relative to the
// inventory file's directory), read when the file is applied. Export writes no password at
// all, and a block without password_file keeps the password the state has.
type BMCDoc struct {
	Driver       string            `yaml:"driver,omitempty" json:"driver,omitempty"`
	Address      string            `yaml:"address,omitempty" json:"address,omitempty"`
	Port         int               `yaml:"port,omitempty" json:"port,omitempty"`
	Username     string            `yaml:"username,omitempty" json:"username,omitempty"`
	PasswordFile string            `yaml:"password_file,omitempty" json:"password_file,omitempty"`
	Interface    string            `yaml:"interface,omitempty" json:"interface,omitempty"`
	Action       string            `yaml:"action,omitempty" json:"action,omitempty"`
	Exec         string            `yaml:"exec,omitempty" json:"exec,omitempty"`
	Actions      map[string]string `yaml:"actions,omitempty" json:"actions,omitempty"`

	// password is what PasswordFile holds, read by Parse.
	password string
}

// settings are the BMC settings the block gives (its password, if Parse read one).
func (d *BMCDoc) settings() state.BMC {
	return state.BMC{Driver: d.Driver, Address: d.Address, Port: d.Port, Username: d.Username, Password: d.password,
		Interface: d.Interface, Action: d.Action, Exec: d.Exec, Actions: maps.Clone(d.Actions)}
}

// bmcDoc is the block of stored settings b; nil when b sets nothing a file holds.
func bmcDoc(b state.BMC) *BMCDoc {
	d := &BMCDoc{Driver: b.Driver, Address: b.Address, Port: b.Port, Username: b.Username, Interface: b.Interface,
		Action: b.Action, Exec: b.Exec, Actions: maps.Clone(b.Actions)}
	if len(d.Actions) == 0 {
		d.Actions = nil
	}
	if d.settings().IsZero() {
		return nil
	}
	return d
}

// Parsed is a document that passed its own checks, with the position of each element so that
// checks against the state file can still name a line.
type Parsed struct {
	Doc  Document
	name string
	file *ast.File
}

// Parse decodes and checks a whole inventory file. Every problem found is reported, each with
// its line, in one refusal error.
func Parse(name string, data []byte) (*Parsed, error) {
	// Some editors start a UTF-8 file with a byte order mark; go-yaml took it into the first key.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if err := checkText(name, data); err != nil {
		return nil, err
	}
	var file *ast.File
	if err := yamlSafe(func() (err error) {
		file, err = parser.ParseBytes(data, 0)
		return err
	}); err != nil {
		return nil, refuseYAML(name, err)
	}
	if err := checkNodes(name, file); err != nil {
		return nil, err
	}
	p := &Parsed{name: name, file: file}
	if err := yamlSafe(func() error {
		return yaml.UnmarshalWithOptions(data, &p.Doc, yaml.DisallowUnknownField())
	}); err != nil {
		return nil, refuseYAML(name, err)
	}
	if p.Doc.Zones == nil {
		return nil, errs.Refusedf("%s: no zones: the file must start with `zones:` (see `kvmctl inventory export`)", name)
	}
	ps := &problems{p: p}
	add := func(path string, err error) { ps.add(path, err.Error) }
	seen := map[string]map[string]string{"zone": {}, "pod": {}, "cluster": {}, "host": {}, "address": {}}
	unique := func(kind, key, path string) {
		if prev, ok := seen[kind][key]; ok {
			ps.add(path, func() string {
				if line := p.line(prev); line > 0 {
					return fmt.Sprintf("%s %q appears twice (first at line %d)", kind, key, line)
				}
				return fmt.Sprintf("%s %q appears twice", kind, key)
			})
			return
		}
		seen[kind][key] = path
	}
	for zi, z := range p.Doc.Zones {
		zp := fmt.Sprintf("$.zones[%d]", zi)
		if err := ValidName("zone", z.Name); err != nil {
			add(zp, err)
		}
		unique("zone", z.Name, zp)
		for pi, pod := range z.Pods {
			pp := fmt.Sprintf("%s.pods[%d]", zp, pi)
			if err := ValidName("pod", pod.Name); err != nil {
				add(pp, err)
			}
			unique("pod", pod.Name, pp)
			for ci, c := range pod.Clusters {
				cp := fmt.Sprintf("%s.clusters[%d]", pp, ci)
				if err := ValidName("cluster", c.Name); err != nil {
					add(cp, err)
				}
				unique("cluster", c.Name, cp)
				p.checkBMC(ps, cp, c.BMC)
				for hi, hd := range c.Hosts {
					hp := fmt.Sprintf("%s.hosts[%d]", cp, hi)
					if err := ValidHost(hd.host()); err != nil {
						add(hp, err)
					}
					p.checkBMC(ps, hp, hd.BMC)
					unique("host", hd.Name, hp)
					unique("address", hd.Address, hp+".address")
				}
			}
		}
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// checkBMC checks a bmc block at path and reads its password file, relative to the directory
// of the inventory file; each problem is reported at the line of its key.
func (p *Parsed) checkBMC(ps *problems, path string, d *BMCDoc) {
	if d == nil {
		return
	}
	path += ".bmc"
	if d.PasswordFile != "" {
		file := d.PasswordFile
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(p.name), file)
		}
		pw, err := ReadPasswordFile(file)
		if err != nil {
			ps.add(path+".password_file", err.Error)
		}
		d.password = pw
	}
	var be *BMCError
	if err := ValidBMC(d.settings()); errors.As(err, &be) {
		ps.add(path+"."+be.Key, err.Error)
	} else if err != nil {
		ps.add(path, err.Error)
	}
}

// maxProblems is how many problems of one file are reported, each with its line.
const maxProblems = 50

// problems collects the refusals of one file. Past maxProblems it only counts them: a file that
// repeats a mistake, or an alias that repeats it, costs no more to report than its first
// maxProblems, whose line lookups each read the whole file.
type problems struct {
	p    *Parsed
	list []string
	more int
}

// add records a problem at a YAML path; msg is called only for the problems reported.
func (ps *problems) add(path string, msg func() string) {
	if len(ps.list) >= maxProblems {
		ps.more++
		return
	}
	if line := ps.p.line(path); line > 0 {
		ps.list = append(ps.list, fmt.Sprintf("%s:%d: %s", ps.p.name, line, msg()))
	} else {
		// Inside an alias: the line of what it repeats is not known.
		ps.list = append(ps.list, fmt.Sprintf("%s: %s", ps.p.name, msg()))
	}
}

// err is the refusal of every problem recorded, or nil.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	if ps.more > 0 {
		ps.list = append(ps.list, fmt.Sprintf("%s: and %d more problems", ps.p.name, ps.more))
	}
	return errs.Refusedf("%s", strings.Join(ps.list, "\n"))
}

func (h HostDoc) host() state.Host {
	out := state.Host{Name: h.Name, Address: h.Address, Tags: NormalizeTags(h.Tags), RestartCommand: h.RestartCommand}
	if h.SSH != nil {
		out.SSH = *h.SSH
	}
	return out
}

// line returns the line of the node at a YAML path, or 0 when it cannot be found.
func (p *Parsed) line(path string) int {
	line := 0
	// A failed lookup only costs the line number, never the refusal it is for.
	_ = yamlSafe(func() error {
		yp, err := yaml.PathString(path)
		if err != nil {
			return err
		}
		n, err := yp.FilterFile(p.file)
		if err != nil || n == nil || n.GetToken() == nil || n.GetToken().Position == nil {
			return err
		}
		line = n.GetToken().Position.Line
		return nil
	})
	return line
}

// Summary counts what Apply did, per kind.
type Summary struct {
	Created   map[string]int `json:"created"`
	Updated   map[string]int `json:"updated"`
	Unchanged map[string]int `json:"unchanged"`
	// UpdatedHosts names the existing hosts the file changed (their BMC settings included).
	UpdatedHosts []string `json:"updated_hosts,omitempty"`
	// UpdatedClusters names the existing clusters whose BMC settings the file changed.
	UpdatedClusters []string `json:"updated_clusters,omitempty"`
}

// Apply writes a parsed document into tx: missing entities are created (Enabled), existing
// hosts get the file's address, tags and SSH, clusters and hosts with a bmc block get its BMC
// settings (see applyBMC), and nothing absent from the file is removed. An
// entity the file places under another parent than the state does is refused: apply never moves
// things, so a typo cannot carry a cluster's hosts to another pod. Any refusal leaves tx to be
// rolled back by the caller, so a file applies whole or not at all.
func Apply(tx state.Tx, p *Parsed) (Summary, error) {
	s := Summary{Created: map[string]int{}, Updated: map[string]int{}, Unchanged: map[string]int{}}
	existing, err := state.Hosts(tx)
	if err != nil {
		return s, err
	}
	inFile := map[string]bool{}
	for _, z := range p.Doc.Zones {
		for _, pod := range z.Pods {
			for _, c := range pod.Clusters {
				for _, h := range c.Hosts {
					inFile[h.Name] = true
				}
			}
		}
	}
	ps := &problems{p: p}
	refuse := func(path, format string, args ...any) {
		ps.add(path, func() string { return fmt.Sprintf(format, args...) })
	}
	for zi, z := range p.Doc.Zones {
		zp := fmt.Sprintf("$.zones[%d]", zi)
		if _, err := state.GetZone(tx, z.Name); state.IsNotFound(err) {
			if err := state.PutZone(tx, state.Zone{Name: z.Name}); err != nil {
				return s, err
			}
			s.Created["zones"]++
		} else {
			s.Unchanged["zones"]++
		}
		for pi, pd := range z.Pods {
			pp := fmt.Sprintf("%s.pods[%d]", zp, pi)
			switch cur, err := state.GetPod(tx, pd.Name); {
			case state.IsNotFound(err):
				if err := state.PutPod(tx, state.Pod{Name: pd.Name, Zone: z.Name}); err != nil {
					return s, err
				}
				s.Created["pods"]++
			case err != nil:
				return s, err
			case cur.Zone != z.Name:
				refuse(pp, "pod %s is in zone %s, not %s: apply does not move pods; remove it first", pd.Name, cur.Zone, z.Name)
			default:
				s.Unchanged["pods"]++
			}
			for ci, cd := range pd.Clusters {
				cp := fmt.Sprintf("%s.clusters[%d]", pp, ci)
				switch cur, err := state.GetCluster(tx, cd.Name); {
				case state.IsNotFound(err):
					c := state.Cluster{Name: cd.Name, Pod: pd.Name, Zone: z.Name, ResourceState: state.Enabled}
					if err := state.PutCluster(tx, c); err != nil {
						return s, err
					}
					if _, err := applyBMC(tx, "cluster", cd.Name, cd.BMC); err != nil {
						return s, err
					}
					s.Created["clusters"]++
				case err != nil:
					return s, err
				case cur.Pod != pd.Name:
					refuse(cp, "cluster %s is in pod %s, not %s: apply does not move clusters; remove it first", cd.Name, cur.Pod, pd.Name)
				default:
					changed, err := applyBMC(tx, "cluster", cd.Name, cd.BMC)
					if err != nil {
						return s, err
					}
					if !changed {
						s.Unchanged["clusters"]++
						break
					}
					s.Updated["clusters"]++
					s.UpdatedClusters = append(s.UpdatedClusters, cd.Name)
				}
				for hi, hd := range cd.Hosts {
					hp := fmt.Sprintf("%s.hosts[%d]", cp, hi)
					want := hd.host()
					want.Zone, want.Pod, want.Cluster = z.Name, pd.Name, cd.Name
					for _, o := range existing {
						if o.Address == want.Address && o.Name != want.Name && !inFile[o.Name] {
							refuse(hp+".address", "address %s is already host %s's", want.Address, o.Name)
						}
					}
					switch cur, err := state.GetHost(tx, hd.Name); {
					case state.IsNotFound(err):
						want.ResourceState = state.Enabled
						if err := state.PutHost(tx, want); err != nil {
							return s, err
						}
						if _, err := applyBMC(tx, "host", hd.Name, hd.BMC); err != nil {
							return s, err
						}
						s.Created["hosts"]++
					case err != nil:
						return s, err
					case cur.Cluster != cd.Name:
						refuse(hp, "host %s is in cluster %s, not %s: apply does not move hosts; `kvmctl host rm %s` first", hd.Name, cur.Cluster, cd.Name, hd.Name)
					default:
						// The live condition, and what only `kvmctl lab up` says, stay as they are.
						want.ResourceState, want.StateReason, want.Lab, want.Unknown = cur.ResourceState, cur.StateReason, cur.Lab, cur.Unknown
						bmcChanged, err := applyBMC(tx, "host", hd.Name, hd.BMC)
						if err != nil {
							return s, err
						}
						if sameHost(cur, want) && !bmcChanged {
							s.Unchanged["hosts"]++
							continue
						}
						if err := state.PutHost(tx, want); err != nil {
							return s, err
						}
						s.Updated["hosts"]++
						s.UpdatedHosts = append(s.UpdatedHosts, want.Name)
					}
				}
			}
		}
	}
	return s, ps.err()
}

// applyBMC gives a cluster or host (kind) the settings of its bmc block d, and reports whether
// they changed. Without a block nothing changes; a block without password_file keeps the
// password the state has (export writes none), and fields a newer kvmctl stored are kept.
func applyBMC(tx state.Tx, kind, name string, d *BMCDoc) (bool, error) {
	if d == nil {
		return false, nil
	}
	cur, err := state.GetBMC(tx, kind, name)
	if err != nil {
		return false, err
	}
	want := d.settings()
	if want.Password == "" {
		want.Password = cur.Password
	}
	want.Unknown = cur.Unknown
	if len(bmcconf.Changed(cur, want)) == 0 {
		return false, nil
	}
	return true, state.PutBMC(tx, kind, name, want)
}

func sameHost(a, b state.Host) bool {
	return a.Address == b.Address && a.SSH == b.SSH && a.RestartCommand == b.RestartCommand &&
		strings.Join(a.Tags, ",") == strings.Join(b.Tags, ",")
}

// Export builds the document of everything in tx, every list sorted by name, so that
// `inventory export | inventory apply -f -` on a new state gives back the same file.
func Export(tx state.Tx) (Document, error) {
	zones, err := state.Zones(tx)
	if err != nil {
		return Document{}, err
	}
	pods, err := state.Pods(tx)
	if err != nil {
		return Document{}, err
	}
	clusters, err := state.Clusters(tx)
	if err != nil {
		return Document{}, err
	}
	hosts, err := state.Hosts(tx)
	if err != nil {
		return Document{}, err
	}
	bmcs, err := state.ListBMC(tx)
	if err != nil {
		return Document{}, err
	}
	doc := Document{Zones: []ZoneDoc{}}
	for _, z := range zones {
		zd := ZoneDoc{Name: z.Name}
		for _, p := range pods {
			if p.Zone != z.Name {
				continue
			}
			pd := PodDoc{Name: p.Name}
			for _, c := range clusters {
				if c.Pod != p.Name {
					continue
				}
				cd := ClusterDoc{Name: c.Name, BMC: bmcDoc(bmcs[state.BMCKey("cluster", c.Name)])}
				for _, h := range hosts {
					if h.Cluster != c.Name {
						continue
					}
					hd := HostDoc{Name: h.Name, Address: h.Address, Tags: h.Tags, RestartCommand: h.RestartCommand,
						BMC: bmcDoc(bmcs[state.BMCKey("host", h.Name)])}
					if len(hd.Tags) == 0 {
						hd.Tags = nil
					}
					if !h.SSH.IsZero() {
						ssh := h.SSH
						hd.SSH = &ssh
					}
					cd.Hosts = append(cd.Hosts, hd)
				}
				pd.Clusters = append(pd.Clusters, cd)
			}
			zd.Pods = append(zd.Pods, pd)
		}
		doc.Zones = append(doc.Zones, zd)
	}
	sort.SliceStable(doc.Zones, func(i, j int) bool { return doc.Zones[i].Name < doc.Zones[j].Name })
	return doc, nil
}

// Marshal renders a document as YAML.
func Marshal(doc Document) ([]byte, error) {
	return yaml.MarshalWithOptions(doc, yaml.Indent(2), yaml.IndentSequence(true))
}
