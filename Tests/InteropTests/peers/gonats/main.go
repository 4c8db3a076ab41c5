// The Go NATS client (Debian's golang-github-nats-io-go-nats-dev, built in
// GOPATH mode, no network) against unibusd, and the load generator the
// broker benchmark drives both servers with.
//
//	gonats interop UNIBUSD_BINARY
//	gonats bench -url nats://127.0.0.1:4222 -mode pubsub -size 128 -n 1000000
//	gonats failover -url tls://127.0.0.1:4222 -seed SU... -ca ca.pem -subject rooms.x.failover
//	gonats request -url tls://127.0.0.1:4222 -seed SU... -ca ca.pem -subject rooms.x.svc
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gonats interop UNIBUSD | gonats bench [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "interop":
		os.Exit(interop(os.Args[2]))
	case "bench":
		os.Exit(bench(os.Args[2:]))
	case "failover":
		os.Exit(failover(os.Args[2:]))
	case "request":
		os.Exit(request(os.Args[2:]))
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// ---------------------------------------------------------------- interop

type node struct {
	binary string
	port   int
	extra  []string
	cmd    *exec.Cmd
}

var (
	handedOutLock sync.Mutex
	handedOut     = map[int]bool{}
	// Seeded per process: before Go 1.20 (Debian's is 1.19) the global
	// source starts from 1, so every gonats process would probe the same
	// ports in the same order.
	portRandom = rand.New(rand.NewSource(time.Now().UnixNano() ^ int64(os.Getpid())<<20))
)

// freePort picks a loopback port at random below the kernel's ephemeral
// range: a port the kernel hands out can be handed out again to an outgoing
// connection before the node it was meant for binds it, and outgoing
// connections never take a port outside that range. A port is handed out
// once per process.
func freePort() int {
	handedOutLock.Lock()
	defer handedOutLock.Unlock()
	if text, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if fields := strings.Fields(string(text)); len(fields) > 0 {
			if high, err := strconv.Atoi(fields[0]); err == nil && high > 10000 {
				for i := 0; i < 200; i++ {
					candidate := 10000 + portRandom.Intn(high-10000)
					if handedOut[candidate] {
						continue
					}
					if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", candidate)); err == nil {
						l.Close()
						handedOut[candidate] = true
						return candidate
					}
				}
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (n *node) start() error {
	args := append([]string{"run", "--listen", fmt.Sprintf("127.0.0.1:%d", n.port)}, n.extra...)
	n.cmd = exec.Command(n.binary, args...)
	if err := n.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", n.addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("unibusd did not start on %s", n.addr())
}

func (n *node) stop() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Signal(os.Interrupt)
		n.cmd.Wait()
		n.cmd = nil
	}
}

func (n *node) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.port) }
func (n *node) url() string  { return "nats://" + n.addr() }

func check(cond bool, format string, args ...interface{}) error {
	if !cond {
		return fmt.Errorf(format, args...)
	}
	return nil
}

func pubSubWildcardsQueuesHeaders(n *node) error {
	nc, err := nats.Connect(n.url())
	if err != nil {
		return err
	}
	defer nc.Close()
	var star, full, queued int32
	nc.Subscribe("orders.*", func(*nats.Msg) { atomic.AddInt32(&star, 1) })
	nc.Subscribe("orders.>", func(*nats.Msg) { atomic.AddInt32(&full, 1) })
	for i := 0; i < 3; i++ {
		nc.QueueSubscribe("work", "workers", func(*nats.Msg) { atomic.AddInt32(&queued, 1) })
	}
	headers, _ := nc.SubscribeSync("h")
	nc.Publish("orders.new", []byte("1"))
	nc.Publish("orders.eu.new", []byte("2"))
	for i := 0; i < 100; i++ {
		nc.Publish("work", []byte("job"))
	}
	msg := nats.NewMsg("h")
	msg.Header.Set("X-Trace", "abc")
	msg.Data = []byte("body")
	if err := nc.PublishMsg(msg); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	got, err := headers.NextMsg(2 * time.Second)
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	if err := check(atomic.LoadInt32(&star) == 1 && atomic.LoadInt32(&full) == 2, "wildcards: star=%d full=%d", star, full); err != nil {
		return err
	}
	if err := check(atomic.LoadInt32(&queued) == 100, "queue group delivered %d of 100", queued); err != nil {
		return err
	}
	return check(got.Header.Get("X-Trace") == "abc" && string(got.Data) == "body", "headers: %v %q", got.Header, got.Data)
}

