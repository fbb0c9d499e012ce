package virt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// ErrDomainRefused marks a domain definition that CheckDomainPolicy refuses.
var ErrDomainRefused = errors.New("domain xml refused")

// libvirtNSPrefix starts the URIs of libvirt's hypervisor-specific XML namespaces (qemu, lxc,
// bhyve, xen...), whose elements pass arbitrary arguments to the hypervisor process.
const libvirtNSPrefix = "http://libvirt.org/schemas/domain/"

// allowedDiskTypes are the disk types a remote define may use; the others hand the guest a host
// block device (block, nvme), a host directory (dir) or a host socket (vhostuser).
var allowedDiskTypes = map[string]bool{"file": true, "network": true, "volume": true}

// CheckDomainPolicy refuses a domain definition that would give the guest, or whoever sends
// it, more of the host than a VM moved between hosts needs: hypervisor command-line namespaces
// (<qemu:commandline>, <qemu:override>...), <hostdev> and hostdev interfaces, <filesystem>
// shares, and disks that are not files, network or pool volumes (a block device, or a "file"
// that is in fact a device). Each refusal wraps ErrDomainRefused and says what to remove.
//
// With diskDirs, every file a guest gets from the host (a file disk, a kernel, initrd, firmware
// loader or nvram) must lie inside one of them, and an <emulator> must be a qemu binary.
func CheckDomainPolicy(domain string, diskDirs ...string) error {
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrDomainRefused, fmt.Sprintf(format, a...))
	}
	dec := xml.NewDecoder(strings.NewReader(domain))
	// The path of open elements, to tell a <source> of a <disk> from others.
	var stack []xml.StartElement
	var diskType string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("parse domain xml: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			stack = append(stack, t)
			name := t.Name.Local
			for _, a := range t.Attr {
				if (a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns")) &&
					strings.HasPrefix(strings.TrimSpace(a.Value), libvirtNSPrefix) {
					return refuse("namespace %s (xmlns:%s) passes arguments straight to the hypervisor: remove it and its elements", a.Value, a.Name.Local)
				}
			}
			// Also without a declared namespace: libvirt's parser is more lenient than this one.
			if strings.HasPrefix(t.Name.Space, libvirtNSPrefix) || name == "commandline" || name == "override" {
				tag := name
				if p := prefixOf(t.Name.Space); p != "" {
					tag = p + ":" + name
				}
				return refuse("<%s> passes arguments straight to the hypervisor: remove it", tag)
			}
			inDevices := len(stack) >= 2 && stack[len(stack)-2].Name.Local == "devices"
			switch {
			case name == "hostdev":
				return refuse("<hostdev> hands a host device to the guest: remove it")
			case name == "filesystem" && inDevices:
				return refuse("<filesystem> shares a host directory with the guest: remove it")
			case name == "interface" && inDevices && attr(t, "type") == "hostdev":
				return refuse("<interface type='hostdev'> hands a host device to the guest: remove it")
			case name == "disk" && inDevices:
				diskType = attr(t, "type")
				if diskType == "" {
					diskType = "file"
				}
				if !allowedDiskTypes[diskType] {
					return refuse("<disk type='%s'> gives the guest a host %s: use a file, network or volume disk", diskType, diskWhat(diskType))
				}
			case name == "source" && len(stack) >= 2 && stack[len(stack)-2].Name.Local == "disk":
				if dev := attr(t, "dev"); dev != "" {
					return refuse("disk <source dev='%s'> is a host block device: use a file, network or volume disk", dev)
				}
				if file := attr(t, "file"); file != "" && diskType == "file" {
					if err := checkDiskFile(file); err != nil {
						return refuse("%v", err)
					}
					if err := inDirs("disk <source file>", file, diskDirs); err != nil {
						return refuse("%v", err)
					}
				}
			}
		case xml.CharData:
			if len(stack) == 0 {
				continue
			}
			el := stack[len(stack)-1].Name.Local
			inOS := len(stack) >= 2 && stack[len(stack)-2].Name.Local == "os"
			text := strings.TrimSpace(string(t))
			switch {
			case text == "":
			case inOS && (el == "kernel" || el == "initrd" || el == "loader" || el == "nvram" || el == "dtb"):
				if err := inDirs("<"+el+">", text, diskDirs); err != nil {
					return refuse("%v", err)
				}
			case el == "emulator" && len(diskDirs) > 0 && !qemuBinary.MatchString(text):
				return refuse("<emulator>%s</emulator> is not a qemu binary: remove it, the host's default is used", text)
			}
		case xml.EndElement:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		}
	}
	return nil
}

var qemuBinary = regexp.MustCompile(`^/usr/(bin/qemu-system-[a-z0-9_]+|libexec/qemu-kvm|bin/qemu-kvm)$`)

// inDirs refuses a host path outside the allowed directories (no restriction without any).
func inDirs(what, path string, dirs []string) error {
	if len(dirs) == 0 {
		return nil
	}
	clean := filepath.Clean(path)
	if real, err := filepath.EvalSymlinks(clean); err == nil {
		clean = real
	}
	for _, d := range dirs {
		if real, err := filepath.EvalSymlinks(d); err == nil {
			d = real
		}
		if clean == d || strings.HasPrefix(clean, strings.TrimSuffix(d, "/")+"/") {
			return nil
		}
	}
	return fmt.Errorf("%s %s is outside the VM storage directories (%s, vm.disk.dirs in agent.properties)", what, path, strings.Join(dirs, ", "))
}

// checkDiskFile refuses a file disk that is not a regular file: a device node or a directory.
// A path that does not exist yet is left to libvirt.
func checkDiskFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("disk <source file='%s'> is not a regular file (%s): use an image file", path, fi.Mode().Type())
	}
	return nil
}

func diskWhat(t string) string {
	switch t {
	case "block", "nvme":
		return "block device"
	case "dir":
		return "directory"
	default:
		return "resource of type " + t
	}
}

// prefixOf names a namespace for a message: "qemu" for libvirt's qemu namespace, an undeclared
// prefix as written.
func prefixOf(space string) string {
	if rest, ok := strings.CutPrefix(space, libvirtNSPrefix); ok {
		name, _, _ := strings.Cut(rest, "/")
		return name
	}
	return space
}

func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Local == name && a.Name.Space == "" {
			return strings.TrimSpace(a.Value)
		}
	}
	return ""
}
