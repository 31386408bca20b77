package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// ClassVerify is our follow-up of a start: it checks the build's pod until
// it runs or fails, reports to the CI API, and falls back from Kata to
// hyperd on a runtime failure. It lives in the queue, so exactly one worker
// owns each check and a crash loses none.
const ClassVerify = "verify"

// Verifier is what verify needs from the Kubernetes side.
type Verifier interface {
	Verify(ctx context.Context, podName string) (executor.Verdict, *corev1.Pod, error)
	PodName(buildID int64, attempt int) string
	StartAttempt(ctx context.Context, b *build.Config, d weightage.Decision, attempt int) (*executor.StartResult, error)
	DeletePod(ctx context.Context, name string) error
	Token(ctx context.Context, podName string) (string, error)
	ObserveStart(rt weightage.Runtime, v executor.Verdict, pod *corev1.Pod)
	ObserveFallback(sig executor.Signature)
}

// Reporter sends build updates to the CI API.
type Reporter interface {
	ReportScheduled(ctx context.Context, apiURI string, buildID int64, token, node string, at time.Time) error
	ReportWaiting(ctx context.Context, apiURI string, buildID int64, token, msg string) error
	ReportFailure(ctx context.Context, apiURI string, buildID int64, token, msg string) error
	ReportSuccessSkipped(ctx context.Context, apiURI string, buildID int64, token string) error
}

// Learned is the learned-exclusion set.
type Learned interface {
	Excluded(ctx context.Context, image string) (bool, error)
	Add(ctx context.Context, e exclusion.Entry) error
}

// VerifyOptions tune verify.
type VerifyOptions struct {
	// Interval between checks of a pod that is not running yet.
	Interval time.Duration
	// MissingGrace is how long a pod may be absent from the watch cache
	// (informer lag right after the create) before it counts as gone.
	MissingGrace time.Duration
	// Fallback relaunches a Kata runtime failure once on hyperd.
	Fallback bool
	// EarlyExitWindow keeps verify watching a pod this long after it
	// started running (the exit-139 window).
	EarlyExitWindow time.Duration
}

// verifyArgs travel in the verify job. The build config rides along without
// its token (the token is in the pod's Secret), so a fallback can relaunch
// builds that were enqueued inline.
type verifyArgs struct {
	BuildID      int64             `json:"buildId"`
	Pod          string            `json:"pod"`
	Runtime      weightage.Runtime `json:"runtime"`
	Attempt      int               `json:"attempt"`
	Since        int64             `json:"since"` // unix ms of the first check
	ReportedHost bool              `json:"reportedHost,omitempty"`
	ReportedWait bool              `json:"reportedWaiting,omitempty"`
	Build        *build.Config     `json:"build"`
}

// followUp is a job that replaces the current one.
type followUp struct {
	class string
	args  any
	delay time.Duration
}

// SetVerify turns on verify, CI API reporting and fallback. Without it a
// start is acked once its pod exists.
func (w *Worker) SetVerify(v Verifier, r Reporter, l Learned, o VerifyOptions) {
	w.verifier, w.reporter, w.learned, w.verifyOpts = v, r, l, o
}

// verifyAfterStart is the follow-up of a start whose pod exists.
func (w *Worker) verifyAfterStart(b *build.Config, res *executor.StartResult, attempt int) *followUp {
	if w.verifier == nil {
		return nil
	}
	cfg := *b
	cfg.Token = ""
	return &followUp{class: ClassVerify, delay: w.verifyOpts.Interval, args: verifyArgs{
		BuildID: b.BuildID, Pod: res.Pod.Name, Runtime: res.Runtime, Attempt: attempt,
		Since: time.Now().UnixMilli(), Build: &cfg,
	}}
}