func requestReplyNoResponders(n *node) error {
	nc, err := nats.Connect(n.url())
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.Subscribe("svc.echo", func(m *nats.Msg) { m.Respond(append([]byte("re:"), m.Data...)) })
	reply, err := nc.Request("svc.echo", []byte("ping"), 2*time.Second)
	if err != nil {
		return err
	}
	if err := check(string(reply.Data) == "re:ping", "reply %q", reply.Data); err != nil {
		return err
	}
	_, err = nc.Request("svc.nobody", []byte("x"), 2*time.Second)
	return check(errors.Is(err, nats.ErrNoResponders), "expected no responders, got %v", err)
}

func flushRTTDrain(n *node) error {
	nc, err := nats.Connect(n.url())
	if err != nil {
		return err
	}
	defer nc.Close()
	for i := 0; i < 5; i++ {
		if err := nc.FlushTimeout(2 * time.Second); err != nil {
			return err
		}
	}
	rtt, err := nc.RTT()
	if err != nil {
		return err
	}
	if err := check(rtt < time.Second, "rtt %v", rtt); err != nil {
		return err
	}
	var count int32
	sub, _ := nc.Subscribe("drain.me", func(*nats.Msg) {
		time.Sleep(time.Millisecond)
		atomic.AddInt32(&count, 1)
	})
	pub, err := nats.Connect(n.url())
	if err != nil {
		return err
	}
	defer pub.Close()
	for i := 0; i < 50; i++ {
		pub.Publish("drain.me", []byte("x"))
	}
	pub.Flush()
	time.Sleep(50 * time.Millisecond)
	if err := sub.Drain(); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for sub.IsValid() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := check(atomic.LoadInt32(&count) == 50, "drain delivered %d of 50", count); err != nil {
		return err
	}
	return nc.Drain()
}

func newUser() (nkeys.KeyPair, string) {
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	return kp, pub
}

func nkeyOption(kp nkeys.KeyPair) nats.Option {
	pub, _ := kp.PublicKey()
	return nats.Nkey(pub, func(nonce []byte) ([]byte, error) { return kp.Sign(nonce) })
}

func writeAllowlist(users []map[string]interface{}) (string, error) {
	f, err := os.CreateTemp("", "allowlist-*.json")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return f.Name(), json.NewEncoder(f).Encode(map[string]interface{}{"users": users})
}

func nkeyAuthAndPermissions(binary string) error {
	kp, pub := newUser()
	path, err := writeAllowlist([]map[string]interface{}{{"nkey": pub, "permissions": map[string]interface{}{
		"publish": map[string]interface{}{"allow": []string{"allowed.>", "_INBOX.>"}},
	}}})
	if err != nil {
		return err
	}
	defer os.Remove(path)
	n := &node{binary: binary, port: freePort(), extra: []string{"--allowlist", path}}
	if err := n.start(); err != nil {
		return err
	}
	defer n.stop()

	errs := make(chan error, 4)
	nc, err := nats.Connect(n.url(), nkeyOption(kp), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, e error) { errs <- e }))
	if err != nil {
		return fmt.Errorf("allowed nkey refused: %v", err)
	}
	defer nc.Close()
	sub, _ := nc.SubscribeSync("allowed.x")
	nc.Publish("denied.x", []byte("no"))
	nc.Publish("allowed.x", []byte("yes"))
	nc.Flush()
	msg, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		return err
	}
	if err := check(string(msg.Data) == "yes", "got %q", msg.Data); err != nil {
		return err
	}
	select {
	case e := <-errs:
		if err := check(strings.Contains(strings.ToLower(e.Error()), nats.PERMISSIONS_ERR) && strings.Contains(e.Error(), `"denied.x"`), "error handler got %v", e); err != nil {
			return err
		}
	case <-time.After(2 * time.Second):
		return fmt.Errorf("no permission violation reported")
	}
	if err := check(nc.IsConnected(), "connection closed after a permission violation"); err != nil {
		return err
	}
	stranger, _ := newUser()
	_, err = nats.Connect(n.url(), nkeyOption(stranger), nats.NoReconnect())
	if err := check(err != nil && errors.Is(err, nats.ErrAuthorization), "unknown nkey: %v", err); err != nil {
		return err
	}
	_, err = nats.Connect(n.url(), nats.NoReconnect())
	return check(err != nil, "no credentials accepted")
}

