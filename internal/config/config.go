package config

import "time"

// Config is the daemon's whole configuration. Where Screwdriver's
// buildcluster-queue-worker or queue-service already has a key, the same path
// is used (yaml tag) so operators' overlays and env names keep working; keys
// of our own live under worker, routing, kubernetes, httpd and log.
//
// Optional numbers that must be told apart from zero are pointers.
type Config struct {
	Executor   Executor   `yaml:"executor" mapstructure:"executor"`
	Ecosystem  Ecosystem  `yaml:"ecosystem" mapstructure:"ecosystem"`
	Queue      Queue      `yaml:"queue" mapstructure:"queue"`
	Worker     Worker     `yaml:"worker" mapstructure:"worker"`
	Routing    Routing    `yaml:"routing" mapstructure:"routing"`
	Kubernetes Kubernetes `yaml:"kubernetes" mapstructure:"kubernetes"`
	Verify     Verify     `yaml:"verify" mapstructure:"verify"`
	Supervisor Supervisor `yaml:"supervisor" mapstructure:"supervisor"`
	HTTPD      HTTPD      `yaml:"httpd" mapstructure:"httpd"`
	Log        Log        `yaml:"log" mapstructure:"log"`
	// Plugins are queue-service's worker plugin settings (its paths and env
	// names): blockedBy and collapse.
	Plugins Plugins `yaml:"plugins" mapstructure:"plugins"`
	// TimeoutChecker is the build timeout checker (ours; queue-service's
	// runs with fixed settings).
	TimeoutChecker TimeoutChecker `yaml:"timeoutChecker" mapstructure:"timeoutChecker"`

	// sources records where each leaf key came from (see Sources); set by
	// Load, nil for a Config built in code.
	sources map[string]string
}

// Executor mirrors the reference's executor tree: k8s is the Kata path,
// k8s-vm the HyperD path.
type Executor struct {
	// Plugin is the default executor when no rule decides: k8s|kata|k8s-vm|hyperd.
	Plugin string `yaml:"plugin" mapstructure:"plugin"`
	K8s    K8s    `yaml:"k8s" mapstructure:"k8s"`
	K8sVM  K8sVM  `yaml:"k8s-vm" mapstructure:"k8s-vm"`
}

// K8s is the Kata-path executor.
type K8s struct {
	// Weightage is the percentage (0-100) of builds sent to Kata. Nil = unset.
	Weightage *float64 `yaml:"weightage" mapstructure:"weightage"`
	// Exclusion is the reference key (singular); Exclusions the plural the
	// reference router read. Both are accepted and merged; images matching
	// any (case-insensitive regex) go to hyperd.
	Exclusion  []string   `yaml:"exclusion" mapstructure:"exclusion"`
	Exclusions []string   `yaml:"exclusions" mapstructure:"exclusions"`
	Options    K8sOptions `yaml:"options" mapstructure:"options"`
}

// K8sVM is the HyperD-path executor.
type K8sVM struct {
	// Weightage is the reference's relative weight of k8s-vm. When set, the
	// Kata percentage is derived as k8s/(k8s+k8s-vm).
	Weightage *float64     `yaml:"weightage" mapstructure:"weightage"`
	Options   K8sVMOptions `yaml:"options" mapstructure:"options"`
}

// K8sOptions is executor.k8s.options. Launcher, prefix, breaker and retry
// settings are shared by both executors (as in the reference).
type K8sOptions struct {
	Kubernetes    KataKubernetes `yaml:"kubernetes" mapstructure:"kubernetes"`
	LaunchImage   string         `yaml:"launchImage" mapstructure:"launchImage"`
	LaunchVersion string         `yaml:"launchVersion" mapstructure:"launchVersion"`
	Prefix        string         `yaml:"prefix" mapstructure:"prefix"`
	Fusebox       Fusebox        `yaml:"fusebox" mapstructure:"fusebox"`
	RequestRetry  RequestRetry   `yaml:"requestretry" mapstructure:"requestretry"`
	SDHabEnabled  bool           `yaml:"sdHabEnabled" mapstructure:"sdHabEnabled"`
}

// Fusebox holds the circuit-breaker settings (reference names).
type Fusebox struct {
	Breaker Breaker `yaml:"breaker" mapstructure:"breaker"`
}

// Breaker.Timeout is in milliseconds, as CIRCUIT_TIMEOUT in the reference.
type Breaker struct {
	Timeout int `yaml:"timeout" mapstructure:"timeout"`
}

