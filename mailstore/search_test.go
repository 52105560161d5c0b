package mailstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Store.Search: dates at and beyond what is stored, flags that no message
// can carry, and the bounds on one search.
func TestSearchEdges(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	u := addUser(t, s, "u@example.test")
	in := inbox(t, s, u)
	midnight := time.Date(2020, 6, 15, 0, 0, 0, 0, time.UTC)
	for i, d := range []time.Time{midnight.Add(-1), midnight, midnight.Add(24*time.Hour - 1)} {
		if _, err := s.Append(ctx, in.ID, []string{"Foo"}, d, testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	uids := func(c SearchCriteria) []uint32 {
		t.Helper()
		msgs, err := s.Search(ctx, in.ID, &c)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint32
		for _, m := range msgs {
			out = append(out, m.UID)
		}
		return out
	}
	east := time.FixedZone("east", 14*3600)
	for _, tc := range []struct {
		name string
		c    SearchCriteria
		want int
	}{
		{"all", SearchCriteria{}, 3},
		{"since the day", SearchCriteria{Since: midnight}, 2},
		{"since the day, given in another zone", SearchCriteria{Since: time.Date(2020, 6, 15, 20, 0, 0, 0, east)}, 2},
		{"before the day", SearchCriteria{Before: midnight}, 1},
		{"since year 1", SearchCriteria{Since: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)}, 3},
		{"before year 2", SearchCriteria{Before: time.Date(2, 1, 1, 0, 0, 0, 0, time.UTC)}, 0},
		{"since year 9999", SearchCriteria{Since: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)}, 0},
		{"before year 9999", SearchCriteria{Before: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)}, 3},
		{"keyword any case", SearchCriteria{Flag: []string{"fOO"}}, 3},
		{"keyword prefix", SearchCriteria{Flag: []string{"Fo"}}, 0},
		{"two keywords as one", SearchCriteria{NotFlag: []string{"Foo Bar"}}, 3},
		{"unknown system flag", SearchCriteria{Flag: []string{`\Bogus`}}, 0},
		{"empty UID set", SearchCriteria{UID: []UIDSet{{}}}, 0},
		{"open UID range", SearchCriteria{UID: []UIDSet{{{Start: 2}}}}, 2},
		{"not or", SearchCriteria{Not: []SearchCriteria{{Or: [][2]SearchCriteria{{{UID: []UIDSet{UIDs(1)}}, {Flag: []string{`\Seen`}}}}}}}, 2},
	} {
		if got := uids(tc.c); len(got) != tc.want {
			t.Errorf("%s: %v, want %d messages", tc.name, got, tc.want)
		}
	}
	deep := SearchCriteria{}
	for i := 0; i < maxSearchDepth+1; i++ {
		deep = SearchCriteria{Not: []SearchCriteria{deep}}
	}
	if _, err := s.Search(ctx, in.ID, &deep); !errors.Is(err, ErrLimit) {
		t.Errorf("too deep: %v", err)
	}
	wide := SearchCriteria{UID: []UIDSet{make(UIDSet, maxSearchParams)}}
	if _, err := s.Search(ctx, in.ID, &wide); !errors.Is(err, ErrLimit) {
		t.Errorf("too many values: %v", err)
	}
}
