package main

import (
	"slices"
	"strconv"
	"strings"
)

// A scenario row runs -runs times, interleaved (S1 ws, S1 sse, S1 ws, ...),
// and the table gives each figure's median over the runs. Latency
// percentiles add their range, so the run-to-run spread of a shared machine
// is visible: "1.42 (1.38–1.51)".

// spread is the median of one figure over the runs, and its range.
type spread struct {
	med, lo, hi float64
	n           int // runs that have the figure
}

// spreadOf returns the median (the mean of the middle two for an even
// count), minimum and maximum of xs.
func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med: m, lo: s[0], hi: s[len(s)-1], n: len(s)}
}

// text formats the median with prec decimals, followed by the range when
// withRange is set and there are several runs; "n/a" when no run has the
// figure.
func (s spread) text(prec int, withRange bool) string {
	if s.n == 0 {
		return "n/a"
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	if !withRange || s.n == 1 {
		return f(s.med)
	}
	return f(s.med) + " (" + f(s.lo) + "–" + f(s.hi) + ")"
}

// mergeCells merges the cells of several runs of an S3 or L row, column by
// column: equal cells stay; numbers, or "/"-separated numbers, become their
// medians with as many decimals as the runs printed; the columns in sum are
// added up, those in span become their range "lo–hi"; anything else lists
// the runs' values.
func mergeCells(runs [][]string, sum, span []int) []string {
	if len(runs) == 0 {
		return nil
	}
	out := make([]string, len(runs[0]))
	for col := range out {
		vals := make([]string, len(runs))
		for i, r := range runs {
			if col < len(r) {
				vals[i] = r[col]
			}
		}
		out[col] = mergeColumn(vals, slices.Contains(sum, col), slices.Contains(span, col))
	}
	return out
}

func mergeColumn(vals []string, sum, span bool) string {
	if !sum && !span && allEqual(vals) {
		return vals[0]
	}
	parts := make([][]string, len(vals))
	for i, v := range vals {
		parts[i] = strings.Split(v, "/")
		if len(parts[i]) != len(parts[0]) {
			return strings.Join(vals, ", ")
		}
	}
	merged := make([]string, len(parts[0]))
	for p := range merged {
		xs := make([]float64, len(vals))
		prec := 0
		for i := range vals {
			x, err := strconv.ParseFloat(parts[i][p], 64)
			if err != nil {
				return strings.Join(vals, ", ")
			}
			xs[i] = x
			if _, frac, ok := strings.Cut(parts[i][p], "."); ok {
				prec = max(prec, len(frac))
			}
		}
		s := spreadOf(xs)
		f := func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
		switch {
		case sum:
			var t float64
			for _, x := range xs {
				t += x
			}
			merged[p] = f(t)
		case span && s.lo != s.hi:
			merged[p] = f(s.lo) + "–" + f(s.hi)
		default:
			merged[p] = f(s.med)
		}
	}
	return strings.Join(merged, "/")
}

func allEqual(vals []string) bool {
	for _, v := range vals[1:] {
		if v != vals[0] {
			return false
		}
	}
	return true
}
