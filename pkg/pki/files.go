package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Action says what a call did with one file, so the CLI can print it and a second `kvmctl init`
// can show that nothing was replaced.
type Action string

// The possible Actions.
const (
	Created  Action = "created"
	Kept     Action = "kept"
	Replaced Action = "replaced"
)

// FileResult is the outcome for one file.
type FileResult struct {
	Path   string `json:"path"`
	Action Action `json:"action"`
}

// Result lists the files a call looked at, in a fixed order, with what it did to each.
type Result struct {
	Files []FileResult
}

func (r *Result) add(path string, a Action) {
	r.Files = append(r.Files, FileResult{Path: path, Action: a})
}

const (
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
	dirMode  fs.FileMode = 0o700
)

// InitCA makes dir hold the fleet CA and the operator certificate, creating only what is missing:
// run twice, it keeps everything. A half-present pair (a certificate without its key, or the
// reverse) is an error, because regenerating either half would silently cut off every agent.
func InitCA(dir string, now time.Time) (Result, error) {
	var res Result
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return res, fmt.Errorf("create pki dir: %w", err)
	}
	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	ca, err := LoadCA(dir)
	switch {
	case errors.Is(err, ErrNoCA):
		kp, err := GenerateCA(now)
		if err != nil {
			return res, err
		}
		if ca, err = ParseCA(kp.CertPEM, kp.KeyPEM); err != nil {
			return res, err
		}
		if err := writePair(kp, caCert, caKey, false); err != nil {
			return res, fmt.Errorf("write fleet CA: %w", err)
		}
		res.add(caCert, Created)
		res.add(caKey, Created)
	case err != nil:
		return res, err
	default:
		res.add(caCert, Kept)
		res.add(caKey, Kept)
	}

	opCert, opKey := filepath.Join(dir, OperatorCertFile), filepath.Join(dir, OperatorKeyFile)
	certOK, err := exists(opCert)
	if err != nil {
		return res, err
	}
	keyOK, err := exists(opKey)
	if err != nil {
		return res, err
	}
	switch {
	case certOK && keyOK:
		// A kept operator certificate from an earlier CA would fail on every host later on.
		pemBytes, err := os.ReadFile(opCert)
		if err != nil {
			return res, fmt.Errorf("read operator certificate: %w", err)
		}
		cert, err := parseCert(pemBytes)
		if err != nil {
			return res, fmt.Errorf("parse %s: %w", opCert, err)
		}
		if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
			return res, fmt.Errorf("%s was not issued by the fleet CA in %s: move %s and %s away and run `kvmctl init` again",
				opCert, dir, OperatorCertFile, OperatorKeyFile)
		}
		res.add(opCert, Kept)
		res.add(opKey, Kept)
	case certOK:
		return res, fmt.Errorf("%s is missing but %s exists: restore the key from a backup, or move %s away and run `kvmctl init` again for a new operator certificate",
			opKey, opCert, OperatorCertFile)
	case keyOK:
		// Only the certificate was lost: sign a new one for the key the operator already has.
		keyPEM, err := os.ReadFile(opKey)
		if err != nil {
			return res, fmt.Errorf("read operator key: %w", err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return res, fmt.Errorf("parse %s: %w", opKey, err)
		}
		kp, err := ca.operatorFor("operator", key, now)
		if err != nil {
			return res, err
		}
		if err := writeFile(opCert, kp.CertPEM, certMode, false); err != nil {
			return res, fmt.Errorf("write operator certificate: %w", err)
		}
		res.add(opCert, Created)
		res.add(opKey, Kept)
	default:
		kp, err := ca.NewOperator("operator", now)
		if err != nil {
			return res, err
		}
		if err := writePair(kp, opCert, opKey, false); err != nil {
			return res, fmt.Errorf("write operator certificate: %w", err)
		}
		res.add(opCert, Created)
		res.add(opKey, Created)
	}
	return res, nil
}

// LoadCA reads the fleet CA from dir. With neither file present the error wraps ErrNoCA and tells
// the user to run `kvmctl init`; with one of the two missing it says how to recover instead,
// since `kvmctl init` would then refuse too.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	certMissing, keyMissing := errors.Is(certErr, fs.ErrNotExist), errors.Is(keyErr, fs.ErrNotExist)
	switch {
	case certMissing && keyMissing:
		return nil, fmt.Errorf("%w in %s: run `kvmctl init` first", ErrNoCA, dir)
	case keyMissing:
		return nil, fmt.Errorf("%s is missing but %s exists: restore the CA key from a backup; if it is lost, move %s away, run `kvmctl init` and reissue every agent certificate",
			keyPath, certPath, CACertFile)
	case certMissing:
		return nil, fmt.Errorf("%s is missing but %s exists: restore it from a backup or copy any agent's %s back",
			certPath, keyPath, CACertFile)
	case certErr != nil:
		return nil, fmt.Errorf("read CA certificate: %w", certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("read CA key: %w", keyErr)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load fleet CA from %s: %w", dir, err)
	}
	return ca, nil
}

