// Package auth decides which rooms a connection may read. A connection
// presents a JWT (HS256 with a shared secret, or RS256/ES256 with keys from a
// JWKS URL, cached and refreshed); its "rooms" claim lists room names or
// patterns ("chat:*"). Rooms can also be public by configuration. With no
// key configured, authorization is off and every room is readable.
package auth

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/rowcast/rowcast/realtime"
)

// Errors, for the edge to translate into statuses and control messages.
var (
	ErrNoToken   = errors.New("token required")
	ErrBadToken  = errors.New("invalid token")
	ErrExpired   = errors.New("token expired")
	ErrForbidden = errors.New("room not allowed by token")
)

// Config configures an Authorizer.
type Config struct {
	Secret      string        // HS256 shared secret
	JWKSURL     string        // RS256/ES256 keys
	JWKSRefresh time.Duration // how often the JWKS is refetched (and at most how often an unknown key id triggers a fetch)
	Audience    string        // required "aud" when set
	Issuer      string        // required "iss" when set
	PublicRooms []string      // room names or patterns anyone may read
}

// Enabled reports whether tokens are checked at all.
func (c Config) Enabled() bool { return c.Secret != "" || c.JWKSURL != "" }

// Claims are the token's claims rowcast reads.
type Claims struct {
	Rooms []string `json:"rooms"`
	jwt.RegisteredClaims
}

// Grant is what one connection may do, from its token (or none).
type Grant struct {
	rooms   []string  // patterns
	public  []string  // patterns
	open    bool      // authorization off
	Expires time.Time // zero: never
}

// Allows reports whether the grant covers room r.
func (g Grant) Allows(r realtime.Room) bool {
	if g.open {
		return true
	}
	return matchAny(g.public, string(r)) || matchAny(g.rooms, string(r))
}

func matchAny(patterns []string, room string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, room); ok {
			return true
		}
	}
	return false
}

// Authorizer verifies tokens. It is safe for concurrent use.
type Authorizer struct {
	cfg     Config
	keyfunc jwt.Keyfunc
	parser  *jwt.Parser
}

// New builds an Authorizer. With a JWKS URL it fetches the keys in the
// background until ctx ends.
func New(ctx context.Context, cfg Config) (*Authorizer, error) {
	for _, p := range cfg.PublicRooms {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("ROWCAST_PUBLIC_ROOMS: pattern %q: %w", p, err)
		}
	}
	a := &Authorizer{cfg: cfg}
	if !cfg.Enabled() {
		return a, nil
	}
	var methods []string
	var jwks keyfunc.Keyfunc
	if cfg.JWKSURL != "" {
		refresh := cfg.JWKSRefresh
		if refresh <= 0 {
			refresh = time.Hour
		}
		var err error
		jwks, err = keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			RefreshInterval:   refresh,
			RefreshUnknownKID: rate.NewLimiter(rate.Every(min(refresh, 10*time.Second)), 1),
		})
		if err != nil {
			return nil, fmt.Errorf("ROWCAST_JWKS_URL: %w", err)
		}
		methods = append(methods, "RS256", "ES256")
	}
	if cfg.Secret != "" {
		methods = append(methods, "HS256")
	}
	a.keyfunc = func(t *jwt.Token) (any, error) {
		if t.Method.Alg() == "HS256" {
			if cfg.Secret == "" {
				return nil, errors.New("HS256 not accepted")
			}
			return []byte(cfg.Secret), nil
		}
		if jwks == nil {
			return nil, fmt.Errorf("%s not accepted", t.Method.Alg())
		}
		return jwks.Keyfunc(t)
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithExpirationRequired(), jwt.WithLeeway(5 * time.Second)}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// Check verifies token (possibly empty) and returns the connection's grant.
// With authorization on, a missing token still gets the public rooms.
func (a *Authorizer) Check(token string) (Grant, error) {
	if !a.cfg.Enabled() {
		return Grant{open: true}, nil
	}
	g := Grant{public: a.cfg.PublicRooms}
	if token == "" {
		if len(g.public) == 0 {
			return Grant{}, ErrNoToken
		}
		return g, nil
	}
	var claims Claims
	_, err := a.parser.ParseWithClaims(token, &claims, a.keyfunc)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Grant{}, ErrExpired
	case err != nil:
		return Grant{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	g.rooms = claims.Rooms
	if claims.ExpiresAt != nil {
		g.Expires = claims.ExpiresAt.Time
	}
	return g, nil
}

// Issue signs an HS256 token for rooms, valid for ttl: the demo's token path.
func (a *Authorizer) Issue(rooms []string, ttl time.Duration) (string, error) {
	if a.cfg.Secret == "" {
		return "", errors.New("issue token: no ROWCAST_AUTH_SECRET")
	}
	now := time.Now()
	claims := Claims{Rooms: rooms, RegisteredClaims: jwt.RegisteredClaims{
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		Issuer: a.cfg.Issuer,
	}}
	if a.cfg.Audience != "" {
		claims.Audience = jwt.ClaimStrings{a.cfg.Audience}
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(a.cfg.Secret))
}

// FromRequest extracts a token from the "token" query parameter (browsers
// cannot set headers on WebSocket or EventSource) or an Authorization:
// Bearer header.
func FromRequest(query, authorization string) string {
	if query != "" {
		return query
	}
	if t, ok := strings.CutPrefix(authorization, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}
