package proc

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStartWaitLogStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The trap comes first: the test sends SIGTERM as soon as it sees the
	// greeting, which must not reach a shell without its handler.
	p, err := Start("sh", "/bin/sh", []string{"GREETING=hello"}, "-c", `trap 'echo bye; exit 3' TERM; echo "$GREETING there"; while :; do sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	line, err := p.WaitLog(ctx, "hello")
	if err != nil || line != "hello there" {
		t.Fatalf("WaitLog = %q, %v", line, err)
	}
	if err := p.Stop(syscall.SIGTERM); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Stop = %v, want exit status 3", err)
	}
	if !strings.Contains(p.Output(), "bye") {
		t.Fatalf("output %q", p.Output())
	}
	if _, err := p.WaitLog(ctx, "never"); err == nil {
		t.Fatal("WaitLog on an exited process succeeded")
	}
}

func TestTailKeepsTheEnd(t *testing.T) {
	var tl tail
	tl.Write([]byte(strings.Repeat("a", 300<<10)))
	tl.Write([]byte("end"))
	if s := tl.String(); len(s) != 256<<10 || !strings.HasSuffix(s, "end") {
		t.Fatalf("len %d", len(s))
	}
}
