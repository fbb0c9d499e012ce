package libvirtdrv

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmctl/kvmctl/pkg/fsutil"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// Libvirt is the virt.Hypervisor on one libvirt connection, held for the life of
// the process.
//
// For a test-driver node file (test:///abs/path.xml) it also persists: the
// test driver loads the file into memory on connect and never writes it back,
// so after every mutating call Libvirt rewrites the file from the live state.
// Only one connection may use a node file at a time, or the last writer wins.
type Libvirt struct {
	// mu serialises mutations with the node-file rewrite that follows them,
	// and keeps Close from pulling the connection from under a call. The
	// libvirt connection itself is thread-safe.
	mu   sync.RWMutex
	conn *libvirt.Connect
	test bool // libvirt's test driver: no migration

	nodeFile string // node file to rewrite after changes; "" for none
	nodePerm os.FileMode
	nodeDesc [][]byte // the node file's non-domain children
}

var _ virt.Hypervisor = (*Libvirt)(nil)

// Open connects to the libvirt URI, e.g. qemu:///system or
// test:///abs/path/node.xml.
func Open(uri string) (*Libvirt, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("open libvirt %q: %w", uri, err)
	}
	l := &Libvirt{test: u.Scheme == "test" || strings.HasPrefix(u.Scheme, "test+")}
	if u.Scheme == "test" && u.Host == "" && u.Path != "" && u.Path != "/default" {
		// Read the description before connecting: both see the same file.
		data, err := os.ReadFile(u.Path)
		if err != nil {
			return nil, fmt.Errorf("open libvirt %q: read node file: %w", uri, err)
		}
		fi, err := os.Stat(u.Path)
		if err != nil {
			return nil, fmt.Errorf("open libvirt %q: %w", uri, err)
		}
		if l.nodeDesc, err = virt.NodeDescription(data); err != nil {
			return nil, fmt.Errorf("open libvirt %q: %w", uri, err)
		}
		l.nodeFile, l.nodePerm = u.Path, fi.Mode().Perm()
	}
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("open libvirt %q: %w", uri, err)
	}
	l.conn = conn
	return l, nil
}

var errClosed = errors.New("libvirt connection is closed")

// Close closes the connection; later calls fail.
func (l *Libvirt) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil
	}
	_, err := l.conn.Close()
	l.conn = nil
	if err != nil {
		return fmt.Errorf("close libvirt: %w", err)
	}
	return nil
}

// NodeInfo reports the host's CPUs and memory as libvirt sees them.
func (l *Libvirt) NodeInfo() (virt.Capacity, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.conn == nil {
		return virt.Capacity{}, fmt.Errorf("node info: %w", errClosed)
	}
	info, err := l.conn.GetNodeInfo()
	if err != nil {
		return virt.Capacity{}, fmt.Errorf("node info: %w", err)
	}
	return virt.Capacity{CPUs: int(info.Cpus), MemoryMiB: info.Memory / 1024}, nil
}

// ListVMs lists all defined and running domains, sorted by name.
func (l *Libvirt) ListVMs() ([]virt.VM, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.conn == nil {
		return nil, fmt.Errorf("list vms: %w", errClosed)
	}
	doms, err := l.conn.ListAllDomains(0)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	defer freeAll(doms)
	vms := make([]virt.VM, 0, len(doms))
	for i := range doms {
		vm, err := readVM(&doms[i])
		if isNoDomain(err) {
			continue // gone between the listing and now
		}
		if err != nil {
			return nil, fmt.Errorf("list vms: %w", err)
		}
		vms = append(vms, vm)
	}
	slices.SortFunc(vms, func(a, b virt.VM) int { return strings.Compare(a.Name, b.Name) })
	return vms, nil
}

func readVM(d *libvirt.Domain) (virt.VM, error) {
	x, err := d.GetXMLDesc(0)
	if err != nil {
		return virt.VM{}, err
	}
	vm, err := virt.ParseDomainXML(x)
	if err != nil {
		return virt.VM{}, err
	}
	st, _, err := d.GetState()
	if err != nil {
		return virt.VM{}, fmt.Errorf("vm %q: state: %w", vm.Name, err)
	}
	vm.State = stateName(st)
	return vm, nil
}

func stateName(s libvirt.DomainState) virt.State {
	switch s {
	case libvirt.DOMAIN_RUNNING:
		return virt.StateRunning
	case libvirt.DOMAIN_BLOCKED:
		return virt.StateBlocked
	case libvirt.DOMAIN_PAUSED:
		return virt.StatePaused
	case libvirt.DOMAIN_SHUTDOWN:
		return virt.StateShutdown
	case libvirt.DOMAIN_SHUTOFF:
		return virt.StateShutoff
	case libvirt.DOMAIN_CRASHED:
		return virt.StateCrashed
	case libvirt.DOMAIN_PMSUSPENDED:
		return virt.StatePMSuspended
	}
	return virt.StateNoState
}

