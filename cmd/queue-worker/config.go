package main

import (
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"

	"github.com/sdkata/queue-worker/internal/config"
)

func (lf *loadFlags) options() config.LoadOptions {
	return config.LoadOptions{
		DefaultsFile: filepath.Join(*lf.configDir, "default.yaml"),
		EnvMapFile:   filepath.Join(*lf.configDir, "custom-environment-variables.yaml"),
		OverlayFile:  *lf.configFile,
	}
}

func (lf *loadFlags) load() (*config.Config, error) {
	cfg, err := config.Load(lf.options())
	if err != nil {
		return nil, fmt.Errorf("refusing to start with an invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func printConfig(w io.Writer, cfg *config.Config, sources bool) error {
	if sources {
		src := cfg.Sources()
		for _, k := range slices.Sorted(maps.Keys(src)) {
			fmt.Fprintf(w, "%s\t%s\n", k, src[k])
		}
		return nil
	}
	out, err := cfg.RedactedYAML()
	if err != nil {
		return fmt.Errorf("rendering config: %w", err)
	}
	_, err = w.Write(out)
	return err
}
