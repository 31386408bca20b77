package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/config"
)

// redisDialTimeout bounds a connect to any Redis node or sentinel.
const redisDialTimeout = 5 * time.Second

// newRedis returns the client of queue.connectionType: one server
// (redis), the primary that the sentinels name (redisSentinel), or the
// cluster (redisCluster). The recoverer tells a cluster from the others by
// the concrete type (*redis.ClusterClient), so none is wrapped.
func newRedis(cfg *config.Config) redis.UniversalClient {
	q := cfg.Queue
	rc := q.RedisConnection
	var tlsConf *tls.Config
	if rc.Options.TLS {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	// Each slot holds a connection inside BLMOVE; heartbeats, settles, the
	// recoverer, the mover, scrapes and health checks need their own. On a
	// cluster the pool is per node, and every key of ours sits on one node
	// (the namespace's hash tag), so the same size fits.
	poolSize := cfg.Worker.Concurrency + 16

	switch q.ConnectionType {
	case "redisCluster":
		cc := q.RedisClusterConnection
		c := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:        cc.Hosts,
			Password:     rc.Options.Password,
			TLSConfig:    tlsConf,
			DialTimeout:  redisDialTimeout,
			ReadTimeout:  q.OperationTimeout,
			WriteTimeout: q.OperationTimeout,
			PoolSize:     poolSize,
		})
		if cc.SlotsRefreshTimeout > 0 {
			limitSlotsRefresh(c, time.Duration(cc.SlotsRefreshTimeout)*time.Millisecond, rc.Options.Password, tlsConf)
		}
		return c
	case "redisSentinel":
		cc := q.RedisClusterConnection
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:    cc.MasterName,
			SentinelAddrs: cc.Hosts,
			// The sentinels' requirepass and the data nodes' are separate
			// secrets: a client that sent the data password to the
			// sentinels would never learn where the primary is.
			SentinelPassword: cc.SentinelPassword,
			Password:         rc.Options.Password,
			DB:               rc.Database,
			TLSConfig:        tlsConf,
			DialTimeout:      redisDialTimeout,
			ReadTimeout:      q.OperationTimeout,
			WriteTimeout:     q.OperationTimeout,
			PoolSize:         poolSize,
		})
	default:
		return redis.NewClient(&redis.Options{
			Addr:         net.JoinHostPort(rc.Host, strconv.Itoa(rc.Port)),
			Password:     rc.Options.Password,
			DB:           rc.Database,
			TLSConfig:    tlsConf,
			DialTimeout:  redisDialTimeout,
			ReadTimeout:  q.OperationTimeout,
			WriteTimeout: q.OperationTimeout,
			PoolSize:     poolSize,
		})
	}
}

// limitSlotsRefresh applies queue.redisClusterConnection.slotsRefreshTimeout.
//
// The key is ioredis's (queue-service's client): how long one node may take
// to answer a refresh of the slot table before the next node is asked. It
// is not ioredis's slotsRefreshInterval, which go-redis calls
// ClusterOptions.ClusterStateReloadInterval, and go-redis has no field of
// its own for it: it sends CLUSTER SLOTS to one node after another under
// each node client's ReadTimeout (queue.operationTimeout), and from a
// background reload without any deadline. So the timeout is applied where
// it means something: every node client of the cluster runs CLUSTER SLOTS
// on a one-shot connection whose dial, write and read are bounded by it,
// and go-redis moves on to the next node when it runs out. Loading the
// table stays go-redis's (node order, address rewriting, the nodes it
// learned), which ClusterOptions.ClusterSlots would replace wholesale.
func limitSlotsRefresh(c *redis.ClusterClient, timeout time.Duration, password string, tlsConf *tls.Config) {
	c.OnNewNode(func(node *redis.Client) {
		node.AddHook(slotsRefreshHook{addr: node.Options().Addr, timeout: timeout, password: password, tls: tlsConf})
	})
}

// slotsRefreshHook answers CLUSTER SLOTS of one node client within timeout.
type slotsRefreshHook struct {
	addr     string
	timeout  time.Duration
	password string
	tls      *tls.Config
}

func (h slotsRefreshHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h slotsRefreshHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h slotsRefreshHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isClusterSlots(cmd) {
			return next(ctx, cmd)
		}
		if err := h.process(ctx, cmd); err != nil {
			err = fmt.Errorf("refreshing the cluster slot table from %s (queue.redisClusterConnection.slotsRefreshTimeout %s): %w", h.addr, h.timeout, err)
			cmd.SetErr(err)
			return err
		}
		return nil
	}
}

// process runs cmd on a connection of its own to the node, bounded by the
// timeout from dial to reply.
func (h slotsRefreshHook) process(ctx context.Context, cmd redis.Cmder) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	c := redis.NewClient(&redis.Options{
		Addr:                  h.addr,
		Password:              h.password,
		TLSConfig:             h.tls,
		DialTimeout:           h.timeout,
		ReadTimeout:           h.timeout,
		WriteTimeout:          h.timeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1, // the next node is the retry
		PoolSize:              1,
		DisableIdentity:       true,
	})
	defer func() { _ = c.Close() }()
	return c.Process(ctx, cmd)
}

func isClusterSlots(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) != 2 {
		return false
	}
	sub, _ := args[1].(string)
	return cmd.Name() == "cluster" && strings.EqualFold(sub, "slots")
}

// routeRedisLogs sends go-redis's own log lines (a sentinel's new primary,
// dials that failed) through zap, so a JSON log stream stays JSON. They
// never hold a password.
func routeRedisLogs(log *zap.Logger) { redis.SetLogger(redisLogger{log}) }

type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Info(fmt.Sprintf(format, v...))
}
