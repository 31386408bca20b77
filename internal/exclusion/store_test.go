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
	a := exclusion.NewStore(rdb, ns, 1*time.Second, time.Second)
	b := exclusion.NewStore(rdb, ns, time.Hour, time.Second) // another replica
	image := "registry.example/legacy/centos6:with spaces & ünïcode"
	if ex, err := b.Excluded(ctx, image); err != nil || ex {
		t.Fatalf("excluded before learning: %v %v", ex, err)
	}
	if err := a.Add(ctx, exclusion.Entry{Image: image, Signature: "exit-139", BuildID: 42, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	e, err := b.Get(ctx, image)
	if err != nil || e == nil || e.Signature != "exit-139" || e.BuildID != 42 {
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
