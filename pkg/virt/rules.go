package virt

import (
	"net/netip"
	"regexp"
	"strings"
)

// The VM policy's allowlist: what a VM defined through kvmctl may contain, element by element,
// decided from libvirt's domain XML format (libvirt.org/formatdomain.html) and the VMs that
// libvirt's qemu and test drivers write back. Anything not listed is refused. A rule names its
// attributes (with their allowed values or a check) and its child elements; a "free" rule is a
// subtree that names nothing on the host (CPU model, clock, features, tuning, PCI addresses):
// anything goes below it but the attributes that name host files or devices.

// rule is what one element may hold.
type rule struct {
	attrs attrSet
	kids  map[string]*rule
	// text checks the element's character data; nil: only white space.
	text func(c *checker, where, text string) error
	// free: any attribute (but hostRefAttrs), child element and text below.
	free bool
	// check runs after the attributes and children, for rules across them.
	check func(c *checker, n *node, where string) error
}

// attrRule is what one attribute may hold.
type attrRule struct {
	values   []string // the allowed values; none: any
	required bool
	check    func(c *checker, where, value string) error
}

// attrSet is the attributes an element may have, by name.
type attrSet map[string]attrRule

// anyAttrs allows each named attribute with any value.
func anyAttrs(names ...string) attrSet {
	m := attrSet{}
	for _, n := range names {
		m[n] = attrRule{}
	}
	return m
}

// with adds the rule of one attribute to the set.
func (s attrSet) with(name string, r attrRule) attrSet {
	s[name] = r
	return s
}

func oneOf(values ...string) attrRule { return attrRule{values: values} }

func must(values ...string) attrRule { return attrRule{values: values, required: true} }

// leaf is an element with the named attributes (any values) and no children.
func leaf(attrs ...string) *rule { return &rule{attrs: anyAttrs(attrs...)} }

// textLeaf is an element holding any text, with the named attributes.
func textLeaf(attrs ...string) *rule { return &rule{attrs: anyAttrs(attrs...), text: anyText} }

func anyText(*checker, string, string) error { return nil }

// freeRule is a harmless subtree; see rule.free.
var freeRule = &rule{free: true}

// hostRefAttrs name host files, devices or sockets: refused even in free subtrees.
var hostRefAttrs = map[string]bool{"file": true, "path": true, "dev": true, "socket": true, "dir": true,
	"rendernode": true, "tap": true, "vhost": true, "script": true, "template": true, "pool": true, "volume": true}

// reasons explain refusals of elements, attributes and attribute values that reach the host.
var reasons = map[string]string{
	"hostdev":          "it hands a host device to the guest",
	"filesystem":       "it shares a host directory with the guest",
	"smartcard":        "it hands the host's smartcard or certificates to the guest",
	"parallel":         "it opens a host file or device",
	"shmem":            "it shares host memory",
	"lease":            "it takes a host lock file",
	"memory":           "a memory device can map a host file",
	"nvram":            "it opens a host file",
	"script":           "it runs a host program as root",
	"downscript":       "it runs a host program as root",
	"log":              "it writes a host file",
	"seclabel":         "it changes how the VM is confined",
	"dataStore":        "it opens a host file",
	"reservations":     "it connects to a host socket",
	"encryption":       "it uses a host secret",
	"auth":             "it uses a host secret",
	"backend":          "it opens host devices",
	"acpi":             "it reads a host file",
	"commandline":      "it passes arguments straight to the hypervisor",
	"gl":               "it hands the host's GPU to the guest",
	"resource":         "it moves the VM to another cgroup",
	"idmap":            "it maps host users into the guest",
	"launchSecurity":   "it needs host firmware support",
	"file":             "it names a host file",
	"path":             "it names a host path",
	"dev":              "it names a host device",
	"socket":           "it names a host socket",
	"type=block":       "a VM's disks must be image files",
	"type=volume":      "a storage pool volume is not checked against vm.disk.dirs",
	"type=network":     "a network disk reaches outside vm.disk.dirs",
	"type=dir":         "it hands a host directory to the guest",
	"type=ethernet":    "it runs host scripts and uses any host tap device",
	"type=direct":      "it attaches the guest to a host interface",
	"type=hostdev":     "it hands a host device to the guest",
	"type=vhostuser":   "it connects to a host socket",
	"type=user":        "it starts a host network helper",
	"type=none":        "it turns off the VM's confinement",
	"type=static":      "a fixed label can run the VM as any host user",
	"type=file":        "it opens a host file",
	"type=dev":         "it opens a host device",
	"type=unix":        "it opens a host socket",
	"type=tcp":         "it opens a network connection from the host",
	"type=udp":         "it opens a network connection from the host",
	"type=pipe":        "it opens a host pipe",
	"type=passthrough": "it hands a host device to the guest",
	"type=evdev":       "it hands a host input device to the guest",
	"model=egd":        "it connects to a host socket",
}

