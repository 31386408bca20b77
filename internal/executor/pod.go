package executor

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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
}

const (
	tokenEnv       = "SD_TOKEN"
	tokenSecretKey = "token"
	// deadlineSlack is added to the build timeout for activeDeadlineSeconds:
	// the launcher enforces the timeout itself; the deadline is only a safety
	// net for a launcher that never reports.
	deadlineSlackMinutes = 10
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

// buildTimeout is the timeout annotation (minutes) capped by max, else the default.
func buildTimeout(b *build.Config, def, max int) int {
	if v, ok := b.Annotation("timeout"); ok {
		var n int
		switch t := v.(type) {
		case float64:
			n = int(t)
		case string:
			n, _ = strconv.Atoi(strings.TrimSpace(t))
		}
		if n > 0 {
			return min(n, max)
		}
	}
	return def
}

// gracePeriod is max(annotation, config), as in the reference.
func gracePeriod(b *build.Config, configured int) int64 {
	g := configured
	if v, ok := b.Annotation("terminationGracePeriodSeconds"); ok {
		if f, ok := v.(float64); ok && int(f) > g {
			g = int(f)
		}
	}
	return int64(g)
}

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

func hostPath(name, path string, t corev1.HostPathType) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &t}}}
}

func launcherImage(o *Options) string { return o.LaunchImage + ":" + o.LaunchVersion }

func launcherCacheDir(o *Options) string { return "/opt/screwdriver/sdlauncher/" + o.LaunchVersion }

// launcherInitScript copies the launcher onto the node's cache once per
// launcher version (the setup-time optimisation of the reference), recording
// start/end timestamps for the launcher's metrics.
const launcherInitScript = `set -e
echo "launcher_start_ts:$(date +%s)" > /workspace/metrics
if [ ! -f /opt/launcher/launch ]; then
  tmp=$(mktemp -d -p /opt/launcher)
  cp -a /opt/sd/. "$tmp/"
  if [ -d /hab ]; then mkdir -p "$tmp/hab" && cp -a /hab/. "$tmp/hab/"; fi
  for f in "$tmp"/* "$tmp"/.[!.]*; do [ -e "$f" ] && mv -f "$f" /opt/launcher/ || true; done
  rmdir "$tmp" 2>/dev/null || true
fi
echo "launcher_end_ts:$(date +%s)" >> /workspace/metrics`

func podLabels(o *Options, b *build.Config, extra map[string]string, rt weightage.Runtime) map[string]string {
	l := map[string]string{
		LabelBuild:   BuildLabel(o.Prefix, b.BuildID),
		LabelTier:    "builds",
		LabelRuntime: string(rt),
		LabelManaged: managedBy,
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
	// Our handles must survive podLabels: stop and verify select on them.
	l[LabelBuild] = BuildLabel(o.Prefix, b.BuildID)
	l[LabelRuntime] = string(rt)
	return l
}

func kataPod(o *Options, b *build.Config, d weightage.Decision, attempt int) *corev1.Pod {
	k := &o.Kata
	name := PodName(o.Prefix, b.BuildID, attempt)
	id := strconv.FormatInt(b.BuildID, 10)
	containerName := strings.Trim(dnsLabelPart(o.Prefix+id), "-")
	cpu := tier(b, "cpu", k.Resources.CPU, true)
	mem := tier(b, "ram", k.Resources.Memory, true)
	timeout := buildTimeout(b, k.BuildTimeout, k.MaxBuildTimeout)
	grace := gracePeriod(b, k.TerminationGracePeriodSeconds)

	labels := podLabels(o, b, k.PodLabels, weightage.Kata)
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
	limits := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(int64(cpu*1000), resource.DecimalSI),
		corev1.ResourceMemory: resource.MustParse(formatNumber(mem) + "Gi"),
	}
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
	for _, s := range k.BuildSecrets {
		env = append(env, corev1.EnvVar{Name: s.SecretEnv, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.SecretName}, Key: s.SecretKey,
		}}})
	}
	// The token reaches run.sh through the environment, expanded by the
	// shell at run time: the pod spec only ever holds "$SD_TOKEN".
	runArgs := fmt.Sprintf(`/opt/sd/run.sh "$%s" %q %q %q %q %q`, tokenEnv,
		o.Ecosystem.API, o.Ecosystem.Store, strconv.Itoa(timeout), id, o.Ecosystem.UI)

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
	for _, vm := range k.VolumeMounts {
		volumes = append(volumes, hostPath(vm.Name, vm.Path, corev1.HostPathType(vm.Type)))
		mounts = append(mounts, corev1.VolumeMount{Name: vm.Name, MountPath: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	for _, sf := range k.BuildSecretsFile {
		volumes = append(volumes, corev1.Volume{Name: sf.Name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: sf.SecretName}}})
		mounts = append(mounts, corev1.VolumeMount{Name: sf.Name, MountPath: sf.MountPath, ReadOnly: sf.ReadOnly})
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName:            k.ServiceAccount,
			AutomountServiceAccountToken:  &k.AutomountServiceAccountToken,
			TerminationGracePeriodSeconds: &grace,
			ActiveDeadlineSeconds:         ptrTo(int64((timeout + deadlineSlackMinutes) * 60)),
			RestartPolicy:                 corev1.RestartPolicyNever,
			DNSPolicy:                     corev1.DNSPolicy(k.DNSPolicy),
			Tolerations:                   tols,
			InitContainers: []corev1.Container{{
				Name:         "launcher-" + containerName,
				Image:        launcherImage(o),
				Command:      []string{"/bin/sh", "-c", launcherInitScript},
				VolumeMounts: []corev1.VolumeMount{{Name: "screwdriver", MountPath: "/opt/launcher"}, {Name: "workspace", MountPath: "/workspace"}},
			}},
			Containers: []corev1.Container{{
				Name:            containerName,
				Image:           b.Container,
				ImagePullPolicy: corev1.PullPolicy(k.ImagePullPolicy),
				SecurityContext: &corev1.SecurityContext{Privileged: &k.Privileged},
				Resources:       corev1.ResourceRequirements{Limits: limits},
				Command:         []string{"/opt/sd/launcher_entrypoint.sh"},
				Args:            []string{runArgs},
				Env:             env,
				VolumeMounts:    mounts,
			}},
			Volumes: volumes,
		},
	}
	if na != nil {
		pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: na}
	}
	if k.RuntimeClass != "" {
		pod.Spec.RuntimeClassName = &k.RuntimeClass
	}
	if k.ImagePullSecretName != "" {
		pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: k.ImagePullSecretName}}
	}
	return pod
}