func reconnectAfterRestart(binary string) error {
	n := &node{binary: binary, port: freePort()}
	if err := n.start(); err != nil {
		return err
	}
	reconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(n.url(), nats.ReconnectWait(100*time.Millisecond), nats.MaxReconnects(-1),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	if err != nil {
		return err
	}
	defer nc.Close()
	sub, _ := nc.SubscribeSync("after.restart")
	nc.Flush()
	n.stop()
	time.Sleep(200 * time.Millisecond)
	if err := n.start(); err != nil {
		return err
	}
	defer n.stop()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no reconnect")
	}
	nc.Publish("after.restart", []byte("back"))
	msg, err := sub.NextMsg(3 * time.Second)
	if err != nil {
		return err
	}
	return check(string(msg.Data) == "back", "got %q", msg.Data)
}

// makePKI writes a throwaway CA, a server certificate for 127.0.0.1 and a
// client certificate into dir, with the openssl command line tool.
func makePKI(dir string) error {
	run := func(args ...string) error {
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("openssl %v: %v: %s", args, err, out)
		}
		return nil
	}
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	if err := run(append([]string{"req", "-x509"}, append(ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")...)...); err != nil {
		return err
	}
	for name, ext := range map[string]string{
		"server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
		"client": "extendedKeyUsage=clientAuth\n",
	} {
		if err := os.WriteFile(dir+"/"+name+".ext", []byte(ext), 0o600); err != nil {
			return err
		}
		if err := run(append([]string{"req"}, append(ec, "-keyout", name+".key", "-out", name+".csr", "-subj", "/CN="+name)...)...); err != nil {
			return err
		}
		if err := run("x509", "-req", "-in", name+".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
			"-out", name+".pem", "-days", "2", "-extfile", name+".ext"); err != nil {
			return err
		}
	}
	return nil
}

func tlsAndMutualTLS(binary string) error {
	dir, err := os.MkdirTemp("", "unibus-pki-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := makePKI(dir); err != nil {
		return err
	}
	n := &node{binary: binary, port: freePort(), extra: []string{"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server.key"}}
	if err := n.start(); err != nil {
		return err
	}
	nc, err := nats.Connect("tls://"+n.addr(), nats.RootCAs(dir+"/ca.pem"), nats.NoReconnect())
	if err != nil {
		n.stop()
		return fmt.Errorf("TLS connect: %v", err)
	}
	sub, _ := nc.SubscribeSync("over.tls")
	nc.Publish("over.tls", []byte("secret"))
	msg, err := sub.NextMsg(2 * time.Second)
	nc.Close()
	if err != nil || string(msg.Data) != "secret" {
		n.stop()
		return fmt.Errorf("message over TLS: %v", err)
	}
	if _, err := nats.Connect("tls://"+n.addr(), nats.NoReconnect()); err == nil {
		n.stop()
		return fmt.Errorf("connected without trusting the server CA")
	}
	n.stop()

	m := &node{binary: binary, port: freePort(), extra: []string{"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server.key", "--tls-client-ca", dir + "/ca.pem"}}
	if err := m.start(); err != nil {
		return err
	}
	defer m.stop()
	nc, err = nats.Connect("tls://"+m.addr(), nats.RootCAs(dir+"/ca.pem"), nats.ClientCert(dir+"/client.pem", dir+"/client.key"), nats.NoReconnect())
	if err != nil {
		return fmt.Errorf("mutual TLS with a client certificate: %v", err)
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	nc.Close()
	bad, err := nats.Connect("tls://"+m.addr(), nats.RootCAs(dir+"/ca.pem"), nats.NoReconnect())
	if err == nil {
		err = bad.FlushTimeout(2 * time.Second)
		bad.Close()
	}
	return check(err != nil, "mutual TLS accepted a client without a certificate")
}

func interop(binary string) int {
	shared := &node{binary: binary, port: freePort()}
	if err := shared.start(); err != nil {
		fmt.Println("FAIL start:", err)
		return 1
	}
	defer shared.stop()
	scenarios := []struct {
		name string
		run  func() error
	}{
		{"pub/sub, wildcards, queue groups, headers", func() error { return pubSubWildcardsQueuesHeaders(shared) }},
		{"request/reply and no-responders", func() error { return requestReplyNoResponders(shared) }},
		{"flush, RTT and drain", func() error { return flushRTTDrain(shared) }},
		{"nkey authentication and permissions", func() error { return nkeyAuthAndPermissions(binary) }},
		{"reconnect to a restarted server", func() error { return reconnectAfterRestart(binary) }},
		{"TLS and mutual TLS", func() error { return tlsAndMutualTLS(binary) }},
	}
	passed, failed := 0, 0
	for _, s := range scenarios {
		if err := s.run(); err != nil {
			fmt.Printf("FAIL %s: %v\n", s.name, err)
			failed++
		} else {
			fmt.Printf("ok   %s\n", s.name)
			passed++
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// ---------------------------------------------------------------- bench

type result struct {
	Mode       string  `json:"mode"`
	Size       int     `json:"size"`
	Messages   int     `json:"messages"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	P50us      float64 `json:"p50_us,omitempty"`
	P99us      float64 `json:"p99_us,omitempty"`
	// Set when a subscriber stopped receiving before the count (the server
	// dropped messages, e.g. to a slow consumer): messages per second then
	// counts only what arrived, and Lost says how many did not.
	Lost int `json:"lost,omitempty"`
}

func bench(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	url := fs.String("url", nats.DefaultURL, "server URL")
	mode := fs.String("mode", "pubsub", "pub | pubsub | fanout | reqrep")
	size := fs.Int("size", 128, "payload bytes")
	count := fs.Int("n", 1000000, "messages (requests for reqrep)")
	subs := fs.Int("subs", 5, "subscribers for fanout")
	subURL := fs.String("suburl", "", "server URL for subscribers and the responder (another node of a cluster); default -url")
	fs.Parse(args)
	if *subURL == "" {
		*subURL = *url
	}

	payload := make([]byte, *size)
	subject := "bench." + *mode
	out := result{Mode: *mode, Size: *size, Messages: *count}
	opts := []nats.Option{nats.ReconnectBufSize(-1)}

	switch *mode {
	case "pub", "pubsub", "fanout":
		nsubs := 0
		if *mode == "pubsub" {
			nsubs = 1
		} else if *mode == "fanout" {
			nsubs = *subs
		}
		var wg sync.WaitGroup
		var ready sync.WaitGroup
		var conns []*nats.Conn
		counters := make([]*int64, nsubs)
		for i := 0; i < nsubs; i++ {
			nc, err := nats.Connect(*subURL, opts...)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			conns = append(conns, nc)
			wg.Add(1)
			received := new(int64)
			counters[i] = received
			sub, _ := nc.Subscribe(subject, func(*nats.Msg) {
				if atomic.AddInt64(received, 1) == int64(*count) {
					wg.Done()
				}
			})
			sub.SetPendingLimits(-1, -1)
			// Interest reaches another node asynchronously; a probe on a subject
			// subscribed after this one shows it has arrived.
			ready.Add(1)
			var once sync.Once
			nc.Subscribe(subject+".ready", func(*nats.Msg) { once.Do(ready.Done) })
			nc.Flush()
		}
		pub, err := nats.Connect(*url, opts...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if nsubs > 0 {
			done := make(chan struct{})
			go func() { ready.Wait(); close(done) }()
		probe:
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				pub.Publish(subject+".ready", nil)
				pub.Flush()
				select {
				case <-done:
					break probe
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
		start := time.Now()
		for i := 0; i < *count; i++ {
			pub.Publish(subject, payload)
		}
		pub.Flush()
		// Wait for every subscriber, unless deliveries stop for 5 s.
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		total := func() (sum int64) {
			for _, c := range counters {
				sum += atomic.LoadInt64(c)
			}
			return
		}
		last, lastChange, end := total(), time.Now(), time.Now()
	wait:
		for {
			select {
			case <-finished:
				end = time.Now()
				break wait
			case <-time.After(100 * time.Millisecond):
				if now := total(); now != last {
					last, lastChange = now, time.Now()
				} else if time.Since(lastChange) > 5*time.Second {
					end = lastChange
					break wait
				}
			}
		}
		elapsed := end.Sub(start)
		delivered := total()
		out.Seconds = elapsed.Seconds()
		if nsubs == 0 {
			out.MsgsPerSec = float64(*count) / elapsed.Seconds()
		} else {
			out.MsgsPerSec = float64(delivered) / float64(nsubs) / elapsed.Seconds()
		}
		out.Lost = int(int64(*count*nsubs) - delivered)
		pub.Close()
		for _, c := range conns {
			c.Close()
		}
	case "reqrep":
		responder, err := nats.Connect(*subURL, opts...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		responder.Subscribe(subject, func(m *nats.Msg) { m.Respond(m.Data) })
		responder.Flush()
		requester, err := nats.Connect(*url, opts...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Wait until the responder's interest reached the requester's node.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if _, err := requester.Request(subject, payload, 200*time.Millisecond); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		latencies := make([]time.Duration, 0, *count)
		start := time.Now()
		for i := 0; i < *count; i++ {
			t := time.Now()
			if _, err := requester.Request(subject, payload, 5*time.Second); err != nil {
				fmt.Fprintln(os.Stderr, "request failed:", err)
				return 1
			}
			latencies = append(latencies, time.Since(t))
		}
		elapsed := time.Since(start)
		sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
		out.Seconds = elapsed.Seconds()
		out.MsgsPerSec = float64(*count) / elapsed.Seconds()
		out.P50us = float64(latencies[len(latencies)/2].Nanoseconds()) / 1000
		out.P99us = float64(latencies[len(latencies)*99/100].Nanoseconds()) / 1000
		requester.Close()
		responder.Close()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		return 2
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// failover connects with ONE seed URL, subscribes, prints "ready" with the
// servers it learned from connect_urls, and waits for its node to go away
// (the caller kills it): it must reconnect to a learned server on its own
// and get its own message through there. Exit 0 and "failover ok URL".
// userFlags parses -url, -seed, -ca and -subject, the arguments of the
// modes that connect as a member (failover, request).
type userFlags struct {
	url, ca, subject string
	kp               nkeys.KeyPair
}

func parseUserFlags(mode string, args []string) (*userFlags, int) {
	flags := flag.NewFlagSet(mode, flag.ContinueOnError)
	url := flags.String("url", "", "the seed URL")
	seed := flags.String("seed", "", "the user's nkey seed")
	ca := flags.String("ca", "", "the client CA")
	subject := flags.String("subject", "", "a subject the user may publish and subscribe to")
	if err := flags.Parse(args); err != nil {
		return nil, 2
	}
	kp, err := nkeys.FromSeed([]byte(*seed))
	if err != nil {
		fmt.Println(mode, "failed: bad seed:", err)
		return nil, 1
	}
	return &userFlags{url: *url, ca: *ca, subject: *subject, kp: kp}, 0
}

func failover(args []string) int {
	f, status := parseUserFlags("failover", args)
	if f == nil {
		return status
	}
	url, ca, subject, kp := &f.url, &f.ca, &f.subject, f.kp
	reconnected := make(chan string, 4)
	nc, err := nats.Connect(*url, nkeyOption(kp), nats.RootCAs(*ca), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectHandler(func(c *nats.Conn) { reconnected <- c.ConnectedUrl() }))
	if err != nil {
		fmt.Println("failover failed: connect:", err)
		return 1
	}
	defer nc.Close()
	got := make(chan []byte, 16)
	if _, err := nc.Subscribe(*subject, func(m *nats.Msg) { got <- m.Data }); err != nil {
		fmt.Println("failover failed: subscribe:", err)
		return 1
	}
	if err := nc.Flush(); err != nil {
		fmt.Println("failover failed: flush:", err)
		return 1
	}
	fmt.Println("ready", strings.Join(nc.DiscoveredServers(), ","))
	var at string
	select {
	case at = <-reconnected:
	case <-time.After(30 * time.Second):
		fmt.Println("failover failed: no reconnect within 30 s; discovered:", nc.DiscoveredServers())
		return 1
	}
	if err := nc.Publish(*subject, []byte("after failover")); err != nil {
		fmt.Println("failover failed: publish:", err)
		return 1
	}
	// Other clients of the scenario may publish on the subject too: wait
	// for this client's own message, skipping theirs.
	deadline := time.After(10 * time.Second)
	for own := false; !own; {
		select {
		case data := <-got:
			own = string(data) == "after failover"
		case <-deadline:
			fmt.Println("failover failed: own message not received at", at)
			return 1
		}
	}
	fmt.Println("failover ok", at)
	return 0
}

// request answers requests on -subject on one connection and sends one from
// another, both with nats.go's defaults (its own random _INBOX prefix), and
// prints "reply ok" when the answer arrives.
func request(args []string) int {
	f, status := parseUserFlags("request", args)
	if f == nil {
		return status
	}
	url, ca, subject, kp := &f.url, &f.ca, &f.subject, f.kp
	responder, err := nats.Connect(*url, nkeyOption(kp), nats.RootCAs(*ca))
	if err != nil {
		fmt.Println("request failed: responder connect:", err)
		return 1
	}
	defer responder.Close()
	if _, err := responder.Subscribe(*subject, func(m *nats.Msg) { m.Respond(append([]byte("pong "), m.Data...)) }); err != nil {
		fmt.Println("request failed: subscribe:", err)
		return 1
	}
	responder.Flush()
	requester, err := nats.Connect(*url, nkeyOption(kp), nats.RootCAs(*ca))
	if err != nil {
		fmt.Println("request failed: requester connect:", err)
		return 1
	}
	defer requester.Close()
	reply, err := requester.Request(*subject, []byte("ping"), 5*time.Second)
	if err != nil {
		fmt.Println("request failed:", err)
		return 1
	}
	if string(reply.Data) != "pong ping" {
		fmt.Println("request failed: unexpected reply", string(reply.Data))
		return 1
	}
	fmt.Println("reply ok")
	return 0
}
