package fence

import (
	"fmt"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Sources of an effective setting.
const (
	SourceHost    = "host"
	SourceCluster = "cluster"
)

// Effective merges a cluster's BMC settings (its hosts' defaults) with a host's (its
// overrides), field by field as seed 002 asks: a field the host sets wins, else the cluster's.
// The second result names, for every field of bmcconf.FieldNames, where its value came from:
// "host", "cluster", or "" when neither sets it. Fields kept for a newer kvmctl are not merged.
func Effective(cluster, host state.BMC) (state.BMC, map[string]string) {
	var out state.BMC
	names := bmcconf.FieldNames()
	sources := make(map[string]string, len(names))
	for _, f := range names {
		h, _ := bmcconf.Get(host, f)
		c, _ := bmcconf.Get(cluster, f)
		switch {
		case h != "":
			_ = bmcconf.Set(&out, f, h)
			sources[f] = SourceHost
		case c != "":
			_ = bmcconf.Set(&out, f, c)
			sources[f] = SourceCluster
		default:
			sources[f] = ""
		}
	}
	return out, sources
}

// Missing lists, for effective settings b, the fields its driver needs and b lacks, in
// bmcconf.FieldNames order: nothing means Open can build the driver.
func Missing(b state.BMC) []string {
	b = bmcconf.WithDefaults(b)
	need := map[string]bool{}
	switch b.Driver {
	case bmcconf.DriverExec:
		if b.Exec == "" && len(b.Actions) == 0 {
			need[bmcconf.FieldExec] = true
		}
		for _, t := range bmcconf.Templates(b) {
			for _, f := range t.Needs() {
				need[f] = true
			}
		}
	default:
		need[bmcconf.FieldAddress], need[bmcconf.FieldUsername], need[bmcconf.FieldPassword] = true, true, true
	}
	var out []string
	for _, f := range bmcconf.FieldNames() {
		if v, _ := bmcconf.Get(b, f); need[f] && v == "" {
			out = append(out, f)
		}
	}
	return out
}

// incomplete is the refusal of settings that lack fields: it names each and how to set it.
func incomplete(host string, missing []string) error {
	var how []string
	for _, f := range missing {
		flag := "--" + f
		switch f {
		case bmcconf.FieldPassword:
			flag = "--password-file F (or --password-stdin)"
		case bmcconf.FieldExec:
			flag = "--exec PROGRAM (or --action-off T ... templates)"
		default:
			flag += " " + strings.ToUpper(strings.TrimPrefix(f, "action-"))
		}
		how = append(how, flag)
	}
	return fmt.Errorf("the BMC settings of host %s lack %s: set them with `kvmctl bmc set --host %s %s` (or with --cluster for all hosts of its cluster)",
		host, strings.Join(missing, ", "), host, strings.Join(how, " "))
}
