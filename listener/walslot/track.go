package walslot

import "github.com/jackc/pglogrepl"

// tracker decides which position a standby status update may report as
// flushed. It sees the stream in order (begin, message, commit, server WAL
// end) and the caller's confirmations, and never reports a position past a
// transaction whose rowcast messages were received but not yet confirmed.
// The position it reports never moves back (PostgreSQL 15 would move the
// slot's confirmed_flush_lsn back with it). It is owned by one Reader and not
// safe for concurrent use.
type tracker struct {
	// safe is the highest position that may be reported: the slot's
	// confirmed_flush_lsn at start, the caller's confirmations, and idle
	// positions reached while nothing was outstanding.
	safe pglogrepl.LSN
	// owed is the highest end LSN of a completed transaction that carried
	// rowcast messages: nothing beyond the caller's confirmations may be
	// reported until they reach at least this far.
	owed pglogrepl.LSN
	// idle is how far the server has sent WAL outside transactions with
	// messages: keepalive WAL ends seen between transactions and the ends of
	// transactions without rowcast messages.
	idle pglogrepl.LSN
	// inTx is set between BEGIN and COMMIT; txMsgs when that transaction
	// carried a rowcast message.
	inTx, txMsgs bool
}

// begin records a pgoutput BEGIN.
func (t *tracker) begin() { t.inTx, t.txMsgs = true, false }

// message records a rowcast message of the open transaction.
func (t *tracker) message() { t.txMsgs = true }

// commit records a pgoutput COMMIT whose transaction ends at end.
func (t *tracker) commit(end pglogrepl.LSN) {
	if t.txMsgs {
		t.owed = max(t.owed, end)
	} else {
		t.idle = max(t.idle, end)
	}
	t.inTx, t.txMsgs = false, false
	t.advance()
}

// serverEnd records the server's WAL end from a keepalive. Between
// transactions every transaction still to come commits after it, so it is
// safe once everything received before it is confirmed. Inside a
// transaction it is ignored.
func (t *tracker) serverEnd(lsn pglogrepl.LSN) {
	if !t.inTx {
		t.idle = max(t.idle, lsn)
		t.advance()
	}
}

// confirm records the caller's confirmation of lsn; it never moves back.
func (t *tracker) confirm(lsn pglogrepl.LSN) {
	t.safe = max(t.safe, lsn)
	t.advance()
}

// advance makes the idle position safe when no received message waits for
// a confirmation (handed out or not).
func (t *tracker) advance() {
	if t.owed <= t.safe && !(t.inTx && t.txMsgs) {
		t.safe = max(t.safe, t.idle)
	}
}

// flushed is the position to report as written, flushed and applied.
func (t *tracker) flushed() pglogrepl.LSN { return t.safe }
