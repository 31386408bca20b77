package executor

import (
	"fmt"
	"maps"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Options is what the executor needs from the configuration.
type Options struct {
	Namespace     string
	Prefix        string
	LaunchImage   string
	LaunchVersion string
	SDHabEnabled  bool
	Kata          config.KataKubernetes
	Hyperd        config.VMKubernetes
	Ecosystem     config.Ecosystem
	// Timeout bounds each API call (default 10s).
	Timeout time.Duration
}

const (
	tokenEnv       = "SD_TOKEN"
	tokenSecretKey = "token"
	// buildSecretKey holds the build config (without its token) in the
	// pod's Secret.
	buildSecretKey = "build.json"
)

// PodSpec renders the build pod for a decision. It is pure: same inputs, same pod.
func PodSpec(o *Options, b *build.Config, d weightage.Decision, attempt int) *corev1.Pod {
	if d.Runtime == weightage.Hyperd {
		return hyperdPod(o, b, d, attempt)
	}
	return kataPod(o, b, d, attempt)
}

func decisionAnnotations(b *build.Config, d weightage.Decision) map[string]string {
	a := map[string]string{
		AnnotationRule:         string(d.Rule),
		AnnotationRulesVersion: d.RulesVersion,
	}
	if d.Pattern != "" {
		a[AnnotationPattern] = d.Pattern
	}
	if d.Bucket >= 0 {
		a[AnnotationBucket] = strconv.Itoa(d.Bucket)
		a[AnnotationWeight] = strconv.Itoa(d.KataBasisPoints)
	}
	if b.JobID != 0 {
		a[AnnotationJobID] = strconv.FormatInt(b.JobID, 10)
	}
	return a
}

// TimeoutFor is the build timeout (minutes) a pod of the runtime gets: the
// one its launcher enforces, and the one its timeoutConfigs entry records.
func TimeoutFor(o *Options, b *build.Config, rt weightage.Runtime) int {
	if rt == weightage.Hyperd {
		return buildTimeout(b, o.Hyperd.BuildTimeout, o.Hyperd.MaxBuildTimeout)
	}
	return buildTimeout(b, o.Kata.BuildTimeout, o.Kata.MaxBuildTimeout)
}

// buildTimeout is the timeout annotation (minutes) capped by max, else the default.
func buildTimeout(b *build.Config, def, max int) int {
	if n, ok := annotationInt(b, "timeout"); ok && n > 0 {
		return min(n, max)
	}
	return def
}

// annotationInt reads a whole-number annotation given as a JSON number or a
// numeric string.
func annotationInt(b *build.Config, name string) (int, bool) {
	v, ok := b.Annotation(name)
	if !ok {
		return 0, false
	}
	switch t := v.(type) {
	case float64:
		if t != t || t > 1e9 || t < -1e9 {
			return 0, false
		}
		return int(t), true
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(t))
		return n, err == nil
	}
	return 0, false
}

// gracePeriod is max(annotation, config) as in the reference, capped by
// maxSeconds (the reference had no cap).
func gracePeriod(b *build.Config, configured, maxSeconds int) int64 {
	g := configured
	if n, ok := annotationInt(b, "terminationGracePeriodSeconds"); ok && n > g {
		g = n
	}
	if maxSeconds >= 0 && g > maxSeconds {
		g = maxSeconds
	}
	return int64(max(g, 0))
}

// dockerRequested: the build asks for docker-in-docker with
// screwdriver.cd/dockerEnabled. The reference took only the YAML boolean
// true; we also take the string "true" (any case), since a quoted value
// states the same intent and silently ignoring it was a typing trap.
func dockerRequested(b *build.Config) bool { return annotationTrue(b, "dockerEnabled") }

// buildkitRequested: the build asks for the rootless BuildKit sidecar with
// screwdriver.cd/rootlessBuildkitEnabled (read as dockerEnabled is).
func buildkitRequested(b *build.Config) bool { return annotationTrue(b, "rootlessBuildkitEnabled") }

func annotationTrue(b *build.Config, name string) bool {
	v, ok := b.Annotation(name)
	if !ok {
		return false
	}
	switch t := v.(type) {
	case bool:
		return t
	case string:
		return strings.EqualFold(strings.TrimSpace(t), "true")
	}
	return false
}