// IssueAgent writes agent.crt, agent.key and a copy of the fleet CA certificate into outDir, ready
// to copy to host. Running it again renews the agent's certificate and key, which is why those two
// are replaced; the CA is never written, and outDir may not be caDir, so the CA key cannot ship
// to a host by accident.
func IssueAgent(caDir, outDir, host string, sans []string, now time.Time) (Result, error) {
	var res Result
	ca, err := LoadCA(caDir)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(outDir, dirMode); err != nil {
		return res, fmt.Errorf("create agent dir: %w", err)
	}
	if same, err := sameDir(caDir, outDir); err != nil {
		return res, err
	} else if same {
		return res, fmt.Errorf("agent dir %s is the CA dir: choose another output dir so the CA key stays on the operator's machine", outDir)
	}
	// Check the CA copy before writing anything, so a refusal leaves outDir as it was.
	caCopy := filepath.Join(outDir, CACertFile)
	caAction := Created
	if old, err := os.ReadFile(caCopy); err == nil {
		cert, perr := parseCert(old)
		if perr != nil || !cert.Equal(ca.Cert) {
			return res, fmt.Errorf("%s is not the fleet CA in %s: move it away and run again to install the fleet CA", caCopy, caDir)
		}
		caAction = Kept
	} else if !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("read CA copy: %w", err)
	}

	kp, err := ca.NewAgent(host, sans, now)
	if err != nil {
		return res, err
	}
	certPath, keyPath := filepath.Join(outDir, AgentCertFile), filepath.Join(outDir, AgentKeyFile)
	certAction, err := createOrReplace(certPath)
	if err != nil {
		return res, err
	}
	keyAction, err := createOrReplace(keyPath)
	if err != nil {
		return res, err
	}
	if err := writePair(kp, certPath, keyPath, true); err != nil {
		return res, fmt.Errorf("write agent certificate: %w", err)
	}
	if caAction == Created {
		if err := writeFile(caCopy, ca.CertPEM, certMode, false); err != nil {
			return res, fmt.Errorf("write CA copy: %w", err)
		}
	}
	res.add(certPath, certAction)
	res.add(keyPath, keyAction)
	res.add(caCopy, caAction)
	return res, nil
}

// IssueOperator writes an additional operator certificate named name (operator.crt,
// operator.key) and a copy of the CA certificate into outDir, for a second operator or a
// script. It never replaces an existing operator certificate: the old one stays valid until it
// expires whatever happens to its file, so overwriting it would only hide that two exist.
func IssueOperator(caDir, outDir, name string, now time.Time) (Result, error) {
	var res Result
	ca, err := LoadCA(caDir)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(outDir, dirMode); err != nil {
		return res, fmt.Errorf("create operator dir: %w", err)
	}
	certPath, keyPath := filepath.Join(outDir, OperatorCertFile), filepath.Join(outDir, OperatorKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if ok, err := exists(p); err != nil {
			return res, err
		} else if ok {
			return res, fmt.Errorf("%s already exists: choose another output dir", p)
		}
	}
	kp, err := ca.NewOperator(name, now)
	if err != nil {
		return res, err
	}
	if err := writePair(kp, certPath, keyPath, false); err != nil {
		return res, fmt.Errorf("write operator certificate: %w", err)
	}
	res.add(certPath, Created)
	res.add(keyPath, Created)
	caCopy := filepath.Join(outDir, CACertFile)
	switch err := writeFile(caCopy, ca.CertPEM, certMode, false); {
	case errors.Is(err, fs.ErrExist):
		res.add(caCopy, Kept)
	case err != nil:
		return res, fmt.Errorf("write CA copy: %w", err)
	default:
		res.add(caCopy, Created)
	}
	return res, nil
}

// writePair writes the key, then the certificate. If the certificate cannot be written, a key
// this call created is removed again so the next run does not find half a pair.
func writePair(kp KeyPair, certPath, keyPath string, replace bool) error {
	if err := writeFile(keyPath, kp.KeyPEM, keyMode, replace); err != nil {
		return err
	}
	if err := writeFile(certPath, kp.CertPEM, certMode, replace); err != nil {
		if !replace {
			os.Remove(keyPath)
		}
		return err
	}
	return nil
}

// writeFile writes data through a temporary file in the same directory and then moves it into
// place, so a reader (kvmagent starting, another kvmctl) sees the old file or the new one, never
// half of one. Without replace it refuses to replace an existing file, and reports fs.ErrExist.
func writeFile(path string, data []byte, mode fs.FileMode, replace bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a link or a failure; after a rename it is already gone
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = createFrom(tmp, path)
	}
	if err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// createFrom moves tmp to path only if path does not exist. A hard link fails on an existing
// path, unlike rename, so two concurrent `kvmctl init` runs cannot replace each other's key; on a
// file system without hard links it falls back to check-then-rename.
func createFrom(tmp, path string) error {
	err := os.Link(tmp, path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	if ok, serr := exists(path); serr != nil {
		return serr
	} else if ok {
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	}
	return os.Rename(tmp, path)
}

// syncDir makes a rename durable across a power cut. It is best effort: not every platform can
// sync a directory, and the file itself is already synced.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", path, err)
}

func createOrReplace(path string) (Action, error) {
	ok, err := exists(path)
	if ok {
		return Replaced, err
	}
	return Created, err
}

func sameDir(a, b string) (bool, error) {
	ai, err := os.Stat(a)
	if err != nil {
		return false, fmt.Errorf("check CA dir: %w", err)
	}
	bi, err := os.Stat(b)
	if err != nil {
		return false, fmt.Errorf("check output dir: %w", err)
	}
	return os.SameFile(ai, bi), nil
}

// readFiles reads each path; the error from os.ReadFile already names the file.
func readFiles(paths ...string) ([][]byte, error) {
	out := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}