// RequestRetry: delay in milliseconds and attempts, as REQUEST_RETRYDELAY / REQUEST_MAXATTEMPTS.
type RequestRetry struct {
	RetryDelay  int `yaml:"retryDelay" mapstructure:"retryDelay"`
	MaxAttempts int `yaml:"maxAttempts" mapstructure:"maxAttempts"`
}

// PodCommon holds the pod settings both paths share.
type PodCommon struct {
	NodeSelectors          map[string]string `yaml:"nodeSelectors" mapstructure:"nodeSelectors"`
	PreferredNodeSelectors map[string]string `yaml:"preferredNodeSelectors" mapstructure:"preferredNodeSelectors"`
	// BuildTimeout and MaxBuildTimeout are minutes.
	BuildTimeout    int `yaml:"buildTimeout" mapstructure:"buildTimeout"`
	MaxBuildTimeout int `yaml:"maxBuildTimeout" mapstructure:"maxBuildTimeout"`
}

// KataKubernetes is executor.k8s.options.kubernetes.
type KataKubernetes struct {
	PodCommon                     `yaml:",inline" mapstructure:",squash"`
	Host                          string    `yaml:"host" mapstructure:"host"`
	Token                         string    `yaml:"token" mapstructure:"token"`
	JobsNamespace                 string    `yaml:"jobsNamespace" mapstructure:"jobsNamespace"`
	ServiceAccount                string    `yaml:"serviceAccount" mapstructure:"serviceAccount"`
	AutomountServiceAccountToken  bool      `yaml:"automountServiceAccountToken" mapstructure:"automountServiceAccountToken"`
	Privileged                    bool      `yaml:"privileged" mapstructure:"privileged"`
	DockerFeatureEnabled          bool      `yaml:"dockerFeatureEnabled" mapstructure:"dockerFeatureEnabled"`
	DNSPolicy                     string    `yaml:"dnsPolicy" mapstructure:"dnsPolicy"`
	ImagePullPolicy               string    `yaml:"imagePullPolicy" mapstructure:"imagePullPolicy"`
	Resources                     Resources `yaml:"resources" mapstructure:"resources"`
	TerminationGracePeriodSeconds int       `yaml:"terminationGracePeriodSeconds" mapstructure:"terminationGracePeriodSeconds"`
	// MaxTerminationGracePeriodSeconds caps the grace period a build may ask
	// for with its annotation (the reference had no cap).
	MaxTerminationGracePeriodSeconds int `yaml:"maxTerminationGracePeriodSeconds" mapstructure:"maxTerminationGracePeriodSeconds"`
	// DockerImage is the docker-in-docker sidecar's image (the reference
	// hard-coded docker:20.10-dind).
	DockerImage string `yaml:"dockerImage" mapstructure:"dockerImage"`
	// DockerRootlessImage is the dind image when the build also has the
	// rootless BuildKit sidecar (executor-k8s hard-codes
	// docker:20.10-dind-rootless).
	DockerRootlessImage string `yaml:"dockerRootlessImage" mapstructure:"dockerRootlessImage"`
	// RootlessBuildkitFeatureEnabled is executor-k8s's cluster switch (key
	// and default true as there): with it, a build annotated
	// screwdriver.cd/rootlessBuildkitEnabled: true gets a buildkitd sidecar.
	RootlessBuildkitFeatureEnabled bool `yaml:"rootlessBuildkitFeatureEnabled" mapstructure:"rootlessBuildkitFeatureEnabled"`
	// BuildkitImage is the buildkitd sidecar's image (executor-k8s
	// hard-codes screwdrivercd/buildkit-rootless:latest).
	BuildkitImage string `yaml:"buildkitImage" mapstructure:"buildkitImage"`
	// LifecycleHooks is a corev1.Lifecycle in JSON/YAML form ({postStart,
	// preStop}); its shape is checked at load (see Lifecycle).
	LifecycleHooks      map[string]any    `yaml:"lifecycleHooks" mapstructure:"lifecycleHooks"`
	PodLabels           map[string]string `yaml:"podLabels" mapstructure:"podLabels"`
	Annotations         map[string]string `yaml:"annotations" mapstructure:"annotations"`
	RuntimeClass        string            `yaml:"runtimeClass" mapstructure:"runtimeClass"`
	ImagePullSecretName string            `yaml:"imagePullSecretName" mapstructure:"imagePullSecretName"`
	VolumeMounts        []VolumeMount     `yaml:"volumeMounts" mapstructure:"volumeMounts"`
	BuildSecrets        []BuildSecret     `yaml:"buildSecrets" mapstructure:"buildSecrets"`
	BuildSecretsFile    []BuildSecretFile `yaml:"buildSecretsFile" mapstructure:"buildSecretsFile"`
}

