package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// explainStdin is where JSON lines are read from; tests replace it.
var explainStdin io.Reader = os.Stdin

const explainUsage = `  queue-worker explain      [--config FILE] [--config-dir DIR] [-o text|json] [--simulate N]
                            [--image IMAGE] [--build-id N] [--job-id N] [--pipeline-id N]
                            [--annotation KEY=VALUE]... [--blocked-by JOB,JOB] [--check-gate]
                            [--check-learned] [BUILD_JSON | -]
`

// annotationFlags collects repeated --annotation KEY=VALUE.
type annotationFlags []string

func (a *annotationFlags) String() string { return strings.Join(*a, ",") }
func (a *annotationFlags) Set(v string) error {
	if _, _, err := routing.ParseAnnotation(v); err != nil {
		return err
	}
	*a = append(*a, v)
	return nil
}

// runExplain prints where builds would go under the configured rules, and
// why. It loads the configuration exactly as `run` does and never contacts
// Redis or the cluster, so budgets are shown but not checked.
//
// Input, first match wins: a JSON build config argument; "-" or no build
// flag at all (and no --simulate) reads JSON build configs from stdin, one
// per line, printing one decision per line; else the flags describe one
// build. --simulate N routes N builds and prints the split instead: random
// ids (with the flags' image and annotations) or the first N input builds.
func runExplain(args []string, stdout, stderr io.Writer) error {
	fs, lf := newFlags("explain", stderr)
	image := fs.String("image", "", "image (container) of the build")
	buildID := fs.Int64("build-id", 0, "build id")
	jobID := fs.Int64("job-id", 0, "job id")
	pipelineID := fs.Int64("pipeline-id", 0, "pipeline id")
	var annotations annotationFlags
	fs.Var(&annotations, "annotation", "annotation KEY=VALUE, repeatable; a KEY without a domain means screwdriver.cd/KEY")
	output := fs.String("o", "text", "output format: text or json")
	simulate := fs.Int("simulate", 0, "route N builds (random ids, or the first N input builds) and print the split")
	checkLearned := fs.Bool("check-learned", false, "also look each image up in the learned-exclusion set in Redis (queue.* settings), as the daemon does")
	checkGate := fs.Bool("check-gate", false, "also say what the blockedBy/collapse gate would decide now, from queue-service's keys in Redis (read only)")
	blockedBy := fs.String("blocked-by", "", "the build's blockedBy job ids, comma-joined as queue-service queues them (the job itself is always implied)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 1 || (*output != "text" && *output != "json") || *simulate < 0 {
		return errUsage
	}
	buildFlags := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "image", "build-id", "job-id", "pipeline-id", "annotation", "blocked-by":
			buildFlags = true
		}
	})
	cfg, err := lf.load()
	if err != nil {
		return err
	}
	rules, err := routing.Rules(cfg)
	if err != nil {
		return err
	}

	var next func() (*build.Config, error) // io.EOF when done
	switch arg := fs.Arg(0); {
	case arg != "" && arg != "-":
		b, err := build.Decode([]byte(arg))
		if err != nil {
			return fmt.Errorf("reading the build argument: %w", err)
		}
		next = once(b)
	case arg == "-" || (!buildFlags && *simulate == 0):
		next = jsonLines(explainStdin)
	case *simulate > 0 && *buildID == 0 && *jobID == 0 && *pipelineID == 0:
		next = randomBuilds(*image, annotations)
	default:
		b, err := routing.BuildFromFields(*buildID, *jobID, *pipelineID, *image, annotations)
		if err != nil {
			return err
		}
		if *blockedBy != "" {
			raw, _ := json.Marshal(*blockedBy)
			b.BlockedBy = raw
		}
		next = once(b)
	}

	deps := routing.DeciderDeps{Rules: weightage.NewHolder(rules)}
	if cfg.Routing.Autopilot.Enabled {
		// The autopilot's share is the one starts draw with: read it (and
		// its last decision) as a replica does.
		rdb := newRedis(cfg)
		defer func() { _ = rdb.Close() }()
		pilot := autopilot.New(autopilot.Deps{Rules: deps.Rules,
			Store: autopilot.NewStore(rdb, cfg.ResqueNamespace(), cfg.Queue.OperationTimeout)},
			autopilot.Options{Settings: autopilotSettings(cfg)})
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Queue.OperationTimeout)
		err := pilot.Load(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "queue-worker: explain: the autopilot is on but its state could not be read (%v): showing the configured weight\n", err)
		}
		deps.Rules, deps.Autopilot = pilot, pilot
	}
	if *simulate > 0 {
		return printSimulation(stdout, *output, routing.NewDecider(deps), deps.Rules.Current(), next, *simulate)
	}
	if *checkLearned {
		rdb := newRedis(cfg)
		defer func() { _ = rdb.Close() }()
		deps.Learned = exclusion.NewStore(rdb, learnedOptions(cfg))
	}
	var peek func(context.Context, *build.Config) (*gateView, error)
	if *checkGate {
		if peek, err = gatePeeker(cfg); err != nil {
			return err
		}
	}
	decider := routing.NewDecider(deps)
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false) // reasons hold "<"; keep them readable
	bad := 0
	for {
		b, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(stderr, "queue-worker: explain: %v\n", err)
			bad++
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Queue.OperationTimeout)
		d, err := decider.Decide(ctx, b)
		var g *gateView
		if err == nil && peek != nil {
			g, err = peek(ctx, b)
		}
		cancel()
		if err != nil {
			return err
		}
		e := d.Explanation
		if *output == "json" {
			var v any = e
			if g != nil {
				v = struct {
					routing.Explanation
					Gate *gateView `json:"gate"`
				}{e, g}
			}
			if err := enc.Encode(v); err != nil {
				return fmt.Errorf("writing the explanation: %w", err)
			}
		} else {
			fmt.Fprintln(stdout, e.String())
			if g != nil {
				fmt.Fprintln(stdout, "  gate: "+g.String())
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("explain: %d input lines could not be read", bad)
	}
	return nil
}

