package edge

import (
	"testing"
	"time"
)

func TestCapturedAt(t *testing.T) {
	at, ok := capturedAt([]byte(`{"id":"e-1","room":"r","table":"t","op":"INSERT","at":"2026-11-25T23:07:29.239395Z","data":{"at":"x"}}`))
	if !ok || !at.Equal(time.Date(2026, 11, 25, 23, 7, 29, 239395000, time.UTC)) {
		t.Fatalf("capturedAt = %v, %v", at, ok)
	}
	if _, ok := capturedAt([]byte(`{"id":"e-1"}`)); ok {
		t.Fatal("found an at that is not there")
	}
}