func hyperdPod(o *Options, b *build.Config, d weightage.Decision, attempt int) *corev1.Pod {
	h := &o.Hyperd
	k := &o.Kata // tiers and grace period are shared, as in the reference
	name := PodName(o.Prefix, b.BuildID, attempt)
	id := strconv.FormatInt(b.BuildID, 10)
	cpu := tier(b, "cpu", k.Resources.CPU, false)
	mem := tier(b, "ram", k.Resources.Memory, false)
	memMB := int64(mem * 1024)
	timeout := buildTimeout(b, h.BuildTimeout, h.MaxBuildTimeout)
	grace := gracePeriod(b, k.TerminationGracePeriodSeconds)

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
		"--cache_path", o.Ecosystem.Cache.Path,
		"--cache_compress", strconv.FormatBool(o.Ecosystem.Cache.Compress),
		"--cache_md5check", strconv.FormatBool(o.Ecosystem.Cache.MD5Check),
		"--cache_max_size_mb", strconv.Itoa(o.Ecosystem.Cache.MaxSizeMB),
		"--cache_max_go_threads", strconv.Itoa(o.Ecosystem.Cache.MaxGoThreads),
	}
	privileged := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels, Annotations: decisionAnnotations(b, d)},
		Spec: corev1.PodSpec{
			// The reference left the service-account token mounted into a
			// privileged host container; the vm-launcher needs no API access.
			AutomountServiceAccountToken:  ptrTo(false),
			TerminationGracePeriodSeconds: &grace,
			ActiveDeadlineSeconds:         ptrTo(int64((timeout + deadlineSlackMinutes) * 60)),
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
				Command:      []string{"/bin/sh", "-c", launcherInitScript},
				VolumeMounts: []corev1.VolumeMount{{Name: "sdlauncher", MountPath: "/opt/launcher"}, {Name: "workspace", MountPath: "/workspace"}},
			}},
			Containers: []corev1.Container{{
				Name:            "vm-launcher",
				Image:           h.BaseImage,
				ImagePullPolicy: corev1.PullAlways,
				SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse(formatNumber(cpu)),
					corev1.ResourceMemory: *resource.NewQuantity(memMB*1024*1024, resource.BinarySI),
				}},
				Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/sh", "-c", "sleep 30"}}}},
				Command:   []string{"/sd/hyper-runner.sh"},
				Args:      args,
				Env: []corev1.EnvVar{
					tokenEnvVar(name),
					{Name: "SD_PUSHGATEWAY_URL", Value: o.Ecosystem.PushgatewayURL},
					{Name: "SD_TERMINATION_GRACE_PERIOD_SECONDS", Value: strconv.FormatInt(grace, 10)},
					{Name: "NODE_ID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "hyper-socket", MountPath: "/var/run"},
					{Name: "sd-workspaces", MountPath: "/var/sd-workspaces"},
					{Name: "sdlauncher", MountPath: "/opt/sd"},
				},
			}},
			Volumes: []corev1.Volume{
				hostPath("hyper-socket", "/var/run", corev1.HostPathDirectory),
				hostPath("sd-workspaces", "/opt/screwdriver", corev1.HostPathDirectoryOrCreate),
				hostPath("sdlauncher", launcherCacheDir(o), corev1.HostPathDirectoryOrCreate),
				{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		},
	}
	return pod
}

func ptrTo[T any](v T) *T { return &v }
