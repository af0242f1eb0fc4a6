package connect

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rowcast/rowcast/internal/env"
)

func TestParseRedisTopologies(t *testing.T) {
	t.Run("one server", func(t *testing.T) {
		c, err := ParseRedis("rediss://u:pw@cache:6380/2")
		if err != nil {
			t.Fatal(err)
		}
		if c.Topology != Single || c.single.Addr != "cache:6380" || c.single.DB != 2 || c.single.Password != "pw" || c.single.TLSConfig == nil {
			t.Fatalf("got %v %+v", c.Topology, c.single)
		}
		rdb := c.Client()
		defer rdb.Close()
		if _, ok := rdb.(*redis.Client); !ok {
			t.Fatalf("client is %T", rdb)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		c, err := ParseRedis("redis+sentinel://u:pw@s1:26379/1?master_name=main&addr=s2:26379&addr=s3:26379")
		if err != nil {
			t.Fatal(err)
		}
		f := c.failover
		if c.Topology != Sentinel || f.MasterName != "main" || f.DB != 1 || f.TLSConfig != nil {
			t.Fatalf("got %v %+v", c.Topology, f)
		}
		if got := strings.Join(f.SentinelAddrs, " "); got != "s1:26379 s2:26379 s3:26379" {
			t.Fatalf("sentinels %s", got)
		}
		// One password for sentinels and data nodes unless told otherwise.
		if f.SentinelUsername != "u" || f.SentinelPassword != "pw" || f.Username != "u" || f.Password != "pw" {
			t.Fatalf("credentials %q/%q, %q/%q", f.SentinelUsername, f.SentinelPassword, f.Username, f.Password)
		}
		rdb := c.Client()
		defer rdb.Close()
		if _, ok := rdb.(*redis.Client); !ok {
			t.Fatalf("client is %T", rdb)
		}
	})
	t.Run("sentinel with own data-node password over TLS", func(t *testing.T) {
		c, err := ParseRedis("rediss+sentinel://:spw@s1?master_name=main&password=dpw")
		if err != nil {
			t.Fatal(err)
		}
		f := c.failover
		if f.SentinelPassword != "spw" || f.Password != "dpw" || f.TLSConfig == nil || f.TLSConfig.ServerName != "s1" {
			t.Fatalf("got %+v", f)
		}
		if f.SentinelAddrs[0] != "s1:6379" {
			t.Fatalf("default port: %v", f.SentinelAddrs)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		c, err := ParseRedis("rediss+cluster://:pw@n1:7000?addr=n2:7000&addr=n3:7000")
		if err != nil {
			t.Fatal(err)
		}
		o := c.cluster
		if c.Topology != Cluster || o.Password != "pw" || o.TLSConfig == nil || len(o.Addrs) != 3 || o.Addrs[2] != "n3:7000" {
			t.Fatalf("got %v %+v", c.Topology, o)
		}
		rdb := c.Client()
		defer rdb.Close()
		cc, ok := rdb.(*redis.ClusterClient)
		if !ok {
			t.Fatalf("client is %T", rdb)
		}
		// The same timeouts for every topology, but a shorter connect.
		if opt := cc.Options(); opt.DialTimeout.Seconds() != 1 || opt.ReadTimeout.Seconds() != 5 || !opt.ContextTimeoutEnabled || opt.MaxRetries != 1 || opt.DialerRetries != 1 || opt.Dialer == nil {
			t.Fatalf("options %+v", opt)
		}
	})
}

func TestParseRedisRefusesClearly(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want []string
	}{
		{"http://x", []string{`REDIS_URL: scheme "http"`, "want one of [redis rediss]", "redis+sentinel", "redis+cluster"}},
		{"redis+shard://x", []string{`scheme "redis+shard"`}},
		{"redis+sentinel://:secret@s1:26379", []string{"master_name"}},
		{"redis+cluster://n1:7000/3", []string{"only database 0"}},
		{"redis+cluster://:secret@n1:7000?nonsense=1", []string{"nonsense"}},
		{"redis://:secret@%zz", []string{"REDIS_URL: not a URL"}},
		{"redis:///0", []string{"no host"}},
	} {
		_, err := ParseRedis(tc.url)
		if err == nil {
			t.Errorf("%s: no error", tc.url)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.url, err, w)
			}
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error leaks the password: %q", tc.url, err)
		}
		if CheckRedisURL(tc.url) == nil {
			t.Errorf("%s: CheckRedisURL accepts it", tc.url)
		}
	}
}

func TestParseAddrMap(t *testing.T) {
	m, err := ParseAddrMap(" 10.0.0.2:6379=127.0.0.1:7001, 10.0.0.3:6379=127.0.0.1:7002,")
	if err != nil || len(m) != 2 || m["10.0.0.3:6379"] != "127.0.0.1:7002" {
		t.Fatalf("map %v, %v", m, err)
	}
	if m, err := ParseAddrMap(""); m != nil || err != nil {
		t.Fatalf("empty: %v, %v", m, err)
	}
	for _, bad := range []string{"10.0.0.2:6379", "a=b:1", "a:1=b"} {
		if _, err := ParseAddrMap(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRedisSettingsFromEnv(t *testing.T) {
	read := func(vars map[string]string) (string, map[string]string, error) {
		r := env.New(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
		u, m := RedisURLFromEnv(r), RedisAddrMapFromEnv(r)
		return u, m, r.Err()
	}
	if u, m, err := read(map[string]string{"REDIS_URL": "redis+cluster://n1:6379", "REDIS_ADDRESS_MAP": "n1:6379=127.0.0.1:1"}); err != nil || u != "redis+cluster://n1:6379" || m["n1:6379"] != "127.0.0.1:1" {
		t.Fatalf("got %q %v %v", u, m, err)
	}
	_, _, err := read(map[string]string{"REDIS_ADDRESS_MAP": "nonsense"})
	for _, want := range []string{"REDIS_URL: required", "REDIS_ADDRESS_MAP: "} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if _, _, err := read(map[string]string{"REDIS_URL": "redis+sentinel://s:26379"}); err == nil || !strings.Contains(err.Error(), "REDIS_URL: a redis+sentinel URL needs") {
		t.Errorf("missing master_name: %v", err)
	}
}

// TestRedissDoesTLS dials a rediss URL: the TLS handshake happens although
// the package supplies its own dialer (go-redis only adds TLS to its own).
func TestRedissDoesTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	defer srv.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	handshook := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			handshook <- err
			return
		}
		defer conn.Close()
		handshook <- conn.(*tls.Conn).Handshake()
	}()
	for _, u := range []string{
		"rediss://" + ln.Addr().String() + "/0?skip_verify=true",
	} {
		c, err := Redis(u)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.Ping(ctx).Err() // the server speaks no Redis; only the handshake counts
		cancel()
		c.Close()
		if err := <-handshook; err != nil {
			t.Fatalf("%s: no TLS handshake: %v", u, err)
		}
	}
}
