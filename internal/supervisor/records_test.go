package supervisor_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/testbed"
)

func TestRedisRecords_AddMergesReadsBackAndForgets(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	r := supervisor.NewRedisRecords(rdb, ns, time.Hour, time.Second)
	a, b := types.UID("uid-a"), types.UID("uid-b")

	if err := r.Add(ctx, a, map[string]string{supervisor.AnnotationReportedNode: "n1"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(ctx, a, map[string]string{supervisor.AnnotationReportedWaiting: "pending-unschedulable"}); err != nil {
		t.Fatal(err)
	}
	got, err := r.Of(ctx, []types.UID{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0][supervisor.AnnotationReportedNode] != "n1" ||
		got[0][supervisor.AnnotationReportedWaiting] != "pending-unschedulable" || got[1] != nil {
		t.Fatalf("records %v: want both writes merged for a, none for b", got)
	}
	if ttl := rdb.TTL(ctx, ns+":qw:supervision:uid-a").Val(); ttl <= 0 || ttl > time.Hour {
		t.Fatalf("record TTL %v, want (0, 1h]", ttl)
	}
	if err := r.Forget(ctx, []types.UID{a, b}); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Of(ctx, []types.UID{a}); got[0] != nil {
		t.Fatalf("records after Forget: %v", got[0])
	}
}

func TestRedisRecords_UnreachableRedisIsAnError(t *testing.T) {
	// Port 1 on loopback refuses connections at once.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	r := supervisor.NewRedisRecords(rdb, "x", time.Hour, 200*time.Millisecond)
	if _, err := r.Of(context.Background(), []types.UID{"u"}); err == nil {
		t.Fatal("reading records from an unreachable Redis succeeded")
	}
	if err := r.Add(context.Background(), "u", map[string]string{"k": "v"}); err == nil {
		t.Fatal("writing records to an unreachable Redis succeeded")
	}
}