func once(b *build.Config) func() (*build.Config, error) {
	done := false
	return func() (*build.Config, error) {
		if done {
			return nil, io.EOF
		}
		done = true
		return b, nil
	}
}

// jsonLines yields one build config per non-empty line.
func jsonLines(r io.Reader) func() (*build.Config, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20) // build configs carry env and secrets lists
	line := 0
	return func() (*build.Config, error) {
		for sc.Scan() {
			line++
			if strings.TrimSpace(sc.Text()) == "" {
				continue
			}
			b, err := build.Decode(sc.Bytes())
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			return b, nil
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading stdin: %w", err)
		}
		return nil, io.EOF
	}
}

// randomBuilds yields builds with random ids (an id space like a real
// Screwdriver's) and the given image and annotations.
func randomBuilds(image string, annotations []string) func() (*build.Config, error) {
	return func() (*build.Config, error) {
		return routing.BuildFromFields(1+rand.Int64N(1<<32), 1+rand.Int64N(1<<24), 1+rand.Int64N(1<<20), image, annotations)
	}
}

// simulation is the split of --simulate, as printed with -o json.
type simulation struct {
	Builds       int            `json:"builds"`
	RulesVersion string         `json:"rulesVersion"`
	Runtimes     map[string]int `json:"runtimes"`
	// ByRule counts runtime/rule pairs, e.g. "kata/weighted".
	ByRule         map[string]int `json:"byRule"`
	Held           int            `json:"held"`
	KataPercent    float64        `json:"kataPercent"`
	ConfiguredKata *float64       `json:"configuredKataPercent,omitempty"`
}

