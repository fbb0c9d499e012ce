package api

import "testing"

func TestMigrationURI(t *testing.T) {
	for host, want := range map[string]string{
		"kvm2":             "qemu+tls://kvm2/system",
		"kvm2.example.net": "qemu+tls://kvm2.example.net/system",
		"10.0.0.12":        "qemu+tls://10.0.0.12/system",
		"fd00::4":          "qemu+tls://[fd00::4]/system",
		"FD00:0::0004":     "qemu+tls://[fd00::4]/system",
	} {
		got, err := MigrationURI(host)
		if err != nil || got != want {
			t.Errorf("MigrationURI(%q) = %q, %v; want %q", host, got, err, want)
		}
		if err := CheckMigrationURI(want); err != nil {
			t.Errorf("CheckMigrationURI(%q) = %v", want, err)
		}
	}
	for _, host := range []string{"", "fe80::1%eth0", "127.1", "1.2.3", "0x7f.1", "h_1", "-h", "h-", "a..b", "kvm2.", "root@kvm2", "kvm2:16514", "kvm2/x", "kvm 2"} {
		if got, err := MigrationURI(host); err == nil {
			t.Errorf("MigrationURI(%q) = %q, want an error", host, got)
		}
	}
}

// Only the canonical form passes (the agent's tests send every other kind through its API).
func TestCheckMigrationURIRefuses(t *testing.T) {
	for _, uri := range []string{"qemu+tls://kvm2/system/", "qemu+tls://[fd00:0::4]/system", "qemu+tls://fd00::4/system", "qemu+tls:///system"} {
		if err := CheckMigrationURI(uri); err == nil {
			t.Errorf("CheckMigrationURI(%q) accepted it", uri)
		}
	}
}