// prJobName matches PR jobs: "PR-<n>" or "PR-<n>:<job>". Go regexps keep no
// match state between calls (the reference's global-flag regex did).
var prJobName = regexp.MustCompile(`^PR-[0-9]+(?::.+)?$`)

// isPRJob: the job name says PR, or the API flagged the build as one.
func isPRJob(b *build.Config) bool { return prJobName.MatchString(b.JobName) || b.IsPR }

// diskCache is the hostPath layout of ecosystem.cache.strategy "disk".
type diskCache struct {
	pipeline, job, event string
	// readOnly: PR jobs read the pipeline and job caches but never write them.
	readOnly bool
}

// cacheDirs returns the disk cache layout, or nil when the disk strategy is
// off: <path>[/<prefix>]/{pipelines/<p>, jobs/<p>/<job>, events/<p>/<event>};
// a PR job uses its parent job's cache.
func cacheDirs(o *Options, b *build.Config) *diskCache {
	c := o.Ecosystem.Cache
	if c.Strategy != "disk" || c.Path == "" {
		return nil
	}
	base := cachePath(o)
	p := strconv.FormatInt(b.StickyPipelineID(), 10)
	pr := isPRJob(b)
	job := b.JobID
	if pr && b.PRParentJobID != 0 {
		job = b.PRParentJobID
	}
	return &diskCache{
		pipeline: path.Join(base, "pipelines", p),
		job:      path.Join(base, "jobs", p, strconv.FormatInt(job, 10)),
		event:    path.Join(base, "events", p, strconv.FormatInt(b.EventID, 10)),
		readOnly: pr,
	}
}

// cachePath is cache.path, with /<prefix> appended under the disk strategy
// so that prefixed deployments sharing nodes keep separate caches.
func cachePath(o *Options) string {
	c := o.Ecosystem.Cache
	if c.Strategy == "disk" && c.Path != "" && o.Prefix != "" {
		return path.Join(c.Path, o.Prefix)
	}
	return c.Path
}

// cacheVolumes are the three cache hostPaths plus their mounts in the init
// container (rw, so it can open them up) and the build container.
func (dc *diskCache) volumes(buildPaths [3]string) (vols []corev1.Volume, initMounts, buildMounts []corev1.VolumeMount) {
	names := [3]string{"sd-pipeline-cache", "sd-job-cache", "sd-event-cache"}
	hosts := [3]string{dc.pipeline, dc.job, dc.event}
	for i := range names {
		vols = append(vols, hostPath(names[i], hosts[i], corev1.HostPathDirectoryOrCreate))
		initMounts = append(initMounts, corev1.VolumeMount{Name: names[i], MountPath: initCacheDirs[i]})
		buildMounts = append(buildMounts, corev1.VolumeMount{Name: names[i], MountPath: buildPaths[i], ReadOnly: dc.readOnly && i < 2})
	}
	return vols, initMounts, buildMounts
}

var (
	initCacheDirs   = [3]string{"/opt/sdpipelinecache", "/opt/sdjobcache", "/opt/sdeventcache"}
	kataCacheDirs   = [3]string{"/sdpipelinecache", "/sdjobcache", "/sdeventcache"}
	hyperdCacheDirs = [3]string{"/opt/sd/cache/pipeline", "/opt/sd/cache/job", "/opt/sd/cache/event"}
)

// scheduling turns node selectors into tolerations plus one required
// node-affinity term (all pairs ANDed), and preferred selectors into one
// weight-100 preference, as both reference executors do.
func scheduling(required, preferred map[string]string) ([]corev1.Toleration, *corev1.NodeAffinity) {
	var tols []corev1.Toleration
	var exprs []corev1.NodeSelectorRequirement
	for _, k := range slices.Sorted(maps.Keys(required)) {
		v := required[k]
		tols = append(tols, corev1.Toleration{Key: k, Operator: corev1.TolerationOpEqual, Value: v, Effect: corev1.TaintEffectNoSchedule})
		exprs = append(exprs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{v}})
	}
	var na *corev1.NodeAffinity
	if len(exprs) > 0 {
		na = &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: exprs}},
		}}
	}
	if len(preferred) > 0 {
		var pexprs []corev1.NodeSelectorRequirement
		for _, k := range slices.Sorted(maps.Keys(preferred)) {
			pexprs = append(pexprs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{preferred[k]}})
		}
		if na == nil {
			na = &corev1.NodeAffinity{}
		}
		na.PreferredDuringSchedulingIgnoredDuringExecution = []corev1.PreferredSchedulingTerm{{
			Weight: 100, Preference: corev1.NodeSelectorTerm{MatchExpressions: pexprs},
		}}
	}
	return tols, na
}

