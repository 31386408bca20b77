package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
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

	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/httpserver"
	"github.com/sdkata/queue-worker/internal/logging"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
)

func runDaemon(ctx context.Context, cfg *config.Config) error {
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	rules, err := routing.Rules(cfg)
	if err != nil {
		return err
	}
	logRouting(log, cfg, rules)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	rdb := newRedis(cfg)
	defer func() { _ = rdb.Close() }()

	kube, err := newKubernetes(cfg)
	if err != nil {
		return err
	}
	ns := cfg.Executor.K8s.Options.Kubernetes.JobsNamespace

	exec := executor.New(kube, executor.Options{
		Namespace:     ns,
		Prefix:        cfg.Executor.K8s.Options.Prefix,
		LaunchImage:   cfg.Executor.K8s.Options.LaunchImage,
		LaunchVersion: cfg.Executor.K8s.Options.LaunchVersion,
		SDHabEnabled:  cfg.Executor.K8s.Options.SDHabEnabled,
		Kata:          cfg.Executor.K8s.Options.Kubernetes,
		Hyperd:        cfg.Executor.K8sVM.Options.Kubernetes,
		Ecosystem:     cfg.Ecosystem,
	}, cfg.Kubernetes.RequestTimeout, executor.NewMetrics(reg))

	keys := queue.NewKeys(cfg.ResqueNamespace())
	queues := make([]string, len(cfg.Queue.Queues))
	for i, q := range cfg.Queue.Queues {
		queues[i] = cfg.Queue.Prefix + q
	}
	consumer, err := queue.NewConsumer(rdb, keys, queue.Options{
		Queues:           queues,
		Concurrency:      cfg.Worker.Concurrency,
		WorkerName:       workerName(),
		BlockTimeout:     cfg.Queue.BlockTimeout,
		OperationTimeout: cfg.Queue.OperationTimeout,
		DrainTimeout:     cfg.Worker.ShutdownGracePeriod,
	}, log.Named("queue"), queue.NewMetrics(reg))
	if err != nil {
		return err
	}
	w := worker.New(exec,
		queue.NewBuildConfigs(rdb, cfg.Queue.Prefix, cfg.Queue.OperationTimeout),
		weightage.NewHolder(rules),
		worker.Retry{
			MaxAttempts: cfg.Executor.K8s.Options.RequestRetry.MaxAttempts,
			Delay:       time.Duration(cfg.Executor.K8s.Options.RequestRetry.RetryDelay) * time.Millisecond,
		},
		log.Named("worker"), worker.NewMetrics(reg))

	srv := httpserver.New(reg, log.Named("http"))
	srv.AddCheck("redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
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
	go func() {
		// A listener that cannot start (port taken) must stop the daemon:
		// an unobservable worker is not one operators can run.
		if err := <-httpErr; err != nil {
			log.Error("http server stopped", zap.Error(err))
			cancelRun()
		}
	}()
	if err := consumer.Run(runCtx, w); err != nil {
		return err
	}
	log.Info("queue-worker stopped: no job in flight")
	return nil
}

func logRouting(log *zap.Logger, cfg *config.Config, r *weightage.Rules) {
	pct, derived := routing.KataPercent(cfg)
	fields := []zap.Field{
		zap.String("default_runtime", string(r.Default)),
		zap.Strings("exclusions", cfg.ExclusionPatterns()),
		zap.String("rules_version", r.Version),
	}
	switch {
	case pct == nil:
		fields = append(fields, zap.String("weighted", "off (no executor.k8s.weightage): builds without annotation or exclusion go to the default"))
	case derived:
		fields = append(fields, zap.Float64("kata_percent", *pct),
			zap.String("derived_from", fmt.Sprintf("relative weights k8s=%v k8s-vm=%v", *cfg.Executor.K8s.Weightage, *cfg.Executor.K8sVM.Weightage)))
	default:
		fields = append(fields, zap.Float64("kata_percent", *pct))
	}
	log.Info("routing rules loaded", fields...)
}

func workerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "queue-worker"
	}
	// node-resque splits worker names on ':'; keep exactly one.
	return strings.ReplaceAll(host, ":", "-") + ":" + strconv.Itoa(os.Getpid())
}

func newRedis(cfg *config.Config) redis.UniversalClient {
	q := cfg.Queue
	opts := &redis.UniversalOptions{
		DB:           q.RedisConnection.Database,
		Password:     q.RedisConnection.Options.Password,
		DialTimeout:  5 * time.Second,
		ReadTimeout:  q.OperationTimeout,
		WriteTimeout: q.OperationTimeout,
	}
	switch q.ConnectionType {
	case "redisCluster":
		opts.Addrs = q.RedisClusterConnection.Hosts
		opts.IsClusterMode = true
	case "redisSentinel":
		opts.Addrs = q.RedisClusterConnection.Hosts
		opts.MasterName = q.RedisClusterConnection.MasterName
	default:
		opts.Addrs = []string{net.JoinHostPort(q.RedisConnection.Host, strconv.Itoa(q.RedisConnection.Port))}
	}
	if q.RedisConnection.Options.TLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return redis.NewUniversalClient(opts)
}

func newKubernetes(cfg *config.Config) (kubernetes.Interface, error) {
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
	rc.QPS = float32(cfg.Kubernetes.QPS)
	rc.Burst = cfg.Kubernetes.Burst
	rc.Timeout = cfg.Kubernetes.RequestTimeout
	rc.UserAgent = "queue-worker/" + version
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating kubernetes client: %w", err)
	}
	return cs, nil
}
