package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/diskcache"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/httpserver"
	"github.com/sdkata/queue-worker/internal/logging"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/timeouts"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
)

func runDaemon(ctx context.Context, cfg *config.Config, loadOpts config.LoadOptions) error {
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	logging.RouteKlog(log.Named("client-go"))
	routeRedisLogs(log.Named("go-redis"))

	rules, err := routing.Rules(cfg)
	if err != nil {
		return err
	}
	log.Info("routing rules loaded", routing.RulesFields(cfg, rules)...)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	holder := weightage.NewHolder(rules)
	rdb := newRedis(cfg)
	defer func() { _ = rdb.Close() }()

	breakerMetrics := breaker.NewMetrics(reg)
	// One breaker per dependency. The Kubernetes one guards every client-go
	// call, informers included; while it is open, jobs wait in the queue.
	kubeBreaker := breaker.New("kubernetes", breaker.Settings{IsFailure: breaker.HTTPFailure, Logger: log.Named("breaker")}, breakerMetrics)
	rc, err := restConfig(cfg, kubeBreaker)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating kubernetes client: %w", err)
	}
	ns := cfg.Executor.K8s.Options.Kubernetes.JobsNamespace

	exec := executor.New(executor.Deps{Client: kube, Metrics: executor.NewMetrics(reg)}, executor.Options{
		Namespace:     ns,
		Prefix:        cfg.Executor.K8s.Options.Prefix,
		LaunchImage:   cfg.Executor.K8s.Options.LaunchImage,
		LaunchVersion: cfg.Executor.K8s.Options.LaunchVersion,
		SDHabEnabled:  cfg.Executor.K8s.Options.SDHabEnabled,
		Kata:          cfg.Executor.K8s.Options.Kubernetes,
		Hyperd:        cfg.Executor.K8sVM.Options.Kubernetes,
		Ecosystem:     cfg.Ecosystem,
		Timeout:       cfg.Kubernetes.RequestTimeout,
	})

	keys := queue.NewKeys(cfg.ResqueNamespace())
	queues := make([]string, len(cfg.Queue.Queues))
	for i, q := range cfg.Queue.Queues {
		queues[i] = cfg.Queue.Prefix + q
	}
	// A stop mark outlives any start of the same build still in the queue or
	// in its retries.
	const stopMarkTTL = 24 * time.Hour
	marks := queue.NewStopMarks(rdb, keys, stopMarkTTL, cfg.Queue.OperationTimeout)
	// Supervision records are deleted with their pod; the TTL only removes
	// those of pods deleted while no replica led (a build pod that failed
	// is deleted by its build's stop long before).
	const supervisionRecordTTL = 14 * 24 * time.Hour
	configs := queue.NewBuildConfigs(rdb, cfg.Queue.Prefix, cfg.Queue.OperationTimeout)
	learned := exclusion.NewStore(rdb, learnedOptions(cfg))
	retry := cfg.Executor.K8s.Options.RequestRetry
	ci := ciapi.New(ciapi.Options{
		Timeout:        time.Duration(cfg.Executor.K8s.Options.Fusebox.Breaker.Timeout) * time.Millisecond,
		MaxAttempts:    retry.MaxAttempts,
		RetryDelay:     time.Duration(retry.RetryDelay) * time.Millisecond,
		BreakerMetrics: breakerMetrics,
		DefaultAPI:     cfg.Ecosystem.API,
		TrustedAPIs:    cfg.Ecosystem.TrustedAPIURIs,
	}, log.Named("ciapi"), ciapi.NewMetrics(reg))

	// The autopilot is routing's rules source: the configured rules with its
	// Kata share. Every replica rereads the share; the supervisor's leader
	// moves it (it sees every start's outcome).
	window := autopilot.NewWindow(time.Now())
	pilot := autopilot.New(autopilot.Deps{Rules: holder, Store: autopilot.NewStore(rdb, keys.Namespace(), cfg.Queue.OperationTimeout),
		Window: window, Breakers: []autopilot.Breaker{kubeBreaker, ci.Breaker()},
		Log: log.Named("autopilot"), Metrics: autopilot.NewMetrics(reg)},
		autopilot.Options{Settings: autopilotSettings(cfg), Identity: workerName()})
	if cfg.Routing.Autopilot.Enabled {
		// Best effort: with Redis down no job is taken either, and Run
		// rereads it.
		_ = pilot.Load(ctx)
	}
	if err := watchRouting(ctx, cfg, loadOpts, holder, pilot, log.Named("routing"), routing.NewMetrics(reg)); err != nil {
		return err
	}

	// The pod cache: every replica counts the budgets from it; the elected
	// supervisor syncs builds from it.
	supMetrics := supervisor.NewMetrics(reg)
	pods := supervisor.NewCache(kube, ns, supMetrics)
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopWatch(); pods.Shutdown() }()
	if err := pods.Start(watchCtx, cfg.Kubernetes.RequestTimeout*3); err != nil {
		return err
	}
	reg.MustRegister(pods)
	patterns := make([]*regexp.Regexp, len(cfg.Verify.RuntimePatterns))
	for i, p := range cfg.Verify.RuntimePatterns {
		patterns[i] = regexp.MustCompile(p) // validated at load
	}
	identity := workerName()
	supOpts := supervisor.Options{
		Namespace: ns,
		Workers:   cfg.Supervisor.Workers,
		Assess: supervisor.AssessOptions{
			PendingTimeout:    cfg.Verify.PendingTimeout,
			ImagePullGrace:    cfg.Verify.ImagePullGrace,
			Exit139Window:     cfg.Verify.Exit139Window,
			RuntimePatterns:   patterns,
			RuntimeErrorGrace: cfg.Verify.RuntimeErrorGrace,
		},
		Fallback:       cfg.Verify.Fallback.Enabled,
		DefaultAPIURI:  cfg.Ecosystem.API,
		RequestTimeout: cfg.Kubernetes.RequestTimeout,
	}
	if le := cfg.Supervisor.LeaderElection; le.Enabled {
		supOpts.Leader = &supervisor.LeaderOptions{LeaseName: le.LeaseName, Identity: identity,
			LeaseDuration: le.LeaseDuration, RenewDeadline: le.RenewDeadline, RetryPeriod: le.RetryPeriod}
	}
	sup := supervisor.New(supervisor.Deps{
		Client: kube, Cache: pods, Records: supervisor.NewRedisRecords(rdb, keys.Namespace(), supervisionRecordTTL, cfg.Queue.OperationTimeout), Pods: exec, Reporter: ci, Learner: learned, Marks: marks, Configs: configs,
		Rules: pilot, Log: log.Named("supervisor"), Metrics: supMetrics, Starts: window, AlsoLead: pilot.Lead,
	}, supOpts)

	decider := routing.NewDecider(routing.DeciderDeps{Rules: pilot, Learned: learned, InFlight: pods, Autopilot: pilot})
	startGate, checker, cleaner := queueServiceRoles(cfg, rdb, exec, ci, marks, identity, reg, log)
	bb := cfg.Plugins.BlockedBy
	w := worker.New(worker.Deps{
		Executor: exec, Configs: configs, Router: decider, Marks: marks, Reporter: ci, Supervisor: sup,
		Gate: startGate, Timeouts: checker, Cache: cleaner,
		Log: log.Named("worker"), Metrics: worker.NewMetrics(reg),
	}, worker.Options{Prefix: cfg.Executor.K8s.Options.Prefix,
		Gate:          gate.Policy{BlockedBySelf: bb.BlockedBySelf, Collapse: bb.Collapse, BlockTimeout: bb.BlockTTL()},
		ReenqueueWait: bb.ReenqueueWait()})
	queues, concurrency := withCacheQueue(cfg, queues)

	consumer, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: keys, Log: log.Named("queue"), Metrics: queue.NewMetrics(reg)}, queue.Options{
		Queues:            queues,
		Concurrency:       concurrency,
		WorkerName:        identity,
		BlockTimeout:      cfg.Queue.BlockTimeout,
		OperationTimeout:  cfg.Queue.OperationTimeout,
		DrainTimeout:      cfg.Worker.ShutdownGracePeriod,
		JobTimeout:        cfg.Worker.JobTimeout,
		LeaseDuration:     cfg.Queue.LeaseDuration,
		RecoverInterval:   cfg.Queue.RecoverInterval,
		SchedulerInterval: cfg.Queue.SchedulerInterval,
		MaxJobBytes:       cfg.Queue.MaxJobBytes,
		MaxJobDepth:       cfg.Queue.MaxJobDepth,
		MaxRecoveries:     cfg.Queue.MaxRecoveries,
		FenceMargin:       cfg.Queue.FenceMargin,
		Retry: queue.RetryPolicy{
			MaxRetries: cfg.Queue.Retry.MaxRetries,
			Delay:      cfg.Queue.Retry.Delay,
			Factor:     cfg.Queue.Retry.Factor,
			MaxDelay:   cfg.Queue.Retry.MaxDelay,
		},
		Classes:           worker.Classes,
		DeadLetterNotices: worker.DeadLetterNotices,
	})
	if err != nil {
		return err
	}
	reg.MustRegister(queue.NewDepthCollector(rdb, keys, queues, cfg.Queue.OperationTimeout))

	srv := httpserver.New(reg, log.Named("http"))
	srv.Handle("/debug/route", routing.Handler(decider))
	if cfg.HTTPD.Profiling {
		srv.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		srv.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		srv.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
		srv.Handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
		srv.Handle("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
	}
	// Liveness: only a wedge a restart cures (a slot or the heartbeat stuck
	// past its bound, a silent pod watch); a dependency down is readiness.
	srv.AddLiveness("queue", consumer.Live)
	srv.AddLiveness("pod-watch", pods.Live)
	srv.AddCheck("redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
	// Not ready while the CI API's breaker is open: builds start, but their
	// reports wait (and a rollout should not replace replicas meanwhile).
	srv.AddCheck("ci-api", ci.Breaker().Check)
	srv.AddCheck("kubernetes", func(ctx context.Context) error {
		// A namespaced list also proves the RBAC the worker needs.
		_, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		return err
	})

	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHTTP()
	httpErr := make(chan error, 1)
	go func() {
		httpErr <- srv.Run(httpCtx, net.JoinHostPort(cfg.HTTPD.Host, strconv.Itoa(cfg.HTTPD.Port)))
	}()

	log.Info("queue-worker started",
		zap.String("version", version),
		zap.String("namespace", keys.Namespace()),
		zap.Strings("queues", queues),
		zap.Int("concurrency", cfg.Worker.Concurrency),
		zap.String("jobs_namespace", ns))

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	// The supervisor stops with the consumer's take loop (SIGTERM): it
	// releases its Lease at once so another replica takes over.
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(runCtx) }()
	pilotDone := make(chan struct{})
	go func() { defer close(pilotDone); pilot.Run(runCtx) }()
	checkerDone := make(chan struct{})
	go func() {
		defer close(checkerDone)
		if c, ok := checker.(*timeouts.Checker); ok && c != nil && cfg.TimeoutChecker.Enabled {
			c.Run(runCtx)
		}
	}()
	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		// A listener that cannot start (port taken) must stop the daemon:
		// an unobservable worker is not one operators can run.
		if err := <-httpErr; err != nil {
			log.Error("http server stopped", zap.Error(err))
			cancelRun()
		}
	}()
	runErr := consumer.Run(runCtx, w)
	cancelRun()
	if err := <-supDone; err != nil && runErr == nil {
		runErr = err
	}
	<-checkerDone
	<-pilotDone
	// Health and metrics stay up through the drain; stop them, and wait,
	// before the deferred closes of Redis and the pod cache.
	stopHTTP()
	<-httpDone
	if runErr != nil {
		return runErr
	}
	log.Info("queue-worker stopped: no job in flight")
	return nil
}