// withDiskSelectors adds annotation-driven disk selectors; config selectors
// win on key clashes.
func withDiskSelectors(b *build.Config, configured map[string]string, disk config.Disk, hyperd bool) map[string]string {
	out := map[string]string{}
	if disk.Speed != "" {
		if v := b.AnnotationString("diskSpeed"); v != "" {
			out[disk.Speed] = strings.ToLower(v)
		}
	}
	if hyperd && disk.Space != "" {
		if v := b.AnnotationString("disk"); v != "" {
			out[disk.Space] = strings.ToLower(v)
		}
	}
	maps.Copy(out, configured)
	return out
}

func tokenEnvVar(podName string) corev1.EnvVar {
	return corev1.EnvVar{Name: tokenEnv, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: TokenSecretName(podName)},
		Key:                  tokenSecretKey,
	}}}
}

// hostPath puts the type under hostPath, where Kubernetes checks it (the
// reference put it one level up, where it was dropped).
func hostPath(name, p string, t corev1.HostPathType) corev1.Volume {
	src := &corev1.HostPathVolumeSource{Path: p}
	if t != "" {
		src.Type = &t
	}
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: src}}
}

func launcherImage(o *Options) string { return o.LaunchImage + ":" + o.LaunchVersion }

func launcherCacheDir(o *Options) string { return "/opt/screwdriver/sdlauncher/" + o.LaunchVersion }

// launcherInitScript copies the launcher onto the node's cache once per
// launcher version (the setup-time optimisation of the reference). With
// metrics it records start/end timestamps for the launcher's Pushgateway
// metrics; with a disk cache it first opens the cache dirs to the build user.
func launcherInitScript(metrics, cache bool) string {
	var sb strings.Builder
	sb.WriteString("set -e\n")
	if metrics {
		sb.WriteString(`echo "launcher_start_ts:$(date +%s)" > /workspace/metrics` + "\n")
	}
	if cache {
		// Recursively, as executor-k8s does: files an earlier build (another
		// user, another umask) left in the cache stay writable.
		sb.WriteString("chmod -R 0777 " + strings.Join(initCacheDirs[:], " ") + "\n")
	}
	sb.WriteString(`if [ ! -f /opt/launcher/launch ]; then
  tmp=$(mktemp -d -p /opt/launcher)
  cp -a /opt/sd/. "$tmp/"
  if [ -d /hab ]; then mkdir -p "$tmp/hab" && cp -a /hab/. "$tmp/hab/"; fi
  for f in "$tmp"/* "$tmp"/.[!.]*; do [ -e "$f" ] && mv -f "$f" /opt/launcher/ || true; done
  rmdir "$tmp" 2>/dev/null || true
else
  ls /opt/launcher >/dev/null
fi`)
	if metrics {
		sb.WriteString("\n" + `echo "launcher_end_ts:$(date +%s)" >> /workspace/metrics`)
	}
	return sb.String()
}

// podLabels are the reference's labels plus ours. Config podLabels are
// sanitised and merged over the informational defaults (as in the
// reference), but never over the handles stop, verify and the watcher select
// on: sdbuild, the runtime label and managed-by.
func podLabels(o *Options, b *build.Config, extra map[string]string, rt weightage.Runtime) map[string]string {
	l := map[string]string{
		LabelTier: "builds",
	}
	if b.Pipeline != nil && b.Pipeline.Name != "" {
		l["screwdriver.cd/pipeline"] = SanitizeLabelValue(b.Pipeline.Name)
	}
	if b.JobName != "" {
		l["screwdriver.cd/job"] = SanitizeLabelValue(b.JobName)
	}
	if b.Template != nil {
		if b.Template.FullName != "" {
			l["screwdriver.cd/template_name"] = SanitizeLabelValue(b.Template.FullName)
		}
		if b.Template.Version != "" {
			l["screwdriver.cd/template_version"] = SanitizeLabelValue(b.Template.Version)
		}
	}
	if b.PRNum != 0 {
		l["screwdriver.cd/pr_number"] = strconv.FormatInt(b.PRNum, 10)
	}
	for k, v := range extra {
		l[k] = SanitizeLabelValue(v)
	}
	l[LabelBuild] = BuildLabel(o.Prefix, b.BuildID)
	l[LabelRuntime] = string(rt)
	l[LabelManaged] = managedBy
	return l
}