// K8sVMOptions is executor.k8s-vm.options.
type K8sVMOptions struct {
	Kubernetes VMKubernetes `yaml:"kubernetes" mapstructure:"kubernetes"`
}

// VMKubernetes is executor.k8s-vm.options.kubernetes.
type VMKubernetes struct {
	PodCommon `yaml:",inline" mapstructure:",squash"`
	// BaseImage is the vm-launcher (hyper-runner) image.
	BaseImage string      `yaml:"baseImage" mapstructure:"baseImage"`
	Resources VMResources `yaml:"resources" mapstructure:"resources"`
}

// Resources are the tier tables: CPU in cores, memory in GB.
type Resources struct {
	CPU    Tiers `yaml:"cpu" mapstructure:"cpu"`
	Memory Tiers `yaml:"memory" mapstructure:"memory"`
	Disk   Disk  `yaml:"disk" mapstructure:"disk"`
	// Requests set the build container's (and dind sidecar's) requests as a
	// fraction of its limits (Screwdriver issue #1732). 1 = requests equal
	// limits, what Kubernetes does when only limits are given.
	Requests RequestRatios `yaml:"requests" mapstructure:"requests"`
	// Launcher is the launcher init container's requests and limits (equal),
	// so the pod's QoS class follows from the build container alone.
	Launcher LauncherResources `yaml:"launcher" mapstructure:"launcher"`
}

// RequestRatios are requests/limits ratios, each in (0, 1].
type RequestRatios struct {
	CPURatio    float64 `yaml:"cpuRatio" mapstructure:"cpuRatio"`
	MemoryRatio float64 `yaml:"memoryRatio" mapstructure:"memoryRatio"`
}

// LauncherResources are Kubernetes quantities ("250m", "256Mi").
type LauncherResources struct {
	CPU    string `yaml:"cpu" mapstructure:"cpu"`
	Memory string `yaml:"memory" mapstructure:"memory"`
}

// VMResources only carries the disk label keys on the HyperD path; CPU and
// memory tiers are shared with the Kata path.
type VMResources struct {
	Disk Disk `yaml:"disk" mapstructure:"disk"`
}

// Tiers maps annotation tiers to quantities.
type Tiers struct {
	Micro float64 `yaml:"micro" mapstructure:"micro"`
	Low   float64 `yaml:"low" mapstructure:"low"`
	High  float64 `yaml:"high" mapstructure:"high"`
	Turbo float64 `yaml:"turbo" mapstructure:"turbo"`
	Max   float64 `yaml:"max" mapstructure:"max"`
}

// Disk holds node label keys used for the disk / diskSpeed annotations.
type Disk struct {
	Space string `yaml:"space" mapstructure:"space"`
	Speed string `yaml:"speed" mapstructure:"speed"`
}

// VolumeMount is one entry of K8S_VOLUME_MOUNTS (a hostPath volume).
type VolumeMount struct {
	Name      string `yaml:"name" mapstructure:"name" json:"name"`
	Path      string `yaml:"path" mapstructure:"path" json:"path"`
	Type      string `yaml:"type" mapstructure:"type" json:"type"`
	MountPath string `yaml:"mountPath" mapstructure:"mountPath" json:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly" mapstructure:"readOnly" json:"readOnly"`
}

// BuildSecret is one entry of K8S_SECRETS (env from a secret key).
type BuildSecret struct {
	SecretEnv  string `yaml:"secret_env" mapstructure:"secret_env" json:"secret_env"`
	SecretName string `yaml:"secret_name" mapstructure:"secret_name" json:"secret_name"`
	SecretKey  string `yaml:"secret_key" mapstructure:"secret_key" json:"secret_key"`
}

// BuildSecretFile is one entry of K8S_SECRETS_FILE (a secret volume).
type BuildSecretFile struct {
	Name       string `yaml:"name" mapstructure:"name" json:"name"`
	MountPath  string `yaml:"mountPath" mapstructure:"mountPath" json:"mountPath"`
	SecretName string `yaml:"secretName" mapstructure:"secretName" json:"secretName"`
	ReadOnly   bool   `yaml:"readOnly" mapstructure:"readOnly" json:"readOnly"`
}

