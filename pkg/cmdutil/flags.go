package cmdutil

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// parseTime reads a plain number as seconds (CloudStack's settings are seconds) and anything
// else as a Go duration ("90s", "2m"), so every --timeout of kvmctl takes the same spellings.
func parseTime(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(365*24*time.Hour/time.Second) {
			return 0, fmt.Errorf("%d seconds is out of range", n)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want seconds (30) or a duration (30s, 2m), not %q", s)
	}
	return d, nil
}

type durationValue struct{ p *time.Duration }

func (v durationValue) String() string {
	if v.p == nil {
		return ""
	}
	return v.p.String()
}

func (v durationValue) Set(s string) error {
	d, err := parseTime(s)
	if err != nil {
		return err
	}
	*v.p = d
	return nil
}

func (durationValue) Type() string { return "duration" }

// DurationVar defines a duration flag that also takes a plain number of seconds.
func DurationVar(fs *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var(durationValue{p}, name, usage+" (seconds, or a duration such as 30s or 2m)")
}

type secondsValue struct{ p *int }

func (v secondsValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

func (v secondsValue) Set(s string) error {
	d, err := parseTime(s)
	if err != nil {
		return err
	}
	*v.p = int((d + time.Second - 1) / time.Second)
	return nil
}

func (secondsValue) Type() string { return "seconds" }

// SecondsVar defines a whole-seconds flag that also takes a duration (rounded up to seconds).
func SecondsVar(fs *pflag.FlagSet, p *int, name string, def int, usage string) {
	*p = def
	fs.Var(secondsValue{p}, name, usage+" (seconds, or a duration such as 30s or 2m)")
}
