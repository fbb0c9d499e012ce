package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Bounds of an activity check (POST /v1/activity-check).
const (
	// ActivityIOTimeout bounds each storage call of an activity check: resolving a path's
	// symbolic links, then reading the file. A call with no answer by then gives its file an
	// Error; the check answers within 2 × ActivityIOTimeout (resolve all, then read all) plus
	// the time to decode and encode.
	ActivityIOTimeout = 1500 * time.Millisecond
	// MaxActivityDisks is the most disks one activity check reads.
	MaxActivityDisks = 256
	// maxHeartbeatBytes bounds what is read of a heartbeat file: a record is about 150 bytes.
	maxHeartbeatBytes = 4 << 10
	// maxPathBytes bounds one path of a request, PATH_MAX on Linux.
	maxPathBytes = 4096
	// maxHostNameBytes bounds the suspect's name, a DNS name's length.
	maxHostNameBytes = 253
)

// activityCheckTimeout is the route's timeout: the two phases of ActivityIOTimeout each, and
// room to spare; the handler never needs it.
const activityCheckTimeout = 2*ActivityIOTimeout + 5*time.Second

// handleActivityCheck reads a suspect host's heartbeat and its VMs' disks on the shared storage
// for kvmctl's HA monitor. Only paths inside this agent's heartbeat.dir (the heartbeat) and
// vm.disk.dirs (the disks), before and after their symbolic links are resolved, are read: any
// other is refused (400) and then nothing is read at all. Every storage call runs under its own
// deadline (ActivityIOTimeout), so that a hung NFS server gives an Error for the file, never a
// hung request.
func (a *Agent) handleActivityCheck(w http.ResponseWriter, r *http.Request) *httpError {
	var req api.ActivityCheckRequest
	if e := decodeJSON(w, r, &req); e != nil {
		return e
	}
	if e := a.checkActivityRequest(req); e != nil {
		return e
	}
	res, e := a.activityCheck(req)
	if e != nil {
		return e
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// checkActivityRequest refuses, without touching the storage, a request that names anything
// but the suspect's heartbeat in heartbeat.dir and files in vm.disk.dirs, as clean absolute
// paths of printable text. The heartbeat may be left out (a suspect whose agent never said where
// it writes one): then only the disks are read.
func (a *Agent) checkActivityRequest(req api.ActivityCheckRequest) *httpError {
	if err := checkHostName(req.Host); err != nil {
		return newHTTPError(api.CodeBadRequest, "host: %v", err)
	}
	if req.HeartbeatFile == "" && len(req.Disks) == 0 {
		return newHTTPError(api.CodeBadRequest, "nothing to read: send heartbeat_file, disks or both")
	}
	if req.HeartbeatFile != "" {
		hbDir := a.cfg.HeartbeatDir
		if hbDir == "" {
			return newHTTPError(api.CodeBadRequest, "this agent (%s) has no %s, so it reads no heartbeats: set %s in its agent.properties, or ask another neighbour",
				a.cfg.HostName, KeyHeartbeatDir, KeyHeartbeatDir)
		}
		if err := checkPath("heartbeat_file", req.HeartbeatFile); err != nil {
			return newHTTPError(api.CodeBadRequest, "%v", err)
		}
		want := filepath.Join(hbDir, api.HeartbeatFileName(req.Host))
		if filepath.Dir(req.HeartbeatFile) != hbDir {
			return newHTTPError(api.CodeBadRequest, "heartbeat_file %s is outside this agent's heartbeat directory %s (%s): the heartbeat of %s is %s",
				req.HeartbeatFile, hbDir, KeyHeartbeatDir, req.Host, want)
		}
		if req.HeartbeatFile != want {
			return newHTTPError(api.CodeBadRequest, "heartbeat_file %s is not the heartbeat of host %q: that is %s",
				req.HeartbeatFile, req.Host, want)
		}
	}
	if len(req.Disks) > MaxActivityDisks {
		return newHTTPError(api.CodeBadRequest, "%d disks: one activity check reads at most %d; split the check", len(req.Disks), MaxActivityDisks)
	}
	for i, d := range req.Disks {
		what := fmt.Sprintf("disks[%d]", i)
		if err := checkPath(what, d); err != nil {
			return newHTTPError(api.CodeBadRequest, "%v", err)
		}
		if !insideAny(d, a.cfg.VMDiskDirs) {
			return newHTTPError(api.CodeBadRequest, "%s %s is outside %s (%s): this agent reads no other disks",
				what, d, KeyVMDiskDirs, strings.Join(a.cfg.VMDiskDirs, ", "))
		}
	}
	return nil
}

// checkHostName refuses a host name that could not be part of a heartbeat file's name.
func checkHostName(h string) error {
	switch {
	case h == "":
		return errors.New("empty: name the host whose heartbeat to read")
	case len(h) > maxHostNameBytes:
		return fmt.Errorf("%d bytes long: a host name has at most %d", len(h), maxHostNameBytes)
	case h == "." || h == ".." || strings.ContainsRune(h, '/'):
		return fmt.Errorf("%q is not a host name", h)
	}
	return safetext.Check("host name", h)
}

// checkPath refuses a path that is empty, too long, not printable text, relative, or not clean
// (a .. element, a . element, a double or trailing slash): a path is read only as sent.
func checkPath(what, p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%s is empty: send an absolute path", what)
	case len(p) > maxPathBytes:
		return fmt.Errorf("%s is %d bytes long: at most %d", what, len(p), maxPathBytes)
	}
	if err := safetext.Check(what, p); err != nil {
		return err
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q is not an absolute path", what, p)
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return fmt.Errorf("%s %q has a .. element: send the path itself", what, p)
	}
	if c := filepath.Clean(p); c != p {
		return fmt.Errorf("%s %q is not a clean path (a . element, a double or trailing slash): send %q", what, p, c)
	}
	return nil
}

// inside reports whether the clean path p lies below dir (not dir itself).
func inside(p, dir string) bool {
	return p != dir && strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

func insideAny(p string, dirs []string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return inside(p, d) })
}

