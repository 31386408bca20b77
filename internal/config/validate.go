package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Runtimes a build can be routed to.
const (
	RuntimeKata   = "kata"
	RuntimeHyperD = "hyperd"
)

// Runtime maps an executor name, as used in executor.plugin and the
// reference's annotation, to a runtime: k8s|kata -> kata, k8s-vm|hyperd -> hyperd.
func (c *Config) Runtime(name string) (string, bool) {
	switch name {
	case "k8s", "kata":
		return RuntimeKata, true
	case "k8s-vm", "hyperd":
		return RuntimeHyperD, true
	}
	return "", false
}

// DefaultRuntime is the runtime of executor.plugin (valid after Load).
func (c *Config) DefaultRuntime() string {
	r, _ := c.Runtime(c.Executor.Plugin)
	return r
}

// ResqueNamespace is queue.namespace, or what queue-service uses: "resque",
// with a hash tag on Redis Cluster so that all keys share a slot.
func (c *Config) ResqueNamespace() string {
	switch {
	case c.Queue.Namespace != "":
		return c.Queue.Namespace
	case c.Queue.ConnectionType == "redisCluster":
		return "resque:{screwdriver-resque}"
	default:
		return "resque"
	}
}

// WeightedKataPercent is the percentage of builds the executor weights send
// to Kata, as routing.KataPercent derives it (the two must agree): with
// executor.k8s-vm.weightage unset, executor.k8s.weightage itself; with it
// set, the reference's relative weights k8s/(k8s+k8s-vm). ok is false when
// there is no weighted rule: executor.k8s.weightage unset, or both zero.
func (c *Config) WeightedKataPercent() (pct float64, ok bool) {
	k8s, vm := c.Executor.K8s.Weightage, c.Executor.K8sVM.Weightage
	switch {
	case k8s == nil:
		return 0, false
	case vm == nil:
		return *k8s, true
	}
	sum := *k8s + *vm
	if sum == 0 {
		return 0, false
	}
	return 100 * *k8s / sum, true
}

