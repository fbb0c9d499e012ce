package settings

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/state"
)

func TestDefaultsAreCloudStacks(t *testing.T) {
	want := map[string]string{StageTimeout: "1800", PingInterval: "10", WaitMaintenanceTimeout: "1800", SSHToAgent: "true"}
	for name, def := range want {
		k, err := Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if k.Default != def {
			t.Errorf("%s default = %s, want %s", name, k.Default, def)
		}
		if _, err := k.Normalize(k.Default); err != nil {
			t.Errorf("%s default does not validate: %v", name, err)
		}
	}
}

func TestLookupSuggestsClosest(t *testing.T) {
	_, err := Lookup("kvm.rolling.maintenance.ping.intervl")
	if err == nil || !strings.Contains(err.Error(), "did you mean "+PingInterval) {
		t.Errorf("Lookup(typo) = %v, want a suggestion of %s", err, PingInterval)
	}
	_, err = Lookup("kvm.ssh.to.agnet")
	if err == nil || !strings.Contains(err.Error(), SSHToAgent) {
		t.Errorf("Lookup(typo) = %v, want a suggestion of %s", err, SSHToAgent)
	}
}

func TestLookupRefusesControlCharacters(t *testing.T) {
	_, err := Lookup(SSHToAgent + "\x00")
	if err == nil || !strings.Contains(err.Error(), `invalid setting name "kvm.ssh.to.agent\x00": NUL at byte 16`) {
		t.Errorf("Lookup(NUL-suffixed key) = %v", err)
	}
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		key, in, want, errPart string
	}{
		{SSHToAgent, "TRUE", "true", ""},
		{SSHToAgent, "0", "false", ""},
		{SSHToAgent, "yes", "", "true or false"},
		{PingInterval, "010", "10", ""},
		{PingInterval, "0", "", "from 1 to 3600"},
		{PingInterval, "3601", "", "from 1 to 3600"},
		{PingInterval, "1.5", "", "whole number"},
		{StageTimeout, "-5", "", "from 1 to 604800"},
		{PingInterval, " 10 ", "10", ""},
		// Control characters are refused, not trimmed away.
		{PingInterval, "10\x00", "", `invalid kvm.rolling.maintenance.ping.interval value "10\x00": NUL at byte 2`},
		{PingInterval, "10\n", "", "control character U+000A at byte 2"},
		{PingInterval, "10\u0085", "", "C1 control character U+0085 at byte 2"},
		{SSHToAgent, "true\xff", "", "invalid UTF-8 byte 0xff at byte 4"},
	}
	for _, c := range cases {
		k, _ := Lookup(c.key)
		got, err := k.Normalize(c.in)
		if c.errPart != "" {
			if err == nil || !strings.Contains(err.Error(), c.errPart) {
				t.Errorf("Normalize(%s, %q) = %q, %v; want error containing %q", c.key, c.in, got, err, c.errPart)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Normalize(%s, %q) = %q, %v; want %q", c.key, c.in, got, err, c.want)
		}
	}
}

func TestSetGetUnset(t *testing.T) {
	s := state.New(filepath.Join(t.TempDir(), "state.db"))
	if _, err := s.Create(); err != nil {
		t.Fatal(err)
	}
	err := s.Update(func(tx state.Tx) error {
		v, err := Set(tx, PingInterval, "30")
		if err != nil || v.Value != "30" || v.IsDefault {
			t.Errorf("Set = %+v, %v", v, err)
		}
		if _, err := Set(tx, PingInterval, "abc"); err == nil {
			t.Errorf("Set(abc) succeeded")
		}
		n, err := GetInt(tx, PingInterval)
		if err != nil || n != 30 {
			t.Errorf("GetInt = %d, %v; want 30 (a refused Set must not change the value)", n, err)
		}
		v, err = Unset(tx, PingInterval)
		if err != nil || v.Value != "10" || !v.IsDefault {
			t.Errorf("Unset = %+v, %v", v, err)
		}
		all, err := List(tx)
		if err != nil || len(all) != len(Registry) {
			t.Errorf("List = %d values, %v", len(all), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStageTimeoutNotBelowPingInterval(t *testing.T) {
	s := state.New(filepath.Join(t.TempDir(), "state.db"))
	if _, err := s.Create(); err != nil {
		t.Fatal(err)
	}
	err := s.Update(func(tx state.Tx) error { _, err := Set(tx, StageTimeout, "5"); return err })
	if err == nil || !strings.Contains(err.Error(), "at least the ping interval") {
		t.Errorf("stage timeout 5 with ping 10 = %v, want a refusal", err)
	}
	err = s.Update(func(tx state.Tx) error { _, err := Set(tx, PingInterval, "3600"); return err })
	if err == nil {
		t.Errorf("ping interval above the stage timeout accepted")
	}
	_ = s.View(func(tx state.Tx) error {
		if v, _ := GetInt(tx, PingInterval); v != 10 {
			t.Errorf("a refused set changed the ping interval to %d", v)
		}
		return nil
	})
}

func TestLookupNoWildGuess(t *testing.T) {
	_, err := Lookup("nosuch")
	if err == nil || strings.Contains(err.Error(), "did you mean") || !strings.Contains(err.Error(), "config list") {
		t.Errorf("Lookup(nosuch) = %v; want no suggestion, a pointer to config list", err)
	}
}