// DomainXML returns the VM's persistent definition.
func (l *Libvirt) DomainXML(name string) (string, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	d, err := l.lookup(name)
	if err != nil {
		return "", fmt.Errorf("domain xml: %w", err)
	}
	defer d.Free()
	x, err := d.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return "", fmt.Errorf("domain xml %q: %w", name, err)
	}
	return x, nil
}

// DefineAndStart defines the VM, checks libvirt's reading of the definition (its
// inactive XML) with check, and starts it. It refuses to redefine a VM that is
// running (virt.ErrVMRunning). A definition check refuses is undefined again, or
// the definition it replaced is put back; a VM it newly defined is undefined again
// if it fails to start. Either way a failure leaves the host as it was.
func (l *Libvirt) DefineAndStart(domainXML string, check virt.DomainCheck) error {
	vm, err := virt.ParseDomainXML(domainXML)
	if err != nil {
		return fmt.Errorf("define vm: %w", err)
	}
	if check == nil {
		return fmt.Errorf("define vm %q: no domain check given: nothing is defined unchecked", vm.Name)
	}
	defer l.lockMutation()()
	if l.conn == nil {
		return fmt.Errorf("define vm %q: %w", vm.Name, errClosed)
	}
	// The definition a refused one replaces, to put it back.
	previous := ""
	if old, err := l.lookup(vm.Name); err == nil {
		active, err := old.IsActive()
		if err == nil && !active {
			previous, err = old.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
		}
		old.Free()
		if err != nil {
			return fmt.Errorf("define vm %q: %w", vm.Name, err)
		}
		if active {
			return fmt.Errorf("define vm %q: %w", vm.Name, virt.ErrVMRunning)
		}
	} else if !errors.Is(err, virt.ErrVMNotFound) {
		return fmt.Errorf("define vm: %w", err)
	}
	d, err := l.conn.DomainDefineXML(domainXML)
	if err != nil {
		return fmt.Errorf("define vm %q: %w", vm.Name, err)
	}
	defer d.Free()
	// What libvirt understood is what runs: check that, not only what was sent.
	read, err := d.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err == nil {
		err = check(read)
	}
	if err != nil {
		err = fmt.Errorf("define vm %q: libvirt's reading of the definition: %w", vm.Name, err)
		return errors.Join(err, l.undoDefine(d, vm.Name, previous), l.persist())
	}
	if err := d.Create(); err != nil {
		err = fmt.Errorf("start vm %q: %w", vm.Name, err)
		if previous == "" {
			err = errors.Join(err, l.undoDefine(d, vm.Name, ""))
		}
		return errors.Join(err, l.persist())
	}
	return l.persist()
}

// undoDefine removes the definition d that DefineAndStart just made, or puts back previous,
// the definition it replaced. The caller holds the lock. A refused definition may name any
// host file as its nvram or TPM state: those are kept, never deleted.
func (l *Libvirt) undoDefine(d *libvirt.Domain, name, previous string) error {
	if previous != "" {
		back, err := l.conn.DomainDefineXML(previous)
		if err != nil {
			return fmt.Errorf("put back the previous definition of vm %q: %w", name, err)
		}
		return back.Free()
	}
	err := d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_KEEP_NVRAM)
	var lerr libvirt.Error
	if errors.As(err, &lerr) && lerr.Code == libvirt.ERR_INVALID_ARG {
		// The test driver knows no nvram and refuses the flag.
		err = d.Undefine()
	}
	if err != nil {
		return fmt.Errorf("undefine vm %q again: %w", name, err)
	}
	return nil
}

// Start starts a defined VM.
func (l *Libvirt) Start(name string) error {
	return l.mutate("start vm", name, func(d *libvirt.Domain) error { return d.Create() })
}

// Destroy powers the VM off at once, like pulling its plug. A VM already off
// is not an error.
func (l *Libvirt) Destroy(name string) error {
	return l.mutate("destroy vm", name, func(d *libvirt.Domain) error {
		active, err := d.IsActive()
		if err != nil || !active {
			return err
		}
		return d.Destroy()
	})
}

// Undefine removes the VM's definition, with its managed-save image and
// snapshot metadata. It refuses a running VM (virt.ErrVMRunning): libvirt would
// keep it running as a transient domain nobody tracks.
func (l *Libvirt) Undefine(name string) error {
	return l.mutate("undefine vm", name, func(d *libvirt.Domain) error {
		active, err := d.IsActive()
		if err != nil {
			return err
		}
		if active {
			return fmt.Errorf("%w: destroy it first", virt.ErrVMRunning)
		}
		return d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
	})
}

// mutate runs op on the named domain under the write lock, then persists.
func (l *Libvirt) mutate(what, name string, op func(*libvirt.Domain) error) error {
	defer l.lockMutation()()
	d, err := l.lookup(name)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer d.Free()
	if err := op(d); err != nil {
		return fmt.Errorf("%s %q: %w", what, name, err)
	}
	return l.persist()
}

