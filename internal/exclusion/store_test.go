package exclusion_test

import (
	"context"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/testbed"
)

func TestStore_LearnedImageExpiresAndIsSharedAcrossStores(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	a := exclusion.NewStore(rdb, exclusion.Options{Namespace: ns, TTL: time.Second, LearnAfter: 1, Timeout: time.Second})
	b := exclusion.NewStore(rdb, exclusion.Options{Namespace: ns, TTL: time.Hour, LearnAfter: 1, Timeout: time.Second}) // another replica
	image := "registry.example/legacy/centos6:with spaces & ünïcode"
	if ex, err := b.Excluded(ctx, image); err != nil || ex {
		t.Fatalf("excluded before learning: %v %v", ex, err)
	}
	if _, learned, err := a.Strike(ctx, exclusion.Entry{Image: image, Signature: "exit-139", BuildID: 42, Node: "n1", At: time.Now()}); err != nil || !learned {
		t.Fatalf("learnAfter 1: learned %v, %v", learned, err)
	}
	e, err := b.Get(ctx, image)
	if err != nil || e == nil || e.Signature != "exit-139" || e.BuildID != 42 || e.Node != "n1" {
		t.Fatalf("other replica sees %+v, %v", e, err)
	}
	if ex, _ := b.Excluded(ctx, "registry.example/legacy/centos6"); ex {
		t.Fatal("a different image must not match")
	}
	testbed.Eventually(t, 5*time.Second, "entry expired", func() bool {
		ex, err := b.Excluded(ctx, image)
		return err == nil && !ex
	})
}

// One bad node, or one build that crashes on its own, must not send a
// shared image to hyperd for everyone: an image is learned only once its
// Kata pods have failed on LearnAfter distinct nodes.
func TestStore_ImageIsLearnedOnlyAfterFailuresOnDistinctNodes(t *testing.T) {
	type strike struct {
		node    string
		build   int64
		learned bool
	}
	tests := []struct {
		name       string
		learnAfter int
		strikes    []strike
	}{
		{name: "SameNodeTwiceDoesNotTeach", learnAfter: 2, strikes: []strike{{"kata-0", 1, false}, {"kata-0", 2, false}, {"kata-0", 3, false}}},
		{name: "TwoNodesTeach", learnAfter: 2, strikes: []strike{{"kata-0", 1, false}, {"kata-0", 2, false}, {"kata-1", 3, true}}},
		{name: "ThreeNodesNeededForThree", learnAfter: 3, strikes: []strike{{"kata-0", 1, false}, {"kata-1", 2, false}, {"kata-2", 3, true}}},
		{name: "UnknownNodeCountsPerBuild", learnAfter: 2, strikes: []strike{{"", 1, false}, {"", 1, false}, {"", 2, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb, ns, _ := testbed.Redis(t)
			ctx := context.Background()
			s := exclusion.NewStore(rdb, exclusion.Options{Namespace: ns, TTL: time.Hour, LearnAfter: tt.learnAfter, Window: time.Hour, Timeout: time.Second})
			for i, st := range tt.strikes {
				_, learned, err := s.Strike(ctx, exclusion.Entry{Image: "node:18", Signature: "exit-139", BuildID: st.build, Node: st.node, At: time.Now()})
				if err != nil {
					t.Fatal(err)
				}
				ex, err := s.Excluded(ctx, "node:18")
				if err != nil {
					t.Fatal(err)
				}
				if learned != st.learned || ex != st.learned {
					t.Fatalf("strike %d (%+v): learned %v, excluded %v", i+1, st, learned, ex)
				}
			}
		})
	}
}

// Strikes older than the window no longer count.
func TestStore_StrikesExpireAfterTheWindow(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	s := exclusion.NewStore(rdb, exclusion.Options{Namespace: ns, TTL: time.Hour, LearnAfter: 2, Window: 300 * time.Millisecond, Timeout: time.Second})
	if _, learned, err := s.Strike(ctx, exclusion.Entry{Image: "node:18", Node: "kata-0", BuildID: 1}); err != nil || learned {
		t.Fatalf("first strike: learned %v, %v", learned, err)
	}
	time.Sleep(600 * time.Millisecond)
	if n, learned, err := s.Strike(ctx, exclusion.Entry{Image: "node:18", Node: "kata-1", BuildID: 2}); err != nil || learned || n != 1 {
		t.Fatalf("a strike after the window: %d strikes, learned %v, %v", n, learned, err)
	}
}