// watchRouting keeps holder in step with the --config file: a valid change
// swaps the routing rules in; an invalid one is logged and the rules in
// force stay. Without --config there is nothing to watch (env and the
// shipped defaults cannot change under a running process).
func watchRouting(ctx context.Context, cfg *config.Config, opts config.LoadOptions, holder *weightage.Holder, pilot *autopilot.Autopilot, log *zap.Logger, m *routing.Metrics) error {
	reloader := routing.NewReloader(holder, cfg, log, m)
	if opts.OverlayFile == "" {
		return nil
	}
	kubeconfig := cfg.Kubernetes.Kubeconfig // --kubeconfig, applied after Load
	err := config.Watch(ctx, opts, func(c *config.Config, err error) {
		if c != nil {
			c.Kubernetes.Kubeconfig = kubeconfig
		}
		reloader.Apply(c, err)
		if err == nil && c != nil {
			pilot.Apply(autopilotSettings(c))
		}
	})
	if err != nil {
		return fmt.Errorf("watching the config file for routing changes: %w", err)
	}
	return nil
}

// autopilotSettings are the routing.autopilot keys.
func autopilotSettings(c *config.Config) autopilot.Settings {
	a := c.Routing.Autopilot
	return autopilot.Settings{Enabled: a.Enabled, Step: a.Step, Interval: a.Interval, MaxPercent: a.MaxPercent,
		MinBuilds: a.MinBuilds, MaxFailureRateDelta: a.MaxFailureRateDelta, MaxSetupTimeRatio: a.MaxSetupTimeRatio}
}

func workerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "queue-worker"
	}
	// node-resque splits worker names on ':'; keep exactly one.
	return strings.ReplaceAll(host, ":", "-") + ":" + strconv.Itoa(os.Getpid())
}

// restConfig is the client config of every Kubernetes client: endpoint
// and token overrides, rate limits, protobuf, and the API breaker.
func restConfig(cfg *config.Config, b *breaker.Breaker) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if path := cfg.Kubernetes.Kubeconfig; path != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %s: %w", path, err)
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not in a cluster: %w", err)
		}
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	if k.Host != "" {
		rc.Host = k.Host
		if !strings.Contains(rc.Host, "://") {
			rc.Host = "https://" + rc.Host
		}
	}
	if k.Token != "" {
		rc.BearerToken, rc.BearerTokenFile = k.Token, ""
	}
	// Protobuf for the built-in types: cheaper to encode for the apiserver
	// and to decode for our informers than JSON (patches stay JSON).
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc.QPS = float32(cfg.Kubernetes.QPS)
	rc.Burst = cfg.Kubernetes.Burst
	// No rc.Timeout: it becomes http.Client.Timeout and would cut the
	// informers' watch streams; every call of ours has its own deadline.
	rc.UserAgent = "queue-worker/" + version
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return breaker.RoundTripper(b, rt) })
	return rc, nil
}