// Migrate live-migrates the VM peer-to-peer to destURI (the destination's
// libvirt URI, e.g. qemu+tls://host2/system), makes it persistent there and
// undefines it here. On the test driver it returns virt.ErrMigrationUnsupported.
func (l *Libvirt) Migrate(name, destURI string, opts virt.MigrateOptions) error {
	if l.test {
		return fmt.Errorf("migrate vm %q: %w", name, virt.ErrMigrationUnsupported)
	}
	// A migration can run for minutes: hold the lock only for the lookup. The
	// domain keeps its own reference to the connection, so a concurrent
	// Close cannot free the connection under the migration.
	l.mu.RLock()
	d, err := l.lookup(name)
	l.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("migrate vm: %w", err)
	}
	defer d.Free()
	params := &libvirt.DomainMigrateParameters{}
	if opts.BandwidthMiBs > 0 {
		params.BandwidthSet, params.Bandwidth = true, opts.BandwidthMiBs
	}
	var (
		timedOut bool
		tmu      sync.Mutex
	)
	if opts.Timeout > 0 {
		// MigrateToURI3 blocks until the job ends; aborting the job from
		// another goroutine is how libvirt cancels it.
		t := time.AfterFunc(opts.Timeout, func() {
			tmu.Lock()
			timedOut = true
			tmu.Unlock()
			_ = d.AbortJob()
		})
		defer t.Stop()
	}
	flags := libvirt.MIGRATE_LIVE | libvirt.MIGRATE_PEER2PEER | libvirt.MIGRATE_PERSIST_DEST | libvirt.MIGRATE_UNDEFINE_SOURCE
	err = d.MigrateToURI3(destURI, params, flags)
	tmu.Lock()
	defer tmu.Unlock()
	if err != nil && timedOut {
		return fmt.Errorf("migrate vm %q to %s: %w after %s: %w", name, destURI, virt.ErrMigrationTimeout, opts.Timeout, err)
	}
	if err != nil {
		return fmt.Errorf("migrate vm %q to %s: %w", name, destURI, err)
	}
	return nil
}

// lockMutation locks for a mutating call and returns the unlock. Only a node
// file needs mutations serialised (each rewrite must see the state after its
// own change); libvirtd serialises jobs on a domain itself, so on a real
// host slow calls such as Destroy on different VMs may run side by side.
func (l *Libvirt) lockMutation() (unlock func()) {
	if l.nodeFile != "" {
		l.mu.Lock()
		return l.mu.Unlock
	}
	l.mu.RLock()
	return l.mu.RUnlock
}

// lookup finds a domain by name; the caller frees it and holds mu.
func (l *Libvirt) lookup(name string) (*libvirt.Domain, error) {
	if l.conn == nil {
		return nil, errClosed
	}
	d, err := l.conn.LookupDomainByName(name)
	if isNoDomain(err) {
		return nil, fmt.Errorf("vm %q: %w", name, virt.ErrVMNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", name, err)
	}
	return d, nil
}

// persist rewrites the test-driver node file from the live state: the
// original node description, then every domain with its run state. The
// caller holds mu through lockMutation.
func (l *Libvirt) persist() error {
	if l.nodeFile == "" {
		return nil
	}
	doms, err := l.conn.ListAllDomains(0)
	if err != nil {
		return fmt.Errorf("persist node file: %w", err)
	}
	defer freeAll(doms)
	type entry struct{ name, xml string }
	var entries []entry
	for i := range doms {
		d := &doms[i]
		name, err := d.GetName()
		if err != nil {
			return fmt.Errorf("persist node file: %w", err)
		}
		persistent, err := d.IsPersistent()
		if err != nil {
			return fmt.Errorf("persist node file: vm %q: %w", name, err)
		}
		st, _, err := d.GetState()
		if err != nil {
			return fmt.Errorf("persist node file: vm %q: %w", name, err)
		}
		var flags libvirt.DomainXMLFlags
		if persistent {
			flags = libvirt.DOMAIN_XML_INACTIVE // the definition, not live-only details
		}
		x, err := d.GetXMLDesc(flags)
		if err != nil {
			return fmt.Errorf("persist node file: vm %q: %w", name, err)
		}
		if x, err = virt.WithTestState(x, int(st), !persistent); err != nil {
			return fmt.Errorf("persist node file: vm %q: %w", name, err)
		}
		entries = append(entries, entry{name, x})
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	xmls := make([]string, len(entries))
	for i, e := range entries {
		xmls[i] = e.xml
	}
	if err := fsutil.WriteFileAtomic(l.nodeFile, virt.RenderNodeFile(l.nodeDesc, xmls), l.nodePerm); err != nil {
		return fmt.Errorf("persist node file: %w", err)
	}
	return nil
}

func isNoDomain(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN
}

func freeAll(doms []libvirt.Domain) {
	for i := range doms {
		_ = doms[i].Free()
	}
}