func (w *Worker) verify(ctx context.Context, payload json.RawMessage, log *zap.Logger) (*followUp, error) {
	if w.verifier == nil {
		return nil, permanent("Error", errors.New("verify job but verify is not enabled"))
	}
	var a verifyArgs
	if err := json.Unmarshal(payload, &a); err != nil || a.Build == nil || a.Pod == "" {
		return nil, permanent("InvalidPayload", fmt.Errorf("decoding verify args: %v", err))
	}
	log = log.With(zap.Int64("build_id", a.BuildID), zap.String("pod", a.Pod), zap.String("runtime", string(a.Runtime)))
	if stopped, err := w.marks.Stopped(ctx, a.BuildID, a.Build.JobID); err != nil {
		return nil, err
	} else if stopped {
		return nil, nil // stopped meanwhile: nothing to verify
	}
	v, pod, err := w.verifier.Verify(ctx, a.Pod)
	if err != nil {
		return nil, err
	}
	again := &followUp{class: ClassVerify, args: &a, delay: w.verifyOpts.Interval}
	// A fallback interrupted after its relaunch (crash, lost lease, failed
	// follow-up) runs this verify again for the Kata pod: carry on with the
	// relaunch instead of judging the Kata pod a second time.
	if a.Attempt == 0 && a.Runtime == weightage.Kata && (v.State == executor.StateMissing || v.State == executor.StateFailed) {
		relaunch := w.verifier.PodName(a.BuildID, 1)
		if rv, _, err := w.verifier.Verify(ctx, relaunch); err != nil {
			return nil, err
		} else if rv.State != executor.StateMissing {
			log.Info("resuming verify of the fallback relaunch", zap.String("relaunch", relaunch))
			if v.State == executor.StateFailed {
				if err := w.verifier.DeletePod(ctx, a.Pod); err != nil {
					return nil, err
				}
			}
			a.Pod, a.Attempt, a.Runtime, a.Since = relaunch, 1, weightage.Hyperd, time.Now().UnixMilli()
			a.ReportedHost, a.ReportedWait = false, false // the relaunch runs on another node
			return again, nil
		}
	}
	token := func() (string, error) { return w.verifier.Token(ctx, a.Pod) }
	api := a.Build.APIURI

	// The node is reported once, when the pod first has one.
	reportHostOnce := func() error {
		if a.ReportedHost {
			return nil
		}
		if err := w.report(ctx, token, func(tok string) error {
			return w.reporter.ReportScheduled(ctx, api, a.BuildID, tok, v.Node, time.Now())
		}); err != nil {
			return err
		}
		a.ReportedHost = true
		return nil
	}

	switch v.State {
	case executor.StateRunning, executor.StateSucceeded:
		if err := reportHostOnce(); err != nil {
			return nil, err
		}
		// Kata's early deaths (exit 139 of rhel6 images) come right after
		// start: keep watching a fresh pod until that window has passed.
		if v.State == executor.StateRunning && !v.Since.IsZero() && time.Since(v.Since) < w.verifyOpts.EarlyExitWindow {
			return again, nil
		}
		w.verifier.ObserveStart(a.Runtime, v, pod)
		log.Info("build pod is running", zap.String("node", v.Node))
		return nil, nil
	case executor.StatePendingPulling:
		if err := reportHostOnce(); err != nil {
			return nil, err
		}
		return again, nil
	case executor.StatePendingUnschedulable, executor.StatePending:
		if !a.ReportedWait {
			if err := w.report(ctx, token, func(tok string) error {
				return w.reporter.ReportWaiting(ctx, api, a.BuildID, tok, ciapi.MsgWaiting)
			}); err != nil {
				return nil, err
			}
			a.ReportedWait = true
		}
		return again, nil
	case executor.StateMissing:
		if time.Since(time.UnixMilli(a.Since)) < w.verifyOpts.MissingGrace {
			return again, nil
		}
		// No pod and no token Secret to read: the token of the hash copy is
		// the only one left, so report with the build config's own.
		v.Message = "Build pod disappeared before it started running."
		log.Error("build pod is gone", zap.String("reason", v.Message))
		return nil, w.reportFailureWithConfig(ctx, a, v.Message)
	}

	// Failed.
	w.verifier.ObserveStart(a.Runtime, v, pod)
	log = log.With(zap.String("class", string(v.Class)), zap.String("signature", string(v.Signature)), zap.String("reason", v.Reason))
	if w.verifyOpts.Fallback && a.Runtime == weightage.Kata && v.Class == executor.ClassRuntime && v.Signature != executor.SigNone && a.Attempt == 0 {
		return w.fallback(ctx, &a, v, log)
	}
	log.Warn("build failed to start", zap.String("message", v.Message))
	if err := w.report(ctx, token, func(tok string) error {
		return w.reporter.ReportFailure(ctx, api, a.BuildID, tok, v.Message)
	}); err != nil {
		return nil, err
	}
	// A pending pod reported as failed could still start later (the kubelet
	// keeps retrying a sandbox, an image pull): remove it so no build runs
	// that the CI already shows as failed. Finished pods stay for debugging
	// until the build's stop.
	if pod != nil && pod.Status.Phase == corev1.PodPending {
		if err := w.verifier.DeletePod(ctx, a.Pod); err != nil {
			log.Warn("deleting the failed pending pod failed; stop will remove it", zap.Error(err))
		}
	}
	return nil, nil
}