// The rules, from the root. They are built in init because backingStore holds itself.
var (
	domainRule    *rule
	devicesRule   *rule
	placementRule *rule
)

func init() {
	placementRule = &rule{kids: map[string]*rule{
		PlacementNamespace + " tag":   {text: anyText},
		PlacementNamespace + " group": {attrs: anyAttrs("name").with("type", oneOf(GroupHostAffinity, GroupHostAntiAffinity))},
	}}
	backing := &rule{attrs: anyAttrs("index").with("type", oneOf("file"))}
	backing.kids = map[string]*rule{
		"format":       leaf("type"),
		"source":       {attrs: anyAttrs("index").with("file", attrRule{check: pathCheck("backingStore source", diskFile)})},
		"backingStore": backing,
	}
	osRule := &rule{attrs: map[string]attrRule{"firmware": oneOf("efi", "bios")}, kids: map[string]*rule{
		"type":     {attrs: anyAttrs("arch", "machine"), text: exactText("hvm")},
		"boot":     {attrs: map[string]attrRule{"dev": oneOf("hd", "cdrom", "network", "fd")}},
		"bootmenu": leaf("enable", "timeout"),
		"smbios":   {attrs: map[string]attrRule{"mode": oneOf("emulate", "sysinfo")}},
		"bios":     leaf("useserial", "rebootTimeout"),
		"loader": {attrs: map[string]attrRule{"readonly": {}, "secure": {}, "stateless": {},
			"type": oneOf("rom", "pflash"), "format": oneOf("raw", "qcow2")}, text: pathText("loader", firmwareFile)},
		"nvram": {attrs: map[string]attrRule{"format": {}, "templateFormat": {},
			"template": {check: pathCheck("nvram template", firmwareFile)}}, text: pathText("nvram", nvramFile)},
		"firmware": {kids: map[string]*rule{"feature": leaf("enabled", "name")}},
		"kernel":   {text: pathText("kernel", diskFile)},
		"initrd":   {text: pathText("initrd", diskFile)},
		"dtb":      {text: pathText("dtb", diskFile)},
		"cmdline":  {text: anyText},
	}}
	sysinfoEntries := &rule{kids: map[string]*rule{"entry": textLeaf("name")}}
	devicesRule = &rule{kids: map[string]*rule{
		"emulator":    {text: emulatorText},
		"disk":        diskRule(backing),
		"controller":  {free: true, attrs: map[string]attrRule{"type": must("pci", "usb", "scsi", "sata", "ide", "virtio-serial", "fdc", "isa")}},
		"interface":   interfaceRule(),
		"serial":      chardevRule(leaf("type", "port"), "pty"),
		"console":     chardevRule(&rule{attrs: map[string]attrRule{"type": oneOf("serial", "virtio"), "port": {}}}, "pty"),
		"channel":     channelRule(),
		"graphics":    graphicsRule(),
		"video":       videoRule(),
		"sound":       {attrs: anyAttrs("model", "multichannel"), kids: deviceKids(map[string]*rule{"codec": leaf("type"), "audio": leaf("id")})},
		"audio":       {attrs: anyAttrs("id", "timerPeriod").with("type", must("none", "spice")), kids: map[string]*rule{"input": freeRule, "output": freeRule}},
		"input":       {attrs: map[string]attrRule{"type": must("mouse", "tablet", "keyboard"), "bus": oneOf("usb", "ps2", "virtio"), "model": {}}, kids: deviceKids(map[string]*rule{"driver": freeRule})},
		"memballoon":  {attrs: anyAttrs("autodeflate", "freePageReporting").with("model", must("virtio", "virtio-transitional", "virtio-non-transitional", "none")), kids: deviceKids(map[string]*rule{"stats": leaf("period"), "driver": freeRule})},
		"rng":         rngRule(),
		"watchdog":    {attrs: anyAttrs("model").with("action", oneOf("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")), kids: deviceKids(nil)},
		"panic":       {attrs: anyAttrs("model"), kids: deviceKids(nil)},
		"tpm":         tpmRule(),
		"vsock":       {attrs: anyAttrs("model"), kids: deviceKids(map[string]*rule{"cid": leaf("auto", "address"), "driver": freeRule})},
		"hub":         {attrs: map[string]attrRule{"type": must("usb")}, kids: deviceKids(nil)},
		"redirdev":    {attrs: map[string]attrRule{"bus": oneOf("usb"), "type": must("spicevmc")}, kids: deviceKids(map[string]*rule{"boot": leaf("order")})},
		"redirfilter": {kids: map[string]*rule{"usbdev": {attrs: anyAttrs("class", "vendor", "product", "version", "allow")}}},
	}}
	domainRule = &rule{attrs: anyAttrs("id").with("type", must("kvm", "qemu", "test")), kids: map[string]*rule{
		"name":            {text: anyText},
		"uuid":            {text: anyText},
		"genid":           {text: anyText},
		"title":           {text: anyText},
		"description":     {text: anyText},
		"metadata":        {kids: map[string]*rule{PlacementNamespace + " placement": placementRule}},
		"maxMemory":       textLeaf("slots", "unit"),
		"memory":          textLeaf("unit", "dumpCore"),
		"currentMemory":   textLeaf("unit"),
		"memoryBacking":   freeRule,
		"memtune":         freeRule,
		"blkiotune":       {kids: map[string]*rule{"weight": {text: anyText}}},
		"vcpu":            textLeaf("placement", "cpuset", "current"),
		"vcpus":           freeRule,
		"iothreads":       {text: anyText},
		"iothreadids":     freeRule,
		"defaultiothread": freeRule,
		"cputune":         freeRule,
		"numatune":        freeRule,
		"cpu":             freeRule,
		"os":              osRule,
		"features":        freeRule,
		"clock":           freeRule,
		"on_poweroff":     {text: anyText},
		"on_reboot":       {text: anyText},
		"on_crash":        {text: anyText},
		"on_lockfailure":  {text: anyText},
		"pm":              freeRule,
		"perf":            freeRule,
		"sysinfo": {attrs: map[string]attrRule{"type": must("smbios")}, kids: map[string]*rule{
			"bios": sysinfoEntries, "system": sysinfoEntries, "baseBoard": sysinfoEntries, "chassis": sysinfoEntries,
			"processor": sysinfoEntries, "memory": sysinfoEntries, "oemStrings": {kids: map[string]*rule{"entry": {text: anyText}}},
		}},
		"devices": devicesRule,
		// Only libvirt's own confinement: a dynamic label, nothing fixed.
		"seclabel": {attrs: map[string]attrRule{"type": must("dynamic"), "model": {}, "relabel": oneOf("yes")}},
	}}
}