// learnedOptions configure the learned-exclusion store from the config
// (the daemon and explain read the same one).
func learnedOptions(cfg *config.Config) exclusion.Options {
	f := cfg.Verify.Fallback
	return exclusion.Options{Namespace: cfg.ResqueNamespace(), TTL: f.LearnedExclusionTTL, LearnAfter: f.LearnAfter,
		Window: f.LearnWindow, Timeout: cfg.Queue.OperationTimeout}
}

// queueServiceRoles builds what the daemon takes over from queue-service's
// worker: the blockedBy/collapse gate, the timeoutConfigs recorder and
// checker, and the disk-cache cleaner. The first two run one script over
// queue-service's plain side keys; on Redis Cluster that needs a {hash tag}
// in the queue prefix, and without one they are off, loudly.
func queueServiceRoles(cfg *config.Config, rdb redis.UniversalClient, exec *executor.Executor, ci *ciapi.Client, marks *queue.StopMarks,
	identity string, reg prometheus.Registerer, log *zap.Logger) (worker.Gate, worker.TimeoutRecorder, worker.CacheCleaner) {
	prefix := cfg.Queue.Prefix
	shared := cfg.SideKeysShareASlot()
	var g worker.Gate
	gateMetrics := gate.NewMetrics(reg)
	switch bb := cfg.Plugins.BlockedBy; {
	case bb.Enabled && shared:
		g = gate.New(gate.Deps{Redis: rdb, Metrics: gateMetrics}, gate.Options{Prefix: prefix, Timeout: cfg.Queue.OperationTimeout})
		log.Info("blockedBy/collapse gate on", zap.Bool("blocked_by_self", bb.BlockedBySelf), zap.Bool("collapse", bb.Collapse),
			zap.Duration("reenqueue_wait", bb.ReenqueueWait()), zap.Duration("block_timeout", bb.BlockTTL()))
	case bb.Enabled:
		log.Error("blockedBy and collapse are NOT applied: on Redis Cluster queue-service's running_job_/waiting_job_ keys share a slot only with a {hash tag} in REDIS_QUEUE_PREFIX (set it, on queue-service too), or set PLUGIN_BLOCKEDBY_ENABLED=false to silence this",
			zap.String("prefix", prefix))
	default:
		// The timeout checker only fails a build that holds its job's
		// running key (queue-service's rule), which only the gate sets.
		log.Warn("blockedBy and collapse are off (PLUGIN_BLOCKEDBY_ENABLED=false): builds start whatever runs, and the timeout checker fails only builds another worker (queue-service's) started")
	}
	var rec worker.TimeoutRecorder
	if shared {
		rec = timeouts.New(timeouts.Deps{Redis: rdb, Reporter: ci, Pods: exec, Marks: marks, Log: log.Named("timeouts"), Metrics: timeouts.NewMetrics(reg)},
			timeouts.Options{Prefix: prefix, Namespace: cfg.ResqueNamespace(), Identity: identity, Interval: cfg.TimeoutChecker.Interval,
				Buffer: cfg.TimeoutChecker.Buffer, Timeout: cfg.Queue.OperationTimeout})
	} else if cfg.TimeoutChecker.Enabled {
		log.Error("build timeouts are NOT checked: on Redis Cluster the timeout checker needs a {hash tag} in REDIS_QUEUE_PREFIX, or set TIMEOUT_CHECKER_ENABLED=false to silence this")
	}
	var cleaner worker.CacheCleaner
	if c := cfg.Ecosystem.Cache; c.Strategy == "disk" && c.Path != "" {
		cleaner = diskcache.New(diskcache.Options{Strategy: c.Strategy, Path: c.Path})
	}
	return g, rec, cleaner
}

// withCacheQueue adds queue-service's cache queue (clear jobs) when the
// disk cache strategy is on and it is not listed: its worker consumed it,
// so a drop-in must too. Slots go to queues round-robin, so the builds
// queue keeps its worker.concurrency slots with 2n-1 in all (an idle slot
// only waits in a blocking take).
func withCacheQueue(cfg *config.Config, queues []string) ([]string, int) {
	c := cfg.Ecosystem.Cache
	cacheQueue := cfg.Queue.Prefix + "cache"
	if c.Strategy != "disk" || c.Path == "" || len(queues) != 1 || slices.Contains(queues, cacheQueue) {
		return queues, cfg.Worker.Concurrency
	}
	return append(queues, cacheQueue), max(2*cfg.Worker.Concurrency-1, 2)
}