// kataPod is the executor-k8s pod: launcher init container, the build
// container, optionally the dind sidecar; runtimeClassName makes it Kata.
func kataPod(o *Options, b *build.Config, d weightage.Decision, attempt int) *corev1.Pod {
	k := &o.Kata
	name := PodName(o.Prefix, b.BuildID, attempt)
	id := strconv.FormatInt(b.BuildID, 10)
	containerName := strings.Trim(dnsLabelPart(o.Prefix+id), "-")
	cpu := tier(b, "cpu", k.Resources.CPU, kataCPUTiers)
	mem := tier(b, "ram", k.Resources.Memory, memoryTiers)
	timeout := buildTimeout(b, k.BuildTimeout, k.MaxBuildTimeout)
	grace := gracePeriod(b, k.TerminationGracePeriodSeconds, k.MaxTerminationGracePeriodSeconds)
	cache := cacheDirs(o, b)
	dind := k.DockerFeatureEnabled && dockerRequested(b)
	buildkit := k.RootlessBuildkitFeatureEnabled && buildkitRequested(b)

	labels := podLabels(o, b, k.PodLabels, weightage.Kata)
	// The app label and the resource labels describe the pod as built.
	labels[LabelApp] = "screwdriver"
	labels["screwdriver.cd/cpu"] = formatNumber(cpu)
	labels["screwdriver.cd/memory"] = formatNumber(mem)
	labels["screwdriver.cd/disk"] = diskTier(b)

	annotations := maps.Clone(k.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	maps.Copy(annotations, decisionAnnotations(b, d))

	tols, na := scheduling(withDiskSelectors(b, k.NodeSelectors, k.Resources.Disk, false), k.PreferredNodeSelectors)
	pipelineID := strconv.FormatInt(b.StickyPipelineID(), 10)
	env := []corev1.EnvVar{
		tokenEnvVar(name),
		{Name: "SD_HAB_ENABLED", Value: strconv.FormatBool(o.SDHabEnabled)},
		{Name: "SD_RUNTIME_CLASS", Value: k.RuntimeClass},
		{Name: "SD_PUSHGATEWAY_URL", Value: o.Ecosystem.PushgatewayURL},
		{Name: "SD_TERMINATION_GRACE_PERIOD_SECONDS", Value: strconv.FormatInt(grace, 10)},
		{Name: "CONTAINER_IMAGE", Value: b.Container},
		{Name: "SD_PIPELINE_ID", Value: pipelineID},
		{Name: "SD_BUILD_PREFIX", Value: o.Prefix},
		{Name: "NODE_ID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "SD_BASE_COMMAND_PATH", Value: "/sd/commands/"},
		{Name: "SD_TEMP", Value: "/opt/sd_tmp"},
		{Name: "CONTAINER_CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: containerName, Resource: "limits.cpu"}}},
		{Name: "CONTAINER_MEMORY_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: containerName, Resource: "limits.memory"}}},
	}
	if dind {
		env = append(env,
			corev1.EnvVar{Name: "SD_DIND_SHARE_PATH", Value: dindSharePath},
			corev1.EnvVar{Name: "DOCKER_HOST", Value: "tcp://localhost:2376"},
			corev1.EnvVar{Name: "DOCKER_CERT_PATH", Value: dindClientCerts},
			corev1.EnvVar{Name: "DOCKER_TLS_VERIFY", Value: "1"},
		)
	}
	for _, s := range k.BuildSecrets {
		env = append(env, corev1.EnvVar{Name: s.SecretEnv, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.SecretName}, Key: s.SecretKey,
		}}})
	}
	// The token reaches run.sh through the environment, expanded by the
	// shell at run time: the pod spec only ever holds "$SD_TOKEN".
	runArgs := fmt.Sprintf(`/opt/sd/run.sh "$%s" %q %q %q %q %q`, tokenEnv,
		o.Ecosystem.API, o.Ecosystem.Store, strconv.Itoa(timeout), id, o.Ecosystem.UI)
	if cache != nil {
		c := o.Ecosystem.Cache
		runArgs += fmt.Sprintf(` %q %q %q %q %q %q %q %q`, c.Strategy,
			kataCacheDirs[0], kataCacheDirs[1], kataCacheDirs[2],
			strconv.FormatBool(c.Compress), strconv.FormatBool(c.MD5Check),
			strconv.Itoa(c.MaxSizeMB), strconv.Itoa(c.MaxGoThreads))
	}

	initMounts := []corev1.VolumeMount{{Name: "screwdriver", MountPath: "/opt/launcher"}, {Name: "workspace", MountPath: "/workspace"}}
	mounts := []corev1.VolumeMount{
		{Name: "podinfo", MountPath: "/etc/podinfo", ReadOnly: true},
		{Name: "screwdriver", MountPath: "/opt/sd", ReadOnly: true},
		{Name: "sdtemp", MountPath: "/opt/sd_tmp"},
		{Name: "workspace", MountPath: "/workspace"},
	}
	volumes := []corev1.Volume{
		{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
			{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}},
		}}}},
		hostPath("screwdriver", launcherCacheDir(o), corev1.HostPathDirectoryOrCreate),
		hostPath("sdtemp", "/opt/screwdriver/tmp_"+id, corev1.HostPathDirectoryOrCreate),
		{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	if cache != nil {
		v, im, bm := cache.volumes(kataCacheDirs)
		volumes = append(volumes, v...)
		initMounts = append(initMounts, im...)
		mounts = append(mounts, bm...)
	}
	if dind {
		volumes = append(volumes,
			emptyDir("dind-storage"), emptyDir("dind-share"), emptyDir("dind-client-certs"))
		mounts = append(mounts,
			corev1.VolumeMount{Name: "dind-share", MountPath: dindSharePath},
			corev1.VolumeMount{Name: "dind-client-certs", MountPath: dindClientCerts, ReadOnly: true})
	}
	if buildkit {
		// buildkitd writes its server and client certs on start; the build
		// reads the client ones.
		volumes = append(volumes, emptyDir("buildkit-client-certs"), emptyDir("buildkit-server-certs"))
		mounts = append(mounts, corev1.VolumeMount{Name: "buildkit-client-certs", MountPath: buildkitClientCerts})
	}
	for _, vm := range k.VolumeMounts {
		volumes = append(volumes, hostPath(vm.Name, vm.Path, corev1.HostPathType(vm.Type)))
		mounts = append(mounts, corev1.VolumeMount{Name: vm.Name, MountPath: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	for _, sf := range k.BuildSecretsFile {
		volumes = append(volumes, corev1.Volume{Name: sf.Name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: sf.SecretName}}})
		mounts = append(mounts, corev1.VolumeMount{Name: sf.Name, MountPath: sf.MountPath, ReadOnly: sf.ReadOnly})
	}
	lifecycle, _ := k.Lifecycle() // checked at config load

	containers := []corev1.Container{{
		Name:            containerName,
		Image:           b.Container,
		ImagePullPolicy: corev1.PullPolicy(k.ImagePullPolicy),
		SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(k.Privileged)},
		Resources:       withRequests(kataLimits(cpu, mem), k.Resources.Requests),
		Command:         []string{"/opt/sd/launcher_entrypoint.sh"},
		Args:            []string{runArgs},
		Env:             env,
		VolumeMounts:    mounts,
		Lifecycle:       lifecycle,
	}}
	if dind {
		containers = append(containers, dindSidecar(k, b, buildkit))
	}
	if buildkit {
		containers = append(containers, buildkitSidecar(k, b))
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName:            k.ServiceAccount,
			AutomountServiceAccountToken:  ptrTo(k.AutomountServiceAccountToken),
			TerminationGracePeriodSeconds: &grace,
			RestartPolicy:                 corev1.RestartPolicyNever,
			DNSPolicy:                     corev1.DNSPolicy(k.DNSPolicy),
			Tolerations:                   tols,
			InitContainers: []corev1.Container{{
				Name:         "launcher-" + containerName,
				Image:        launcherImage(o),
				Command:      []string{"/bin/sh", "-c", launcherInitScript(true, cache != nil)},
				Resources:    launcherResources(k.Resources.Launcher),
				VolumeMounts: initMounts,
			}},
			Containers: containers,
			Volumes:    volumes,
		},
	}
	if na != nil {
		pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: na}
	}
	if k.RuntimeClass != "" {
		pod.Spec.RuntimeClassName = ptrTo(k.RuntimeClass)
	}
	if k.ImagePullSecretName != "" {
		pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: k.ImagePullSecretName}}
	}
	return pod
}

