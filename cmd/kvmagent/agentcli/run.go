package agentcli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/agent"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

// RunOptions are the flags of `kvmagent run`.
type RunOptions struct {
	ConfigFile string
	LogFormat  string // text or json
	LogLevel   string // debug, info, warn or error
	Stderr     io.Writer

	// OpenHypervisor opens the libvirt URI; tests replace it with a fake.
	OpenHypervisor func(uri string) (virt.Hypervisor, error)
}

func newRunCmd(stderr io.Writer) *cobra.Command {
	opts := &RunOptions{Stderr: stderr, OpenHypervisor: openLibvirt}
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the agent until SIGTERM or SIGINT",
		Long: `Run reads agent.properties, checks all of it (and reports every problem at once, exit 2),
connects to libvirt and serves HTTPS with mutual TLS on the listen address. Logs go to stderr.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ConfigFile, "config", "/etc/kvmagent/agent.properties", "agent.properties file")
	f.StringVar(&opts.LogFormat, "log-format", "text", "log format on stderr: text or json")
	f.StringVar(&opts.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

func openLibvirt(uri string) (virt.Hypervisor, error) {
	l, err := libvirtdrv.Open(uri)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, errs.Refusedf("--log-level %q: want debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, errs.Refusedf("--log-format %q: want text or json", format)
}

// runRun checks the configuration, then serves until ctx ends. Configuration problems are
// refusals (exit 2); anything that fails after the checks is exit 1.
func runRun(ctx context.Context, opts *RunOptions) error {
	log, err := newLogger(opts.Stderr, opts.LogFormat, opts.LogLevel)
	if err != nil {
		return err
	}
	cfg, warns, err := agent.LoadConfig(opts.ConfigFile)
	for _, w := range warns {
		fmt.Fprintf(opts.Stderr, "kvmagent: warning: %s: %s\n", opts.ConfigFile, w)
	}
	if err != nil {
		return errs.Refused(fmt.Errorf("%w\nfix %s and start kvmagent again", err, opts.ConfigFile))
	}
	hv, err := opts.OpenHypervisor(cfg.LibvirtURI)
	if err != nil {
		return fmt.Errorf("%w: is libvirtd running, and is %s=%s right?", err, agent.KeyLibvirtURI, cfg.LibvirtURI)
	}
	defer hv.Close()
	a, err := agent.New(cfg, hv, agent.WithLogger(log))
	if err != nil {
		return err
	}
	return a.ListenAndServe(ctx)
}