// ExclusionPatterns is the union of executor.k8s.exclusion and
// executor.k8s.exclusions, in order, without duplicates. The reference
// shipped the singular key while its router read the plural, so both count.
func (c *Config) ExclusionPatterns() []string {
	var out []string
	for _, p := range slices.Concat(c.Executor.K8s.Exclusion, c.Executor.K8s.Exclusions) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// ExclusionRegexps compiles ExclusionPatterns case-insensitively. It cannot
// fail on a Config returned by Load.
func (c *Config) ExclusionRegexps() ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, p := range c.ExclusionPatterns() {
		re, err := regexp.Compile("(?i)" + p)
		if err != nil {
			return nil, fmt.Errorf("config: compiling exclusion pattern %q: %w", p, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// Validate checks ranges and enumerations, reporting every problem (joined
// *FieldErrors) rather than the first. Load calls it; call it again after
// changing a Config in code.
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.executor()
	v.kataPath()
	v.vmPath()
	v.ecosystem()
	v.queue()
	v.routing()
	v.verify()
	v.supervisor()
	v.process()
	v.plugins()
	return v.errs.err()
}

type validator struct {
	c    *Config
	errs fieldErrors
}

func (v *validator) fail(key, format string, args ...any) {
	v.errs.add(key, v.source(key), fmt.Errorf(format, args...))
}

// other names another key in a message about this one, with its value
// and where that came from: an error caused by changing that key (say
// K8S_MEMORY_MAX=1 making the tiers too big) then says so.
func (v *validator) other(key, value string) string {
	switch src := v.source(key); src {
	case "", sourceUnset:
		return fmt.Sprintf("%s (%s)", key, value)
	default:
		return fmt.Sprintf("%s (%s, from %s)", key, value, src)
	}
}

func (v *validator) source(key string) string {
	if v.c.sources == nil {
		return ""
	}
	if s := v.c.Source(key); s != "" {
		return s
	}
	return sourceUnset
}

// subtreeSource is the source of key, or of the first leaf under it: for a
// mapping such as lifecycleHooks.preStop the loader records its leaves.
func (v *validator) subtreeSource(key string) string {
	if v.c.sources == nil {
		return ""
	}
	if s := v.c.Source(key); s != "" {
		return s
	}
	for _, k := range sortedKeys(v.c.sources) {
		if strings.HasPrefix(k, key+".") || strings.HasPrefix(k, key+"[") {
			return v.c.sources[k]
		}
	}
	return sourceUnset
}

func (v *validator) oneOf(key, got string, allowed ...string) {
	if !slices.Contains(allowed, got) {
		v.fail(key, "%q is not one of %s", got, strings.Join(allowed, ", "))
	}
}

func (v *validator) intRange(key string, got, lo, hi int) {
	if got < lo || got > hi {
		v.fail(key, "%d is out of range %d..%d", got, lo, hi)
	}
}

func (v *validator) positiveInt(key string, got int) {
	if got <= 0 {
		v.fail(key, "must be greater than 0, got %d", got)
	}
}

func (v *validator) nonNegativeInt(key string, got int) {
	if got < 0 {
		v.fail(key, "must not be negative, got %d", got)
	}
}

func (v *validator) positiveDuration(key string, got time.Duration) {
	if got <= 0 {
		v.fail(key, "must be greater than 0, got %s", got)
	}
}

func (v *validator) nonEmpty(key, got string) {
	if got == "" {
		v.fail(key, "must not be empty")
	}
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func (v *validator) executor() {
	e := v.c.Executor
	v.oneOf("executor.plugin", e.Plugin, "k8s", "kata", "k8s-vm", "hyperd")

	weight := func(key string, w *float64) bool {
		switch {
		case w == nil:
			return false
		case math.IsNaN(*w) || math.IsInf(*w, 0):
			v.fail(key, "must be a finite number, got %s", formatFloat(*w))
		case *w < 0:
			v.fail(key, "must not be negative, got %s", formatFloat(*w))
		default:
			return true
		}
		return false
	}
	if weight("executor.k8s.weightage", e.K8s.Weightage) && e.K8sVM.Weightage == nil && *e.K8s.Weightage > 100 {
		v.fail("executor.k8s.weightage",
			"%s is above 100: with executor.k8s-vm.weightage unset it is the percentage of builds sent to Kata",
			formatFloat(*e.K8s.Weightage))
	}
	weight("executor.k8s-vm.weightage", e.K8sVM.Weightage)

	for i, p := range e.K8s.Exclusion {
		v.pattern(indexKey("executor.k8s.exclusion", i), p)
	}
	for i, p := range e.K8s.Exclusions {
		v.pattern(indexKey("executor.k8s.exclusions", i), p)
	}
}

func (v *validator) pattern(key, p string) {
	if p == "" {
		v.fail(key, "empty pattern would match every image")
		return
	}
	if _, err := regexp.Compile("(?i)" + p); err != nil {
		// Report the operator's pattern, not our "(?i)"-prefixed one.
		if _, perr := regexp.Compile(p); perr != nil {
			err = perr
		}
		v.errs.add(key, v.source(key), fmt.Errorf("invalid regexp %q: %w", p, err))
	}
}

func (v *validator) kataPath() {
	const base = "executor.k8s.options"
	o := v.c.Executor.K8s.Options
	k := o.Kubernetes
	kb := base + ".kubernetes"

	v.oneOf(kb+".dnsPolicy", k.DNSPolicy, "ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
	v.oneOf(kb+".imagePullPolicy", k.ImagePullPolicy, "Always", "IfNotPresent", "Never")
	v.tiers(kb+".resources.cpu", k.Resources.CPU)
	v.tiers(kb+".resources.memory", k.Resources.Memory)
	v.podCommon(kb, k.PodCommon)
	if strings.HasPrefix(strings.ToLower(k.Host), "http://") {
		// The daemon authenticates with a bearer token: over plain http
		// anyone on the path could read it.
		v.fail(kb+".host", "%q would send the Kubernetes credentials in clear; use https:// (or host:port, which means https)", k.Host)
	}
	v.nonNegativeInt(kb+".terminationGracePeriodSeconds", k.TerminationGracePeriodSeconds)
	v.nonNegativeInt(kb+".maxTerminationGracePeriodSeconds", k.MaxTerminationGracePeriodSeconds)
	if k.TerminationGracePeriodSeconds > k.MaxTerminationGracePeriodSeconds && k.MaxTerminationGracePeriodSeconds >= 0 {
		v.fail(kb+".terminationGracePeriodSeconds", "%d seconds is above %s", k.TerminationGracePeriodSeconds,
			v.other(kb+".maxTerminationGracePeriodSeconds", strconv.Itoa(k.MaxTerminationGracePeriodSeconds)))
	}
	v.ratio(kb+".resources.requests.cpuRatio", k.Resources.Requests.CPURatio)
	v.ratio(kb+".resources.requests.memoryRatio", k.Resources.Requests.MemoryRatio)
	v.quantity(kb+".resources.launcher.cpu", k.Resources.Launcher.CPU)
	v.quantity(kb+".resources.launcher.memory", k.Resources.Launcher.Memory)
	if k.DockerFeatureEnabled {
		v.nonEmpty(kb+".dockerImage", k.DockerImage)
		if k.RootlessBuildkitFeatureEnabled {
			v.nonEmpty(kb+".dockerRootlessImage", k.DockerRootlessImage)
		}
	}
	if k.RootlessBuildkitFeatureEnabled {
		v.nonEmpty(kb+".buildkitImage", k.BuildkitImage)
	}
	if _, errs := lifecycleFromHooks(k.LifecycleHooks); len(errs) > 0 {
		for _, err := range errs {
			key := kb + ".lifecycleHooks"
			var he *hookError
			if errors.As(err, &he) && he.hook != "" {
				key = joinKey(key, he.hook)
				err = he.err
			}
			v.errs.add(key, v.subtreeSource(key), err)
		}
	}
	v.labels(kb+".podLabels", k.PodLabels, true)
	v.labels(kb+".annotations", k.Annotations, false)
	if k.RuntimeClass != "" {
		for _, msg := range validation.IsDNS1123Subdomain(k.RuntimeClass) {
			v.fail(kb+".runtimeClass", "%q: %s", k.RuntimeClass, msg)
		}
	}
	for i, m := range k.VolumeMounts {
		key := indexKey(kb+".volumeMounts", i)
		v.nonEmpty(key+".name", m.Name)
		v.nonEmpty(key+".path", m.Path)
		if !path.IsAbs(m.MountPath) {
			v.fail(key+".mountPath", "must be an absolute path, got %q", m.MountPath)
		}
		v.oneOf(key+".type", m.Type, "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File",
			"Socket", "CharDevice", "BlockDevice")
	}
	for i, s := range k.BuildSecrets {
		key := indexKey(kb+".buildSecrets", i)
		v.nonEmpty(key+".secret_env", s.SecretEnv)
		v.nonEmpty(key+".secret_name", s.SecretName)
		v.nonEmpty(key+".secret_key", s.SecretKey)
	}
	for i, s := range k.BuildSecretsFile {
		key := indexKey(kb+".buildSecretsFile", i)
		v.nonEmpty(key+".name", s.Name)
		v.nonEmpty(key+".secretName", s.SecretName)
		if !path.IsAbs(s.MountPath) {
			v.fail(key+".mountPath", "must be an absolute path, got %q", s.MountPath)
		}
	}

	v.nonEmpty(base+".launchImage", o.LaunchImage)
	v.nonEmpty(base+".launchVersion", o.LaunchVersion)
	v.positiveInt(base+".fusebox.breaker.timeout", o.Fusebox.Breaker.Timeout)
	v.nonNegativeInt(base+".requestretry.retryDelay", o.RequestRetry.RetryDelay)
	if o.RequestRetry.MaxAttempts < 1 {
		v.fail(base+".requestretry.maxAttempts", "must be at least 1, got %d", o.RequestRetry.MaxAttempts)
	}
}

func (v *validator) vmPath() {
	const kb = "executor.k8s-vm.options.kubernetes"
	k := v.c.Executor.K8sVM.Options.Kubernetes
	v.podCommon(kb, k.PodCommon)
	v.nonEmpty(kb+".baseImage", k.BaseImage)
}

func (v *validator) podCommon(kb string, p PodCommon) {
	v.labels(kb+".nodeSelectors", p.NodeSelectors, true)
	v.labels(kb+".preferredNodeSelectors", p.PreferredNodeSelectors, true)
	v.positiveInt(kb+".buildTimeout", p.BuildTimeout)
	v.positiveInt(kb+".maxBuildTimeout", p.MaxBuildTimeout)
	if p.BuildTimeout > 0 && p.MaxBuildTimeout > 0 && p.BuildTimeout > p.MaxBuildTimeout {
		v.fail(kb+".buildTimeout", "%d minutes is above %s", p.BuildTimeout, v.other(kb+".maxBuildTimeout", strconv.Itoa(p.MaxBuildTimeout)))
	}
}

// labels checks keys (and, for labels and selectors, values) with the API
// server's rules, so a typo fails here instead of on every pod create.
func (v *validator) labels(key string, m map[string]string, checkValues bool) {
	for _, k := range sortedKeys(m) {
		ek := joinKey(key, k)
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			v.fail(ek, "invalid key %q: %s", k, strings.Join(msgs, "; "))
		}
		if checkValues {
			if msgs := validation.IsValidLabelValue(m[k]); len(msgs) > 0 {
				v.fail(ek, "invalid value %q: %s", m[k], strings.Join(msgs, "; "))
			}
		}
	}
}

// ratio is a requests/limits fraction: 0 < r <= 1.
func (v *validator) ratio(key string, r float64) {
	if !(r > 0 && r <= 1) {
		v.fail(key, "must be in (0, 1], got %s", formatFloat(r))
	}
}

// quantity is a positive Kubernetes quantity such as "250m" or "256Mi".
func (v *validator) quantity(key, s string) {
	q, err := resource.ParseQuantity(s)
	switch {
	case err != nil:
		v.fail(key, "%q is not a Kubernetes quantity (such as 250m or 256Mi)", s)
	case q.Sign() <= 0:
		v.fail(key, "must be greater than 0, got %q", s)
	}
}

func (v *validator) tiers(key string, t Tiers) {
	tiers := []struct {
		name string
		val  float64
	}{{"micro", t.Micro}, {"low", t.Low}, {"high", t.High}, {"turbo", t.Turbo}, {"max", t.Max}}
	for _, tier := range tiers {
		if !(tier.val > 0) || math.IsInf(tier.val, 0) {
			v.fail(key+"."+tier.name, "must be a positive number, got %s", formatFloat(tier.val))
		} else if tier.val > t.Max && t.Max > 0 {
			v.fail(key+"."+tier.name, "%s is above %s", formatFloat(tier.val), v.other(key+".max", formatFloat(t.Max)))
		}
	}
}

func (v *validator) ecosystem() {
	e := v.c.Ecosystem
	v.httpURL("ecosystem.api", e.API, true)
	for i, u := range e.TrustedAPIURIs {
		v.httpURL(indexKey("ecosystem.trustedApiUris", i), u, true)
	}
	v.httpURL("ecosystem.ui", e.UI, false)
	v.httpURL("ecosystem.store", e.Store, false)
	v.httpURL("ecosystem.pushgatewayUrl", e.PushgatewayURL, false)
	v.nonNegativeInt("ecosystem.cache.max_size_mb", e.Cache.MaxSizeMB)
	v.nonNegativeInt("ecosystem.cache.max_go_threads", e.Cache.MaxGoThreads)
}

func (v *validator) httpURL(key, raw string, required bool) {
	if raw == "" {
		if required {
			v.fail(key, "must not be empty")
		}
		return
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		v.errs.add(key, v.source(key), fmt.Errorf("invalid URL: %w", err))
	case u.Scheme != "http" && u.Scheme != "https":
		v.fail(key, "%q must be an absolute http or https URL", raw)
	case u.Host == "":
		v.fail(key, "%q has no host", raw)
	}
}

func (v *validator) queue() {
	q := v.c.Queue
	switch q.ConnectionType {
	case "redis":
		v.nonEmpty("queue.redisConnection.host", q.RedisConnection.Host)
	case "redisCluster", "redisSentinel":
		hosts := q.RedisClusterConnection.Hosts
		if len(hosts) == 0 {
			v.fail("queue.redisClusterConnection.hosts", "needs at least one host:port when %s", v.other("queue.connectionType", q.ConnectionType))
		}
		for i, h := range hosts {
			if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
				v.fail(indexKey("queue.redisClusterConnection.hosts", i), "%q is not host:port", h)
			}
		}
		if q.ConnectionType == "redisSentinel" {
			v.nonEmpty("queue.redisClusterConnection.masterName", q.RedisClusterConnection.MasterName)
		}
		if q.ConnectionType == "redisCluster" && q.RedisConnection.Database != 0 {
			v.fail("queue.redisConnection.database", "must be 0 with %s (Redis Cluster has only database 0), got %d", v.other("queue.connectionType", q.ConnectionType), q.RedisConnection.Database)
		}
		if q.ConnectionType == "redisCluster" && q.Namespace != "" && !hasHashTag(q.Namespace) {
			// Our scripts touch several keys of the namespace at once; on
			// Cluster they must share a slot, which only a {hash tag} ensures.
			v.fail("queue.namespace", "%q needs a {hash tag} with %s (like resque:{screwdriver-resque}), or multi-key scripts fail with CROSSSLOT", q.Namespace, v.other("queue.connectionType", q.ConnectionType))
		}
	default:
		v.oneOf("queue.connectionType", q.ConnectionType, "redis", "redisCluster", "redisSentinel")
	}
	v.intRange("queue.redisConnection.port", q.RedisConnection.Port, 1, 65535)
	v.nonNegativeInt("queue.redisConnection.database", q.RedisConnection.Database)
	v.nonNegativeInt("queue.redisClusterConnection.slotsRefreshTimeout", q.RedisClusterConnection.SlotsRefreshTimeout)

	if len(q.Queues) == 0 {
		v.fail("queue.queues", "must name at least one queue")
	}
	for i, name := range q.Queues {
		switch {
		case name == "":
			v.fail(indexKey("queue.queues", i), "queue name must not be empty")
		case slices.Index(q.Queues, name) < i:
			v.fail(indexKey("queue.queues", i), "queue %q is listed twice", name)
		}
	}
	v.positiveDuration("queue.blockTimeout", q.BlockTimeout)
	if q.BlockTimeout >= time.Minute {
		// A blocking take holds its connection; shutdown waits for it.
		v.fail("queue.blockTimeout", "must be under 1m, got %s", q.BlockTimeout)
	}
	v.positiveDuration("queue.operationTimeout", q.OperationTimeout)
	if q.BlockTimeout > 0 && q.BlockTimeout < time.Second {
		// Redis clients send blocking timeouts in whole seconds.
		v.fail("queue.blockTimeout", "must be at least 1s, got %s", q.BlockTimeout)
	}
	v.positiveDuration("queue.leaseDuration", q.LeaseDuration)
	if q.LeaseDuration > 0 && q.LeaseDuration < 3*time.Second {
		// The heartbeat runs every third of the lease; shorter leases expire on a GC pause.
		v.fail("queue.leaseDuration", "must be at least 3s, got %s", q.LeaseDuration)
	}
	v.positiveDuration("queue.recoverInterval", q.RecoverInterval)
	// A job is a few hundred bytes; 512 MiB is Redis's own limit on a value.
	v.intRange("queue.maxJobBytes", q.MaxJobBytes, 1024, 512<<20)
	// Every resque job is at least 2 deep ({"args":[...]}); beyond 10000
	// Go's own JSON decoder refuses.
	v.intRange("queue.maxJobDepth", q.MaxJobDepth, 3, 10000)
	v.positiveInt("queue.maxRecoveries", q.MaxRecoveries)
	if q.FenceMargin < 0 {
		v.fail("queue.fenceMargin", "must not be negative, got %s", q.FenceMargin)
	} else if q.LeaseDuration > 0 && q.FenceMargin > 0 && q.LeaseDuration/3 >= q.LeaseDuration-q.FenceMargin {
		// The heartbeat (every third of the lease) must land before the fence.
		v.fail("queue.fenceMargin", "must be under two thirds of queue.leaseDuration (%s), got %s", q.LeaseDuration, q.FenceMargin)
	}
	v.positiveDuration("queue.schedulerInterval", q.SchedulerInterval)
	v.nonNegativeInt("queue.retry.maxRetries", q.Retry.MaxRetries)
	v.positiveDuration("queue.retry.delay", q.Retry.Delay)
	if q.Retry.Factor < 1 || math.IsNaN(q.Retry.Factor) || math.IsInf(q.Retry.Factor, 0) {
		v.fail("queue.retry.factor", "must be a finite number ≥ 1, got %v", q.Retry.Factor)
	}
	if q.Retry.MaxDelay < q.Retry.Delay {
		v.fail("queue.retry.maxDelay", "must be at least %s, got %s", v.other("queue.retry.delay", q.Retry.Delay.String()), q.Retry.MaxDelay)
	}
}

func (v *validator) verify() {
	r := v.c.Verify
	if r.Interval < 0 {
		v.fail("verify.interval", "must not be negative, got %s", r.Interval)
	}
	v.positiveDuration("verify.pendingTimeout", r.PendingTimeout)
	if r.ImagePullGrace < 0 {
		v.fail("verify.imagePullGrace", "must not be negative, got %s", r.ImagePullGrace)
	}
	v.positiveDuration("verify.exit139Window", r.Exit139Window)
	for i, p := range r.RuntimePatterns {
		key := indexKey("verify.runtimePatterns", i)
		if p == "" {
			v.fail(key, "an empty pattern would match every message")
		} else if _, err := regexp.Compile(p); err != nil {
			v.fail(key, "invalid regexp %q: %v", p, err)
		}
	}
	if r.RuntimeErrorGrace < 0 {
		v.fail("verify.runtimeErrorGrace", "must not be negative, got %s", r.RuntimeErrorGrace)
	}
	v.intRange("verify.fallback.learnAfter", r.Fallback.LearnAfter, 1, 100)
	v.positiveDuration("verify.fallback.learnWindow", r.Fallback.LearnWindow)
	v.positiveDuration("verify.fallback.learnedExclusionTTL", r.Fallback.LearnedExclusionTTL)
}

func (v *validator) supervisor() {
	s := v.c.Supervisor
	v.intRange("supervisor.workers", s.Workers, 1, 256)
	le := s.LeaderElection
	if !le.Enabled {
		return
	}
	if errs := validation.IsDNS1123Subdomain(le.LeaseName); len(errs) > 0 {
		v.fail("supervisor.leaderElection.leaseName", "%q is not a valid Lease name: %s", le.LeaseName, strings.Join(errs, "; "))
	}
	v.positiveDuration("supervisor.leaderElection.leaseDuration", le.LeaseDuration)
	v.positiveDuration("supervisor.leaderElection.renewDeadline", le.RenewDeadline)
	v.positiveDuration("supervisor.leaderElection.retryPeriod", le.RetryPeriod)
	// client-go's own rules, checked here so the key is named at load.
	if le.RenewDeadline > 0 && le.LeaseDuration <= le.RenewDeadline {
		v.fail("supervisor.leaderElection.leaseDuration", "must be longer than %s, got %s", v.other("supervisor.leaderElection.renewDeadline", le.RenewDeadline.String()), le.LeaseDuration)
	}
	if le.RetryPeriod > 0 && float64(le.RenewDeadline) <= 1.2*float64(le.RetryPeriod) {
		v.fail("supervisor.leaderElection.renewDeadline", "must be longer than 1.2 × %s, got %s", v.other("supervisor.leaderElection.retryPeriod", le.RetryPeriod.String()), le.RenewDeadline)
	}
}

func (v *validator) routing() {
	r := v.c.Routing
	v.oneOf("routing.stickiness", r.Stickiness, "job", "pipeline", "build")
	for i, rt := range r.Paused {
		key := indexKey("routing.paused", i)
		v.oneOf(key, rt, RuntimeKata, RuntimeHyperD)
		if slices.Index(r.Paused, rt) < i {
			v.fail(key, "runtime %q is listed twice", rt)
		}
	}
	for _, rt := range sortedKeys(r.Budgets) {
		key := joinKey("routing.budgets", rt)
		v.oneOf(key, rt, RuntimeKata, RuntimeHyperD)
		v.nonNegativeInt(key, r.Budgets[rt])
	}
	v.autopilot()
}

// autopilot checks routing.autopilot. The ranges hold whether or not it is
// enabled, so that switching it on later (ROUTING_AUTOPILOT_ENABLED) cannot
// be the first time a bad value is noticed.
func (v *validator) autopilot() {
	const key = "routing.autopilot"
	a := v.c.Routing.Autopilot
	if !(a.Step >= 0.01 && a.Step <= 100) {
		// Routing's resolution is a basis point: a smaller step moves nothing.
		v.fail(key+".step", "must be in [0.01, 100] percentage points, got %s", formatFloat(a.Step))
	}
	if a.Interval < time.Second {
		// Tests compress the period to seconds; below that an evaluation
		// would not see the builds of the last step.
		v.fail(key+".interval", "must be at least 1s, got %s", a.Interval)
	}
	if !(a.MaxPercent >= 0 && a.MaxPercent <= 100) {
		v.fail(key+".maxPercent", "must be in 0..100, got %s", formatFloat(a.MaxPercent))
	}
	if a.MinBuilds < 1 {
		v.fail(key+".minBuilds", "must be at least 1, got %d", a.MinBuilds)
	}
	if !(a.MaxFailureRateDelta >= 0 && a.MaxFailureRateDelta <= 1) {
		v.fail(key+".maxFailureRateDelta", "must be in 0..1 (a difference of failure rates: 0.02 = 2 points), got %s", formatFloat(a.MaxFailureRateDelta))
	}
	if !(a.MaxSetupTimeRatio >= 1) || math.IsInf(a.MaxSetupTimeRatio, 0) {
		v.fail(key+".maxSetupTimeRatio", "must be a finite number ≥ 1 (Kata's p90 setup time over hyperd's), got %s", formatFloat(a.MaxSetupTimeRatio))
	}
	if !a.Enabled {
		return
	}
	e := v.c.Executor
	floor, ok := v.c.WeightedKataPercent()
	switch {
	case e.K8s.Weightage == nil:
		v.fail(key+".enabled", "needs executor.k8s.weightage, which is not set: the Kata percentage it gives is the autopilot's starting point and floor")
	case !ok:
		v.fail(key+".enabled", "needs a Kata percentage to start from, but %s and %s are both 0 (no weighted rule): executor.k8s.weightage is the autopilot's starting point and floor",
			v.other("executor.k8s.weightage", formatFloat(*e.K8s.Weightage)), v.other("executor.k8s-vm.weightage", formatFloat(*e.K8sVM.Weightage)))
	case !(floor >= 0 && floor <= 100):
		// Invalid weights, already reported by executor().
	case a.MaxPercent < floor:
		from := v.other("executor.k8s.weightage", formatFloat(*e.K8s.Weightage))
		if e.K8sVM.Weightage != nil {
			from += " and " + v.other("executor.k8s-vm.weightage", formatFloat(*e.K8sVM.Weightage))
		}
		v.fail(key+".maxPercent", "%s is below %s%%, the Kata percentage given by %s: the autopilot's floor, which it never goes below",
			formatFloat(a.MaxPercent), formatFloat(floor), from)
	}
}

func (v *validator) process() {
	c := v.c
	v.intRange("worker.concurrency", c.Worker.Concurrency, 1, 1024)
	if c.Worker.ShutdownGracePeriod < 0 {
		v.fail("worker.shutdownGracePeriod", "must not be negative, got %s", c.Worker.ShutdownGracePeriod)
	}
	v.positiveDuration("worker.jobTimeout", c.Worker.JobTimeout)
	if !(c.Kubernetes.QPS > 0) || math.IsInf(c.Kubernetes.QPS, 0) {
		v.fail("kubernetes.qps", "must be a positive number, got %s", formatFloat(c.Kubernetes.QPS))
	}
	if c.Kubernetes.Burst < 1 {
		v.fail("kubernetes.burst", "must be at least 1, got %d", c.Kubernetes.Burst)
	}
	v.positiveDuration("kubernetes.requestTimeout", c.Kubernetes.RequestTimeout)
	v.intRange("httpd.port", c.HTTPD.Port, 1, 65535)
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "console")
}

// hasHashTag reports whether a key prefix holds a non-empty Redis Cluster
// hash tag ("{...}").
func hasHashTag(s string) bool {
	i := strings.IndexByte(s, '{')
	return i >= 0 && strings.IndexByte(s[i+1:], '}') > 0
}

func (v *validator) plugins() {
	b := v.c.Plugins.BlockedBy
	if b.Enabled {
		if !(b.ReenqueueWaitTime > 0) || math.IsInf(b.ReenqueueWaitTime, 0) || b.ReenqueueWait() < time.Second {
			// A shorter wait would spin blocked starts through the schedule.
			v.fail("plugins.blockedBy.reenqueueWaitTime", "must be at least 1 second (in minutes: 0.0167), got %v", b.ReenqueueWaitTime)
		}
		if !(b.BlockTimeout > 0) || math.IsInf(b.BlockTimeout, 0) || b.BlockTTL() < time.Second {
			v.fail("plugins.blockedBy.blockTimeout", "must be a positive number of minutes, got %v", b.BlockTimeout)
		}
	}
	t := v.c.TimeoutChecker
	if t.Enabled {
		v.positiveDuration("timeoutChecker.interval", t.Interval)
		if t.Buffer < 0 {
			v.fail("timeoutChecker.buffer", "must not be negative, got %s", t.Buffer)
		}
	}
}