// fallback relaunches a Kata runtime failure once on hyperd, learning the
// image as excluded so the next builds of it go straight to hyperd.
func (w *Worker) fallback(ctx context.Context, a *verifyArgs, v executor.Verdict, log *zap.Logger) (*followUp, error) {
	tok, err := w.verifier.Token(ctx, a.Pod)
	if err != nil {
		return nil, err
	}
	if w.learned != nil {
		if err := w.learned.Add(ctx, exclusion.Entry{Image: a.Build.Container, Signature: string(v.Signature), BuildID: a.BuildID, At: time.Now()}); err != nil {
			return nil, err
		}
	}
	b := *a.Build
	b.Token = tok
	d := weightage.Decision{Runtime: weightage.Hyperd, Rule: weightage.RuleFallback, Bucket: -1, RulesVersion: w.rules.Current().Version}
	// Relaunch first, delete after: a crash in between leaves two pods for
	// a moment, never none; the relaunch name is deterministic.
	res, err := w.verifier.StartAttempt(ctx, &b, d, a.Attempt+1)
	if err != nil {
		return nil, err
	}
	if stopped, err := w.undoIfStopped(ctx, a.BuildID, a.Build.JobID, log); stopped || err != nil {
		return nil, err
	}
	if err := w.verifier.DeletePod(ctx, a.Pod); err != nil {
		return nil, err
	}
	w.verifier.ObserveFallback(v.Signature)
	w.metrics.Decisions.WithLabelValues(string(d.Runtime), string(d.Rule)).Inc()
	log.Warn("Kata runtime failure: relaunched the build on hyperd and learned its image as excluded",
		zap.String("message", v.Message), zap.String("new_pod", res.Pod.Name))
	return w.verifyAfterStart(&b, res, a.Attempt+1), nil
}

// report fetches the build token and calls the CI API, mapping its errors:
// an unavailable API delays the job (never fails it); a rejected call
// (401/403/404) goes to the failed list, visible, never silently acked.
func (w *Worker) report(ctx context.Context, token func() (string, error), call func(tok string) error) error {
	tok, err := token()
	if err != nil {
		return err
	}
	return w.classifyReport(call(tok))
}

func (w *Worker) classifyReport(err error) error {
	switch {
	case err == nil:
		return nil
	case ciapi.IsUnavailable(err):
		return &delayError{reason: "ci-api-unavailable", msg: "CI API unavailable: " + err.Error()}
	case ciapi.IsRejected(err):
		return permanent("CIAPIRejected", err)
	}
	return err
}

// reportFailureWithConfig reports a failure using the token of the build's
// buildConfigs entry, for when the pod's Secret is gone too.
func (w *Worker) reportFailureWithConfig(ctx context.Context, a verifyArgs, msg string) error {
	raw, err := w.configs.Get(ctx, a.BuildID)
	if err != nil {
		return permanent("MissingBuildConfig", fmt.Errorf("reporting failure of build %d (%s): %w", a.BuildID, msg, err))
	}
	b, err := build.Decode(raw)
	if err != nil {
		return permanent("InvalidBuildConfig", err)
	}
	return w.classifyReport(w.reporter.ReportFailure(ctx, a.Build.APIURI, a.BuildID, b.Token, msg))
}

// DeadLettered reports FAILURE to the CI API for a start that will never
// run (its last retry failed, or it could not succeed at all), so the build
// does not stay QUEUED forever.
func (w *Worker) DeadLettered(ctx context.Context, j *queueJob, reason error) {
	if w.reporter == nil {
		return
	}
	if j.Class == ClassVerify {
		w.verifyDeadLettered(ctx, j, reason)
		return
	}
	if j.Class != ClassStart {
		return
	}
	b, err := w.buildConfig(ctx, j, true)
	if err != nil || b.Token == "" || b.APIURI == "" {
		w.log.Warn("cannot report the failed start to the CI API: no usable build config", zap.NamedError("config_error", err))
		return
	}
	if err := w.reporter.ReportFailure(ctx, b.APIURI, b.BuildID, b.Token, reason.Error()); err != nil {
		w.log.Error("reporting the failed start to the CI API failed", zap.Int64("build_id", b.BuildID), zap.Error(err))
	}
}

// verifyDeadLettered reports a build whose verify could not complete (its
// retries ran out), with the token from its pod's Secret, else from the
// buildConfigs entry.
func (w *Worker) verifyDeadLettered(ctx context.Context, j *queueJob, reason error) {
	payload, err := j.Payload()
	if err != nil {
		return
	}
	var a verifyArgs
	if err := json.Unmarshal(payload, &a); err != nil || a.Build == nil || w.verifier == nil {
		return
	}
	msg := "Build could not be verified: " + reason.Error()
	tok, err := w.verifier.Token(ctx, a.Pod)
	if err != nil {
		if err := w.reportFailureWithConfig(ctx, a, msg); err != nil {
			w.log.Error("reporting the unverifiable build to the CI API failed", zap.Int64("build_id", a.BuildID), zap.Error(err))
		}
		return
	}
	if err := w.reporter.ReportFailure(ctx, a.Build.APIURI, a.BuildID, tok, msg); err != nil {
		w.log.Error("reporting the unverifiable build to the CI API failed", zap.Int64("build_id", a.BuildID), zap.Error(err))
	}
}
