package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/rowcast/rowcast/realtime"
)

func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, rooms []string, exp time.Time) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, Claims{Rooms: rooms, RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(exp)}})
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestHS256(t *testing.T) {
	a, err := New(context.Background(), Config{Secret: "s3cret", PublicRooms: []string{"lobby", "news:*"}})
	if err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(time.Hour)
	g, err := a.Check(sign(t, jwt.SigningMethodHS256, []byte("s3cret"), "", []string{"chat:*", "team-7"}, hour))
	if err != nil {
		t.Fatal(err)
	}
	for room, want := range map[string]bool{"chat:x": true, "team-7": true, "team-8": false, "lobby": true, "news:today": true, "chat": false} {
		if g.Allows(realtime.Room(room)) != want {
			t.Errorf("Allows(%q) = %v", room, !want)
		}
	}
	if g.Expires.IsZero() {
		t.Error("expiry not reported")
	}
	if _, err := a.Check(sign(t, jwt.SigningMethodHS256, []byte("wrong"), "", nil, hour)); !errors.Is(err, ErrBadToken) {
		t.Errorf("bad signature: %v", err)
	}
	if _, err := a.Check(sign(t, jwt.SigningMethodHS256, []byte("s3cret"), "", nil, time.Now().Add(-time.Minute))); !errors.Is(err, ErrExpired) {
		t.Errorf("expired: %v", err)
	}
	if _, err := a.Check("not.a.token"); !errors.Is(err, ErrBadToken) {
		t.Errorf("garbage: %v", err)
	}
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Rooms: []string{"*"}}).SignedString([]byte("s3cret"))
	if _, err := a.Check(noExp); !errors.Is(err, ErrBadToken) {
		t.Errorf("token without exp: %v", err)
	}
	// No token: only the public rooms.
	g, err = a.Check("")
	if err != nil || !g.Allows("lobby") || g.Allows("chat:x") {
		t.Errorf("anonymous grant: %v %v", g, err)
	}
	// A token signed with "none" or another algorithm is refused.
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, Claims{Rooms: []string{"*"}, RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(hour)}}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if _, err := a.Check(none); !errors.Is(err, ErrBadToken) {
		t.Errorf("alg none: %v", err)
	}
}

func TestIssuedTokenVerifies(t *testing.T) {
	a, _ := New(context.Background(), Config{Secret: "x", Audience: "rowcast"})
	tok, err := a.Issue([]string{"lobby"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	g, err := a.Check(tok)
	if err != nil || !g.Allows("lobby") || g.Allows("other") {
		t.Fatalf("issued token: %v %v", g, err)
	}
}

func TestOpenWhenNoKeyConfigured(t *testing.T) {
	a, _ := New(context.Background(), Config{})
	g, err := a.Check("")
	if err != nil || !g.Allows("anything") {
		t.Fatalf("open grant: %v %v", g, err)
	}
}

// jwksServer serves a JWKS that the test can rotate.
type jwksServer struct {
	mu   sync.Mutex
	keys []map[string]string
}

func (s *jwksServer) set(keys ...map[string]string) { s.mu.Lock(); s.keys = keys; s.mu.Unlock() }

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, k *rsa.PrivateKey) map[string]string {
	return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(kid string, k *ecdsa.PrivateKey) map[string]string {
	pad := func(b []byte) []byte { out := make([]byte, 32); copy(out[32-len(b):], b); return out }
	return map[string]string{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
		"x": b64(pad(k.X.Bytes())), "y": b64(pad(k.Y.Bytes()))}
}

func TestJWKSRotation(t *testing.T) {
	rsaOld, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaNew, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &jwksServer{}
	srv.set(rsaJWK("old", rsaOld), ecJWK("ec", ec))
	hs := httptest.NewServer(srv)
	defer hs.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, Config{JWKSURL: hs.URL, JWKSRefresh: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(time.Hour)
	if _, err := a.Check(sign(t, jwt.SigningMethodRS256, rsaOld, "old", []string{"a"}, hour)); err != nil {
		t.Fatalf("RS256 with the published key: %v", err)
	}
	if _, err := a.Check(sign(t, jwt.SigningMethodES256, ec, "ec", []string{"a"}, hour)); err != nil {
		t.Fatalf("ES256: %v", err)
	}
	// A key the JWKS does not publish is refused.
	if _, err := a.Check(sign(t, jwt.SigningMethodRS256, rsaNew, "new", []string{"a"}, hour)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("unpublished key: %v", err)
	}
	// Rotate: the new key appears, the old one is withdrawn.
	srv.set(rsaJWK("new", rsaNew))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, errNew := a.Check(sign(t, jwt.SigningMethodRS256, rsaNew, "new", []string{"a"}, hour))
		_, errOld := a.Check(sign(t, jwt.SigningMethodRS256, rsaOld, "old", []string{"a"}, hour))
		if errNew == nil && errors.Is(errOld, ErrBadToken) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rotation: new key %v, old key %v", errNew, errOld)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// HS256 is not accepted when only a JWKS is configured.
	if _, err := a.Check(sign(t, jwt.SigningMethodHS256, []byte("x"), "", []string{"a"}, hour)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("HS256 without a secret: %v", err)
	}
}
