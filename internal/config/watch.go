package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/viper"
)

// watchDebounce lets a burst of events (an editor's truncate-then-write, or
// the several renames of one ConfigMap update) settle into one reload.
var watchDebounce = 100 * time.Millisecond

// Watch reloads the configuration whenever opts.OverlayFile changes and
// calls onChange with the new Config, or with the error Load returned (the
// caller keeps its last good Config). It returns once the watch is armed;
// onChange runs on a goroutine of Watch's, never concurrently with itself,
// and is not called again after ctx is done.
//
// The file watch is viper's WatchConfig, which follows the Kubernetes
// ConfigMap volume layout: the kubelet swaps the "..data" symlink
// atomically rather than writing the file in place. Limits, from viper:
//   - viper's watcher goroutine and its inotify instance cannot be stopped;
//     after ctx is done they stay idle (the callback is a no-op) until the
//     process exits or the overlay file is removed. Call Watch once per process.
//   - removing the overlay file ends viper's watch for good, even if the
//     file is recreated; an atomic rename over it is fine.
//   - a ConfigMap mounted with subPath is never updated by the kubelet.
//   - viper logs its own watcher errors only; they go to slog's default
//     logger at warn level and above.
func Watch(ctx context.Context, opts LoadOptions, onChange func(*Config, error)) error {
	if opts.OverlayFile == "" {
		return errors.New("config: watch: no overlay file to watch")
	}
	if onChange == nil {
		return errors.New("config: watch: onChange is nil")
	}
	// viper watches the file's directory; a relative name without a
	// directory would give it "" to watch, and it would give up silently.
	abs, err := filepath.Abs(opts.OverlayFile)
	if err != nil {
		return fmt.Errorf("config: watching %s: %w", opts.OverlayFile, err)
	}
	if _, err := os.Stat(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("config: watching %s: %w", opts.OverlayFile, err)
	}
	// viper calls os.Exit(1) when it cannot create an inotify instance
	// (fs.inotify.max_user_instances exhausted). Try one first so that the
	// common case is an error here instead.
	probe, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watching %s: %w", opts.OverlayFile, err)
	}
	_ = probe.Close()

	v := viper.NewWithOptions(viper.WithLogger(slog.New(minLevel{slog.Default().Handler(), slog.LevelWarn})))
	v.SetConfigFile(abs)
	v.SetConfigType("yaml") // viper re-reads the file itself; the name may lack an extension
	kick := make(chan struct{}, 1)
	v.OnConfigChange(func(fsnotify.Event) {
		if ctx.Err() != nil {
			return
		}
		select {
		case kick <- struct{}{}:
		default: // a reload is already pending
		}
	})
	v.WatchConfig() // returns once the directory watch is in place

	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
			}
			timer := time.NewTimer(watchDebounce)
			for settled := false; !settled; {
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case <-kick:
					timer.Reset(watchDebounce)
				case <-timer.C:
					settled = true
				}
			}
			cfg, err := Load(opts)
			if ctx.Err() != nil {
				return
			}
			onChange(cfg, err)
		}
	}()
	return nil
}

// minLevel drops records below a level: viper logs every re-read at info.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.level}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}