// Ecosystem holds the Screwdriver endpoints passed to the launcher.
type Ecosystem struct {
	UI  string `yaml:"ui" mapstructure:"ui"`
	API string `yaml:"api" mapstructure:"api"`
	// TrustedAPIURIs are other URLs of the CI API (an internal service
	// name, say) that a build's apiUri may name; a build token is never
	// sent to any other host (ecosystem.api gets the update instead).
	TrustedAPIURIs []string `yaml:"trustedApiUris" mapstructure:"trustedApiUris"`
	Store          string   `yaml:"store" mapstructure:"store"`
	PushgatewayURL string   `yaml:"pushgatewayUrl" mapstructure:"pushgatewayUrl"`
	Cache          Cache    `yaml:"cache" mapstructure:"cache"`
}

// Cache is ecosystem.cache (names as in the reference, snake_case included).
type Cache struct {
	Strategy     string `yaml:"strategy" mapstructure:"strategy"`
	Path         string `yaml:"path" mapstructure:"path"`
	Compress     bool   `yaml:"compress" mapstructure:"compress"`
	MD5Check     bool   `yaml:"md5check" mapstructure:"md5check"`
	MaxSizeMB    int    `yaml:"max_size_mb" mapstructure:"max_size_mb"`
	MaxGoThreads int    `yaml:"max_go_threads" mapstructure:"max_go_threads"`
}

// Queue mirrors queue-service's queue section, plus our consumer settings.
type Queue struct {
	// ConnectionType is redis | redisCluster | redisSentinel.
	ConnectionType         string                 `yaml:"connectionType" mapstructure:"connectionType"`
	RedisConnection        RedisConnection        `yaml:"redisConnection" mapstructure:"redisConnection"`
	RedisClusterConnection RedisClusterConnection `yaml:"redisClusterConnection" mapstructure:"redisClusterConnection"`
	// Prefix is prepended to queue names and side keys (REDIS_QUEUE_PREFIX).
	Prefix string `yaml:"prefix" mapstructure:"prefix"`
	// Namespace overrides the resque namespace; empty = "resque", or
	// "resque:{screwdriver-resque}" for redisCluster, as queue-service does.
	Namespace string `yaml:"namespace" mapstructure:"namespace"`
	// Queues are the queue names to consume, without the prefix.
	Queues []string `yaml:"queues" mapstructure:"queues"`
	// BlockTimeout bounds one blocking take, so shutdown is noticed promptly.
	BlockTimeout time.Duration `yaml:"blockTimeout" mapstructure:"blockTimeout"`
	// OperationTimeout bounds every non-blocking Redis call.
	OperationTimeout time.Duration `yaml:"operationTimeout" mapstructure:"operationTimeout"`
	// LeaseDuration is how long a worker slot's claim on its job outlives its
	// last heartbeat; a dead replica's jobs return to the queue after it.
	LeaseDuration time.Duration `yaml:"leaseDuration" mapstructure:"leaseDuration"`
	// RecoverInterval is how often every replica looks for expired leases.
	RecoverInterval time.Duration `yaml:"recoverInterval" mapstructure:"recoverInterval"`
	// SchedulerInterval is how often due delayed jobs are moved to their queue.
	SchedulerInterval time.Duration `yaml:"schedulerInterval" mapstructure:"schedulerInterval"`
	Retry             QueueRetry    `yaml:"retry" mapstructure:"retry"`
	// MaxJobBytes and MaxJobDepth are the limits a job is held to before it
	// is parsed; beyond them it goes to the failed list unparsed.
	MaxJobBytes int `yaml:"maxJobBytes" mapstructure:"maxJobBytes"`
	MaxJobDepth int `yaml:"maxJobDepth" mapstructure:"maxJobDepth"`
	// MaxRecoveries is how many times a job may be returned from dead
	// replicas' slots before it is dead-lettered as a suspected poison job.
	MaxRecoveries int `yaml:"maxRecoveries" mapstructure:"maxRecoveries"`
	// FenceMargin is how long before its lease runs out a replica that
	// cannot confirm it stops acting on its jobs (0: a sixth of the lease).
	FenceMargin time.Duration `yaml:"fenceMargin" mapstructure:"fenceMargin"`
}

