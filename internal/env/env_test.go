package env

import (
	"strings"
	"testing"
	"time"
)

func reader(vars map[string]string) *Reader {
	return New(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
}

func TestReaderNamesEveryBadSetting(t *testing.T) {
	r := reader(map[string]string{
		"REDIS_URL": "http://x",
		"BATCH":     "0",
		"POLL":      "soon",
		"DB":        "postgres://u:secret@h:5432/db",
	})
	r.URL("REDIS_URL", "", "redis", "rediss")
	r.URL("MISSING_URL", "", "postgres")
	r.Int("BATCH", 10, 1, 100)
	r.Duration("POLL", time.Second, time.Millisecond, time.Minute)
	if got := r.URL("DB", "", "postgres", "postgresql"); got != "postgres://u:secret@h:5432/db" {
		t.Fatalf("URL = %q", got)
	}
	err := r.Err()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"REDIS_URL: scheme \"http\"", "MISSING_URL: required", "BATCH: \"0\"", "POLL: \"soon\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error leaks a password: %q", err)
	}
}

func TestReaderDefaults(t *testing.T) {
	r := reader(nil)
	if r.Int("N", 7, 1, 10) != 7 || r.Duration("D", time.Second, 0, time.Hour) != time.Second || r.String("S", "x") != "x" {
		t.Fatal("defaults not used")
	}
	if r.OptionalURL("O", "redis") != "" || r.Err() != nil {
		t.Fatalf("optional URL: err %v", r.Err())
	}
}
