package main

import (
	"strings"
	"testing"
)

// A small history: rev 2 creates a, rev 3 is a txn putting b and c, rev 4 deletes a.
func sampleHistory() []wEvent {
	a2 := kvSnap{key: "/registry/a", value: "va", mod: 2, create: 2, version: 1}
	return []wEvent{
		{put: true, kv: a2},
		{put: true, kv: kvSnap{key: "/registry/b", value: "vb", mod: 3, create: 3, version: 1}},
		{put: true, kv: kvSnap{key: "/registry/c", value: "vc", mod: 3, create: 3, version: 1}},
		{put: false, kv: kvSnap{key: "/registry/a", mod: 4}, prev: &a2},
	}
}

func TestHistoryChecks(t *testing.T) {
	h := sampleHistory()
	if v := checkHistory(h); len(v) != 0 {
		t.Fatalf("good history rejected: %v", v)
	}
	gap := append([]wEvent(nil), h...)
	gap[3].kv.mod = 6
	if v := checkHistory(gap); len(v) == 0 || !strings.Contains(v[0], "no event") {
		t.Errorf("gap not found: %v", v)
	}
	badVersion := append([]wEvent(nil), h...)
	badVersion[1].kv.version = 2
	if v := checkHistory(badVersion); len(v) == 0 {
		t.Error("bad version not found")
	}
}

func TestWatcherChecks(t *testing.T) {
	h := sampleHistory()
	check := func(resps []wResp) map[string][]string {
		w := &watcher{id: 0, prefix: "/registry/", start: 2, resps: resps}
		v, _ := checkWatcher(w, h, 4)
		return v
	}
	good := []wResp{
		{conn: 1, events: h[:1]},
		{conn: 1, progress: true, header: 2},
		{conn: 2, events: h[1:3]},
		{conn: 2, events: h[3:]},
		{conn: 2, progress: true, header: 4},
	}
	if v := check(good); len(v) != 0 {
		t.Fatalf("good stream rejected: %v", v)
	}
	cases := map[string][]wResp{
		"atomic":                  {{events: h[:2]}, {events: h[2:]}},
		"unique":                  {{events: h[:1]}, {events: h[1:3]}, {events: h[2:]}},
		"ordered":                 {{events: h[:1]}, {events: h[3:]}, {events: h[1:3]}},
		"complete across resumes": {{events: h[:1]}, {events: h[3:]}},
		"progress never ahead":    {{events: h[:1]}, {progress: true, header: 3}, {events: h[1:]}},
	}
	for want, resps := range cases {
		if v := check(resps); len(v[want]) == 0 {
			t.Errorf("%s violation not found: %v", want, v)
		}
	}
}

func TestAckedWriteChecks(t *testing.T) {
	h := sampleHistory()
	hist := &history{ops: []kvOp{
		{kind: opPut, key: "/registry/a", value: "va", ret: 5, succeeded: true, revision: 2},
		{kind: opPut, key: "/registry/x", value: "vx", ret: 5, succeeded: true, revision: 5}, // lost
	}}
	v, _, _, acked := checkAcked(hist, h)
	if acked != 2 || len(v) != 1 || !strings.Contains(v[0], "lost") {
		t.Errorf("want one lost write of 2 acknowledged, got %d: %v", acked, v)
	}
	// Unknown outcomes are resolved from the history: one took effect, one did not.
	hist = &history{ops: []kvOp{
		{kind: opPut, key: "/registry/a", value: "va", ret: pending},
		{kind: opPut, key: "/registry/a", value: "never", ret: pending},
	}}
	_, kv, res, _ := checkAcked(hist, h)
	if len(kv) != 1 || !kv[0].resolved || kv[0].revision != 2 || res.putsDropped != 1 {
		t.Errorf("resolution: %+v %+v", kv, res)
	}
}