// QueueRetry is the backoff of failed attempts (the reference reprocesses a
// job 3 times, 5 s after the first failure).
type QueueRetry struct {
	MaxRetries int           `yaml:"maxRetries" mapstructure:"maxRetries"`
	Delay      time.Duration `yaml:"delay" mapstructure:"delay"`
	Factor     float64       `yaml:"factor" mapstructure:"factor"`
	MaxDelay   time.Duration `yaml:"maxDelay" mapstructure:"maxDelay"`
}

// RedisConnection is queue.redisConnection.
type RedisConnection struct {
	Host     string       `yaml:"host" mapstructure:"host"`
	Port     int          `yaml:"port" mapstructure:"port"`
	Database int          `yaml:"database" mapstructure:"database"`
	Options  RedisOptions `yaml:"options" mapstructure:"options"`
}

// RedisOptions is queue.redisConnection.options.
type RedisOptions struct {
	Password string `yaml:"password" mapstructure:"password"`
	TLS      bool   `yaml:"tls" mapstructure:"tls"`
}

// RedisClusterConnection is queue.redisClusterConnection: the cluster's
// seed nodes (redisCluster) or the sentinels (redisSentinel). The data
// nodes' password and TLS stay at queue.redisConnection.options in every
// topology.
type RedisClusterConnection struct {
	Hosts []string `yaml:"hosts" mapstructure:"hosts"`
	// SlotsRefreshTimeout is milliseconds, as in queue-service (ioredis):
	// how long one node may take to answer a refresh of the slot table
	// before the next node is asked. 0 leaves it to queue.operationTimeout.
	SlotsRefreshTimeout int `yaml:"slotsRefreshTimeout" mapstructure:"slotsRefreshTimeout"`
	// MasterName selects Sentinel mode when ConnectionType is redisSentinel.
	MasterName string `yaml:"masterName" mapstructure:"masterName"`
	// SentinelPassword is the sentinels' own requirepass, which is not the
	// data nodes' password (queue.redisConnection.options.password).
	// Screwdriver has no Sentinel keys; the env name follows its REDIS_*.
	SentinelPassword string `yaml:"sentinelPassword" mapstructure:"sentinelPassword"`
}

// Worker holds the consumer's own settings.
type Worker struct {
	// Concurrency is the number of jobs in flight per replica.
	Concurrency int `yaml:"concurrency" mapstructure:"concurrency"`
	// ShutdownGracePeriod is how long in-flight jobs may run after SIGTERM.
	ShutdownGracePeriod time.Duration `yaml:"shutdownGracePeriod" mapstructure:"shutdownGracePeriod"`
	// JobTimeout is the longest one job may take: every call a job makes
	// is bounded, so a slot past it is wedged and liveness fails.
	JobTimeout time.Duration `yaml:"jobTimeout" mapstructure:"jobTimeout"`
}

// Routing holds the routing switches of our own; the weight and the
// exclusions stay at the reference's executor.k8s keys. The whole routing
// input (those keys and this section) reloads live with the overlay file.
type Routing struct {
	// Stickiness is whose id picks the weighted bucket: job (a job keeps its
	// runtime across builds), pipeline or build.
	Stickiness string `yaml:"stickiness" mapstructure:"stickiness"`
	// Salt reshuffles which keys fall into the Kata share.
	Salt string `yaml:"salt" mapstructure:"salt"`
	// Paused runtimes (kata, hyperd) take no new starts: Kata-bound builds
	// go to hyperd; builds only hyperd can run wait in the queue.
	Paused []string `yaml:"paused" mapstructure:"paused"`
	// Budgets caps the pods in flight per runtime (kata, hyperd); a start
	// over budget waits in the queue. 0 or absent = unlimited.
	Budgets map[string]int `yaml:"budgets" mapstructure:"budgets"`
	// Autopilot raises the Kata share step by step while Kata does as well
	// as hyperd.
	Autopilot Autopilot `yaml:"autopilot" mapstructure:"autopilot"`
}

