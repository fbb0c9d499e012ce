package notify

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gosnmp/gosnmp"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func receiveTrap(t *testing.T, traps <-chan *gosnmp.SnmpPacket) *gosnmp.SnmpPacket {
	t.Helper()
	select {
	case p := <-traps:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no trap arrived")
		return nil
	}
}

// varbinds maps each OID of a trap to its value, rendered as a string (OctetString bytes as
// text, except the DateAndTime).
func varbinds(t *testing.T, p *gosnmp.SnmpPacket) ([]string, map[string]any) {
	t.Helper()
	var order []string
	vals := map[string]any{}
	for _, v := range p.Variables {
		order = append(order, v.Name)
		vals[v.Name] = v.Value
	}
	return order, vals
}

// The trap is SNMPv2c with the channel's community; it carries sysUpTime (the Notifier's age on
// its clock) and snmpTrapOID (the kind's trap), then every notice object of KVMCTL-MIB in order.
func TestTrapArrives(t *testing.T) {
	r := notifytest.StartTrapReceiver(t, nil)
	addr, traps := r.Addr, r.Traps
	fake := clock.NewFake(time.Time{})
	c := state.NotifyChannel{Name: "traps", Type: state.NotifySNMP, Target: addr, Community: "kvm-traps"}
	nf := New([]state.NotifyChannel{c}, Options{Clock: fake})
	fake.Advance(12340 * time.Millisecond)
	n := fenceOff
	n.Time = time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	if err := nf.Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	p := receiveTrap(t, traps)
	if p.Version != gosnmp.Version2c || p.Community != "kvm-traps" || p.PDUType != gosnmp.SNMPv2Trap {
		t.Errorf("trap version %v community %q type %v", p.Version, p.Community, p.PDUType)
	}
	order, vals := varbinds(t, p)
	obj := func(i int) string { return ".1.3.6.1.4.1.32473.1.1." + strconv.Itoa(i) + ".0" }
	wantOrder := []string{".1.3.6.1.2.1.1.3.0", ".1.3.6.1.6.3.1.1.4.1.0"}
	for i := 1; i <= 10; i++ {
		wantOrder = append(wantOrder, obj(i))
	}
	if strings.Join(order, " ") != strings.Join(wantOrder, " ") {
		t.Fatalf("varbinds\n%q\nwant\n%q", order, wantOrder)
	}
	if up := vals[".1.3.6.1.2.1.1.3.0"]; up != uint32(1234) {
		t.Errorf("sysUpTime %v (%T), want 1234 hundredths", up, up)
	}
	if oid := vals[".1.3.6.1.6.3.1.1.4.1.0"]; oid != ".1.3.6.1.4.1.32473.1.0.1" {
		t.Errorf("snmpTrapOID %v, want kvmctlFenceAction", oid)
	}
	for i, want := range map[int]string{1: "n-1", 2: "fence.action", 4: "h2", 5: "c1", 6: "off", 7: "confirmed off",
		8: fenceOff.Message, 9: "a-17", 10: "fence off h2: confirmed off"} {
		if got, _ := vals[obj(i)].([]byte); string(got) != want {
			t.Errorf("object %d = %q, want %q", i, got, want)
		}
	}
	wantTime := []byte{0x07, 0xea, 1, 2, 3, 4, 5, 6, '+', 0, 0} // 2026-01-02 03:04:05.6 UTC
	if got, _ := vals[obj(3)].([]byte); string(got) != string(wantTime) {
		t.Errorf("kvmctlNoticeTime % x, want % x", got, wantTime)
	}
}