// deviceKids adds the children every device may have (its alias and guest address) to kids.
func deviceKids(kids map[string]*rule) map[string]*rule {
	if kids == nil {
		kids = map[string]*rule{}
	}
	kids["alias"] = leaf("name")
	kids["address"] = freeRule
	return kids
}

func diskRule(backing *rule) *rule {
	return &rule{
		attrs: anyAttrs("snapshot", "model").with("type", oneOf("file")).with("device", oneOf("disk", "cdrom")),
		kids: deviceKids(map[string]*rule{
			"driver": freeRule,
			"source": {attrs: map[string]attrRule{"file": {check: pathCheck("source", diskFile)}, "index": {},
				"startupPolicy": oneOf("mandatory", "requisite", "optional")}},
			"backingStore": backing,
			"target":       {attrs: anyAttrs("dev", "tray", "removable", "rotation_rate").with("bus", oneOf("virtio", "sata", "scsi", "ide", "usb"))},
			"readonly":     {},
			"shareable":    {},
			"transient":    leaf("shareBacking"),
			"serial":       {text: anyText},
			"wwn":          {text: anyText},
			"vendor":       {text: anyText},
			"product":      {text: anyText},
			"boot":         leaf("order", "loadparm"),
			"iotune":       freeRule,
			"blockio":      freeRule,
			"geometry":     freeRule,
		}),
	}
}

