package cli

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gosnmp/gosnmp"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
)

// cmdSink runs the receivers of notifications for the scripts (pkg/notify/notifytest's), each
// until the script ends, each writing what it receives to $WORK/NAME/1.txt, 2.txt, ...:
//
//	sink smtp NAME [--login USER PASSWORD_FILE] [--tls]   $NAME = host:port; with --tls, STARTTLS
//	                                                      and $NAME_CA = its CA file
//	sink trap NAME                                        $NAME = host:port of an SNMP trap receiver
//	sink hook NAME [--secret FILE] [--status CODE]        $NAME = URL of a webhook answering CODE
//	sink wait NAME N                                      wait (10 s at most) until NAME has N
//
// A mail's file holds its envelope, login, TLS, decoded subject and decoded body (N.raw the
// message as received); a trap's its community and each varbind; a webhook request's its
// signature check (N.json the body).
func cmdSink(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: sink smtp|trap|hook|wait NAME ...")
	}
	kind, name, opts := args[0], args[1], args[2:]
	if kind == "wait" {
		sinkWait(ts, name, opts)
		return
	}
	dir := ts.MkAbs(name)
	ts.Check(os.MkdirAll(dir, 0o755))
	rec := &sinkRecorder{dir: dir}
	t := scriptT{ts}
	switch kind {
	case "smtp":
		var o notifytest.MailOptions
		for i := 0; i < len(opts); i++ {
			switch {
			case opts[i] == "--login" && i+2 < len(opts):
				o.Username, o.Password = opts[i+1], strings.TrimSpace(ts.ReadFile(opts[i+2]))
				i += 2
			case opts[i] == "--tls":
				var ca string
				o.TLS, ca = notifytest.ServerTLS(t, ts.MkAbs(""))
				ts.Setenv(name+"_CA", ca)
			default:
				ts.Fatalf("sink smtp: unknown option %q", opts[i])
			}
		}
		o.OnMail = func(m notifytest.Mail) { rec.add(mailRecord(m), ".raw", m.Data) }
		ts.Setenv(name, notifytest.StartMailServer(t, o).Addr)
	case "trap":
		ts.Setenv(name, notifytest.StartTrapReceiver(t, func(p *gosnmp.SnmpPacket) { rec.add(trapRecord(p), "", nil) }).Addr)
	case "hook":
		secret, status := "", 200
		for i := 0; i+1 < len(opts); i += 2 {
			switch opts[i] {
			case "--secret":
				secret = strings.TrimSpace(ts.ReadFile(opts[i+1]))
			case "--status":
				var err error
				status, err = strconv.Atoi(opts[i+1])
				ts.Check(err)
			default:
				ts.Fatalf("sink hook: unknown option %q", opts[i])
			}
		}
		hook := notifytest.StartHook(t, func(int) int { return status }, func(r notifytest.HookRequest) {
			sig := "missing"
			if h := r.Header.Get(notify.SignatureHeader); h != "" {
				sig = "verified"
				if err := notify.Verify(secret, h, r.Body, time.Now(), notify.DefaultTolerance); err != nil {
					sig = "BAD: " + err.Error()
				}
			}
			rec.add(fmt.Sprintf("method: %s\ncontent-type: %s\nsignature: %s\n", r.Method, r.Header.Get("Content-Type"), sig), ".json", r.Body)
		})
		ts.Setenv(name, hook.URL)
	default:
		ts.Fatalf("sink: unknown kind %q: smtp, trap, hook or wait", kind)
	}
}

func sinkWait(ts *testscript.TestScript, name string, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: sink wait NAME N")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := filepath.Glob(filepath.Join(ts.MkAbs(name), "*.txt"))
		if len(got) >= want {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("sink %s received %d, want %d", name, len(got), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sinkRecorder numbers what a sink receives and writes it, before the sender hears back.
type sinkRecorder struct {
	dir string
	mu  sync.Mutex
	n   int
}

// add writes text to N.txt and, when ext is set, extra to N.ext (written first, so that a
// script that sees N.txt sees both).
func (r *sinkRecorder) add(text, ext string, extra []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	base := filepath.Join(r.dir, strconv.Itoa(r.n))
	if ext != "" {
		_ = os.WriteFile(base+ext, extra, 0o644)
	}
	_ = os.WriteFile(base+".txt", []byte(text), 0o644)
}

func mailRecord(m notifytest.Mail) string {
	var b strings.Builder
	fmt.Fprintf(&b, "envelope-from: %s\nenvelope-to: %s\nlogin: %s\ntls: %v\n", m.From, strings.Join(m.To, " "), m.Login, m.TLS)
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		fmt.Fprintf(&b, "unreadable: %v\n", err)
		return b.String()
	}
	subject, _ := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	fmt.Fprintf(&b, "subject: %s\nfrom: %s\nto: %s\n\n", subject, msg.Header.Get("From"), msg.Header.Get("To"))
	var body io.Reader = msg.Body
	if strings.EqualFold(msg.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		body = quotedprintable.NewReader(body)
	}
	text, _ := io.ReadAll(body)
	b.WriteString(strings.ReplaceAll(string(text), "\r\n", "\n"))
	return b.String()
}

func trapRecord(p *gosnmp.SnmpPacket) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: %s\ncommunity: %s\n", p.Version, p.Community)
	for _, v := range p.Variables {
		val := fmt.Sprint(v.Value)
		if s, ok := v.Value.([]byte); ok {
			val = string(s)
			if v.Name == ".1.3.6.1.4.1.32473.1.1.3.0" { // kvmctlNoticeTime, a DateAndTime
				val = hex.EncodeToString(s)
			}
		}
		fmt.Fprintf(&b, "%s = %s\n", v.Name, val)
	}
	return b.String()
}

// scriptT lets notifytest's receivers run under a script: they stop when it ends.
type scriptT struct{ ts *testscript.TestScript }

func (s scriptT) Helper()                        {}
func (s scriptT) Fatalf(format string, a ...any) { s.ts.Fatalf(format, a...) }
func (s scriptT) Cleanup(fn func())              { s.ts.Defer(fn) }
