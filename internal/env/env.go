// Package env reads configuration from environment variables. Every problem
// is collected with the name of the variable, so a bad configuration fails
// at start with one error listing each bad setting.
package env

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Reader reads variables through lookup (os.LookupEnv in production). It is
// not safe for concurrent use.
type Reader struct {
	lookup func(string) (string, bool)
	errs   []error
}

// New returns a Reader on lookup.
func New(lookup func(string) (string, bool)) *Reader { return &Reader{lookup: lookup} }

// Err returns every problem found so far, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

func (r *Reader) fail(name, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

// String returns the variable or def when unset or empty.
func (r *Reader) String(name, def string) string {
	if v, ok := r.lookup(name); ok && v != "" {
		return v
	}
	return def
}

// URL returns the variable, checked to be a URL with one of schemes. An
// empty def makes the variable required.
func (r *Reader) URL(name, def string, schemes ...string) string {
	v := r.String(name, def)
	if v == "" {
		r.fail(name, "required (e.g. %s://host:port/...)", schemes[0])
		return ""
	}
	u, err := url.Parse(v)
	if err != nil {
		r.fail(name, "not a URL: %v", redactErr(err))
		return ""
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return v
		}
	}
	r.fail(name, "scheme %q, want one of %v", u.Scheme, schemes)
	return ""
}

// OptionalURL is URL for a variable that may be unset (then "").
func (r *Reader) OptionalURL(name string, schemes ...string) string {
	if r.String(name, "") == "" {
		return ""
	}
	return r.URL(name, "", schemes...)
}

// Int returns the variable as an integer in [lo, hi], or def when unset.
func (r *Reader) Int(name string, def, lo, hi int) int {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		r.fail(name, "%q is not a whole number from %d to %d", v, lo, hi)
		return def
	}
	return n
}

// Bool returns the variable as a boolean (1/0, true/false), or def.
func (r *Reader) Bool(name string, def bool) bool {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, "%q is not true or false", v)
		return def
	}
	return b
}

// Fail records a problem with a setting found by the caller.
func (r *Reader) Fail(name, format string, args ...any) { r.fail(name, format, args...) }

// Duration returns the variable as a Go duration in [lo, hi], or def.
func (r *Reader) Duration(name string, def, lo, hi time.Duration) time.Duration {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || d > hi {
		r.fail(name, "%q is not a duration from %s to %s (e.g. 5s)", v, lo, hi)
		return def
	}
	return d
}

// redactErr drops the URL (which may hold a password) from a parse error.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
