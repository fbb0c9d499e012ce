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
	// Every kind with a trap number has a NOTIFICATION-TYPE at that number, under its stable name,
	// whose DESCRIPTION starts "Kind KIND:"; every NOTIFICATION-TYPE but kvmctlNotice is such a kind.
	trapNames := map[Kind]string{
		KindFenceAction: "kvmctlFenceAction", KindFenceFailed: "kvmctlFenceFailed",
		KindFenceCapReached: "kvmctlFenceCapReached", KindTest: "kvmctlTestNotice",
		KindHASuspect: "kvmctlHASuspect", KindHADegraded: "kvmctlHADegraded", KindHACannotTell: "kvmctlHACannotTell",
		KindHAFencing: "kvmctlHAFencing", KindHAFenced: "kvmctlHAFenced", KindHAAvailable: "kvmctlHAAvailable",
		KindHAGuard: "kvmctlHAGuard", KindHARecovered: "kvmctlHARecovered", KindVMUnplaced: "kvmctlVMUnplaced",
	}
	notifications := mibNotifications(mib)
	numbers := map[int]Kind{}
	for kind, n := range trapNumbers {
		if other, dup := numbers[n]; dup || n == trapGeneric || n <= 0 {
			t.Errorf("%s has trap number %d, taken by %q or kvmctlNotice", kind, n, other)
		}
		numbers[n] = kind
		name, ok := trapNames[kind]
		if !ok {
			t.Errorf("kind %s has trap number %d but no MIB name in this test", kind, n)
			continue
		}
		if want := "kvmctlNotifications " + strconv.Itoa(n); assigned[name] != want {
			t.Errorf("%s is %q in the MIB, the code sends %s as %q", name, assigned[name], kind, want)
		}
		if got := notifications[name]; got != kind {
			t.Errorf("the DESCRIPTION of %s names kind %q, want it to start \"Kind %s:\"", name, got, kind)
		}
	}
	for name, kind := range notifications {
		if name == "kvmctlNotice" {
			continue
		}
		if _, ok := trapNumbers[kind]; !ok || trapNames[kind] != name {
			t.Errorf("the MIB's %s (kind %q) is not a trap the code sends", name, kind)
		}
	}
	if want := "kvmctlNotifications " + strconv.Itoa(trapGeneric); assigned["kvmctlNotice"] != want {
		t.Errorf("kvmctlNotice is %q, the code sends %q", assigned["kvmctlNotice"], want)
	}
	group := regexp.MustCompile(`NOTIFICATIONS\s+\{([^}]*)\}`).FindStringSubmatch(mib)
	if group == nil {
		t.Fatal("no NOTIFICATION-GROUP")
	}
	inGroup := map[string]bool{}
	for _, name := range strings.Fields(strings.ReplaceAll(group[1], ",", " ")) {
		inGroup[name] = true
	}
	for name := range notifications {
		if !inGroup[name] {
			t.Errorf("%s is not in kvmctlNotificationGroup", name)
		}
	}
	if len(inGroup) != len(notifications) {
		t.Errorf("kvmctlNotificationGroup lists %d notifications, the MIB defines %d", len(inGroup), len(notifications))
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
	if len(lists) != len(notifications)+1 { // each notification and the object group
		t.Errorf("%d OBJECTS clauses, want %d", len(lists), len(notifications)+1)
	}
	for _, l := range lists {
		if got := strings.Join(strings.Fields(strings.ReplaceAll(l[1], ",", " ")), ","); got != want {
			t.Errorf("OBJECTS { %s }, want the code's order { %s }", got, want)
		}
	}
}

// mibNotifications maps each NOTIFICATION-TYPE of mib to the kind its DESCRIPTION starts with
// ("Kind fence.action: ..."), or "" when it names none.
func mibNotifications(mib string) map[string]Kind {
	out := map[string]Kind{}
	def := regexp.MustCompile(`(?ms)^(\w+)\s+NOTIFICATION-TYPE\b.*?DESCRIPTION\s+"([^"]*)"`)
	kind := regexp.MustCompile(`^Kind ([a-z_.]+):`)
	for _, m := range def.FindAllStringSubmatch(mib, -1) {
		out[m[1]] = ""
		if k := kind.FindStringSubmatch(m[2]); k != nil {
			out[m[1]] = Kind(k[1])
		}
	}
	return out
}

// docs/snmp.md's tree lists every trap the code sends, with its number and kind.
func TestSNMPDocListsTraps(t *testing.T) {
	raw, err := os.ReadFile("../../docs/snmp.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	mib, err := os.ReadFile(mibFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, kind := range mibNotifications(string(mib)) {
		n, ok := trapNumbers[kind]
		if name == "kvmctlNotice" {
			n, ok = trapGeneric, true
		}
		if !ok {
			continue // TestMIBMatchesCode says so
		}
		line := regexp.MustCompile(`(?m)── ` + name + `\s+\.0\.` + strconv.Itoa(n) + `\s+(\S.*)$`).FindStringSubmatch(doc)
		switch {
		case line == nil:
			t.Errorf("docs/snmp.md does not list %s as .0.%d", name, n)
		case kind != "" && !strings.HasPrefix(line[1], "kind "+string(kind)+":"):
			t.Errorf("docs/snmp.md lists %s as %q, want it to start \"kind %s:\"", name, line[1], kind)
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
