package mailstore

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/mailstore/storetest"
)

func TestMain(m *testing.M) {
	storetest.DispatchChild(map[string]storetest.ChildMain{
		"crash": crashChild,
		"hold":  holdChild,
	})
	os.Exit(runSuites(m))
}

// crashChild is the crash test's child (args: the database, the first
// message number): it delivers messages and prints the number of each one
// whose Deliver returned.
func crashChild(args []string) int {
	s, err := openLocation(args[0], Options{PasswordCost: FastPasswordHash})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	start, _ := strconv.Atoi(args[1])
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Several writers so that group commits are in flight when the kill
	// comes.
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := start + w; ; i += 8 {
				if _, err := s.Deliver(ctx, "x@remote.test", []string{"u@example.test"}, crashMessage(i)); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintln(out, i)
				out.Flush()
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	return 0
}

func crashMessage(i int) []byte {
	// Some messages span several chunks.
	pad := strings.Repeat("x", (i%5)*100000)
	return []byte(fmt.Sprintf("Subject: crash %d\r\n\r\n%d %s\r\n", i, i, pad))
}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary several times")
	}
	ctx := context.Background()
	db := newTestDB(t)
	path := db.location()
	s := db.open(t, Options{PasswordCost: FastPasswordHash})
	if err := s.AddDomain(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	addUser(t, s, "u@example.test")
	s.Close()

	acked := map[int]bool{}
	const rounds = 5
	for round := 0; round < rounds; round++ {
		child := storetest.StartChild(t, "crash", path, strconv.Itoa(round*1000000))
		lines := make(chan int, 1024)
		go func() {
			sc := bufio.NewScanner(child.Stdout)
			for sc.Scan() {
				if n, err := strconv.Atoi(sc.Text()); err == nil {
					lines <- n
				}
			}
			close(lines)
		}()
		// Wait for the first acknowledged delivery, then kill at a random
		// moment.
		first, ok := <-lines
		if !ok {
			t.Fatalf("round %d: child delivered nothing", round)
		}
		acked[first] = true
		time.Sleep(time.Duration(20+rand.IntN(300)) * time.Millisecond)
		child.Kill()
		for n := range lines {
			acked[n] = true
		}
	}

	s = db.open(t, Options{PasswordCost: FastPasswordHash})
	defer s.Close()
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := s.UserByAddress(ctx, "u@example.test")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Messages(ctx, inbox(t, s, u).ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	present := map[int]bool{}
	for _, m := range msgs {
		b, err := s.ReadBody(ctx, m.BodyID)
		if err != nil {
			t.Fatalf("uid %d: %v", m.UID, err)
		}
		var n int
		if _, err := fmt.Sscanf(string(b), "Subject: crash %d", &n); err != nil {
			t.Fatalf("uid %d: unreadable body %.40q", m.UID, b)
		}
		if string(b) != string(crashMessage(n)) {
			t.Fatalf("uid %d: body of message %d is corrupt", m.UID, n)
		}
		present[n] = true
	}
	lost := 0
	for n := range acked {
		if !present[n] {
			lost++
		}
	}
	t.Logf("%d rounds: %d deliveries acknowledged, %d messages present", rounds, len(acked), len(msgs))
	if lost > 0 {
		t.Fatalf("%d acknowledged deliveries lost", lost)
	}
	if len(acked) == 0 {
		t.Fatal("no delivery was acknowledged")
	}
}
