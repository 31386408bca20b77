package supervisor

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderOptions configure the election of the one supervising replica: a
// coordination.k8s.io Lease in the jobs namespace.
type LeaderOptions struct {
	LeaseName string
	// Identity names this replica in the Lease (host:pid).
	Identity      string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// runElected campaigns for the Lease until ctx is done, supervising while
// it leads. Losing the Lease ends the term (its context is cancelled and
// lead waits for its workers); the loop then campaigns again. On shutdown
// the Lease is released, so another replica takes over at once.
func (s *Supervisor) runElected(ctx context.Context) error {
	o := s.opts.Leader
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: o.LeaseName, Namespace: s.opts.Namespace},
		Client:     s.deps.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: o.Identity},
	}
	log := s.log.With(zap.String("lease", o.LeaseName), zap.String("identity", o.Identity))
	cfg := leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            o.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.Info("became the supervisor leader")
				s.lead(ctx)
			},
			OnStoppedLeading: func() { log.Info("no longer the supervisor leader") },
			OnNewLeader: func(id string) {
				if id != o.Identity {
					log.Info("another replica supervises", zap.String("leader", id))
				}
			},
		},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return fmt.Errorf("configuring supervisor leader election: %w", err)
		}
		// Run returns when the term ends (or ctx is done); it does not wait
		// for OnStartedLeading, so lead serialises terms itself.
		le.Run(ctx)
	}
	return nil
}
