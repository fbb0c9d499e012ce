package notify

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const mibFile = "../../docs/KVMCTL-MIB.txt"

// The MIB file and the code agree: the module's place, each trap's number, each object's number
// and the order of the objects every notification lists (the order of the trap's varbinds).
func TestMIBMatchesCode(t *testing.T) {
	raw, err := os.ReadFile(mibFile)
	if err != nil {
		t.Fatal(err)
	}
	mib := string(raw)
	// Each definition starts a line with its name and macro; its value is the first "::= { ... }"
	// after that.
	assigned := map[string]string{} // name -> "parent N"
	header := regexp.MustCompile(`(?m)^(\w+)\s+(?:OBJECT IDENTIFIER|MODULE-IDENTITY|OBJECT-TYPE|NOTIFICATION-TYPE)\b`)
	value := regexp.MustCompile(`::=\s*\{([^}]*)\}`)
	for _, h := range header.FindAllStringSubmatchIndex(mib, -1) {
		if v := value.FindStringSubmatch(mib[h[1]:]); v != nil {
			assigned[mib[h[2]:h[3]]] = strings.Join(strings.Fields(v[1]), " ")
		}
	}
	// The module under the placeholder enterprise, as oidKvmctlMIB says.
	if assigned["kvmctlPlaceholderEnterprise"] != "enterprises 32473" || assigned["kvmctlMIB"] != "kvmctlPlaceholderEnterprise 1" ||
		oidKvmctlMIB != ".1.3.6.1.4.1.32473.1" {
		t.Errorf("module placed at %q under %q; the code says %s", assigned["kvmctlMIB"], assigned["kvmctlPlaceholderEnterprise"], oidKvmctlMIB)
	}
	if assigned["kvmctlNotifications"] != "kvmctlMIB 0" || assigned["kvmctlNoticeObjects"] != "kvmctlMIB 1" {
		t.Errorf("notifications at %q, objects at %q", assigned["kvmctlNotifications"], assigned["kvmctlNoticeObjects"])
	}
	trapNames := map[Kind]string{KindFenceAction: "kvmctlFenceAction", KindFenceFailed: "kvmctlFenceFailed",
		KindFenceCapReached: "kvmctlFenceCapReached", KindTest: "kvmctlTestNotice"}
	if len(trapNames) != len(trapNumbers) {
		t.Fatalf("a kind with a trap has no name here: %v", trapNumbers)
	}
	for kind, name := range trapNames {
		if want := "kvmctlNotifications " + strconv.Itoa(trapNumbers[kind]); assigned[name] != want {
			t.Errorf("%s is %q in the MIB, the code sends %s as %q", name, assigned[name], kind, want)
		}
	}
	if want := "kvmctlNotifications " + strconv.Itoa(trapGeneric); assigned["kvmctlNotice"] != want {
		t.Errorf("kvmctlNotice is %q, the code sends %q", assigned["kvmctlNotice"], want)
	}
	var names []string
	for _, o := range noticeObjects {
		names = append(names, o.name)
		if want := "kvmctlNoticeObjects " + strconv.Itoa(o.n); assigned[o.name] != want {
			t.Errorf("%s is %q in the MIB, %q in the code", o.name, assigned[o.name], want)
		}
	}
	want := strings.Join(names, ",")
	lists := regexp.MustCompile(`OBJECTS\s+\{([^}]*)\}`).FindAllStringSubmatch(mib, -1)
	if len(lists) != 6 { // five notifications and the object group
		t.Errorf("%d OBJECTS clauses, want 6", len(lists))
	}
	for _, l := range lists {
		if got := strings.Join(strings.Fields(strings.ReplaceAll(l[1], ",", " ")), ","); got != want {
			t.Errorf("OBJECTS { %s }, want the code's order { %s }", got, want)
		}
	}
}

// The MIB parses as SMIv2 with libsmi's smilint, where it is installed and finds the IETF
// modules KVMCTL-MIB imports (Debian's libsmi2-common ships none: point SMIPATH at a directory
// that holds SNMPv2-SMI, SNMPv2-TC, SNMPv2-CONF and SNMP-FRAMEWORK-MIB, e.g. net-snmp's mibs/).
func TestMIBLints(t *testing.T) {
	if _, err := exec.LookPath("smilint"); err != nil {
		t.Skip("smilint is not installed (Debian: apt-get install smitools)")
	}
	out, _ := exec.Command("smilint", "-l", "9", "-s", mibFile).CombinedOutput()
	if strings.Contains(string(out), "failed to locate MIB module") {
		t.Skipf("smilint cannot find the modules KVMCTL-MIB imports: set SMIPATH\n%s", out)
	}
	if len(out) != 0 {
		t.Errorf("smilint -l 9 %s:\n%s", mibFile, out)
	}
}