// Autopilot is the routing autopilot: a loop, run by the elected leader,
// that promotes the Kata share by Step percentage points every Interval as
// long as Kata's builds compare well with hyperd's, up to MaxPercent. It
// starts from, and never goes below, the Kata percentage the executor
// weights give (executor.k8s.weightage, with executor.k8s-vm.weightage),
// so turning it off or restarting never routes fewer builds to Kata than
// the operator configured.
type Autopilot struct {
	// Enabled runs the loop. Off by default: promoting the share is a
	// decision an operator opts into.
	Enabled bool `yaml:"enabled" mapstructure:"enabled"`
	// Step is how many percentage points one promotion adds: small enough
	// that a Kata regression hits few builds before the next evaluation
	// sees it.
	Step float64 `yaml:"step" mapstructure:"step"`
	// Interval is the evaluation period: long enough for the builds routed
	// at the last step to finish and be counted.
	Interval time.Duration `yaml:"interval" mapstructure:"interval"`
	// MaxPercent is where promotion stops, for a cluster that should keep
	// some builds on hyperd (its capacity, or a canary of the old path).
	MaxPercent float64 `yaml:"maxPercent" mapstructure:"maxPercent"`
	// MinBuilds keeps an evaluation from promoting on a handful of builds:
	// each runtime needs this many (weighted) builds in the period.
	MinBuilds int `yaml:"minBuilds" mapstructure:"minBuilds"`
	// MaxFailureRateDelta is how much higher Kata's failure rate may be
	// than hyperd's (a fraction: 0.02 = 2 points) for a promotion; some
	// noise between the two samples is expected.
	MaxFailureRateDelta float64 `yaml:"maxFailureRateDelta" mapstructure:"maxFailureRateDelta"`
	// MaxSetupTimeRatio is how much slower Kata's p90 pod setup may be
	// than hyperd's for a promotion: Kata's sandbox costs some start time,
	// but a growing ratio means its nodes are struggling.
	MaxSetupTimeRatio float64 `yaml:"maxSetupTimeRatio" mapstructure:"maxSetupTimeRatio"`
}

// Kubernetes holds client settings. The endpoint/token overrides and the
// namespace stay at the reference's executor.k8s.options.kubernetes keys.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig path; empty = in-cluster config.
	Kubeconfig string  `yaml:"kubeconfig" mapstructure:"kubeconfig"`
	QPS        float64 `yaml:"qps" mapstructure:"qps"`
	Burst      int     `yaml:"burst" mapstructure:"burst"`
	// RequestTimeout bounds every API call.
	RequestTimeout time.Duration `yaml:"requestTimeout" mapstructure:"requestTimeout"`
}

// HTTPD is the metrics/health listener.
type HTTPD struct {
	Host string `yaml:"host" mapstructure:"host"`
	Port int    `yaml:"port" mapstructure:"port"`
	// Profiling serves Go's pprof handlers under /debug/pprof/ (off by
	// default, as Kubernetes components' --profiling is off in hardened
	// setups: profiles reveal internals and cost CPU while taken).
	Profiling bool `yaml:"profiling" mapstructure:"profiling"`
}

// Log configures zap.
type Log struct {
	Level  string `yaml:"level" mapstructure:"level"`
	Format string `yaml:"format" mapstructure:"format"`
}

// Verify configures how a build pod is judged after its start: when it has
// failed, whose failure it is, and the Kata→hyperd fallback.
type Verify struct {
	// Interval was the period of the verify jobs of older versions. Pods
	// are watched now; the key is accepted, and ignored, so existing
	// overlays keep loading.
	Interval time.Duration `yaml:"interval" mapstructure:"interval"`
	// PendingTimeout fails a pod still pending this long after its creation.
	PendingTimeout time.Duration `yaml:"pendingTimeout" mapstructure:"pendingTimeout"`
	// ImagePullGrace lets transient image pull errors pass this long.
	ImagePullGrace time.Duration `yaml:"imagePullGrace" mapstructure:"imagePullGrace"`
	// Exit139Window: exit code 139 this soon after start is Kata's segfault
	// signature (rhel6 images under vsyscall=none).
	Exit139Window time.Duration `yaml:"exit139Window" mapstructure:"exit139Window"`
	// RuntimePatterns are regexes on container messages that mark a failure
	// as the runtime's (case-sensitive; prefix with (?i) if needed).
	RuntimePatterns []string `yaml:"runtimePatterns" mapstructure:"runtimePatterns"`
	// RuntimeErrorGrace is how long a sandbox or container create error may
	// last (the kubelet retries both) before it counts as a failure.
	RuntimeErrorGrace time.Duration `yaml:"runtimeErrorGrace" mapstructure:"runtimeErrorGrace"`
	Fallback          Fallback      `yaml:"fallback" mapstructure:"fallback"`
}