// A kind without a trap of its own goes out as kvmctlNotice; a long message is cut to the 255
// octets of an SnmpAdminString without splitting a character; empty fields are empty strings.
func TestTrapGenericKindAndLongText(t *testing.T) {
	r := notifytest.StartTrapReceiver(t, nil)
	addr, traps := r.Addr, r.Traps
	c := state.NotifyChannel{Name: "traps", Type: state.NotifySNMP, Target: addr, Community: "public"}
	n := Notice{Kind: "ha.later", Host: "h3", Message: strings.Repeat("é", 200)}
	if err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	_, vals := varbinds(t, receiveTrap(t, traps))
	if oid := vals[".1.3.6.1.6.3.1.1.4.1.0"]; oid != ".1.3.6.1.4.1.32473.1.0.100" {
		t.Errorf("snmpTrapOID %v, want kvmctlNotice", oid)
	}
	msg, _ := vals[".1.3.6.1.4.1.32473.1.1.8.0"].([]byte)
	if len(msg) != 254 || !utf8.Valid(msg) {
		t.Errorf("message of %d bytes (valid UTF-8: %v), want 254", len(msg), utf8.Valid(msg))
	}
	if id, _ := vals[".1.3.6.1.4.1.32473.1.1.1.0"].([]byte); len(id) != 24 {
		t.Errorf("notice id %q, want one filled in", id)
	}
	if cl, ok := vals[".1.3.6.1.4.1.32473.1.1.5.0"].([]byte); !ok || len(cl) != 0 {
		t.Errorf("cluster %v, want an empty string", vals[".1.3.6.1.4.1.32473.1.1.5.0"])
	}
}

// A trap receiver that cannot be resolved fails the channel within its limit.
func TestTrapBadTarget(t *testing.T) {
	c := state.NotifyChannel{Name: "traps", Type: state.NotifySNMP, Target: "trap.invalid:162", Community: "public"}
	nf := New([]state.NotifyChannel{c}, Options{Limits: Limits{SNMP: time.Second}})
	err := nf.Notify(context.Background(), fenceOff)
	if err == nil || !strings.Contains(err.Error(), "snmp trap.invalid:162") {
		t.Errorf("Notify: %v, want the target named", err)
	}
}

// Each HA kind goes out as a trap of its own (kvmctlHASuspect .0.5 to kvmctlVMUnplaced .0.13),
// never as the generic kvmctlNotice, carrying its kind and its summary.
func TestHATrapsOfTheirOwn(t *testing.T) {
	r := notifytest.StartTrapReceiver(t, nil)
	c := state.NotifyChannel{Name: "traps", Type: state.NotifySNMP, Target: r.Addr, Community: "public"}
	nf := New([]state.NotifyChannel{c}, Options{})
	want := map[Kind]string{
		KindHASuspect: "5", KindHADegraded: "6", KindHACannotTell: "7", KindHAFencing: "8", KindHAFenced: "9",
		KindHAAvailable: "10", KindHAGuard: "11", KindHARecovered: "12", KindVMUnplaced: "13",
	}
	if len(want) != len(haKinds) {
		t.Fatalf("want has %d kinds, haKinds %d", len(want), len(haKinds))
	}
	for _, k := range haKinds {
		n := Notice{Kind: k, Host: "h2", Cluster: "c1", Action: "off", Result: "r"}
		if err := nf.Notify(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		_, vals := varbinds(t, receiveTrap(t, r.Traps))
		if oid := vals[".1.3.6.1.6.3.1.1.4.1.0"]; oid != ".1.3.6.1.4.1.32473.1.0."+want[k] {
			t.Errorf("%s: snmpTrapOID %v, want kvmctlNotifications.%s", k, oid, want[k])
		}
		if kind, _ := vals[".1.3.6.1.4.1.32473.1.1.2.0"].([]byte); string(kind) != string(k) {
			t.Errorf("%s: kvmctlNoticeKind %q", k, kind)
		}
		if sum, _ := vals[".1.3.6.1.4.1.32473.1.1.10.0"].([]byte); string(sum) != n.Summary() {
			t.Errorf("%s: kvmctlNoticeSummary %q, want %q", k, sum, n.Summary())
		}
	}
	// No two kinds share a trap, and only unknown kinds get the generic one.
	seen := map[string]Kind{}
	for k := range trapNumbers {
		oid := TrapOID(k)
		if other, dup := seen[oid]; dup || oid == TrapOID("ha.later") {
			t.Errorf("%s is sent as %s, like %q or kvmctlNotice", k, oid, other)
		}
		seen[oid] = k
	}
}
