package main

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// holdingProxy stands between a daemon and the test apiserver: it passes
// everything on, except pod creates, which it holds unanswered until the
// caller goes away. It returns a kubeconfig for it and the count of held
// creates.
func holdingProxy(t *testing.T) (kubeconfig string, held *atomic.Int32) {
	t.Helper()
	rc := testbed.RestConfig(t)
	rt, err := rest.TransportFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(rc.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Transport:     rt,
		FlushInterval: -1, // watches stream
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = target.Host
			r.Out.Header.Del("Authorization") // the transport authenticates as the test
		},
	}
	held = &atomic.Int32{}
	done := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/pods") {
			held.Add(1)
			select {
			case <-r.Context().Done():
			case <-done:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	srv.StartTLS()
	t.Cleanup(func() { close(done); srv.Close() })

	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["proxy"] = &clientcmdapi.Cluster{Server: srv.URL,
		CertificateAuthorityData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})}
	cfg.AuthInfos["proxy"] = &clientcmdapi.AuthInfo{Token: "held-by-the-proxy"}
	cfg.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "proxy"}
	cfg.CurrentContext = "proxy"
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return kubeconfig, held
}

// A replica SIGKILLed after the gate let two builds start but before their
// pods exist loses nothing: another replica takes the jobs over, finds the
// running keys its own (a retried start), and makes the pod. A build
// stopped while no replica ran never gets one, and its job's running key is
// released rather than left naming a build that will never run.
func TestGate_SIGKILLBetweenTheDecisionAndThePodCreate(t *testing.T) {
	rdb, rns, prefix := testbed.Redis(t)
	kube, ns := testbed.Kube(t)
	ci := testbed.FakeCIAPI(t)
	ctx := context.Background()
	proxied, held := holdingProxy(t)
	env := map[string]string{
		"K8S_JOBS_NAMESPACE":     ns,
		"REDIS_RESQUE_NAMESPACE": rns,
		"REDIS_QUEUE_PREFIX":     prefix,
		"ECOSYSTEM_API":          ci.URL(),
		"WEIGHT_K8S":             "100",
		"QUEUE_LEASE_DURATION":   "3s",
		"QUEUE_RECOVER_INTERVAL": "1s",
		// The held creates must not time out before the kill.
		"K8S_REQUEST_TIMEOUT": "60s",
	}
	a := startDaemon(t, "a", withEnv(env, map[string]string{"KUBECONFIG": proxied}))

	base := 20_000_000 + time.Now().UnixNano()%1_000_000*100
	kept := testbed.QSBuild{BuildID: base + 1, JobID: base + 50}
	stopped := testbed.QSBuild{BuildID: base + 2, JobID: base + 60}
	qs := testbed.QueueService{Namespace: rns, Prefix: prefix, APIURI: ci.URL()}
	qs.Start(t, kept, stopped)
	k := gate.NewKeys(prefix)
	runningIs := func(b testbed.QSBuild) bool {
		return rdb.Get(ctx, k.Running(b.JobID)).Val() == strconv.FormatInt(b.BuildID, 10)
	}
	testbed.Eventually(t, 20*time.Second, "both builds past the gate, their pod creates held", func() bool {
		return held.Load() == 2 && runningIs(kept) && runningIs(stopped)
	})
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()

	qs.Stop(t, stopped)
	startDaemon(t, "b", withEnv(env, map[string]string{"KUBECONFIG": os.Getenv(testbed.KubeconfigEnv)}))
	pods := func(b testbed.QSBuild) int {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild=" + strconv.FormatInt(b.BuildID, 10)})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}
	testbed.Eventually(t, 30*time.Second, "the kept build's pod made by the other replica", func() bool { return pods(kept) == 1 })
	if !runningIs(kept) {
		t.Errorf("running key of the kept build's job is %q", rdb.Get(ctx, k.Running(kept.JobID)).Val())
	}
	testbed.Eventually(t, 20*time.Second, "every job settled", func() bool {
		inflight, _ := rdb.Keys(ctx, rns+":qw:inflight:*").Result()
		busy := 0
		for _, key := range inflight {
			busy += int(rdb.LLen(ctx, key).Val())
		}
		return busy == 0 && rdb.LLen(ctx, rns+":queue:"+prefix+"builds").Val() == 0 &&
			rdb.ZCard(ctx, rns+":delayed_queue_schedule").Val() == 0
	})
	time.Sleep(time.Second)
	if n := pods(stopped); n != 0 {
		t.Fatalf("the build stopped while no replica ran has %d pods", n)
	}
	if v := rdb.Get(ctx, k.Running(stopped.JobID)).Val(); v != "" {
		t.Fatalf("its job's running key still names %q", v)
	}
	if n := pods(kept); n != 1 {
		t.Fatalf("the kept build has %d pods", n)
	}
	if n := rdb.LLen(ctx, rns+":failed").Val(); n != 0 {
		t.Fatalf("%d failed entries: %v", n, rdb.LRange(ctx, rns+":failed", 0, -1).Val())
	}
}
