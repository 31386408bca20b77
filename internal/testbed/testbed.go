package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RedisAddr is the test Redis (override with QW_TEST_REDIS_ADDR).
func RedisAddr() string {
	if a := os.Getenv("QW_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Suffix returns a short random hex string for unique names.
func Suffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Redis returns a client to the test Redis and a resque namespace private to
// this test; every key under it (and under the returned side-key prefix) is
// deleted when the test ends.
func Redis(t testing.TB) (rdb *redis.Client, namespace, prefix string) {
	t.Helper()
	rdb = redis.NewClient(&redis.Options{Addr: RedisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("no Redis at %s (%v): run `make test`, or scripts/ensure-redis.sh", RedisAddr(), err)
	}
	id := Suffix()
	namespace = "qwtest-" + id
	prefix = "qwtest" + id + "_"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// queue-service's last-running keys put "last_" before the prefix.
		for _, pattern := range []string{namespace + ":*", prefix + "*", "last_" + prefix + "*"} {
			iter := rdb.Scan(ctx, 0, pattern, 500).Iterator()
			for iter.Next(ctx) {
				rdb.Del(ctx, iter.Val())
			}
		}
		_ = rdb.Close()
	})
	return rdb, namespace, prefix
}

// KubeconfigEnv names the kubeconfig of the test control plane. It is not
// KUBECONFIG on purpose: a developer's KUBECONFIG may point at a real cluster.
const KubeconfigEnv = "QW_TEST_KUBECONFIG"

// RestConfig returns the client config of the test control plane.
func RestConfig(t testing.TB) *rest.Config {
	t.Helper()
	path := os.Getenv(KubeconfigEnv)
	if path == "" {
		t.Fatalf("%s is not set: run `make test`, or `eval \"$(scripts/dev-cluster.sh up)\"` and export %s=$KUBECONFIG", KubeconfigEnv, KubeconfigEnv)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("loading %s=%s: %v", KubeconfigEnv, path, err)
	}
	rc.QPS, rc.Burst = 500, 1000
	rc.Timeout = 15 * time.Second
	return rc
}

// Kube returns a clientset for the test control plane and a fresh namespace,
// deleted when the test ends.
func Kube(t testing.TB) (kubernetes.Interface, string) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(RestConfig(t))
	if err != nil {
		t.Fatalf("kubernetes client: %v", err)
	}
	name := "qwtest-" + strings.ToLower(Suffix())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating test namespace %s: %v (is the dev cluster up?)", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	// Pods are refused until the controller-manager has made the namespace's
	// default ServiceAccount (milliseconds).
	Eventually(t, 10*time.Second, "default ServiceAccount in "+name, func() bool {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
	return cs, name
}

// Eventually polls cond every 20ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
