package state

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Channels round-trip on every backend, are listed by name, keep a newer kvmctl's fields and go
// away with Delete.
func TestNotifyChannels(t *testing.T) {
	for name, db := range backends(t) {
		t.Run(name, func(t *testing.T) {
			mail := NotifyChannel{Name: "mail", Type: NotifyEmail, SMTP: "smtp.example.net:587", From: "kvmctl@example.net",
				To: []string{"a@example.net", "b@example.net"}, Username: "kvmctl", Password: "pw", StartTLS: true}
			hook := NotifyChannel{Name: "hook", Type: NotifyWebhook, URL: "https://hooks.example.net/kvmctl", Secret: "s"}
			newer := `{"name":"traps","type":"snmp","target":"10.0.0.5:162","community":"public","engine_id":"80001f88"}`
			err := db.Update(func(tx Tx) error {
				if err := PutNotifyChannel(tx, mail); err != nil {
					return err
				}
				if err := PutNotifyChannel(tx, hook); err != nil {
					return err
				}
				return tx.Put(BucketNotify, "traps", []byte(newer))
			})
			if err != nil {
				t.Fatal(err)
			}
			var all []NotifyChannel
			var got NotifyChannel
			err = db.View(func(tx Tx) (err error) {
				if got, err = GetNotifyChannel(tx, "mail"); err != nil {
					return err
				}
				all, err = NotifyChannels(tx)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(mail, got); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
			var names []string
			for _, c := range all {
				names = append(names, c.Name)
			}
			if d := cmp.Diff([]string{"hook", "mail", "traps"}, names); d != "" {
				t.Errorf("names (-want +got):\n%s", d)
			}
			// Rewritten by this kvmctl, the newer field stays.
			err = db.Update(func(tx Tx) error {
				c, err := GetNotifyChannel(tx, "traps")
				if err != nil {
					return err
				}
				c.Community = "private"
				return PutNotifyChannel(tx, c)
			})
			if err != nil {
				t.Fatal(err)
			}
			var raw map[string]any
			_ = db.View(func(tx Tx) error {
				b, err := tx.Get(BucketNotify, "traps")
				if err == nil {
					err = json.Unmarshal(b, &raw)
				}
				return err
			})
			if raw["engine_id"] != "80001f88" || raw["community"] != "private" {
				t.Errorf("after a rewrite: %v; want engine_id kept and the new community", raw)
			}
			if err := db.Update(func(tx Tx) error { return DeleteNotifyChannel(tx, "mail") }); err != nil {
				t.Fatal(err)
			}
			err = db.View(func(tx Tx) error { _, err := GetNotifyChannel(tx, "mail"); return err })
			if !IsNotFound(err) {
				t.Errorf("after delete: %v, want ErrNotFound", err)
			}
		})
	}
}
