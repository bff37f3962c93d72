// Command gotls is the Go crypto/tls program the gotls live tests capture: a server and a
// client that talk HTTPS (HTTP/2 by default, HTTP/1.1 with -http1) or a raw line protocol
// over TLS (-raw), and write the TLS secrets to a key log file as ground truth.
//
//	gotls server -addr 127.0.0.1:0 -cert C -key K -keylog F [-http1] [-raw]
//	gotls client -addr A -n N -keylog F [-tls 1.2|1.3] [-http1] [-raw] [-big B] [-ca C]
//
// The server prints "listening HOST:PORT" as its first line and serves until SIGTERM or
// SIGINT (exit 0). HTTP: POST /echo answers "pong " + body, GET /big?n=N answers N bytes of
// the pattern. Raw: each line L is answered "pong L\n"; the line "big N" is answered with N
// bytes of the pattern and "\n", in one tls.Conn.Write.
//
// The client makes its N requests in order on one connection ("ping 00", "ping 01", ...),
// then the -big request, checks every answer, prints one line per request and "ok N", and
// exits non-zero on any mismatch.
//
// The pattern: byte i of a big answer is patternAlphabet[i % 62].
//
// Standard library only, and Go 1.19 source: it is built by every toolchain the tests cover.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const patternAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// maxBig bounds a big answer: the tests ask for a few MiB at most.
const maxBig = 1 << 30

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = patternAlphabet[i%len(patternAlphabet)]
	}
	return b
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gotls server -addr A -cert C -key K -keylog F [-http1] [-raw]")
	fmt.Fprintln(os.Stderr, "       gotls client -addr A -n N -keylog F [-tls 1.2|1.3] [-http1] [-raw] [-big B] [-ca C]")
	os.Exit(2)
}

func fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gotls: "+format+"\n", args...)
	os.Exit(1)
}

func openKeyLog(path string) *os.File {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fatalf("key log: %v", err)
	}
	return f
}

// ---- server ----

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	certFile := fs.String("cert", "", "certificate (PEM)")
	keyFile := fs.String("key", "", "private key (PEM)")
	keyLog := fs.String("keylog", "", "key log file (NSS format), appended to")
	http1 := fs.Bool("http1", false, "HTTP/1.1 only (no h2)")
	raw := fs.Bool("raw", false, "line protocol over TLS instead of HTTP")
	_ = fs.Parse(args)
	if *certFile == "" || *keyFile == "" {
		fatalf("server needs -cert and -key")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fatalf("certificate: %v", err)
	}
	kl := openKeyLog(*keyLog)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	if kl != nil {
		cfg.KeyLogWriter = kl
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fatalf("listen: %v", err)
	}
	// os.Stdout is unbuffered: the line is out when Println returns.
	fmt.Println("listening", ln.Addr().String())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	if *raw {
		go func() {
			<-stop
			ln.Close()
			os.Exit(0)
		}()
		serveRaw(tls.NewListener(ln, cfg))
		return
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/echo", handleEcho)
	mux.HandleFunc("/big", handleBig)
	srv := &http.Server{Handler: mux, TLSConfig: cfg, ReadHeaderTimeout: 30 * time.Second}
	if *http1 {
		// A non-nil empty map is how net/http is told not to offer h2.
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.Exit(0)
	}()
	// ServeTLS adds "h2" to the offered protocols unless TLSNextProto is set.
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fatalf("serve: %v", err)
	}
	select {} // Shutdown's goroutine exits the process
}

func handleEcho(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(append([]byte("pong "), body...))
}

func handleBig(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > maxBig {
		http.Error(w, "n: a byte count", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(n))
	_, _ = w.Write(pattern(n))
}

func serveRaw(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fmt.Fprintln(os.Stderr, "gotls: accept:", err)
			continue
		}
		go handleRaw(conn)
	}
}

func handleRaw(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "gotls: read:", err)
			}
			return
		}
		line = strings.TrimSuffix(line, "\n")
		var reply []byte
		if strings.HasPrefix(line, "big ") {
			n, err := strconv.Atoi(strings.TrimPrefix(line, "big "))
			if err != nil || n < 0 || n > maxBig {
				reply = []byte("error: big N needs a byte count\n")
			} else {
				reply = append(pattern(n), '\n')
			}
		} else {
			reply = []byte("pong " + line + "\n")
		}
		// One Write per answer: the capture sees each answer as one write call.
		if _, err := conn.Write(reply); err != nil {
			fmt.Fprintln(os.Stderr, "gotls: write:", err)
			return
		}
	}
}

// ---- client ----

