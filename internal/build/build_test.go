package build

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		wantErr bool
		idsOnly bool
	}{
		{"QueueServiceIDsOnly", `{"buildId":12345,"jobId":678,"blockedBy":"678","blockedBySameJob":true,"blockedBySameJobWaitTime":5,"virtualJob":false}`, false, true},
		{"InlineConfig", `{"buildId":1,"jobId":1,"container":"node:18","apiUri":"http://a/","token":"t","annotations":{"screwdriver.cd/timeout":60}}`, false, false},
		{"HashValueWithArrayBlockedBy", `{"buildId":1,"blockedBy":[678],"container":"c","token":"t","pipeline":{"id":42,"name":"org/repo"}}`, false, false},
		{"NotAnObject", `["x"]`, true, false},
		{"StringBuildID", `{"buildId":"12"}`, true, false},
		{"Empty", ``, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.raw))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if c.IDsOnly() != tt.idsOnly {
				t.Fatalf("IDsOnly = %v", c.IDsOnly())
			}
		})
	}
}

func TestValidateStartNamesEveryMissingField(t *testing.T) {
	err := (&Config{}).ValidateStart()
	for _, want := range []string{"buildId", "container", "token", "apiUri"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v does not name %s", err, want)
		}
	}
}

func TestAnnotationBetaAliasAndRendering(t *testing.T) {
	c := &Config{Annotations: map[string]any{"beta.screwdriver.cd/executor": "k8s-vm", "screwdriver.cd/timeout": float64(60), "screwdriver.cd/dockerEnabled": true}}
	if got := c.AnnotationString("executor"); got != "k8s-vm" {
		t.Fatalf("beta alias: %q", got)
	}
	if got := c.AnnotationString("timeout"); got != "60" {
		t.Fatalf("number: %q", got)
	}
	if got := c.AnnotationString("dockerEnabled"); got != "true" {
		t.Fatalf("bool: %q", got)
	}
	if got := c.AnnotationString("cpu"); got != "" {
		t.Fatalf("absent: %q", got)
	}
}

func TestMergeIDsKeepsHashValuesAndTakesStarted(t *testing.T) {
	f := false
	full := &Config{BuildID: 0, Container: "c"}
	full.MergeIDs(&Config{BuildID: 7, JobID: 3, Started: &f})
	if full.BuildID != 7 || full.JobID != 3 || full.Started == nil || *full.Started {
		t.Fatalf("merged %+v", full)
	}
}