func interfaceRule() *rule {
	return &rule{
		attrs: anyAttrs("trustGuestRxFilters").with("type", must("network", "bridge")),
		kids: deviceKids(map[string]*rule{
			"source":      leaf("network", "bridge", "portgroup", "portid"),
			"mac":         leaf("address", "type", "check"),
			"model":       leaf("type"),
			"target":      {attrs: map[string]attrRule{"dev": {check: ifnameCheck}}},
			"driver":      freeRule,
			"virtualport": {attrs: map[string]attrRule{"type": oneOf("openvswitch", "midonet")}, kids: map[string]*rule{"parameters": {free: true}}},
			"bandwidth":   freeRule,
			"vlan":        freeRule,
			"mtu":         leaf("size"),
			"link":        leaf("state"),
			"boot":        leaf("order", "loadparm"),
			"coalesce":    freeRule,
			"tune":        freeRule,
			"filterref":   freeRule,
			"rom":         leaf("bar", "enabled"),
			"guest":       leaf("dev", "actual"),
			"acpi":        leaf("index"),
		}),
	}
}

// chardevRule is a serial port or console: a pty only, never a host file, device or socket.
func chardevRule(target *rule, types ...string) *rule {
	if target.kids == nil {
		target.kids = map[string]*rule{"model": leaf("name")}
	}
	return &rule{attrs: map[string]attrRule{"type": must(types...)}, kids: deviceKids(map[string]*rule{"target": target})}
}

// channelRule allows the qemu guest agent's channel (a unix socket libvirt places itself) and
// spice's agent channel.
func channelRule() *rule {
	return &rule{
		attrs: map[string]attrRule{"type": must("unix", "spicevmc")},
		kids: deviceKids(map[string]*rule{
			"source": {attrs: map[string]attrRule{"mode": oneOf("bind")}},
			"target": {attrs: map[string]attrRule{"type": must("virtio"), "name": must(guestAgentChannel, spiceChannel), "state": {}}},
		}),
		check: func(c *checker, n *node, where string) error {
			want := map[string]string{"unix": guestAgentChannel, "spicevmc": spiceChannel}[attrOf(n, "type")]
			for _, k := range n.kids {
				if k.local == "target" && attrOf(k, "name") != want {
					return refuse("%s: a %s channel must be %s, not %s", where, attrOf(n, "type"), want, attrOf(k, "name"))
				}
				if k.local == "source" && attrOf(n, "type") != "unix" {
					return refuse("%s: a %s channel has no <source>", where, attrOf(n, "type"))
				}
			}
			return nil
		},
	}
}

const (
	guestAgentChannel = "org.qemu.guest_agent.0"
	spiceChannel      = "com.redhat.spice.0"
)