type clientOpts struct {
	addr    string
	n       int
	tlsVer  string
	http1   bool
	raw     bool
	big     int
	timeout time.Duration
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	var o clientOpts
	fs.StringVar(&o.addr, "addr", "", "server address HOST:PORT")
	fs.IntVar(&o.n, "n", 1, "number of ping requests, all on one connection")
	keyLog := fs.String("keylog", "", "key log file (NSS format), appended to")
	fs.StringVar(&o.tlsVer, "tls", "", "pin the TLS version: 1.2 or 1.3 (default: negotiate)")
	fs.BoolVar(&o.http1, "http1", false, "HTTP/1.1 instead of HTTP/2")
	fs.BoolVar(&o.raw, "raw", false, "line protocol over TLS instead of HTTP")
	fs.IntVar(&o.big, "big", 0, "also fetch this many bytes of pattern once")
	caFile := fs.String("ca", "", "CA certificate (PEM) to verify the server with (default: no verification)")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up (exit 3) after this long")
	_ = fs.Parse(args)
	if o.addr == "" || o.n < 0 || o.big < 0 || o.big > maxBig {
		fatalf("client needs -addr, and counts >= 0")
	}
	timer := time.AfterFunc(o.timeout, func() {
		fmt.Fprintf(os.Stderr, "gotls: timed out after %v\n", o.timeout)
		os.Exit(3)
	})
	defer timer.Stop()

	cfg := &tls.Config{}
	if kl := openKeyLog(*keyLog); kl != nil {
		defer kl.Close()
		cfg.KeyLogWriter = kl
	}
	switch o.tlsVer {
	case "":
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	default:
		fatalf("-tls: 1.2 or 1.3, not %q", o.tlsVer)
	}
	host, _, err := net.SplitHostPort(o.addr)
	if err != nil {
		fatalf("-addr: %v", err)
	}
	setVerification(cfg, *caFile, host)

	if o.raw {
		err = runRaw(cfg, o)
	} else {
		err = runHTTP(cfg, o)
	}
	if err != nil {
		fatalf("%v", err)
	}
	fmt.Println("ok", o.n)
}

// setVerification checks the server's chain against the CA file. The host name is checked
// only when the certificate carries subject alternative names: a test certificate made with
// just "-subj /CN=localhost" has none, and Go no longer accepts the common name.
func setVerification(cfg *tls.Config, caFile, host string) {
	cfg.InsecureSkipVerify = true
	if caFile == "" {
		return
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fatalf("-ca: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fatalf("-ca: no PEM certificate in %s", caFile)
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			return err
		}
		if len(leaf.DNSNames) > 0 || len(leaf.IPAddresses) > 0 {
			return leaf.VerifyHostname(host)
		}
		return nil
	}
}

func tlsName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS13:
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

func checkPattern(got []byte, n int) error {
	if len(got) != n {
		return fmt.Errorf("big: got %d bytes, want %d", len(got), n)
	}
	if i := firstDiff(got, pattern(n)); i >= 0 {
		return fmt.Errorf("big: byte %d is %q, want %q", i, got[i], patternAlphabet[i%len(patternAlphabet)])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func runRaw(cfg *tls.Config, o clientOpts) error {
	conn, err := tls.Dial("tcp", o.addr, cfg)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	// The tests' ground truth for the 4-tuple of every event of this connection.
	fmt.Println("local", conn.LocalAddr().String())
	fmt.Println("tls", tlsName(conn.ConnectionState().Version))
	r := bufio.NewReader(conn)
	for i := 0; i < o.n; i++ {
		msg := fmt.Sprintf("ping %02d", i)
		if _, err := conn.Write([]byte(msg + "\n")); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read %d: %w", i, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line != "pong "+msg {
			return fmt.Errorf("request %d: got %q, want %q", i, line, "pong "+msg)
		}
		fmt.Println(line)
	}
	if o.big > 0 {
		if _, err := conn.Write([]byte(fmt.Sprintf("big %d\n", o.big))); err != nil {
			return fmt.Errorf("write big: %w", err)
		}
		buf := make([]byte, o.big+1)
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("read big: %w", err)
		}
		if buf[o.big] != '\n' {
			return fmt.Errorf("big: no newline after %d bytes", o.big)
		}
		if err := checkPattern(buf[:o.big], o.big); err != nil {
			return err
		}
		fmt.Println("big", o.big)
	}
	return nil
}

func runHTTP(cfg *tls.Config, o clientOpts) error {
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		ForceAttemptHTTP2:   !o.http1, // a custom TLSClientConfig turns h2 off otherwise
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true, // the bytes on the wire are the bytes asked for
	}
	if o.http1 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	base := "https://" + o.addr
	wantProto := "HTTP/2.0"
	if o.http1 {
		wantProto = "HTTP/1.1"
	}

	conns := 0
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			conns++
			fmt.Println("local", info.Conn.LocalAddr().String())
		}
	}}
	do := func(req *http.Request) ([]byte, *http.Response, error) {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := hc.Do(req)
		if err != nil {
			return nil, nil, err
		}
		// Read to the end and close, so that HTTP/1.1 reuses the connection.
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status)
		}
		if resp.Proto != wantProto {
			return nil, nil, fmt.Errorf("negotiated %s, want %s", resp.Proto, wantProto)
		}
		if conns > 1 {
			return nil, nil, fmt.Errorf("a second connection was opened")
		}
		return body, resp, nil
	}

	printed := false
	announce := func(resp *http.Response) {
		if !printed && resp.TLS != nil {
			fmt.Println("proto", resp.Proto)
			fmt.Println("tls", tlsName(resp.TLS.Version))
			printed = true
		}
	}
	for i := 0; i < o.n; i++ {
		msg := fmt.Sprintf("ping %02d", i)
		req, err := http.NewRequest(http.MethodPost, base+"/echo", strings.NewReader(msg))
		if err != nil {
			return err
		}
		body, resp, err := do(req)
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		announce(resp)
		if !bytes.Equal(body, []byte("pong "+msg)) {
			return fmt.Errorf("request %d: got %q, want %q", i, body, "pong "+msg)
		}
		fmt.Println(string(body))
	}
	if o.big > 0 {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/big?n=%d", base, o.big), nil)
		if err != nil {
			return err
		}
		body, resp, err := do(req)
		if err != nil {
			return fmt.Errorf("big: %w", err)
		}
		announce(resp)
		if err := checkPattern(body, o.big); err != nil {
			return err
		}
		fmt.Println("big", o.big)
	}
	return nil
}
