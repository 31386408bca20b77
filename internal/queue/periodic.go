package queue

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// runEvery runs pass now and then every interval until ctx is done. A failed
// pass is counted as a Redis error of op and logged; the next tick tries again.
func runEvery(ctx context.Context, interval time.Duration, op, what string, m *Metrics, log *zap.Logger, pass func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := pass(ctx); err != nil && ctx.Err() == nil {
			m.RedisErrors.WithLabelValues(op).Inc()
			log.Warn(what+" failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
