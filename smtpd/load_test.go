package smtpd

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestConcurrentClients(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const clients, perClient = 50, 20
	e := newTestEnv(t)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr, from := e.mx, "sender@elsewhere.test"
			if i%2 == 1 {
				addr, from = e.sub, bob
			}
			c, err := smtp.Dial(addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if i%2 == 1 {
				if err := c.Auth(saslPlain(bob, bobPassword)); err != nil {
					errs <- err
					return
				}
			}
			for j := range perClient {
				msg := messageFrom(from, fmt.Sprintf("load-%d-%d", i, j))
				if err := c.SendMail(from, []string{alice}, strings.NewReader(msg)); err != nil {
					errs <- fmt.Errorf("client %d message %d: %w", i, j, err)
					return
				}
			}
			errs <- c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	got := e.inbox(t, alice)
	if len(got) != clients*perClient {
		t.Errorf("%d messages stored, want %d", len(got), clients*perClient)
	}
	seen := map[string]int{}
	re := regexp.MustCompile(`Subject: (load-\d+-\d+)\r\n`)
	for _, b := range got {
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("unexpected message %.200q", b)
		}
		seen[string(m[1])]++
	}
	for i := range clients {
		for j := range perClient {
			if n := seen[fmt.Sprintf("load-%d-%d", i, j)]; n != 1 {
				t.Errorf("load-%d-%d stored %d times", i, j, n)
			}
		}
	}
}