const (
	dindSharePath       = "/opt/sd_dind_share"
	dindClientCerts     = "/certs/client"
	buildkitClientCerts = "/certs/buildkit/client"
	buildkitServerCerts = "/certs/buildkit/server"
)

// dindSidecar is the privileged docker daemon next to the build container,
// serving TLS on localhost:2376 with client certs shared through an emptyDir.
// Its size comes from the dockerCpu/dockerRam tiers (names only). With the
// BuildKit sidecar too it is the rootless image, as in executor-k8s. Its
// pull policy is the configured one, as the build container's.
func dindSidecar(k *config.KataKubernetes, b *build.Config, buildkit bool) corev1.Container {
	cpu := tier(b, "dockerCpu", k.Resources.CPU, dindCPUTiers)
	mem := tier(b, "dockerRam", k.Resources.Memory, dindMemTiers)
	image := k.DockerImage
	if buildkit {
		image = k.DockerRootlessImage
	}
	return corev1.Container{
		Name:            "dind",
		Image:           image,
		ImagePullPolicy: corev1.PullPolicy(k.ImagePullPolicy),
		SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(true)},
		Resources:       withRequests(kataLimits(cpu, mem), k.Resources.Requests),
		// The image's entrypoint writes client certs under
		// $DOCKER_TLS_CERTDIR/client and then listens with TLS on 2376.
		Env: []corev1.EnvVar{{Name: "DOCKER_TLS_CERTDIR", Value: "/certs"}},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "dind-storage", MountPath: "/var/lib/docker"},
			{Name: "dind-share", MountPath: dindSharePath},
			{Name: "dind-client-certs", MountPath: dindClientCerts},
		},
	}
}

