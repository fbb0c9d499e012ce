package notify

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gosnmp/gosnmp"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// The OIDs of KVMCTL-MIB (docs/KVMCTL-MIB.txt, docs/snmp.md). kvmctl has no IANA Private
// Enterprise Number: its tree sits under 32473, the number RFC 5612 reserves for documentation,
// as a PLACEHOLDER until one is assigned. A test checks that the MIB file says the same.
const (
	// oidKvmctlMIB is kvmctlMIB, enterprises.32473.1.
	oidKvmctlMIB = ".1.3.6.1.4.1.32473.1"
	// oidNotifications is where the traps are (kvmctlNotifications, .0: SMIv2's rule for
	// notifications that map back to SNMPv1 traps).
	oidNotifications = oidKvmctlMIB + ".0"
	// oidNoticeObjects holds the objects the traps carry (kvmctlNoticeObjects).
	oidNoticeObjects = oidKvmctlMIB + ".1"

	oidSysUpTime   = ".1.3.6.1.2.1.1.3.0"
	oidSnmpTrapOID = ".1.3.6.1.6.3.1.1.4.1.0"
)

// trapNumbers are the kinds with a trap of their own, under kvmctlNotifications; any other kind
// goes out as kvmctlNotice. A number once given is never reused for another kind: receivers
// filter on it.
var trapNumbers = map[Kind]int{
	KindFenceAction:     1,
	KindFenceFailed:     2,
	KindFenceCapReached: 3,
	KindTest:            4,
	KindHASuspect:       5,
	KindHADegraded:      6,
	KindHACannotTell:    7,
	KindHAFencing:       8,
	KindHAFenced:        9,
	KindHAAvailable:     10,
	KindHAGuard:         11,
	KindHARecovered:     12,
	KindVMUnplaced:      13,
}

// trapGeneric is kvmctlNotice's number: a notice of a kind without a trap of its own.
const trapGeneric = 100

// TrapOID returns the snmpTrapOID.0 of a notice of kind k.
func TrapOID(k Kind) string {
	n, ok := trapNumbers[k]
	if !ok {
		n = trapGeneric
	}
	return oidNotifications + "." + strconv.Itoa(n)
}

// noticeObject is one of the objects every trap carries, in the order of the MIB's OBJECTS
// clause; each is sent as instance .0.
type noticeObject struct {
	name  string // the MIB's name
	n     int    // its number under kvmctlNoticeObjects
	value func(Notice) string
}

var noticeObjects = []noticeObject{
	{"kvmctlNoticeId", 1, func(n Notice) string { return n.ID }},
	{"kvmctlNoticeKind", 2, func(n Notice) string { return string(n.Kind) }},
	{"kvmctlNoticeTime", 3, nil}, // DateAndTime, see dateAndTime
	{"kvmctlNoticeHost", 4, func(n Notice) string { return n.Host }},
	{"kvmctlNoticeCluster", 5, func(n Notice) string { return n.Cluster }},
	{"kvmctlNoticeAction", 6, func(n Notice) string { return n.Action }},
	{"kvmctlNoticeResult", 7, func(n Notice) string { return n.Result }},
	{"kvmctlNoticeMessage", 8, func(n Notice) string { return n.Message }},
	{"kvmctlNoticeAuditId", 9, func(n Notice) string { return n.AuditID }},
	{"kvmctlNoticeSummary", 10, func(n Notice) string { return n.Summary() }},
}

func (o noticeObject) oid() string { return oidNoticeObjects + "." + strconv.Itoa(o.n) + ".0" }

// snmpSender returns the send function of an SNMPv2c trap channel: one trap, bounded by l.SNMP.
// A v2c trap is not acknowledged: nil means it was handed to the network, not that it arrived.
func (nf *Notifier) snmpSender(c state.NotifyChannel, l Limits) func(context.Context, Notice) (int, error) {
	host, portStr, _ := net.SplitHostPort(c.Target)
	port, _ := strconv.ParseUint(portStr, 10, 16)
	return func(ctx context.Context, n Notice) (int, error) {
		ctx, cancel := context.WithTimeout(ctx, l.SNMP)
		defer cancel()
		g := &gosnmp.GoSNMP{
			Target:    host,
			Port:      uint16(port),
			Transport: "udp",
			Community: c.Community,
			Version:   gosnmp.Version2c,
			Timeout:   l.SNMP,
			Retries:   0,
			MaxOids:   gosnmp.MaxOids,
			Context:   ctx,
		}
		if err := g.Connect(); err != nil {
			return 1, fmt.Errorf("snmp %s: %w", c.Target, err)
		}
		defer g.Conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = g.Conn.SetDeadline(dl)
		}
		if _, err := g.SendTrap(gosnmp.SnmpTrap{Variables: nf.trapVariables(n)}); err != nil {
			return 1, fmt.Errorf("snmp %s: send trap: %w", c.Target, err)
		}
		return 1, nil
	}
}

// trapVariables are the trap's varbinds: sysUpTime.0 and snmpTrapOID.0 (RFC 3416), then every
// notice object, empty strings included, so that each trap has the MIB's OBJECTS in order.
func (nf *Notifier) trapVariables(n Notice) []gosnmp.SnmpPDU {
	vars := []gosnmp.SnmpPDU{
		{Name: oidSysUpTime, Type: gosnmp.TimeTicks, Value: nf.uptime()},
		{Name: oidSnmpTrapOID, Type: gosnmp.ObjectIdentifier, Value: TrapOID(n.Kind)},
	}
	for _, o := range noticeObjects {
		var v []byte
		if o.value == nil {
			v = dateAndTime(n.Time)
		} else {
			v = []byte(truncate(o.value(n), 255))
		}
		vars = append(vars, gosnmp.SnmpPDU{Name: o.oid(), Type: gosnmp.OctetString, Value: v})
	}
	return vars
}

// uptime is sysUpTime: hundredths of a second since the Notifier was made (on its clock),
// wrapping at 2^32 as TimeTicks do.
func (nf *Notifier) uptime() uint32 {
	return uint32(nf.clock.Now().Sub(nf.started) / (10 * time.Millisecond)) //nolint:gosec // TimeTicks wrap by definition
}

// dateAndTime encodes t as SNMPv2-TC's DateAndTime, 11 octets in UTC: year (2), month, day,
// hour, minutes, seconds, deci-seconds, '+', 0 hours and 0 minutes from UTC.
func dateAndTime(t time.Time) []byte {
	t = t.UTC()
	y := t.Year()
	return []byte{byte(y >> 8), byte(y), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()),
		byte(t.Second()), byte(t.Nanosecond() / 100_000_000), '+', 0, 0}
}

// truncate cuts s to at most max bytes without splitting a UTF-8 character: SnmpAdminString
// holds 255 octets.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