func printSimulation(w io.Writer, output string, decider *routing.Decider, rules *weightage.Rules, next func() (*build.Config, error), n int) error {
	s := simulation{RulesVersion: rules.Version, Runtimes: map[string]int{}, ByRule: map[string]int{}}
	if rules.Weighted {
		p := rules.KataPercent()
		s.ConfiguredKata = &p
	}
	for s.Builds < n {
		b, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("simulating: %w", err)
		}
		d, err := decider.Decide(context.Background(), b)
		if err != nil {
			return fmt.Errorf("simulating: %w", err)
		}
		s.Builds++
		s.Runtimes[string(d.Runtime)]++
		s.ByRule[string(d.Runtime)+"/"+string(d.Rule)]++
		if d.Held {
			s.Held++
		}
	}
	if s.Builds > 0 {
		s.KataPercent = 100 * float64(s.Runtimes[string(weightage.Kata)]) / float64(s.Builds)
	}
	if output == "json" {
		out, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding the simulation: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", out)
		return err
	}
	configured := "no weight configured"
	if s.ConfiguredKata != nil {
		configured = fmt.Sprintf("weight %.2f%% to Kata", *s.ConfiguredKata)
	}
	fmt.Fprintf(w, "%d builds under rules v=%s (%s):\n", s.Builds, s.RulesVersion, configured)
	for _, rt := range weightage.AllRuntimes {
		c := s.Runtimes[string(rt)]
		fmt.Fprintf(w, "  %-7s %7d  %6.2f%%\n", rt, c, pctOf(c, s.Builds))
		for _, rule := range weightage.AllRules {
			if c := s.ByRule[string(rt)+"/"+string(rule)]; c > 0 {
				fmt.Fprintf(w, "    %-18s %7d  %6.2f%%\n", rule, c, pctOf(c, s.Builds))
			}
		}
	}
	if s.Held > 0 {
		fmt.Fprintf(w, "  held (runtime paused, would wait in the queue): %d\n", s.Held)
	}
	return nil
}

func pctOf(c, n int) float64 {
	if n == 0 {
		return 0
	}
	return 100 * float64(c) / float64(n)
}

// gateView is what --check-gate prints: the gate's decision for the build
// if it were started now, without writing anything.
type gateView struct {
	Action   gate.Action `json:"action"`
	Reason   string      `json:"reason"`
	Blocking []int64     `json:"blockingBuilds,omitempty"`
	// CollapsedTo is the newer build it would give way to.
	CollapsedTo int64  `json:"collapsedTo,omitempty"`
	Message     string `json:"message,omitempty"`
	// Off says why the daemon would not gate at all.
	Off string `json:"off,omitempty"`
}

func (g *gateView) String() string {
	if g.Off != "" {
		return "off (" + g.Off + ")"
	}
	switch g.Action {
	case gate.Block:
		return fmt.Sprintf("would wait (%s): %s", g.Reason, g.Message)
	case gate.Collapse:
		return fmt.Sprintf("would be collapsed (%s): %s", g.Reason, g.Message)
	}
	return "would start (" + g.Reason + ")"
}

// gatePeeker returns the gate's dry run over queue-service's keys in Redis,
// with the daemon's policy.
func gatePeeker(cfg *config.Config) (func(context.Context, *build.Config) (*gateView, error), error) {
	bb := cfg.Plugins.BlockedBy
	switch {
	case !bb.Enabled:
		return func(context.Context, *build.Config) (*gateView, error) {
			return &gateView{Off: "plugins.blockedBy.enabled is false"}, nil
		}, nil
	case !cfg.SideKeysShareASlot():
		return func(context.Context, *build.Config) (*gateView, error) {
			return &gateView{Off: "Redis Cluster without a {hash tag} in queue.prefix"}, nil
		}, nil
	}
	rdb := newRedis(cfg)
	g := gate.New(gate.Deps{Redis: rdb}, gate.Options{Prefix: cfg.Queue.Prefix, Timeout: cfg.Queue.OperationTimeout})
	policy := gate.Policy{BlockedBySelf: bb.BlockedBySelf, Collapse: bb.Collapse, BlockTimeout: bb.BlockTTL()}
	return func(ctx context.Context, b *build.Config) (*gateView, error) {
		req, err := gate.RequestFor(b, policy)
		if err != nil {
			return nil, err
		}
		d, err := g.Peek(ctx, req)
		if err != nil {
			return nil, err
		}
		return &gateView{Action: d.Action, Reason: d.Reason, Blocking: d.Blocking, CollapsedTo: d.CollapsedTo, Message: d.Message()}, nil
	}, nil
}
