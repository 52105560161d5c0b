package main

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/mailstore"
	"github.com/postern/postern/mailstore/storetest"
)

const httpListeners = "[http]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\nmta_sts_mode = \"enforce\"\n"

func httpGet(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// serve runs the HTTP listener beside the mail listeners, over HTTP and
// HTTPS, tells clients the bound ports, logs "listening" for it like for
// every listener, and tells systemd when every listener is bound.
func TestServeHTTP(t *testing.T) {
	// A stand-in for systemd's notification socket.
	sock := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	r := startServe(t, httpListeners)
	if r.addrs["http"] == "" || r.addrs["https"] == "" {
		t.Fatalf("serve did not print the HTTP listeners:\n%s", r.stdout.String())
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := pc.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("sd_notify: %q %v", buf[:n], err)
	}

	base := "http://" + r.addrs["http"]
	if code, body := httpGet(t, http.DefaultClient, base+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := httpGet(t, http.DefaultClient, base+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if code, body := httpGet(t, tlsClient, "https://"+r.addrs["https"]+"/healthz"); code != 200 {
		t.Errorf("HTTPS /healthz: %d %s", code, body)
	}
	code, body := httpGet(t, http.DefaultClient, base+"/.well-known/mta-sts.txt")
	if code != 200 || body != "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n" {
		t.Errorf("MTA-STS: %d %q", code, body)
	}

	// Autoconfig names the bound IMAP port.
	code, body = httpGet(t, http.DefaultClient, base+"/mail/config-v1.1.xml?emailaddress=ann@example.test")
	if code != 200 {
		t.Fatalf("autoconfig: %d %s", code, body)
	}
	var cc struct {
		Incoming []struct {
			Type       string `xml:"type,attr"`
			Port       int    `xml:"port"`
			SocketType string `xml:"socketType"`
		} `xml:"emailProvider>incomingServer"`
	}
	if err := xml.Unmarshal([]byte(body), &cc); err != nil {
		t.Fatal(err)
	}
	_, imaps, _ := net.SplitHostPort(r.addrs["imaps"])
	if len(cc.Incoming) == 0 || cc.Incoming[0].Type != "imap" || strconv.Itoa(cc.Incoming[0].Port) != imaps || cc.Incoming[0].SocketType != "SSL" {
		t.Errorf("autoconfig incoming %+v, want imap on %s first", cc.Incoming, imaps)
	}

	for _, proto := range []string{"smtp", "submission", "pop3", "pop3s", "imap", "imaps", "http", "https"} {
		found := false
		for line := range strings.SplitSeq(r.stderr.String(), "\n") {
			if strings.Contains(line, "msg=listening") && strings.Contains(line, "addr="+r.addrs[proto]) {
				found = true
			}
		}
		if !found {
			t.Errorf("no listening line for %s %s", proto, r.addrs[proto])
		}
	}
	if !strings.Contains(r.stdout.String(), "Outbound mail is relayed") {
		t.Errorf("banner does not say how outbound mail goes:\n%s", r.stdout.String())
	}

	// SIGHUP is logged, not fatal.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r.waitLog(t, "SIGHUP received", 10*time.Second)

	// A second serve on the same data directory is refused.
	var out, errOut storetest.SyncBuffer
	code = runContext(context.Background(), []string{"serve", "-config", r.config}, strings.NewReader(""), &out, &errOut)
	if code != exitFailure || !strings.Contains(errOut.String(), errStoreInUse.Error()) || !strings.Contains(errOut.String(), strconv.Itoa(os.Getpid())) {
		t.Errorf("second serve: exit %d, stderr %s", code, errOut.String())
	}

	if code := r.stop(); code != exitOK {
		t.Errorf("serve exit %d", code)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := pc.Read(buf); err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Errorf("sd_notify at stop: %q %v", buf[:n], err)
	}
}

// /readyz fails when the store does not answer.
func TestReadyzStoreClosed(t *testing.T) {
	cfg := defaultConfig()
	st, err := mailstore.Open(filepath.Join(t.TempDir(), storeFile), mailstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := &serveEnv{cfg: cfg, log: slog.New(slog.DiscardHandler), store: st}
	ready := func() error {
		srv := newConsole(env)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		defer srv.Shutdown(context.Background())
		code, body := httpGet(t, http.DefaultClient, "http://"+ln.Addr().String()+"/readyz")
		if code != 200 {
			return errors.New(body)
		}
		return nil
	}
	if err := ready(); err == nil || !strings.Contains(err.Error(), "listeners are not up") {
		t.Errorf("before the listeners are up: %v", err)
	}
	env.up.Store(true)
	if err := ready(); err != nil {
		t.Errorf("ready: %v", err)
	}
	st.Close()
	if err := ready(); err == nil || !strings.Contains(err.Error(), "mailstore") {
		t.Errorf("with the store closed: %v", err)
	}
}
