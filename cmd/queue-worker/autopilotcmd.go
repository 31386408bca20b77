package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/routing"
)

const autopilotUsage = `  queue-worker autopilot    [--config FILE] [--config-dir DIR] [-o text|json] [--history N]
                            [status | pause REASON | resume | pin PERCENT | unpin]
`

// runAutopilot shows the autopilot's share, controls and recent decisions
// (status, the default), or sets an operator control in its Redis hash:
// pause/resume stop and restart its decisions (routing keeps the share),
// pin/unpin hold the share at a percentage on every replica (unpinned, it
// goes on from the pinned value).
func runAutopilot(args []string, stdout, stderr io.Writer) error {
	fs, lf := newFlags("autopilot", stderr)
	output := fs.String("o", "text", "output format: text or json")
	history := fs.Int("history", 10, "decisions to show (0: all kept)")
	if err := fs.Parse(args); err != nil || (*output != "text" && *output != "json") || *history < 0 {
		return errUsage
	}
	cfg, err := lf.load()
	if err != nil {
		return err
	}
	rdb := newRedis(cfg)
	defer func() { _ = rdb.Close() }()
	ns := cfg.ResqueNamespace()
	key := autopilot.Key(ns)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Queue.OperationTimeout)
	defer cancel()

	op, rest := "status", fs.Args()
	if len(rest) > 0 {
		op, rest = rest[0], rest[1:]
	}
	set := func(field, value string) error {
		if err := rdb.HSet(ctx, key, field, value).Err(); err != nil {
			return fmt.Errorf("setting %s in %s: %w", field, key, err)
		}
		fmt.Fprintf(stdout, "%s %s=%q: every replica applies it within its refresh (5s) while routing.autopilot.enabled is true\n", key, field, value)
		return nil
	}
	unset := func(field string) error {
		if err := rdb.HDel(ctx, key, field).Err(); err != nil {
			return fmt.Errorf("clearing %s in %s: %w", field, key, err)
		}
		fmt.Fprintf(stdout, "%s %s cleared\n", key, field)
		return nil
	}
	switch {
	case op == "pause" && len(rest) > 0:
		return set(autopilot.FieldPaused, strings.Join(rest, " "))
	case op == "resume" && len(rest) == 0:
		return unset(autopilot.FieldPaused)
	case op == "pin" && len(rest) == 1:
		if _, err := autopilot.ParsePin(rest[0]); err != nil {
			return err
		}
		return set(autopilot.FieldPin, rest[0])
	case op == "unpin" && len(rest) == 0:
		return unset(autopilot.FieldPin)
	case op != "status" || len(rest) > 0:
		return errUsage
	}

	store := autopilot.NewStore(rdb, ns, cfg.Queue.OperationTimeout)
	snap, err := store.Load(ctx)
	if err != nil {
		return err
	}
	decisions, err := store.History(ctx, *history)
	if err != nil {
		return err
	}
	st := autopilotStatus(cfg, snap, decisions)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(st)
	}
	fmt.Fprintf(stdout, "autopilot (%s): %s\n", key, st.Summary)
	for _, d := range decisions {
		fmt.Fprintf(stdout, "  %s  %s\n", d.At.UTC().Format(time.RFC3339), d)
	}
	return nil
}

type autopilotView struct {
	Enabled   bool                 `json:"enabled"`
	Percent   *float64             `json:"percent,omitempty"`
	Floor     *float64             `json:"floor,omitempty"`
	Max       float64              `json:"max"`
	Paused    string               `json:"paused,omitempty"`
	Pin       *float64             `json:"pin,omitempty"`
	PinError  string               `json:"pinError,omitempty"`
	State     autopilot.State      `json:"state"`
	History   []autopilot.Decision `json:"history"`
	Summary   string               `json:"summary"`
	Evaluated *time.Time           `json:"evaluatedAt,omitempty"`
}

func autopilotStatus(cfg *config.Config, snap autopilot.Snapshot, decisions []autopilot.Decision) autopilotView {
	a := cfg.Routing.Autopilot
	v := autopilotView{Enabled: a.Enabled, Max: a.MaxPercent, Paused: snap.Paused, Pin: snap.Pin, PinError: snap.PinError,
		State: snap.State, History: decisions}
	v.State.Last = nil // it is the history's last entry
	if !snap.State.EvaluatedAt.IsZero() {
		t := snap.State.EvaluatedAt
		v.Evaluated = &t
	}
	var parts []string
	if !a.Enabled {
		parts = append(parts, "disabled (routing.autopilot.enabled=false): the configured weight is in force")
	}
	if pct, _ := routing.KataPercent(cfg); pct != nil {
		floor := *pct
		p := autopilot.InForce(snap.State, floor, a.MaxPercent)
		if snap.Pin != nil {
			p = *snap.Pin
		}
		v.Floor = &floor
		if a.Enabled {
			v.Percent = &p
			parts = append(parts, fmt.Sprintf("Kata %g%% of weighted builds (floor %g%%, max %g%%)", p, floor, a.MaxPercent))
		} else {
			parts = append(parts, fmt.Sprintf("the configured %g%% is in force; turned on, it would go on from %g%%", floor, p))
		}
	} else {
		parts = append(parts, "no weighted rule (executor.k8s.weightage unset): nothing to steer")
	}
	if snap.Pin != nil {
		parts = append(parts, fmt.Sprintf("PINNED at %g%%", *snap.Pin))
	}
	if snap.PinError != "" {
		parts = append(parts, snap.PinError)
	}
	if snap.Paused != "" {
		parts = append(parts, "PAUSED: "+snap.Paused)
	}
	if snap.State.Regressions > 0 {
		parts = append(parts, fmt.Sprintf("%d regression(s) in a row", snap.State.Regressions))
	}
	if len(decisions) == 0 {
		parts = append(parts, "no decision yet")
	}
	v.Summary = strings.Join(parts, "; ")
	return v
}