// Fallback is the automatic Kata→hyperd relaunch on a runtime failure.
type Fallback struct {
	Enabled bool `yaml:"enabled" mapstructure:"enabled"`
	// LearnAfter is how many distinct nodes must see an image's Kata pods
	// fail with a runtime signature, within LearnWindow, before the image is
	// learned as excluded.
	LearnAfter  int           `yaml:"learnAfter" mapstructure:"learnAfter"`
	LearnWindow time.Duration `yaml:"learnWindow" mapstructure:"learnWindow"`
	// LearnedExclusionTTL is how long a learned image goes straight to hyperd.
	LearnedExclusionTTL time.Duration `yaml:"learnedExclusionTTL" mapstructure:"learnedExclusionTTL"`
}

// Supervisor configures the pod supervisor: the controller that watches
// build pods and reports to the CI API, run by one elected replica.
type Supervisor struct {
	// Workers is the number of builds synced at once, which also bounds the
	// CI API calls in flight.
	Workers        int            `yaml:"workers" mapstructure:"workers"`
	LeaderElection LeaderElection `yaml:"leaderElection" mapstructure:"leaderElection"`
}

// LeaderElection is the supervisor's client-go leader election on a
// coordination.k8s.io Lease in the jobs namespace.
type LeaderElection struct {
	// Enabled: without it every replica supervises (run one replica only).
	Enabled       bool          `yaml:"enabled" mapstructure:"enabled"`
	LeaseName     string        `yaml:"leaseName" mapstructure:"leaseName"`
	LeaseDuration time.Duration `yaml:"leaseDuration" mapstructure:"leaseDuration"`
	RenewDeadline time.Duration `yaml:"renewDeadline" mapstructure:"renewDeadline"`
	RetryPeriod   time.Duration `yaml:"retryPeriod" mapstructure:"retryPeriod"`
}

// Plugins is queue-service's plugins section.
type Plugins struct {
	BlockedBy BlockedBy `yaml:"blockedBy" mapstructure:"blockedBy"`
}

// BlockedBy is queue-service's plugins.blockedBy: what a start waits for.
// Times are minutes, as there (fractions allowed).
type BlockedBy struct {
	// Enabled runs the gate (ours: queue-service's worker always does). Off,
	// blockedBy and collapse are not applied at all.
	Enabled bool `yaml:"enabled" mapstructure:"enabled"`
	// ReenqueueWaitTime is how long a blocked start waits before it is
	// tried again.
	ReenqueueWaitTime float64 `yaml:"reenqueueWaitTime" mapstructure:"reenqueueWaitTime"`
	// BlockTimeout is how long a running build blocks others at most when
	// it has no timeout annotation (the running key's TTL).
	BlockTimeout float64 `yaml:"blockTimeout" mapstructure:"blockTimeout"`
	// BlockedBySelf: a build waits while another build of its job runs.
	BlockedBySelf bool `yaml:"blockedBySelf" mapstructure:"blockedBySelf"`
	// Collapse is the default of the screwdriver.cd/collapseBuilds annotation.
	Collapse bool `yaml:"collapse" mapstructure:"collapse"`
}

// ReenqueueWait is ReenqueueWaitTime as a duration.
func (b BlockedBy) ReenqueueWait() time.Duration {
	return time.Duration(b.ReenqueueWaitTime * float64(time.Minute))
}

// BlockTTL is BlockTimeout as a duration.
func (b BlockedBy) BlockTTL() time.Duration {
	return time.Duration(b.BlockTimeout * float64(time.Minute))
}

// TimeoutChecker fails builds that run past their timeout.
type TimeoutChecker struct {
	Enabled bool `yaml:"enabled" mapstructure:"enabled"`
	// Interval is the least time between two passes across all replicas.
	Interval time.Duration `yaml:"interval" mapstructure:"interval"`
	// Buffer is added to each build's timeout before it is failed.
	Buffer time.Duration `yaml:"buffer" mapstructure:"buffer"`
}

// SideKeysShareASlot reports whether queue-service's side keys
// (<prefix>running_job_*, <prefix>waiting_job_*, <prefix>buildConfigs, ...)
// can be used together in one script: always on one server, and on Redis
// Cluster only when the queue prefix carries a {hash tag}.
func (c *Config) SideKeysShareASlot() bool {
	return c.Queue.ConnectionType != "redisCluster" || hasHashTag(c.Queue.Prefix)
}