// buildkitSidecar is executor-k8s's buildkitd: privileged, listening on
// tcp://localhost:1234 with its image's buildkitd.toml, the client certs
// shared with the build container. Its size comes from the
// buildkitCpu/buildkitRam tiers (names only, as dind's). The pull policy is
// the configured one (executor-k8s sets none, which for its :latest image
// means Always, the configured default).
func buildkitSidecar(k *config.KataKubernetes, b *build.Config) corev1.Container {
	cpu := tier(b, "buildkitCpu", k.Resources.CPU, dindCPUTiers)
	mem := tier(b, "buildkitRam", k.Resources.Memory, dindMemTiers)
	return corev1.Container{
		Name:            "buildkitd",
		Image:           k.BuildkitImage,
		ImagePullPolicy: corev1.PullPolicy(k.ImagePullPolicy),
		Args:            []string{"--addr", "tcp://localhost:1234", "--config", "/etc/buildkit/buildkitd.toml"},
		SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(true)},
		Resources:       withRequests(kataLimits(cpu, mem), k.Resources.Requests),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "buildkit-client-certs", MountPath: buildkitClientCerts},
			{Name: "buildkit-server-certs", MountPath: buildkitServerCerts},
		},
	}
}

func emptyDir(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
}

func hyperdPod(o *Options, b *build.Config, d weightage.Decision, attempt int) *corev1.Pod {
	h := &o.Hyperd
	k := &o.Kata // tiers, grace period, requests and launcher sizing are shared, as in the reference
	name := PodName(o.Prefix, b.BuildID, attempt)
	id := strconv.FormatInt(b.BuildID, 10)
	cpu := tier(b, "cpu", k.Resources.CPU, hyperdTiers)
	mem := tier(b, "ram", k.Resources.Memory, hyperdTiers)
	memMB := int64(math.Round(mem * 1024))
	timeout := buildTimeout(b, h.BuildTimeout, h.MaxBuildTimeout)
	grace := gracePeriod(b, k.TerminationGracePeriodSeconds, k.MaxTerminationGracePeriodSeconds)
	cache := cacheDirs(o, b)

	labels := podLabels(o, b, nil, weightage.Hyperd)
	labels[LabelApp] = "screwdriver-vm"

	tols, na := scheduling(withDiskSelectors(b, h.NodeSelectors, h.Resources.Disk, true), h.PreferredNodeSelectors)
	jobID := b.JobID
	if b.PRParentJobID != 0 {
		jobID = b.PRParentJobID
	}
	args := []string{
		"--cpu", formatNumber(cpu),
		"--memory", strconv.FormatInt(memMB, 10),
		"--container", b.Container,
		"--api_uri", o.Ecosystem.API,
		"--store_uri", o.Ecosystem.Store,
		"--ui_uri", o.Ecosystem.UI,
		"--build_id", id,
		"--job_id", strconv.FormatInt(jobID, 10),
		"--event_id", strconv.FormatInt(b.EventID, 10),
		"--pipeline_id", strconv.FormatInt(b.StickyPipelineID(), 10),
		"--id_with_prefix", o.Prefix + id,
		// Kubernetes expands $(SD_TOKEN) from the container's env, which
		// reads the Secret: the spec never holds the token itself.
		"--build_token", "$(" + tokenEnv + ")",
		"--build_timeout", strconv.Itoa(timeout),
		"--launcher_version", o.LaunchVersion,
		"--cache_strategy", o.Ecosystem.Cache.Strategy,
		"--cache_path", cachePath(o),
		"--cache_compress", strconv.FormatBool(o.Ecosystem.Cache.Compress),
		"--cache_md5check", strconv.FormatBool(o.Ecosystem.Cache.MD5Check),
		"--cache_max_size_mb", strconv.Itoa(o.Ecosystem.Cache.MaxSizeMB),
		"--cache_max_go_threads", strconv.Itoa(o.Ecosystem.Cache.MaxGoThreads),
	}
	initMounts := []corev1.VolumeMount{{Name: "sdlauncher", MountPath: "/opt/launcher"}}
	mounts := []corev1.VolumeMount{
		{Name: "hyper-socket", MountPath: "/var/run"},
		{Name: "sd-workspaces", MountPath: "/var/sd-workspaces"},
		{Name: "sdlauncher", MountPath: "/opt/sd"},
	}
	volumes := []corev1.Volume{
		hostPath("hyper-socket", "/var/run", corev1.HostPathDirectory),
		hostPath("sd-workspaces", "/opt/screwdriver", corev1.HostPathDirectoryOrCreate),
		hostPath("sdlauncher", launcherCacheDir(o), corev1.HostPathDirectoryOrCreate),
	}
	if cache != nil {
		v, im, bm := cache.volumes(hyperdCacheDirs)
		volumes = append(volumes, v...)
		initMounts = append(initMounts, im...)
		mounts = append(mounts, bm...)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels, Annotations: decisionAnnotations(b, d)},
		Spec: corev1.PodSpec{
			// The reference left the service-account token mounted into a
			// privileged host container; the vm-launcher needs no API access.
			AutomountServiceAccountToken:  ptrTo(false),
			TerminationGracePeriodSeconds: &grace,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Tolerations:                   tols,
			Affinity: &corev1.Affinity{
				NodeAffinity: na,
				PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
					Weight: 100,
					PodAffinityTerm: corev1.PodAffinityTerm{
						TopologyKey: "kubernetes.io/hostname",
						LabelSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
							Key: LabelApp, Operator: metav1.LabelSelectorOpIn, Values: []string{"screwdriver-vm"},
						}}},
					},
				}}},
			},
			InitContainers: []corev1.Container{{
				Name:         "launcher",
				Image:        launcherImage(o),
				Command:      []string{"/bin/sh", "-c", launcherInitScript(false, cache != nil)},
				Resources:    launcherResources(k.Resources.Launcher),
				VolumeMounts: initMounts,
			}},
			Containers: []corev1.Container{{
				Name:            "vm-launcher",
				Image:           h.BaseImage,
				ImagePullPolicy: corev1.PullAlways,
				// Always privileged: it drives hyperd on the host.
				SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(true)},
				Resources:       withRequests(hyperdLimits(cpu, memMB), k.Resources.Requests),
				Lifecycle:       &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/sh", "-c", "sleep 30"}}}},
				Command:         []string{"/sd/hyper-runner.sh"},
				Args:            args,
				Env: []corev1.EnvVar{
					tokenEnvVar(name),
					{Name: "SD_PUSHGATEWAY_URL", Value: o.Ecosystem.PushgatewayURL},
					{Name: "SD_TERMINATION_GRACE_PERIOD_SECONDS", Value: strconv.FormatInt(grace, 10)},
					{Name: "NODE_ID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				},
				VolumeMounts: mounts,
			}},
			Volumes: volumes,
		},
	}
	return pod
}

func ptrTo[T any](v T) *T { return &v }
