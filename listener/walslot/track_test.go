package walslot

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

// TestTracker walks the tracker through the stream events and checks the
// position it would report after each.
func TestTracker(t *testing.T) {
	type step struct {
		name string
		do   func(*tracker)
		want pglogrepl.LSN
	}
	steps := []step{
		{"start at the slot's confirmed position", func(tr *tracker) { tr.confirm(100) }, 100},
		{"keepalive while idle advances", func(tr *tracker) { tr.serverEnd(150) }, 150},
		{"a transaction without messages starts", func(tr *tracker) { tr.begin() }, 150},
		{"keepalive inside a transaction is ignored", func(tr *tracker) { tr.serverEnd(170) }, 150},
		{"it commits: its end is safe", func(tr *tracker) { tr.commit(180) }, 180},
		{"a transaction with messages starts: no step back", func(tr *tracker) { tr.begin(); tr.message() }, 180},
		{"it commits unconfirmed", func(tr *tracker) { tr.commit(300) }, 180},
		{"keepalive while owed does not advance", func(tr *tracker) { tr.serverEnd(400) }, 180},
		{"confirming part of it does not advance past it", func(tr *tracker) { tr.confirm(200) }, 200},
		{"confirming it releases the idle position", func(tr *tracker) { tr.confirm(300) }, 400},
		{"confirming backwards is ignored", func(tr *tracker) { tr.confirm(50) }, 400},
		{"messages of an open transaction hold the position", func(tr *tracker) { tr.begin(); tr.message(); tr.serverEnd(500) }, 400},
		{"confirming an old position while it is open", func(tr *tracker) { tr.confirm(350) }, 400},
		{"it commits, a later one without messages too", func(tr *tracker) { tr.commit(600); tr.begin(); tr.commit(700) }, 400},
		{"keepalive after them", func(tr *tracker) { tr.serverEnd(800) }, 400},
		{"confirming the first releases the rest", func(tr *tracker) { tr.confirm(600) }, 800},
	}
	var tr tracker
	for _, s := range steps {
		s.do(&tr)
		if got := tr.flushed(); got != s.want {
			t.Fatalf("%s: flushed = %v, want %v (tracker %+v)", s.name, got, s.want, tr)
		}
	}
}

func TestValidSlotName(t *testing.T) {
	for name, want := range map[string]bool{
		"rowcast": true, "rowcast_wal_2": true, "": false, "Rowcast": false,
		"a-b": false, "a b": false, `x"; DROP`: false,
		"a234567890123456789012345678901234567890123456789012345678901234": false, // 64
		"a23456789012345678901234567890123456789012345678901234567890123":  true,  // 63
	} {
		if got := validSlotName(name); got != want {
			t.Errorf("validSlotName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestQuote(t *testing.T) {
	for _, c := range []struct{ in, sql, repl string }{
		{"rowcast_wal", `'rowcast_wal'`, `'rowcast_wal'`},
		{"it's", `'it''s'`, `'it''s'`},
		{`a\b'`, `E'a\\b'''`, `'a\b'''`},
	} {
		if got := quoteSQL(c.in); got != c.sql {
			t.Errorf("quoteSQL(%q) = %s, want %s", c.in, got, c.sql)
		}
		if got := quoteRepl(c.in); got != c.repl {
			t.Errorf("quoteRepl(%q) = %s, want %s", c.in, got, c.repl)
		}
	}
}