// resolved is a path with its symbolic links resolved on the storage, or why that failed.
type resolved struct {
	real string
	err  error
}

// resolveAll resolves every path's symbolic links at once, each under ActivityIOTimeout. A
// directory that does not exist resolves to itself: nothing inside it exists either.
func (a *Agent) resolveAll(paths []string, dirs map[string]bool) map[string]resolved {
	out := make(map[string]resolved, len(paths))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range paths {
		wg.Go(func() {
			real, err := storageCall(a.storage, ActivityIOTimeout, func() (string, error) { return filepath.EvalSymlinks(p) })
			if err != nil && dirs[p] && errors.Is(err, fs.ErrNotExist) {
				real, err = p, nil
			}
			mu.Lock()
			out[p] = resolved{real, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// errNotAsked is the heartbeat sample's error when the request named no heartbeat file.
var errNotAsked = errors.New("not asked for: the request names no heartbeat_file")

// activityCheck resolves every path, refuses the request if one leads outside its directory,
// then reads every file, each under its own deadline.
func (a *Agent) activityCheck(req api.ActivityCheckRequest) (api.ActivityCheckResult, *httpError) {
	hbDir, diskDirs := a.cfg.HeartbeatDir, a.cfg.VMDiskDirs
	dirs := map[string]bool{}
	var files []string
	if req.HeartbeatFile != "" {
		dirs[hbDir] = true
		files = append(files, req.HeartbeatFile)
	}
	if len(req.Disks) > 0 {
		for _, d := range diskDirs {
			dirs[d] = true
		}
		files = append(files, req.Disks...)
	}
	res := a.resolveAll(uniq(append(slices.Collect(maps.Keys(dirs)), files...)), dirs)

	// Where a file is now allowed, with its directories resolved; unknown is why one of them
	// could not be resolved (a hung storage), which leaves containment undecided.
	allowed := func(roots []string) (reals []string, unknown error) {
		for _, d := range roots {
			r := res[d]
			if r.err != nil {
				unknown = fmt.Errorf("cannot resolve %s: %w", d, r.err)
				continue
			}
			reals = append(reals, r.real)
		}
		return reals, unknown
	}
	// check returns the file's resolved path, or the error to report for it, or the refusal.
	var refusals []string
	check := func(what, p string, roots []string, where string) (string, error) {
		r := res[p]
		if r.err != nil {
			return "", r.err
		}
		reals, unknown := allowed(roots)
		if insideAny(r.real, reals) {
			return r.real, nil
		}
		if unknown != nil {
			return "", fmt.Errorf("cannot tell whether %s (%s) is inside %s: %w", p, r.real, where, unknown)
		}
		refusals = append(refusals, fmt.Sprintf("%s %s resolves to %s, outside %s", what, p, r.real, where))
		return "", nil
	}
	hbReal, hbErr := "", errNotAsked
	if req.HeartbeatFile != "" {
		hbReal, hbErr = check("heartbeat_file", req.HeartbeatFile, []string{hbDir}, fmt.Sprintf("%s (%s)", KeyHeartbeatDir, hbDir))
	}
	diskReal := make([]string, len(req.Disks))
	diskErr := make([]error, len(req.Disks))
	where := fmt.Sprintf("%s (%s)", KeyVMDiskDirs, strings.Join(diskDirs, ", "))
	for i, d := range req.Disks {
		diskReal[i], diskErr[i] = check(fmt.Sprintf("disks[%d]", i), d, diskDirs, where)
	}
	if len(refusals) > 0 {
		return api.ActivityCheckResult{}, newHTTPError(api.CodeBadRequest, "refused, nothing read: %s: a symbolic link leads out of the directories this agent reads",
			strings.Join(refusals, "; "))
	}

	out := api.ActivityCheckResult{Checker: a.cfg.HostName, ReadAt: a.now().UTC(),
		Heartbeat: api.HeartbeatSample{Path: req.HeartbeatFile}, Disks: make([]api.FileSample, len(req.Disks))}
	var wg sync.WaitGroup
	wg.Go(func() {
		if hbErr != nil {
			out.Heartbeat.Error = hbErr.Error()
			return
		}
		rec, err := storageCall(a.storage, ActivityIOTimeout, func() (api.HeartbeatRecord, error) { return readHeartbeat(hbReal) })
		if err == nil && rec.Host != req.Host {
			err = fmt.Errorf("the record names host %q, not %q", rec.Host, req.Host)
		}
		if err != nil {
			out.Heartbeat.Error = err.Error()
			return
		}
		out.Heartbeat.Read = rec
	})
	for i, d := range req.Disks {
		wg.Go(func() {
			s := api.FileSample{Path: d}
			err := diskErr[i]
			if err == nil {
				var fi fs.FileInfo
				if fi, err = storageCall(a.storage, ActivityIOTimeout, func() (fs.FileInfo, error) { return statOpen(diskReal[i]) }); err == nil {
					s.MTime, s.Size = fi.ModTime().UTC(), fi.Size()
				}
			}
			if err != nil {
				s.Error = err.Error()
			}
			out.Disks[i] = s
		})
	}
	wg.Wait()
	return out, nil
}

// openRegular opens path for reading with a fresh open (NFS close-to-open: the attributes and
// data are revalidated with the server), not following a symbolic link that appeared since the
// path was resolved, and refuses anything but a regular file.
func openRegular(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// statOpen returns a file's attributes through open and fstat, which revalidates them with an
// NFS server where a stat may answer from the client's attribute cache.
func statOpen(path string) (fs.FileInfo, error) {
	f, fi, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	return fi, f.Close()
}

// readHeartbeat reads and parses a heartbeat file with a fresh open.
func readHeartbeat(path string) (api.HeartbeatRecord, error) {
	var rec api.HeartbeatRecord
	f, _, err := openRegular(path)
	if err != nil {
		return rec, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxHeartbeatBytes+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rec, err
	}
	if len(data) > maxHeartbeatBytes {
		return rec, fmt.Errorf("%s is larger than %d bytes: not a heartbeat record", path, maxHeartbeatBytes)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return api.HeartbeatRecord{}, fmt.Errorf("%s is not a heartbeat record: %v", path, err)
	}
	if rec.Host == "" || rec.Seq == 0 {
		return api.HeartbeatRecord{}, fmt.Errorf("%s is not a heartbeat record: no host or no seq", path)
	}
	return rec, nil
}

func uniq(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
