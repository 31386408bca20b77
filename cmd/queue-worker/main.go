// Command queue-worker takes Screwdriver build jobs from Redis (resque wire
// format) and runs each build as a Pod on Kata or HyperD.
//
// Usage:
//
//	queue-worker run [--config FILE] [--config-dir DIR] [--kubeconfig FILE]
//	queue-worker config print [--sources] [--config FILE] [--config-dir DIR]
//	queue-worker explain      [flags] [BUILD_JSON | -]   (see explain.go)
//	queue-worker autopilot    [flags] [status | pause REASON | resume | pin PERCENT | unpin]
//	queue-worker version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  queue-worker run          [--config FILE] [--config-dir DIR] [--kubeconfig FILE]
  queue-worker config print [--sources] [--config FILE] [--config-dir DIR]
` + explainUsage + autopilotUsage + `  queue-worker version
`

// errUsage makes run exit 2 after printing usage.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprint(stderr, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "queue-worker: %v\n", err)
		return 1
	}
}

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "run":
		fs, lf := newFlags("run", stderr)
		kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then in-cluster config)")
		if err := fs.Parse(args[1:]); err != nil {
			return errUsage
		}
		cfg, err := lf.load()
		if err != nil {
			return err
		}
		if *kubeconfig != "" {
			cfg.Kubernetes.Kubeconfig = *kubeconfig
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return runDaemon(ctx, cfg, lf.options())
	case "config":
		if len(args) < 2 || args[1] != "print" {
			return errUsage
		}
		fs, lf := newFlags("config print", stderr)
		sources := fs.Bool("sources", false, "print where each key's value came from instead of the config")
		if err := fs.Parse(args[2:]); err != nil {
			return errUsage
		}
		cfg, err := lf.load()
		if err != nil {
			return err
		}
		return printConfig(stdout, cfg, *sources)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "autopilot":
		return runAutopilot(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return errUsage
}

// loadFlags are the config-loading flags every subcommand shares.
type loadFlags struct {
	configFile *string
	configDir  *string
}

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *loadFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	lf := &loadFlags{
		configFile: fs.String("config", "", "overlay config file (e.g. a mounted ConfigMap), applied last"),
		configDir:  fs.String("config-dir", defaultConfigDir(), "directory holding default.yaml and custom-environment-variables.yaml"),
	}
	return fs, lf
}

// defaultConfigDir is $QUEUE_WORKER_CONFIG_DIR, else ./config, else the
// image's /etc/queue-worker.
func defaultConfigDir() string {
	if d := os.Getenv("QUEUE_WORKER_CONFIG_DIR"); d != "" {
		return d
	}
	if _, err := os.Stat(filepath.Join("config", "default.yaml")); err == nil {
		return "config"
	}
	return "/etc/queue-worker"
}