func graphicsRule() *rule {
	loopback := attrRule{check: loopbackCheck}
	return &rule{
		attrs: anyAttrs("port", "autoport", "tlsPort", "passwd", "passwdValidTo", "connected", "keymap",
			"sharePolicy", "defaultMode", "websocket", "powerControl").with("type", must("vnc", "spice")).with("listen", loopback),
		kids: map[string]*rule{
			"listen":       {attrs: map[string]attrRule{"type": must("address", "none"), "address": loopback}},
			"channel":      leaf("name", "mode"),
			"image":        leaf("compression"),
			"jpeg":         leaf("compression"),
			"zlib":         leaf("compression"),
			"playback":     leaf("compression"),
			"streaming":    leaf("mode"),
			"mouse":        leaf("mode"),
			"clipboard":    leaf("copypaste"),
			"filetransfer": leaf("enable"),
			"audio":        leaf("id"),
		},
	}
}

func videoRule() *rule {
	model := &rule{
		attrs: anyAttrs("vram", "ram", "vram64", "vgamem", "heads", "primary", "blob").with(
			"type", must("vga", "cirrus", "qxl", "virtio", "bochs", "ramfb", "none")),
		kids: map[string]*rule{
			// 3D acceleration renders on the host's GPU.
			"acceleration": {attrs: map[string]attrRule{"accel2d": {}, "accel3d": oneOf("no")}},
			"resolution":   leaf("x", "y"),
		},
	}
	return &rule{kids: deviceKids(map[string]*rule{"model": model})}
}

func rngRule() *rule {
	backend := &rule{attrs: map[string]attrRule{"model": must("random", "builtin")}, text: func(_ *checker, where, text string) error {
		if text != "" && text != "/dev/urandom" {
			return refuse("%s: the random number source %q is not allowed: only /dev/urandom (or none, libvirt's default)", where, text)
		}
		return nil
	}}
	return &rule{
		attrs: map[string]attrRule{"model": must("virtio", "virtio-transitional", "virtio-non-transitional")},
		kids:  deviceKids(map[string]*rule{"rate": leaf("period", "bytes"), "backend": backend, "driver": freeRule}),
	}
}

// tpmRule allows a TPM emulated by swtpm, whose state libvirt keeps itself.
func tpmRule() *rule {
	backend := &rule{attrs: anyAttrs("version", "persistent_state").with("type", must("emulator")),
		kids: map[string]*rule{"active_pcr_banks": freeRule}}
	return &rule{attrs: map[string]attrRule{"model": oneOf("tpm-tis", "tpm-crb", "tpm-spapr")}, kids: deviceKids(map[string]*rule{"backend": backend})}
}

func exactText(want string) func(*checker, string, string) error {
	return func(_ *checker, where, text string) error {
		if strings.TrimSpace(text) != want {
			return refuse("%s: %q is not allowed (allowed: %s)", where, strings.TrimSpace(text), want)
		}
		return nil
	}
}

// emulators are the hypervisor binaries a definition may name; without <emulator> libvirt
// uses the host's default.
var emulators = regexp.MustCompile(`^/usr/(bin/qemu-system-[a-z0-9_]+|libexec/qemu-kvm|bin/qemu-kvm)$`)

func emulatorText(_ *checker, where, text string) error {
	if !emulators.MatchString(text) {
		return refuse("%s: <emulator>%s</emulator> is not a qemu binary (/usr/bin/qemu-system-*, /usr/libexec/qemu-kvm or /usr/bin/qemu-kvm): remove it, the host's default is used", where, text)
	}
	return nil
}

// loopbackCheck allows a graphics listen address that only this host reaches.
func loopbackCheck(_ *checker, where, value string) error {
	if value == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(value); err == nil && ip.IsLoopback() {
		return nil
	}
	return refuse("%s: the listen address %q is not a loopback address: a VM's console listens on 127.0.0.1 or ::1 only (reach it through an SSH tunnel)", where, value)
}

var ifname = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func ifnameCheck(_ *checker, where, value string) error {
	if !ifname.MatchString(value) {
		return refuse("%s: the tap device name %q is not allowed", where, value)
	}
	return nil
}
