package queue

import (
	"errors"
	"testing"
	"time"
)

// The settle policy is pure: an outcome, the attempts already spent, the
// retry policy and whether the job was interrupted decide what is written.
func TestPlan_SettlePolicy(t *testing.T) {
	policy := RetryPolicy{MaxRetries: 2, Delay: 5 * time.Second, Factor: 2}
	report := NewJob{Class: "report"}
	boom := errors.New("boom")
	tests := []struct {
		name     string
		outcome  Outcome
		attempt  int
		stopping bool
		want     settlement
	}{
		{name: "DoneAcks", outcome: Done(), want: settlement{op: opAck, label: OutcomeSucceeded}},
		{name: "FirstRetryBacksOffOnce", outcome: Retry(boom),
			want: settlement{op: opDelay, label: OutcomeRetried, delay: 5 * time.Second, attempt: 1, reason: boom}},
		{name: "SecondRetryDoublesTheDelay", outcome: Retry(boom), attempt: 1,
			want: settlement{op: opDelay, label: OutcomeRetried, delay: 10 * time.Second, attempt: 2, reason: boom}},
		{name: "RetryPastTheLimitDeadLettersWithItsReport", outcome: Retry(boom).ReportDeadLetter(report), attempt: 2,
			want: settlement{op: opFail, label: OutcomeFailed, exception: "Error", report: &report,
				reason: errors.New("boom (gave up after 3 attempts)")}},
		{name: "RetryWithinTheLimitKeepsNoReport", outcome: Retry(boom).ReportDeadLetter(report),
			want: settlement{op: opDelay, label: OutcomeRetried, delay: 5 * time.Second, attempt: 1, reason: boom}},
		{name: "FailIsImmediate", outcome: Fail("InvalidPayload", boom).ReportDeadLetter(report),
			want: settlement{op: opFail, label: OutcomeFailed, exception: "InvalidPayload", reason: boom, report: &report}},
		{name: "PostponeKeepsTheAttempt", outcome: Postpone(10*time.Second, "budget"), attempt: 2,
			want: settlement{op: opDelay, label: OutcomeDelayed, delay: 10 * time.Second, attempt: 2, reason: errors.New("budget")}},
		{name: "InterruptedRetryGoesBackUnchanged", outcome: Retry(boom), stopping: true,
			want: settlement{op: opRequeue, label: OutcomeRequeued}},
		{name: "InterruptedFailStillFails", outcome: Fail("InvalidPayload", boom), stopping: true,
			want: settlement{op: opFail, label: OutcomeFailed, exception: "InvalidPayload", reason: boom}},
		{name: "RequeueRequeues", outcome: Requeue(), want: settlement{op: opRequeue, label: OutcomeRequeued}},
		{name: "ZeroOutcomeIsRetriedNotAcked", outcome: Outcome{},
			want: settlement{op: opDelay, label: OutcomeRetried, delay: 5 * time.Second, attempt: 1, reason: errNoOutcome}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := plan(tt.outcome, tt.attempt, policy, tt.stopping)
			if got.op != tt.want.op || got.label != tt.want.label || got.exception != tt.want.exception ||
				got.delay != tt.want.delay || got.attempt != tt.want.attempt {
				t.Fatalf("plan = %+v, want %+v", got, tt.want)
			}
			if (got.reason == nil) != (tt.want.reason == nil) || got.reason != nil && got.reason.Error() != tt.want.reason.Error() {
				t.Fatalf("reason %v, want %v", got.reason, tt.want.reason)
			}
			if (got.report == nil) != (tt.want.report == nil) {
				t.Fatalf("report %v, want %v", got.report, tt.want.report)
			}
		})
	}
}

func TestNewJob_EncodesInNodeResqueForm(t *testing.T) {
	raw, err := NewJob{Class: "report", Args: []any{map[string]any{"buildId": 4}, map[string]string{"message": "a/b <c>"}}}.encode("builds")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"class":"report","queue":"builds","args":[{"buildId":4},{"message":"a/b <c>"}]}`
	if string(raw) != want {
		t.Fatalf("encoded %s\nwant    %s", raw, want)
	}
}
